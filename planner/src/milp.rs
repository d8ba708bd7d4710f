//! The per-layer placement MILP on HiGHS (`PlanOptions::per_layer_model`, and the cross-check
//! of the default models): a unit flow through a layered graph.
//!
//! Node `(l, i)` means "layer `l` runs on device `i`"; its occupancy `x[l][i]` is the only
//! binary. Arcs carry the flow from layer to layer:
//! - source arc `a[i]`: the origin sends the token to the first stage on `i` (cost
//!   `hop(origin, i, token_bytes)`, 0 if `i` is the origin; absent without a link);
//! - stay arc `s[l][i]`: layers `l` and `l + 1` both on `i` (cost 0);
//! - hop arc `y[l][i][j]`, `i != j`: a stage on `i` ends at layer `l` and one on `j` starts at
//!   `l + 1` (cost `hop(i, j, out_bytes[l]) + stage_penalty_s`; absent without a link, so
//!   unreachable pairs can never be consecutive);
//! - sink arc `z[i]`: the last stage on `i` returns the token (cost `hop(i, origin, ...)`).
//!
//! Conservation makes `x` the inflow and the outflow of every node, and for integral `x` the
//! arcs are the linearised products `x[l][i] * x[l + 1][j]`, so link costs depend on which
//! devices are consecutive and after which layer. The entries into device `i`,
//! `e_i = a[i] + sum_{l,k} y[l][k][i]`, carry the stage overhead and give
//! contiguity (`e_i <= 1`: one run per device) and memory
//! (`sum_l mem_l / cap_i * x[l][i] <= e_i`).
//!
//! Latency minimises the summed arc and node costs. Throughput minimises `t` with `t` above
//! every device's stage cost, every boundary's hop (at most one hop crosses a boundary, so the
//! sum over its arcs is the hop's cost), both origin hops, and, as a valid cut that keeps the
//! relaxation from spreading layers thinly, `t >= sum_i (compute[i][l] + overhead_i) x[l][i]`.
//!
//! Costs enter the model in milliseconds ([`SCALE`]) so HiGHS's absolute tolerances stay far
//! below the differences that matter. The best heuristic placement seeds HiGHS as a warm start,
//! and columns whose relaxation bound exceeds its cost are left out (`bound.rs`).

use std::time::Instant;

use highs::{Col, HighsModelStatus, HighsSolutionStatus, RowProblem, Sense};

use crate::bound::Prune;
use crate::cost::{IdxStage, Instance};
use crate::error::PlanError;
use crate::plan::Objective;

/// Seconds to model units (milliseconds).
pub(crate) const SCALE: f64 = 1e3;

/// Relative and absolute (model units) gaps at which HiGHS may stop and call it optimal.
pub(crate) const GAP: f64 = 1e-9;

/// What the MILP found.
#[derive(Debug, Clone)]
pub(crate) struct Solved {
    /// The placement (`None`: proven infeasible).
    pub(crate) stages: Option<Vec<IdxStage>>,
    /// Proven optimal within [`GAP`].
    pub(crate) optimal: bool,
    /// HiGHS's relative gap when stopped early.
    pub(crate) mip_gap: Option<f64>,
}

/// Columns of the flow model, by role.
struct Vars {
    x: Vec<Vec<Option<Col>>>,
    a: Vec<Option<Col>>,
    z: Vec<Option<Col>>,
    s: Vec<Vec<Option<Col>>>,
    /// Per boundary `l`: `(i, j, column, hop seconds)`.
    y: Vec<Vec<(usize, usize, Col, f64)>>,
    t: Option<Col>,
    count: usize,
}

/// Solves the placement MILP within `time_limit_s` seconds. `warm` (a known placement) seeds
/// HiGHS; `prune` drops the columns that cannot beat it.
pub(crate) fn solve(
    inst: &Instance,
    obj: Objective,
    time_limit_s: f64,
    warm: Option<&[IdxStage]>,
    prune: &Prune,
) -> Result<Solved, PlanError> {
    let started = Instant::now();
    let mut pb = RowProblem::default();
    let v = columns(&mut pb, inst, obj, prune);
    let no_path = v.x.iter().any(|row| row.iter().all(Option::is_none))
        || v.a.iter().all(Option::is_none)
        || v.z.iter().all(Option::is_none);
    if no_path {
        // Some layer has no device, or no device may take or return the token.
        return Ok(Solved {
            stages: None,
            optimal: true,
            mip_gap: None,
        });
    }
    rows(&mut pb, inst, obj, &v);
    let mut model = pb.optimise(Sense::Minimise);
    let remaining = (time_limit_s - started.elapsed().as_secs_f64()).max(0.01);
    for (name, value) in [
        ("time_limit", remaining),
        ("mip_rel_gap", GAP),
        ("mip_abs_gap", GAP),
    ] {
        model
            .try_set_option(name, value)
            .map_err(|e| PlanError::Solver(format!("option {name}: {e:?}")))?;
    }
    if let Some(values) = warm.and_then(|w| start_values(inst, obj, &v, w)) {
        // A rejected start only loses the head start; the solve itself is still exact.
        let _ = model.try_set_solution(Some(values.as_slice()), None, None, None);
    }
    let solved = model
        .try_solve()
        .map_err(|e| PlanError::Solver(format!("HiGHS run failed: {e:?}")))?;
    let status = solved.status();
    // Read the raw info value: the binding's typed getter panics on "not available" (-1).
    let has_solution = solved.int_info_value(c"primal_solution_status").ok()
        == Some(HighsSolutionStatus::Feasible as i64);
    match status {
        HighsModelStatus::Infeasible => Ok(Solved {
            stages: None,
            optimal: true,
            mip_gap: None,
        }),
        HighsModelStatus::Optimal if has_solution => Ok(Solved {
            stages: Some(extract(inst, &v, solved.get_solution().columns())),
            optimal: true,
            mip_gap: None,
        }),
        HighsModelStatus::ReachedTimeLimit if has_solution => Ok(Solved {
            stages: Some(extract(inst, &v, solved.get_solution().columns())),
            optimal: false,
            mip_gap: Some(solved.mip_gap()),
        }),
        other => Err(PlanError::Solver(format!(
            "HiGHS stopped with status {other:?} and no placement within {time_limit_s} s"
        ))),
    }
}

/// Declares every column with its objective coefficient.
fn columns(pb: &mut RowProblem, inst: &Instance, obj: Objective, prune: &Prune) -> Vars {
    let (d, l) = (inst.devices(), inst.layers());
    let lat = obj == Objective::Latency;
    let w = |c: f64| if lat { c * SCALE } else { 0.0 };
    let mut count = 0;
    let mut col = |pb: &mut RowProblem, cost: f64, int: bool| {
        count += 1;
        pb.add_column_with_integrality(cost, 0.0..=1.0, int)
    };
    let x: Vec<Vec<Option<Col>>> = (0..l)
        .map(|k| {
            (0..d)
                .map(|i| {
                    (inst.mem[k] <= inst.cap[i] && prune.keep_x(k, i))
                        .then(|| col(pb, w(inst.compute[i][k]), true))
                })
                .collect()
        })
        .collect();
    let a = (0..d)
        .map(|i| {
            let h = inst
                .hop_in(i)
                .filter(|_| x[0][i].is_some() && prune.keep_in(i))?;
            Some(col(pb, w(h + inst.overhead[i]), false))
        })
        .collect();
    let z = (0..d)
        .map(|i| {
            let h = inst
                .hop_back(i)
                .filter(|_| x[l - 1][i].is_some() && prune.keep_back(i))?;
            Some(col(pb, w(h), false))
        })
        .collect();
    let mut s = Vec::with_capacity(l.saturating_sub(1));
    let mut y = Vec::with_capacity(l.saturating_sub(1));
    for k in 0..l.saturating_sub(1) {
        s.push(
            (0..d)
                .map(|i| (x[k][i].is_some() && x[k + 1][i].is_some()).then(|| col(pb, 0.0, false)))
                .collect(),
        );
        let mut arcs = Vec::new();
        for i in (0..d).filter(|&i| x[k][i].is_some()) {
            for j in (0..d).filter(|&j| j != i && x[k + 1][j].is_some() && prune.keep_hop(k, i, j))
            {
                if let Some(h) = inst.hop_after(k, i, j) {
                    let cost = w(h + inst.stage_penalty + inst.overhead[j]);
                    arcs.push((i, j, col(pb, cost, false), h));
                }
            }
        }
        y.push(arcs);
    }
    // The bottleneck in milliseconds: the only column not bounded by 1.
    let t = (!lat).then(|| {
        count += 1;
        pb.add_column(1.0, 0.0..)
    });
    Vars {
        x,
        a,
        z,
        s,
        y,
        t,
        count,
    }
}

/// Flow conservation, contiguity, memory and (throughput) the epigraph rows.
fn rows(pb: &mut RowProblem, inst: &Instance, obj: Objective, v: &Vars) {
    let (d, l) = (inst.devices(), inst.layers());
    pb.add_row(1.0..=1.0, v.a.iter().flatten().map(|&c| (c, 1.0)));
    // Entries into each device: source arc plus hop arcs that end on it.
    let mut entries: Vec<Vec<(Col, f64)>> = (0..d)
        .map(|i| v.a[i].map(|c| (c, 1.0)).into_iter().collect())
        .collect();
    for arcs in &v.y {
        for &(_, j, c, _) in arcs {
            entries[j].push((c, 1.0));
        }
    }
    for k in 0..l {
        for i in 0..d {
            let Some(xc) = v.x[k][i] else { continue };
            // Inflow: source (k = 0) or stay/hop arcs from boundary k - 1.
            let mut inflow = vec![(xc, 1.0)];
            if k == 0 {
                inflow.extend(v.a[i].map(|c| (c, -1.0)));
            } else {
                inflow.extend(v.s[k - 1][i].map(|c| (c, -1.0)));
                inflow.extend(v.y[k - 1].iter().filter(|e| e.1 == i).map(|e| (e.2, -1.0)));
            }
            pb.add_row(0.0..=0.0, inflow);
            let mut outflow = vec![(xc, 1.0)];
            if k + 1 == l {
                outflow.extend(v.z[i].map(|c| (c, -1.0)));
            } else {
                outflow.extend(v.s[k][i].map(|c| (c, -1.0)));
                outflow.extend(v.y[k].iter().filter(|e| e.0 == i).map(|e| (e.2, -1.0)));
            }
            pb.add_row(0.0..=0.0, outflow);
        }
    }
    for (i, e) in entries.iter().enumerate() {
        pb.add_row(..=1.0, e.iter().copied());
        let placeable: f64 = (0..l)
            .filter(|&k| v.x[k][i].is_some())
            .map(|k| inst.mem[k])
            .sum();
        if placeable > inst.cap[i] {
            let mut row: Vec<(Col, f64)> = (0..l)
                .filter_map(|k| v.x[k][i].map(|c| (c, inst.mem[k] / inst.cap[i])))
                .collect();
            row.extend(e.iter().map(|&(c, _)| (c, -1.0)));
            pb.add_row(..=0.0, row);
        }
    }
    if let (Objective::Throughput, Some(t)) = (obj, v.t) {
        throughput_rows(pb, inst, v, t, &entries);
    }
}

/// `t` above every stage, hop and origin hop, plus the per-layer cut.
fn throughput_rows(
    pb: &mut RowProblem,
    inst: &Instance,
    v: &Vars,
    t: Col,
    entries: &[Vec<(Col, f64)>],
) {
    let (d, l) = (inst.devices(), inst.layers());
    for (i, e) in entries.iter().enumerate() {
        let mut row = vec![(t, 1.0)];
        row.extend((0..l).filter_map(|k| v.x[k][i].map(|c| (c, -inst.compute[i][k] * SCALE))));
        row.extend(e.iter().map(|&(c, _)| (c, -inst.overhead[i] * SCALE)));
        pb.add_row(0.0.., row);
    }
    for arcs in &v.y {
        let mut row = vec![(t, 1.0)];
        row.extend(arcs.iter().map(|&(_, _, c, h)| (c, -h * SCALE)));
        pb.add_row(0.0.., row);
    }
    let mut first = vec![(t, 1.0)];
    let mut last = vec![(t, 1.0)];
    for i in 0..d {
        if let (Some(c), Some(h)) = (v.a[i], inst.hop_in(i)) {
            first.push((c, -h * SCALE));
        }
        if let (Some(c), Some(h)) = (v.z[i], inst.hop_back(i)) {
            last.push((c, -h * SCALE));
        }
    }
    pb.add_row(0.0.., first);
    pb.add_row(0.0.., last);
    for k in 0..l {
        let mut row = vec![(t, 1.0)];
        row.extend((0..d).filter_map(|i| {
            v.x[k][i].map(|c| (c, -(inst.compute[i][k] + inst.overhead[i]) * SCALE))
        }));
        pb.add_row(0.0.., row);
    }
}

/// Column values of a known placement, or `None` if it uses a column the model lacks.
fn start_values(
    inst: &Instance,
    obj: Objective,
    v: &Vars,
    stages: &[IdxStage],
) -> Option<Vec<f64>> {
    let mut val = vec![0.0; v.count];
    let mut set = |c: Option<Col>| c.map(|c| val[c.index()] = 1.0);
    set(v.a[stages.first()?.0])?;
    set(v.z[stages.last()?.0])?;
    for (n, &(i, a, b)) in stages.iter().enumerate() {
        for k in a..b {
            set(v.x[k][i])?;
            if k + 1 < b {
                set(v.s[k][i])?;
            }
        }
        if let Some(&(j, _, _)) = stages.get(n + 1) {
            let arc = v.y[b - 1].iter().find(|e| e.0 == i && e.1 == j)?;
            set(Some(arc.2))?;
        }
    }
    if let Some(t) = v.t {
        val[t.index()] = inst.score(stages, obj).ok()? * SCALE;
    }
    Some(val)
}

/// Reads the placement off the occupancy binaries.
fn extract(inst: &Instance, v: &Vars, cols: &[f64]) -> Vec<IdxStage> {
    let mut out: Vec<IdxStage> = Vec::new();
    for k in 0..inst.layers() {
        let dev = (0..inst.devices())
            .filter_map(|i| v.x[k][i].map(|c| (i, cols[c.index()])))
            .fold((0, f64::MIN), |acc, x| if x.1 > acc.1 { x } else { acc })
            .0;
        match out.last_mut() {
            Some(last) if last.0 == dev => last.2 = k + 1,
            _ => out.push((dev, k, k + 1)),
        }
    }
    out
}
