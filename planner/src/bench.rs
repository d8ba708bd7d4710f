//! The solve-time table behind `shoal bench planner` and `examples/bench.rs`: for one family
//! of seeded scenarios ([`Family`]), one size and one objective, [`measure`] plans every seed
//! with [`Strategy::Milp`] and [`Cell`] summarises the solve times (min / median / max over the
//! seeds that have a placement), how many were proven optimal, the gaps of the rest, and how
//! many were infeasible. Solve times are `Plan::solve_ms`: resolving the scenario and solving,
//! without reading a file or starting a process.

use std::fmt;

use crate::plan::{Objective, Strategy};
use crate::{PlanError, PlanOptions, Scenario, plan_with, synthetic};

/// Which generator draws the scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// [`synthetic::cluster`]: phones and laptops, roomy memory, the origin first.
    Cluster,
    /// [`synthetic::heterogeneous`]: every device different, memory-tight, 3-15 stages.
    Heterogeneous,
}

impl Family {
    /// Both families, heterogeneous (the hard one) first.
    pub const ALL: [Family; 2] = [Family::Heterogeneous, Family::Cluster];

    /// The name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Family::Cluster => "cluster",
            Family::Heterogeneous => "hetero",
        }
    }

    /// The family called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The scenario of this family for a size and a seed.
    pub fn scenario(self, devices: usize, layers: usize, seed: u64) -> Scenario {
        match self {
            Family::Cluster => synthetic::cluster(devices, layers, seed),
            Family::Heterogeneous => synthetic::heterogeneous(devices, layers, seed),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of the table: a family, a size, an objective, over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The generator.
    pub family: Family,
    /// Devices per scenario.
    pub devices: usize,
    /// Layers per scenario.
    pub layers: usize,
    /// The objective.
    pub objective: Objective,
    /// Seeds tried.
    pub seeds: usize,
    /// Solve milliseconds of every seed with a placement, ascending.
    pub solve_ms: Vec<f64>,
    /// Seeds proven optimal.
    pub optimal: usize,
    /// Gaps of the seeds stopped by the time limit.
    pub gaps: Vec<f64>,
    /// Seeds without any placement.
    pub infeasible: usize,
    /// Seeds whose solve failed, with the reason.
    pub errors: Vec<String>,
    /// Median number of stages of the placements.
    pub median_stages: Option<usize>,
}

impl Cell {
    /// Smallest, median (upper median) and largest solve time in ms.
    pub fn spread(&self) -> Option<(f64, f64, f64)> {
        let v = &self.solve_ms;
        Some((*v.first()?, v[v.len() / 2], *v.last()?))
    }
}

/// Plans `family`'s scenario of `devices` x `layers` for every seed in `seeds`.
pub fn measure(
    family: Family,
    devices: usize,
    layers: usize,
    objective: Objective,
    seeds: &[u64],
    opts: &PlanOptions,
) -> Cell {
    let mut cell = Cell {
        family,
        devices,
        layers,
        objective,
        seeds: seeds.len(),
        solve_ms: Vec::new(),
        optimal: 0,
        gaps: Vec::new(),
        infeasible: 0,
        errors: Vec::new(),
        median_stages: None,
    };
    let mut stages = Vec::new();
    for &seed in seeds {
        let s = family.scenario(devices, layers, seed);
        match plan_with(&s, objective, Strategy::Milp, opts) {
            Ok(p) => {
                cell.solve_ms.push(p.solve_ms);
                stages.push(p.stages.len());
                if p.optimal {
                    cell.optimal += 1;
                } else {
                    cell.gaps.push(p.mip_gap.unwrap_or(f64::NAN));
                }
            }
            Err(PlanError::Infeasible { .. }) => cell.infeasible += 1,
            Err(e) => cell.errors.push(format!("seed {seed}: {e}")),
        }
    }
    cell.solve_ms.sort_by(f64::total_cmp);
    stages.sort_unstable();
    cell.median_stages = stages.get(stages.len() / 2).copied();
    cell
}

/// The column titles of [`row`].
pub fn header() -> String {
    format!(
        "{:<7} {:>4} {:>4} {:<10} | {:>9} {:>9} {:>9} | {:>7} {:>6} {:>5} | {}",
        "family",
        "dev",
        "lay",
        "objective",
        "min ms",
        "med ms",
        "max ms",
        "optimal",
        "infeas",
        "stg",
        "gaps of the rest"
    )
}

/// One line of the table.
pub fn row(c: &Cell) -> String {
    let (lo, med, hi) = match c.spread() {
        Some((a, b, d)) => (format!("{a:.1}"), format!("{b:.1}"), format!("{d:.1}")),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let solved = c.solve_ms.len();
    let mut notes: Vec<String> = c
        .gaps
        .iter()
        .map(|g| format!("{:.3}%", g * 100.0))
        .collect();
    notes.extend(c.errors.iter().cloned());
    format!(
        "{:<7} {:>4} {:>4} {:<10} | {:>9} {:>9} {:>9} | {:>7} {:>6} {:>5} | {}",
        c.family.name(),
        c.devices,
        c.layers,
        c.objective.name(),
        lo,
        med,
        hi,
        format!("{}/{}", c.optimal, solved),
        c.infeasible,
        c.median_stages.map_or("-".into(), |s| s.to_string()),
        notes.join(" ")
    )
}
