//! The shoal node.
