//! The stage-segment MILP: one binary per candidate stage "device `i` runs layers `[a, b)`"
//! and one continuous arc per allowed hand-over `i -> j` at boundary `b`. One unit of flow
//! leaves boundary 0 through a segment; at every inner boundary the segments ending on `i`
//! feed its hop arcs and the hop arcs into `j` feed the segments starting on `j`; each device
//! holds at most one segment. Memory and stage costs are checked in Rust when the segments are
//! generated (a segment that does not fit never exists), so the model has no knapsack rows and
//! its relaxation is much tighter than the per-layer model's when memory is tight.
//!
//! Used two ways: with costs (the latency objective: segment cost = stage cost plus the origin
//! hops at the ends, arc cost = hop plus `stage_penalty_s`) and with zero costs as the
//! feasibility check of the throughput bisection (`bottleneck.rs`).

use highs::{Col, HighsModelStatus, HighsSolutionStatus, RowProblem, Sense};

use crate::bound::Prune;
use crate::cost::{IdxStage, Instance};
use crate::error::PlanError;
use crate::milp::{GAP, SCALE, Solved};

/// A segment column: device, start, end, column.
pub(crate) type Segment = (usize, usize, usize, Col);

/// Whether and at what cost a segment enters the model.
pub(crate) enum SegCost {
    /// This and every longer segment from the same start are excluded.
    Stop,
    /// This one is excluded; longer ones may not be.
    Skip,
    /// Include with this objective coefficient.
    Cost(f64),
}

/// A built model.
pub(crate) struct SegmentModel {
    pub(crate) pb: RowProblem,
    pub(crate) segs: Vec<Segment>,
    /// `(boundary, from, to, column)`.
    pub(crate) arcs: Vec<(usize, usize, usize, Col)>,
}

/// Builds the model; `None` when no segment can start at layer 0 or end at the last layer.
pub(crate) fn build(
    inst: &Instance,
    seg: impl Fn(usize, usize, usize) -> SegCost,
    arc: impl Fn(usize, usize, usize) -> Option<f64>,
) -> Option<SegmentModel> {
    let (d, l) = (inst.devices(), inst.layers());
    let mut pb = RowProblem::default();
    let mut segs: Vec<Segment> = Vec::new();
    for i in 0..d {
        for a in 0..l {
            for b in a + 1..=l {
                match seg(i, a, b) {
                    SegCost::Stop => break,
                    SegCost::Skip => {}
                    SegCost::Cost(c) => segs.push((i, a, b, pb.add_integer_column(c, 0.0..=1.0))),
                }
            }
        }
    }
    // ends[b][i] / starts[b][i]: segments of device i ending / starting at boundary b.
    let mut ends = vec![vec![Vec::new(); d]; l + 1];
    let mut starts = vec![vec![Vec::new(); d]; l + 1];
    let mut per_device = vec![Vec::new(); d];
    for &(i, a, b, c) in &segs {
        ends[b][i].push(c);
        starts[a][i].push(c);
        per_device[i].push(c);
    }
    if (0..d).all(|i| starts[0][i].is_empty()) || (0..d).all(|i| ends[l][i].is_empty()) {
        return None;
    }
    pb.add_row(1.0..=1.0, starts[0].iter().flatten().map(|&c| (c, 1.0)));
    let mut arcs = Vec::new();
    for b in 1..l {
        let mut out_rows: Vec<Vec<(Col, f64)>> = ends[b]
            .iter()
            .map(|cs| cs.iter().map(|&c| (c, 1.0)).collect())
            .collect();
        let mut in_rows: Vec<Vec<(Col, f64)>> = starts[b]
            .iter()
            .map(|cs| cs.iter().map(|&c| (c, -1.0)).collect())
            .collect();
        for i in (0..d).filter(|&i| !ends[b][i].is_empty()) {
            for j in (0..d).filter(|&j| j != i && !starts[b][j].is_empty()) {
                if let Some(cost) = arc(b, i, j) {
                    let y = pb.add_column(cost, 0.0..=1.0);
                    out_rows[i].push((y, -1.0));
                    in_rows[j].push((y, 1.0));
                    arcs.push((b, i, j, y));
                }
            }
        }
        for row in out_rows
            .into_iter()
            .chain(in_rows)
            .filter(|r| !r.is_empty())
        {
            pb.add_row(0.0..=0.0, row);
        }
    }
    for cs in per_device.iter().filter(|cs| cs.len() > 1) {
        pb.add_row(..=1.0, cs.iter().map(|&c| (c, 1.0)));
    }
    Some(SegmentModel { pb, segs, arcs })
}

/// What HiGHS made of a segment model.
pub(crate) enum Outcome {
    /// A placement; `optimal` false when the time limit stopped the search (with its gap).
    Found {
        stages: Vec<IdxStage>,
        optimal: bool,
        mip_gap: Option<f64>,
    },
    /// Proven infeasible.
    Infeasible,
    /// Out of time without a placement.
    OutOfTime,
}

/// Solves a built model within `seconds`, seeded with `warm` if it matches the model.
pub(crate) fn solve(
    m: SegmentModel,
    seconds: f64,
    gap: f64,
    warm: Option<&[IdxStage]>,
) -> Result<Outcome, PlanError> {
    let values = warm.and_then(|w| start_values(&m, w));
    let SegmentModel { pb, segs, .. } = m;
    let mut model = pb.optimise(Sense::Minimise);
    for (name, value) in [
        ("time_limit", seconds.max(0.01)),
        ("mip_rel_gap", gap),
        ("mip_abs_gap", gap),
    ] {
        model
            .try_set_option(name, value)
            .map_err(|e| PlanError::Solver(format!("option {name}: {e:?}")))?;
    }
    if let Some(v) = values {
        // A rejected start only loses the head start.
        let _ = model.try_set_solution(Some(v.as_slice()), None, None, None);
    }
    let solved = model
        .try_solve()
        .map_err(|e| PlanError::Solver(format!("HiGHS run failed: {e:?}")))?;
    let has_solution = solved.int_info_value(c"primal_solution_status").ok()
        == Some(HighsSolutionStatus::Feasible as i64);
    let chain = |cols: &[f64]| {
        let mut out: Vec<IdxStage> = segs
            .iter()
            .filter(|s| cols[s.3.index()] > 0.5)
            .map(|&(i, a, b, _)| (i, a, b))
            .collect();
        out.sort_by_key(|s| s.1);
        out
    };
    match solved.status() {
        HighsModelStatus::Infeasible => Ok(Outcome::Infeasible),
        HighsModelStatus::Optimal if has_solution => Ok(Outcome::Found {
            stages: chain(solved.get_solution().columns()),
            optimal: true,
            mip_gap: None,
        }),
        HighsModelStatus::ReachedTimeLimit if has_solution => Ok(Outcome::Found {
            stages: chain(solved.get_solution().columns()),
            optimal: false,
            mip_gap: Some(solved.mip_gap()),
        }),
        HighsModelStatus::ReachedTimeLimit => Ok(Outcome::OutOfTime),
        other => Err(PlanError::Solver(format!(
            "HiGHS stopped with status {other:?}"
        ))),
    }
}

/// Column values of a placement, or `None` if the model lacks one of its columns.
fn start_values(m: &SegmentModel, stages: &[IdxStage]) -> Option<Vec<f64>> {
    let n = m.segs.len() + m.arcs.len();
    let mut val = vec![0.0; n];
    for (k, &(i, a, b)) in stages.iter().enumerate() {
        let s = m.segs.iter().find(|s| (s.0, s.1, s.2) == (i, a, b))?;
        val[s.3.index()] = 1.0;
        if let Some(&(j, _, _)) = stages.get(k + 1) {
            let y = m.arcs.iter().find(|y| (y.0, y.1, y.2) == (b, i, j))?;
            val[y.3.index()] = 1.0;
        }
    }
    Some(val)
}

/// The latency placement on the segment model, seeded with `warm`, columns pruned by `prune`.
pub(crate) fn latency(
    inst: &Instance,
    seconds: f64,
    warm: Option<&[IdxStage]>,
    prune: &Prune,
) -> Result<Solved, PlanError> {
    let l = inst.layers();
    let seg = |i: usize, a: usize, b: usize| {
        let hop_in = if a == 0 { inst.hop_in(i) } else { Some(0.0) };
        let hop_back = if b == l { inst.hop_back(i) } else { Some(0.0) };
        match (hop_in, hop_back) {
            (None, _) => SegCost::Stop,
            _ if !prune.keep_segment(i, a, b) => SegCost::Skip,
            _ if !inst.fits(i, a, b) => SegCost::Stop,
            (Some(_), None) => SegCost::Skip,
            (Some(h_in), Some(h_back)) => {
                SegCost::Cost((inst.stage_cost(i, a, b) + h_in + h_back) * SCALE)
            }
        }
    };
    let arc = |b: usize, i: usize, j: usize| {
        if !prune.keep_hop(b - 1, i, j) {
            return None;
        }
        inst.hop_after(b - 1, i, j)
            .map(|h| (h + inst.stage_penalty) * SCALE)
    };
    let none = Solved {
        stages: None,
        optimal: true,
        mip_gap: None,
    };
    let Some(model) = build(inst, seg, arc) else {
        return Ok(none);
    };
    // No MIP start here: with one, HiGHS 1.x has been seen to stop at the start's value and
    // report it optimal on this model (oracle test, seed 10157). The incumbent still bounds
    // the columns through `prune`.
    let _ = warm;
    match solve(model, seconds, GAP, None)? {
        Outcome::Found {
            stages,
            optimal,
            mip_gap,
        } => Ok(Solved {
            stages: Some(stages),
            optimal,
            mip_gap,
        }),
        Outcome::Infeasible => Ok(none),
        Outcome::OutOfTime => Err(PlanError::Solver(format!(
            "no placement within the time limit of {seconds} s"
        ))),
    }
}
