//! `shoal keys init|show`: create the node's identity file or print its id and public key.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use shoal_keys::Identity;

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a new identity (mode 0600); refuses to overwrite an existing one.
    Init(KeyFileArg),
    /// Print the node id and public key of an identity.
    Show(ShowArgs),
}

/// Where the identity lives.
#[derive(Debug, Args)]
pub(crate) struct KeyFileArg {
    /// The secret key file [default: ~/.shoal/node.key].
    #[arg(long, env = "SHOAL_KEY_FILE")]
    key_file: Option<PathBuf>,
}

/// Arguments of `keys show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    file: KeyFileArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Init(arg) => {
            let path = arg.path()?;
            let id = Identity::create(&path)?;
            println!("created {}", path.display());
            println!("node id:    {}", id.node_id());
            Ok(())
        }
        KeysCommand::Show(args) => {
            let id = Identity::load(&args.file.path()?)?;
            let public = hex::encode(id.public_key().to_bytes());
            if args.json {
                let v =
                    serde_json::json!({"node_id": id.node_id().to_string(), "public_key": public});
                println!("{v}");
            } else {
                println!("node id:    {}", id.node_id());
                println!("public key: {public}");
            }
            Ok(())
        }
    }
}

impl KeyFileArg {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.key_file {
            Some(p) => Ok(p.clone()),
            None => default_key_file(),
        }
    }
}

/// `~/.shoal/node.key`, the key file when none is given.
pub(crate) fn default_key_file() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set; pass --key-file")?;
    Ok(PathBuf::from(home).join(".shoal").join("node.key"))
}
