//! The `shoal` binary: parses the command line and hands each subcommand to its module under
//! `cmd/`. Only this binary installs a tracing subscriber.

mod cmd;

use clap::{Parser, Subcommand};

/// shoal runs one language model across many small devices on a weak network.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. `info` or `shoal_node=debug`.
    #[arg(long, global = true, env = "SHOAL_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or show this node's ed25519 identity.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Place a scenario's model on its devices (the planner MILP and its baselines).
    Plan(cmd::plan::PlanArgs),
    /// Measure something and print a table.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Run a swarm node until Ctrl-C (prints a `shoal-ready ...` line once listening).
    Run(cmd::run::RunArgs),
    /// Show a running node's members, links and plan.
    Status(cmd::status::StatusArgs),
    /// Print an invite token from a running node, for `shoal run --join` on a new device.
    Invite(cmd::invite::InviteArgs),
    /// Generate text from a model directory in this process.
    Generate(cmd::generate::GenerateArgs),
    /// Import, synthesise or inspect models.
    #[command(subcommand)]
    Model(cmd::model::ModelCommand),
    /// Start a swarm of N nodes on loopback, split a model across them and generate.
    Demo(cmd::demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    match cli.command {
        Command::Keys(c) => cmd::keys::run(c),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Run(a) => cmd::run::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Invite(a) => cmd::invite::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Model(c) => cmd::model::run(c),
    }
}

/// Installs the subscriber; logs go to stderr so stdout stays machine-readable.
fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
