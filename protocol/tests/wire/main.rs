//! Wire-format tests of shoal-protocol: round trips, hostile input, signatures, semantic
//! rules, and the long run.
//!
//! Long run (ignored by default; at least 1,000,000 random and mutated inputs through every
//! decoder, prints the count):
//! `cargo test -p shoal-protocol --release --test wire -- --ignored long_run --nocapture`

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod corrupt;
mod decoders;
mod long_run;
mod roundtrip;
mod signatures;
mod strategies;
mod validation;
