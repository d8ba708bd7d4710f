//! `shoal bench <target>`: measurements that print a table. One module per target under
//! `bench/`; add a variant and a match arm here for a new one.

mod concurrent;
mod join;
mod model;
mod pipeline;
mod planner;

use clap::Subcommand;

/// What to benchmark.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Solve time of the placement MILP (milliseconds) per cluster size.
    Planner(planner::PlannerArgs),
    /// Per-token decode of `shoal generate` vs a direct ONNX Runtime loop, and the roofline.
    Model(model::ModelBenchArgs),
    /// Per-token decode of a loopback swarm vs single-process generation, and the ratio.
    Pipeline(pipeline::PipelineArgs),
    /// Aggregate tokens/s of a loopback swarm under concurrent streaming requests.
    Concurrent(concurrent::ConcurrentArgs),
    /// Time from `shoal run --join` to serving a stage: fetching layers vs copying the model.
    Join(join::JoinArgs),
}

pub(crate) fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Planner(args) => planner::run(&args),
        BenchCommand::Pipeline(args) => pipeline::run(&args),
        BenchCommand::Model(args) => model::run(&args),
        BenchCommand::Concurrent(args) => concurrent::run(&args),
        BenchCommand::Join(args) => join::run(&args),
    }
}

/// A fresh work folder `<tmp>/<prefix>-<pid>` and the model to run: `model`, or the built-in
/// synthesised model written into the folder. The caller removes the folder.
fn work_dir(
    prefix: &str,
    model: Option<&std::path::Path>,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use anyhow::Context;
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let model = match model {
        Some(m) => m.to_path_buf(),
        None => {
            let out = dir.join("model");
            shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &out, false)
                .context("synthesising the model")?;
            out
        }
    };
    Ok((dir, model))
}
