//! One module per `shoal` subcommand. Each owns its clap arguments and a `run` function; the
//! real work lives in the library crates and `shoal_node`'s modules.

pub(crate) mod bench;
pub(crate) mod demo;
pub(crate) mod generate;
pub(crate) mod invite;
pub(crate) mod keys;
pub(crate) mod model;
pub(crate) mod plan;
pub(crate) mod run;
pub(crate) mod status;
