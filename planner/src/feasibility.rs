//! Why a scenario has no feasible placement: a one-line reason that names the layer or device
//! at fault. Checks go from the most specific (a layer too large for every device) to the most
//! general (no chain of linked devices covers the model).

use crate::cost::Instance;

/// A human reason for infeasibility; called only after a strategy found no placement.
pub(crate) fn reason(inst: &Instance) -> String {
    let (d, l) = (inst.devices(), inst.layers());
    let (big, big_cap) = (0..d)
        .map(|i| (i, inst.cap[i]))
        .fold((0, f64::MIN), |acc, x| if x.1 > acc.1 { x } else { acc });
    if let Some(k) = (0..l).find(|&k| inst.mem[k] > big_cap) {
        return format!(
            "layer {k} needs {} but no device may use that much (largest: {} with {})",
            gb(inst.mem[k]),
            inst.ids[big],
            gb(big_cap)
        );
    }
    let need = inst.seg_mem(0, l);
    let have: f64 = inst.cap.iter().sum();
    if need > have {
        return format!(
            "the model needs {} but all {d} devices together may use {}",
            gb(need),
            gb(have)
        );
    }
    let origin = &inst.ids[inst.origin];
    if !(0..d).any(|i| inst.hop_in(i).is_some() && inst.fits(i, 0, 1)) {
        return format!("origin {origin} has no link to a device that can hold layer 0");
    }
    if !(0..d).any(|i| inst.hop_back(i).is_some() && inst.fits(i, l - 1, l)) {
        return format!(
            "no device that can hold layer {} has a link back to origin {origin}",
            l - 1
        );
    }
    match furthest_layer(inst) {
        Some(k) => format!(
            "no chain of linked devices from origin {origin} can place layer {k} within memory"
        ),
        None => format!(
            "every chain of linked devices that holds all {l} layers needs some device twice"
        ),
    }
}

/// The first layer no chain can reach when devices may repeat (a relaxation), or `None` if
/// the relaxation covers the model and returns to the origin.
fn furthest_layer(inst: &Instance) -> Option<usize> {
    let (d, l) = (inst.devices(), inst.layers());
    let mut start = vec![vec![false; d]; l + 1];
    for (j, s) in start[0].iter_mut().enumerate() {
        *s = inst.hop_in(j).is_some();
    }
    let mut reached = 0;
    for a in 0..l {
        for j in 0..d {
            if !start[a][j] {
                continue;
            }
            #[allow(clippy::needless_range_loop)] // b is a layer boundary, not just an index
            for b in a + 1..=l {
                if !inst.fits(j, a, b) {
                    break;
                }
                reached = reached.max(b);
                if b == l {
                    if inst.hop_back(j).is_some() {
                        return None;
                    }
                    continue;
                }
                for (k, s) in start[b].iter_mut().enumerate() {
                    *s |= k != j && inst.linked(j, k);
                }
            }
        }
    }
    Some(reached.min(l - 1))
}

fn gb(bytes: f64) -> String {
    format!("{:.3} GB", bytes / 1e9)
}
