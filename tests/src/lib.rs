//! Shared harness for shoal's multi-node tests: temporary nodes, real `shoal` processes on
//! loopback and, as root, network namespaces.
pub mod netns;
