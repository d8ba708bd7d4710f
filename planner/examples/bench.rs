//! The planner's solve-time table without the node binary (release timing of the planner
//! alone): `cargo run --release -p shoal-planner --example bench -- [options]`.
//!
//! Options: `--family hetero|cluster` (default hetero), `--devices 8,16,32,64`,
//! `--layers 16,36,80`, `--seeds N` (seeds 1..=N, default 5), `--objective latency|throughput`
//! (default both), `--time-limit-s S` (default 30), `--search-nodes N`, `--cold` (no warm start),
//! `--before` (no Lagrangian ascent and no search: for latency the pruned segment MILP of
//! before issue 15, for throughput a segment MILP at every bisection step),
//! `--write DIR` (also write each scenario to `DIR/<family>-<devices>x<layers>-s<seed>.json`
//! for `shoal plan --scenario`).

use std::path::PathBuf;

use shoal_planner::bench::{self, Family};
use shoal_planner::{Objective, PlanOptions};

struct Args {
    family: Family,
    devices: Vec<usize>,
    layers: Vec<usize>,
    seeds: u64,
    objectives: Vec<Objective>,
    opts: PlanOptions,
    write: Option<PathBuf>,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn list(v: &str) -> Res<Vec<usize>> {
    v.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| format!("bad number {x:?}").into())
        })
        .collect()
}

fn parse() -> Res<Args> {
    let mut a = Args {
        family: Family::Heterogeneous,
        devices: vec![8, 16, 32, 64],
        layers: vec![16, 36, 80],
        seeds: 5,
        objectives: Objective::ALL.to_vec(),
        opts: PlanOptions::default(),
        write: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--cold" {
            a.opts.warm_start = false;
            continue;
        }
        if flag == "--before" {
            (a.opts.lagrange_steps, a.opts.search_nodes) = (0, 0);
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--family" => a.family = Family::parse(&v).ok_or("family: hetero or cluster")?,
            "--devices" => a.devices = list(&v)?,
            "--layers" => a.layers = list(&v)?,
            "--seeds" => a.seeds = v.parse()?,
            "--objective" => a.objectives = vec![v.parse()?],
            "--time-limit-s" => a.opts.time_limit_s = v.parse()?,
            "--search-nodes" => a.opts.search_nodes = v.parse()?,
            "--write" => a.write = Some(PathBuf::from(v)),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    Ok(a)
}

fn main() -> Res<()> {
    let a = parse()?;
    let seeds: Vec<u64> = (1..=a.seeds).collect();
    println!("{}", bench::header());
    for &d in &a.devices {
        for &l in &a.layers {
            if let Some(dir) = &a.write {
                std::fs::create_dir_all(dir)?;
                for &seed in &seeds {
                    let s = a.family.scenario(d, l, seed);
                    let path = dir.join(format!("{}-{d}x{l}-s{seed}.json", a.family));
                    std::fs::write(&path, serde_json::to_string_pretty(&s)?)?;
                }
            }
            for &objective in &a.objectives {
                let cell = bench::measure(a.family, d, l, objective, &seeds, &a.opts);
                println!("{}", bench::row(&cell));
            }
        }
    }
    Ok(())
}
