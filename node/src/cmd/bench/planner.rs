//! `shoal bench planner`: times the exact placement MILP on seeded synthetic clusters
//! (`shoal_planner::synthetic::cluster`) for every devices x layers pair and both objectives.

use clap::Args;
use shoal_planner::{Objective, PlanError, PlanOptions, Strategy};

/// Arguments of `bench planner`.
#[derive(Debug, Args)]
pub(crate) struct PlannerArgs {
    /// Device counts to try.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32,64")]
    devices: Vec<usize>,
    /// Layer counts to try.
    #[arg(long, value_delimiter = ',', default_value = "16,36,80")]
    layers: Vec<usize>,
    /// Seed of the synthetic clusters.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MILP time limit per solve in seconds.
    #[arg(long, default_value_t = 30.0)]
    time_limit_s: f64,
    /// Print one JSON object per measurement instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &PlannerArgs) -> anyhow::Result<()> {
    let opts = PlanOptions {
        time_limit_s: args.time_limit_s,
        ..PlanOptions::default()
    };
    if !args.json {
        println!(
            "{:>7} {:>6} | {:>10} {:>7} {:>12} | {:>10} {:>7} {:>12}",
            "devices", "layers", "lat ms", "stages", "lat solve", "thr ms", "stages", "thr solve"
        );
    }
    for &d in &args.devices {
        for &l in &args.layers {
            let s = shoal_planner::synthetic::cluster(d, l, args.seed);
            let mut cells = Vec::new();
            for objective in Objective::ALL {
                let r = shoal_planner::plan_with(&s, objective, Strategy::Milp, &opts);
                if args.json {
                    let v = match &r {
                        Ok(p) => serde_json::json!({"devices": d, "layers": l, "plan": p}),
                        Err(e) => serde_json::json!({"devices": d, "layers": l,
                            "objective": objective, "error": e.to_string()}),
                    };
                    println!("{v}");
                }
                cells.push(cell(&r));
            }
            if !args.json {
                println!("{d:>7} {l:>6} | {} | {}", cells[0], cells[1]);
            }
        }
    }
    Ok(())
}

/// Cost, stages and solve time (with `*` and the gap when not proven optimal).
fn cell(r: &Result<shoal_planner::Plan, PlanError>) -> String {
    match r {
        Ok(p) => {
            let solve = match p.mip_gap {
                Some(g) if !p.optimal => format!("{:.1}* gap {:.2}%", p.solve_ms, g * 100.0),
                _ => format!("{:.1}", p.solve_ms),
            };
            format!(
                "{:>10.3} {:>7} {:>12}",
                p.cost_s * 1e3,
                p.stages.len(),
                solve
            )
        }
        Err(PlanError::Infeasible { .. }) => format!("{:>31}", "infeasible"),
        Err(e) => format!("{:>31}", format!("error: {e}")),
    }
}
