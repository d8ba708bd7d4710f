//! The brute-force oracle: every ordered sequence of distinct devices times every set of cut
//! points, scored with the same cost model as every other strategy. It only prunes placements
//! that break a rule (missing link, memory), never on cost, so it is the reference the MILP is
//! tested against. It refuses scenarios with more than [`EXHAUSTIVE_LIMIT`] candidates.

use crate::cost::{IdxStage, Instance};
use crate::error::PlanError;
use crate::plan::Objective;

/// Largest number of candidate placements (sum over k of `P(devices, k) * C(layers - 1, k - 1)`)
/// the oracle enumerates; about a second of work. 6 devices x 12 layers is 3.9e5 candidates,
/// 8 devices x 12 layers is 6.5e7 and is refused.
pub const EXHAUSTIVE_LIMIT: u128 = 5_000_000;

/// Number of candidate placements of `layers` layers on `devices` devices (saturating).
pub fn candidates(devices: usize, layers: usize) -> u128 {
    let mut total: u128 = 0;
    let mut perm: u128 = 1; // P(devices, k)
    let mut comb: u128 = 1; // C(layers - 1, k - 1)
    for k in 1..=devices.min(layers) {
        perm = perm.saturating_mul((devices - k + 1) as u128);
        if k > 1 {
            // C(n, k-1) = C(n, k-2) * (n - k + 2) / (k - 1) with n = layers - 1; exact in integers.
            comb = comb.saturating_mul((layers - k + 1) as u128) / (k - 1) as u128;
        }
        total = total.saturating_add(perm.saturating_mul(comb));
    }
    total
}

/// The optimal placement, `Ok(None)` if no placement is feasible.
pub(crate) fn solve(inst: &Instance, obj: Objective) -> Result<Option<Vec<IdxStage>>, PlanError> {
    let (d, l) = (inst.devices(), inst.layers());
    let count = candidates(d, l);
    if count > EXHAUSTIVE_LIMIT {
        return Err(PlanError::TooLarge {
            devices: d,
            layers: l,
            candidates: count,
            limit: EXHAUSTIVE_LIMIT,
        });
    }
    let mut search = Search {
        inst,
        obj,
        used: vec![false; d],
        stack: Vec::new(),
        best: None,
    };
    search.extend(0);
    Ok(search.best.map(|(_, s)| s))
}

struct Search<'a> {
    inst: &'a Instance,
    obj: Objective,
    used: Vec<bool>,
    stack: Vec<IdxStage>,
    best: Option<(f64, Vec<IdxStage>)>,
}

impl Search<'_> {
    /// Places a stage starting at layer `a` on every unused device the previous one reaches.
    fn extend(&mut self, a: usize) {
        let inst = self.inst;
        let layers = inst.layers();
        for j in 0..inst.devices() {
            let reachable = match self.stack.last() {
                None => inst.hop_in(j).is_some(),
                Some(&(i, _, _)) => inst.linked(i, j),
            };
            if self.used[j] || !reachable {
                continue;
            }
            self.used[j] = true;
            for b in a + 1..=layers {
                if !inst.fits(j, a, b) {
                    break; // memory only grows with b
                }
                self.stack.push((j, a, b));
                if b == layers {
                    self.finish();
                } else {
                    self.extend(b);
                }
                self.stack.pop();
            }
            self.used[j] = false;
        }
    }

    fn finish(&mut self) {
        if let Ok(cost) = self.inst.score(&self.stack, self.obj)
            && self.best.as_ref().is_none_or(|(c, _)| cost < *c)
        {
            self.best = Some((cost, self.stack.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn candidate_count_matches_hand_count() {
        // 2 devices, 3 layers: k=1: 2 * C(2,0)=2; k=2: 2 * C(2,1)=4; total 6.
        assert_eq!(candidates(2, 3), 6);
        // 3 devices, 2 layers: k=1: 3; k=2: 6 * C(1,1)=6; total 9.
        assert_eq!(candidates(3, 2), 9);
        // 4 devices, 6 layers: 4*1 + 12*5 + 24*10 + 24*10 = 544.
        assert_eq!(candidates(4, 6), 544);
    }
}
