//! The placements peers use, kept for comparison with the MILP. None of them looks at the
//! network: they pick layer counts from memory or speed alone, and a placement that needs a
//! missing link or overflows a device is reported as infeasible for that strategy.
//!
//! - `even`: equal layer counts (the first `L mod k` stages get one more) over the devices,
//!   in a ring starting at the origin; a device that cannot hold its share is dropped (the one
//!   with the least memory first) and the split is redone.
//! - `memory`: layer counts proportional to usable memory (largest remainder), ring from the
//!   origin, devices with zero layers skipped.
//! - `greedy`: devices sorted fastest first (least total compute time for the whole model);
//!   each takes layers while its memory lasts.

use crate::cost::{IdxStage, Instance};
use crate::plan::Strategy;

/// A baseline placement or the one-line reason it cannot be built.
pub(crate) fn place(inst: &Instance, strategy: Strategy) -> Result<Vec<IdxStage>, String> {
    match strategy {
        Strategy::Even => even(inst),
        Strategy::Memory => memory(inst),
        _ => greedy(inst),
    }
}

/// Devices in scenario order, rotated so the origin comes first.
fn ring(inst: &Instance) -> Vec<usize> {
    let d = inst.devices();
    (0..d).map(|k| (inst.origin + k) % d).collect()
}

/// Stages from an ordered device list and per-device layer counts (zero counts skipped).
fn stages(order: &[usize], counts: &[usize]) -> Vec<IdxStage> {
    let mut out = Vec::new();
    let mut a = 0;
    for (&i, &c) in order.iter().zip(counts) {
        if c > 0 {
            out.push((i, a, a + c));
            a += c;
        }
    }
    out
}

fn even(inst: &Instance) -> Result<Vec<IdxStage>, String> {
    let l = inst.layers();
    let mut cand = ring(inst);
    cand.truncate(l);
    while !cand.is_empty() {
        let k = cand.len();
        let counts: Vec<usize> = (0..k).map(|s| l / k + usize::from(s < l % k)).collect();
        let placed = stages(&cand, &counts);
        let failing = placed
            .iter()
            .filter(|&&(i, a, b)| !inst.fits(i, a, b))
            .map(|&(i, _, _)| i)
            .min_by(|&x, &y| inst.cap[x].total_cmp(&inst.cap[y]));
        match failing {
            None => return Ok(placed),
            Some(i) => cand.retain(|&x| x != i),
        }
    }
    Err(format!(
        "no set of devices can hold equal shares of the {l} layers"
    ))
}

fn memory(inst: &Instance) -> Result<Vec<IdxStage>, String> {
    let l = inst.layers();
    let order = ring(inst);
    let total: f64 = inst.cap.iter().sum();
    let exact: Vec<f64> = order
        .iter()
        .map(|&i| l as f64 * inst.cap[i] / total)
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut rest: Vec<usize> = (0..order.len()).collect();
    rest.sort_by(|&x, &y| {
        let fx = exact[x] - exact[x].floor();
        let fy = exact[y] - exact[y].floor();
        fy.total_cmp(&fx).then(x.cmp(&y))
    });
    let missing = l - counts.iter().sum::<usize>().min(l);
    for &k in rest.iter().cycle().take(missing) {
        counts[k] += 1;
    }
    Ok(stages(&order, &counts))
}

fn greedy(inst: &Instance) -> Result<Vec<IdxStage>, String> {
    let l = inst.layers();
    let mut order: Vec<usize> = (0..inst.devices()).collect();
    let speed = |i: usize| inst.compute[i].iter().sum::<f64>();
    order.sort_by(|&x, &y| speed(x).total_cmp(&speed(y)).then(x.cmp(&y)));
    let mut out = Vec::new();
    let mut a = 0;
    for i in order {
        if a == l {
            break;
        }
        let mut b = a;
        while b < l && inst.fits(i, a, b + 1) {
            b += 1;
        }
        if b > a {
            out.push((i, a, b));
            a = b;
        }
    }
    if a < l {
        return Err(format!(
            "layer {a} does not fit on any device left after the faster ones"
        ));
    }
    Ok(out)
}
