//! The planner's answer and its knobs: [`Objective`], [`Strategy`], [`Stage`], [`Plan`].
//! `Plan` serialises to exactly the JSON of DESIGN.md (`mip_gap` appears only when a time limit
//! stopped the MILP before it proved optimality).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the placement minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// One stream: seconds per decoded token, end to end.
    Latency,
    /// Pipelined streams: the slowest stage or hop, in seconds.
    Throughput,
}

/// How the placement is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Exact mixed-integer linear program on HiGHS.
    Milp,
    /// Baseline: equal layer counts over the devices that can hold them.
    Even,
    /// Baseline: layers proportional to memory, in a ring starting at the origin.
    Memory,
    /// Baseline: fastest device first while its memory lasts.
    Greedy,
    /// Brute-force oracle for small cases.
    Exhaustive,
}

impl Objective {
    /// Both objectives, in display order.
    pub const ALL: [Objective; 2] = [Objective::Latency, Objective::Throughput];

    /// The lowercase name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Latency => "latency",
            Objective::Throughput => "throughput",
        }
    }
}

impl Strategy {
    /// Every strategy, in the order `--compare` prints them.
    pub const ALL: [Strategy; 5] = [
        Strategy::Milp,
        Strategy::Exhaustive,
        Strategy::Greedy,
        Strategy::Memory,
        Strategy::Even,
    ];

    /// The lowercase name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Milp => "milp",
            Strategy::Even => "even",
            Strategy::Memory => "memory",
            Strategy::Greedy => "greedy",
            Strategy::Exhaustive => "exhaustive",
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not an objective or strategy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown {kind} {name:?}; expected one of: {expected}")]
pub struct UnknownName {
    kind: &'static str,
    name: String,
    expected: String,
}

impl FromStr for Objective {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Objective::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| UnknownName {
                kind: "objective",
                name: s.to_string(),
                expected: "latency, throughput".into(),
            })
    }
}

impl FromStr for Strategy {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| UnknownName {
                kind: "strategy",
                name: s.to_string(),
                expected: "milp, even, memory, greedy, exhaustive".into(),
            })
    }
}

/// One stage: a device and the half-open layer range `[layers[0], layers[1])` it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The device id.
    pub device: String,
    /// Half-open layer range.
    pub layers: [usize; 2],
}

/// A placement with its cost and how it was found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The objective `cost_s` measures.
    pub objective: Objective,
    /// The objective value of `stages` under the cost model, in seconds.
    pub cost_s: f64,
    /// Stages in pipeline order, covering every layer once.
    pub stages: Vec<Stage>,
    /// The strategy that produced it.
    pub strategy: Strategy,
    /// True when the placement is proven optimal (milp to zero gap, exhaustive).
    pub optimal: bool,
    /// Wall-clock solve time in milliseconds.
    pub solve_ms: f64,
    /// Relative MIP gap when a time limit stopped HiGHS; absent when optimal or not a MILP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mip_gap: Option<f64>,
    /// Devices on battery below the scenario's `energy.min_level` that hold layers all the
    /// same, because the model could not be placed without them; absent when none does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub below_floor: Vec<String>,
}
