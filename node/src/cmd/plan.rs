//! `shoal plan`: place a scenario file's model on its devices and print the plan.
//!
//! `--json` prints exactly DESIGN.md's plan object (with `--explain`, the breakdown follows
//! on a second line); without it, a readable table. `--compare` runs every strategy for both
//! objectives and prints their costs side by side. An invalid or infeasible scenario exits
//! with status 1 and the planner's one-line reason on stderr.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use shoal_planner::{Breakdown, Objective, Plan, PlanError, PlanOptions, Scenario, Strategy};

/// Arguments of `shoal plan`.
#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// The scenario file (DESIGN.md "Scenario file").
    #[arg(long)]
    scenario: PathBuf,
    /// What to minimise.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Latency)]
    objective: ObjectiveArg,
    /// How to place.
    #[arg(long, value_enum, default_value_t = StrategyArg::Milp)]
    strategy: StrategyArg,
    /// Print one JSON object (DESIGN.md's plan format).
    #[arg(long)]
    json: bool,
    /// Show per-stage compute and memory and per-hop mean and penalty.
    #[arg(long)]
    explain: bool,
    /// Run every strategy for both objectives and print their costs side by side.
    #[arg(long)]
    compare: bool,
    /// MILP time limit in seconds; past it the plan says `optimal: false` and its MIP gap.
    #[arg(long, default_value_t = 30.0)]
    time_limit_s: f64,
}

/// `--objective` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ObjectiveArg {
    /// Seconds per token for one stream.
    Latency,
    /// Bottleneck seconds for pipelined streams.
    Throughput,
}

/// `--strategy` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum StrategyArg {
    /// Exact MILP on HiGHS.
    Milp,
    /// Equal layer counts.
    Even,
    /// Layers proportional to memory.
    Memory,
    /// Fastest device first.
    Greedy,
    /// Brute force (small cases only).
    Exhaustive,
}

impl From<ObjectiveArg> for Objective {
    fn from(o: ObjectiveArg) -> Self {
        match o {
            ObjectiveArg::Latency => Objective::Latency,
            ObjectiveArg::Throughput => Objective::Throughput,
        }
    }
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::Milp => Strategy::Milp,
            StrategyArg::Even => Strategy::Even,
            StrategyArg::Memory => Strategy::Memory,
            StrategyArg::Greedy => Strategy::Greedy,
            StrategyArg::Exhaustive => Strategy::Exhaustive,
        }
    }
}

pub(crate) fn run(args: PlanArgs) -> anyhow::Result<()> {
    let scenario = Scenario::load(&args.scenario).unwrap_or_else(|e| fail(&e));
    let opts = PlanOptions {
        time_limit_s: args.time_limit_s,
        ..PlanOptions::default()
    };
    if args.compare {
        return compare(&scenario, &opts, args.json);
    }
    let objective = args.objective.into();
    let plan = shoal_planner::plan_with(&scenario, objective, args.strategy.into(), &opts)
        .unwrap_or_else(|e| fail(&e));
    tracing::info!(target: "shoal::placement", cost_s = plan.cost_s, stages = plan.stages.len(),
        strategy = %plan.strategy, objective = %plan.objective, "planned");
    let breakdown = if args.explain {
        Some(shoal_planner::explain(&scenario, &plan.stages, objective)?)
    } else {
        None
    };
    if args.json {
        println!("{}", serde_json::to_string(&plan)?);
        if let Some(b) = &breakdown {
            println!("{}", serde_json::to_string(b)?);
        }
        return Ok(());
    }
    print_plan(&scenario, &plan);
    if let Some(b) = &breakdown {
        print_breakdown(b);
    }
    Ok(())
}

/// Prints the planner's one-line reason and exits non-zero (no backtrace, whatever
/// `RUST_BACKTRACE` says: the reason is the whole story).
fn fail(e: &dyn std::error::Error) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1)
}

fn print_plan(s: &Scenario, plan: &Plan) {
    println!(
        "{}: {} layers on {} devices, origin {}",
        s.model.name,
        s.model.layers.len(),
        s.devices.len(),
        s.origin
    );
    let status = match (plan.optimal, plan.mip_gap) {
        (true, _) => "optimal".to_string(),
        (false, Some(gap)) => format!("not proven optimal, MIP gap {:.3}%", gap * 100.0),
        (false, None) => "heuristic".to_string(),
    };
    println!(
        "{} by {}: {:.3} ms ({status}, solved in {:.1} ms)",
        plan.objective,
        plan.strategy,
        plan.cost_s * 1e3,
        plan.solve_ms
    );
    println!("{:>5}  {:<16} {:>8}", "stage", "device", "layers");
    for (k, st) in plan.stages.iter().enumerate() {
        println!(
            "{k:>5}  {:<16} {:>8}",
            st.device,
            format!("[{}, {})", st.layers[0], st.layers[1])
        );
    }
    if !plan.below_floor.is_empty() {
        println!(
            "below the battery floor, yet holding layers (the model does not fit without them): {}",
            plan.below_floor.join(", ")
        );
    }
}

fn print_breakdown(b: &Breakdown) {
    println!();
    // The energy columns only when a stage draws from a battery (scenario `energy`).
    let energy = b.stages.iter().any(|st| st.energy_j > 0.0);
    let extra = if energy {
        format!(" {:>10} {:>10}", "energy J", "energy ms")
    } else {
        String::new()
    };
    println!(
        "{:<16} {:>9} {:>11} {:>12} {:>10} {:>10}{extra}",
        "device", "layers", "compute ms", "overhead ms", "mem GB", "limit GB"
    );
    for st in &b.stages {
        let extra = if energy {
            format!(" {:>10.3} {:>10.3}", st.energy_j, st.energy_s * 1e3)
        } else {
            String::new()
        };
        println!(
            "{:<16} {:>9} {:>11.3} {:>12.3} {:>10.3} {:>10.3}{extra}",
            st.device,
            format!("[{}, {})", st.layers[0], st.layers[1]),
            st.compute_s * 1e3,
            st.overhead_s * 1e3,
            st.memory_bytes / 1e9,
            st.memory_limit_bytes / 1e9
        );
    }
    println!();
    println!(
        "{:<28} {:>10} {:>9} {:>11}",
        "hop", "bytes", "mean ms", "penalty ms"
    );
    for h in &b.hops {
        println!(
            "{:<28} {:>10.0} {:>9.3} {:>11.3}",
            format!("{} -> {}", h.from, h.to),
            h.bytes,
            h.mean_s * 1e3,
            h.penalty_s * 1e3
        );
    }
    if b.stage_penalty_s > 0.0 {
        println!("stage penalty: {:.3} ms", b.stage_penalty_s * 1e3);
    }
}

/// One cell of the comparison: cost and stage count, or why there is none.
fn cell(r: &Result<Plan, PlanError>) -> String {
    match r {
        Ok(p) => format!("{:.3} ({})", p.cost_s * 1e3, p.stages.len()),
        Err(PlanError::Infeasible { .. }) => "infeasible".into(),
        Err(PlanError::TooLarge { .. }) => "refused (size)".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn compare(s: &Scenario, opts: &PlanOptions, json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for strategy in Strategy::ALL {
        let results: Vec<Result<Plan, PlanError>> = Objective::ALL
            .iter()
            .map(|&o| shoal_planner::plan_with(s, o, strategy, opts))
            .collect();
        rows.push((strategy, results));
    }
    if json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .flat_map(|(_, rs)| rs.iter())
            .map(|r| match r {
                Ok(p) => serde_json::to_value(p).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string(&out).context("encoding the comparison")?
        );
        return Ok(());
    }
    println!(
        "{} ({} layers, {} devices, origin {}): ms per token (stages)",
        s.model.name,
        s.model.layers.len(),
        s.devices.len(),
        s.origin
    );
    println!(
        "{:<11} {:>18} {:>18} {:>12}",
        "strategy", "latency", "throughput", "solve ms"
    );
    for (strategy, rs) in &rows {
        let solved: Vec<f64> = rs.iter().flatten().map(|p| p.solve_ms).collect();
        let solve = if solved.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", solved.iter().fold(0.0, |a, b| a + b))
        };
        println!(
            "{:<11} {:>18} {:>18} {:>12}",
            strategy.name(),
            cell(&rs[0]),
            cell(&rs[1]),
            solve
        );
    }
    Ok(())
}
