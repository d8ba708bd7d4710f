//! `shoal bench planner`: times the exact placement solve (`Strategy::Milp`) on seeded
//! scenarios of both families of `shoal_planner::bench` (heterogeneous memory-tight swarms and
//! the phone/laptop clusters) for every devices x layers pair and both objectives, over
//! several seeds: min / median / max solve time, how many seeds were proven optimal and the
//! gaps of the rest. `--process` also times `shoal plan --json` as a whole process on each
//! scenario written to a temporary file (the figure a re-plan on the command line pays).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use shoal_planner::bench::{self, Family};
use shoal_planner::{Objective, PlanOptions};

/// Arguments of `bench planner`.
#[derive(Debug, Args)]
pub(crate) struct PlannerArgs {
    /// Device counts to try.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64")]
    devices: Vec<usize>,
    /// Layer counts to try.
    #[arg(long, value_delimiter = ',', default_value = "16,36,80")]
    layers: Vec<usize>,
    /// Seeds per size (seeds 1..=N).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Scenario families: `hetero` (every device different, memory-tight) and `cluster`.
    #[arg(long, value_delimiter = ',', default_value = "hetero,cluster")]
    families: Vec<String>,
    /// Solve time limit per plan in seconds (past it: best plan, `optimal: false`, its gap).
    #[arg(long, default_value_t = 30.0)]
    time_limit_s: f64,
    /// Also time `shoal plan --json` as a whole process per seed (median in ms).
    #[arg(long)]
    process: bool,
    /// Print one JSON object per table line instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &PlannerArgs) -> anyhow::Result<()> {
    let opts = PlanOptions {
        time_limit_s: args.time_limit_s,
        ..PlanOptions::default()
    };
    let families = args
        .families
        .iter()
        .map(|f| Family::parse(f).with_context(|| format!("unknown family {f:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seeds: Vec<u64> = (1..=args.seeds).collect();
    let dir = std::env::temp_dir().join(format!("shoal-bench-planner-{}", std::process::id()));
    if args.process {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if !args.json {
        println!(
            "{}{}",
            bench::header(),
            if args.process {
                " | process med ms"
            } else {
                ""
            }
        );
    }
    for &family in &families {
        for &d in &args.devices {
            for &l in &args.layers {
                for objective in Objective::ALL {
                    let cell = bench::measure(family, d, l, objective, &seeds, &opts);
                    let process = if args.process {
                        Some(whole_process(&dir, family, d, l, objective, &seeds, args)?)
                    } else {
                        None
                    };
                    print(&cell, process, args.json);
                }
            }
        }
    }
    if args.process {
        // Best effort: the files are small and in the temporary directory.
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn print(cell: &bench::Cell, process: Option<f64>, json: bool) {
    if json {
        let spread = cell.spread();
        let v = serde_json::json!({
            "family": cell.family.name(), "devices": cell.devices, "layers": cell.layers,
            "objective": cell.objective, "seeds": cell.seeds,
            "solve_ms": {"min": spread.map(|s| s.0), "median": spread.map(|s| s.1),
                         "max": spread.map(|s| s.2)},
            "optimal": cell.optimal, "solved": cell.solve_ms.len(), "gaps": cell.gaps,
            "infeasible": cell.infeasible, "errors": cell.errors, "process_median_ms": process,
        });
        println!("{v}");
    } else {
        let tail = process.map_or(String::new(), |p| format!(" | {p:.1}"));
        println!("{}{tail}", bench::row(cell));
    }
}

/// Median wall-clock ms of `shoal plan --strategy milp --json` over the seeds' scenarios.
fn whole_process(
    dir: &Path,
    family: Family,
    d: usize,
    l: usize,
    objective: Objective,
    seeds: &[u64],
    args: &PlannerArgs,
) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("locating the shoal binary")?;
    let mut times = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        let path = dir.join(format!("{family}-{d}x{l}-s{seed}.json"));
        let s = family.scenario(d, l, seed);
        std::fs::write(&path, serde_json::to_vec(&s)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let started = Instant::now();
        // An infeasible scenario exits 1 by design; only the time matters here.
        Command::new(&exe)
            .arg("plan")
            .arg("--scenario")
            .arg(&path)
            .args([
                "--objective",
                objective.name(),
                "--strategy",
                "milp",
                "--json",
            ])
            .arg("--time-limit-s")
            .arg(args.time_limit_s.to_string())
            .output()
            .with_context(|| format!("running {} plan", exe.display()))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times.get(times.len() / 2).copied().unwrap_or(f64::NAN))
}
