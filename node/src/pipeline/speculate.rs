//! Speculative decoding's pure logic (docs/pipeline.md, "Speculative decoding"): what a
//! drafter proposes from the session's own history (prompt lookup), the acceptance rules of
//! a verify step (greedy: the longest agreeing prefix plus the model's own token; sampled: the
//! standard speculative-sampling rule, which keeps the target distribution), and the
//! controller that picks how many tokens to draft from the measured acceptance rate and the
//! measured cost of a pass. No IO; the origin (`origin.rs`) drives it.

use shoal_model::Sampler;

pub use crate::config::DrafterKind;

/// A sampling distribution as (token, probability) pairs ([`Sampler::distribution`]).
pub type Distribution = Vec<(u32, f32)>;

/// Longest n-gram prompt lookup matches.
pub const NGRAM_MAX: usize = 4;
/// Shortest n-gram prompt lookup matches (a single token matches too often in prose).
pub const NGRAM_MIN: usize = 2;

/// Up to `k` draft tokens by prompt lookup: for n from [`NGRAM_MAX`] down to [`NGRAM_MIN`],
/// the tokens that followed the latest earlier occurrence of `history`'s last n tokens. A
/// continuation that runs into the end of the history goes on with the drafts themselves (the
/// text repeats with the period the match found). Empty when nothing matches.
pub fn ngram_draft(history: &[u32], k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    let len = history.len();
    for n in (NGRAM_MIN..=NGRAM_MAX.min(len.saturating_sub(1))).rev() {
        let suffix = &history[len - n..];
        // Latest start first; a start below len - n leaves at least one token after it.
        if let Some(i) = (0..len - n).rev().find(|i| &history[*i..*i + n] == suffix) {
            let from = i + n;
            let mut draft = Vec::with_capacity(k);
            for j in from..from + k {
                let t = if j < len { history[j] } else { draft[j - len] };
                draft.push(t);
            }
            return draft;
        }
    }
    Vec::new()
}

/// A greedy verify step's answer (what the last stage returns as `Sampled::Tokens`): the
/// drafts that equal the model's choice at their position, then the model's choice at the
/// first disagreement (or after the last draft). `choices` has one entry per verified
/// position (`draft.len() + 1`).
pub fn accept_greedy(draft: &[u32], choices: &[u32]) -> Vec<u32> {
    let agreed = draft
        .iter()
        .zip(choices)
        .take_while(|(d, c)| d == c)
        .count();
    choices[..(agreed + 1).min(choices.len())].to_vec()
}

/// [`accept_greedy`] with the model's choices read as the argmax of each verified position's
/// logits (`rows`, one per position).
pub fn accept_greedy_rows<'a>(draft: &[u32], rows: impl Iterator<Item = &'a [f32]>) -> Vec<u32> {
    let choices: Vec<u32> = rows.map(shoal_model::argmax).collect();
    accept_greedy(draft, &choices)
}

/// Whether `answer` is a possible greedy verify answer for `draft`: 1 to `draft.len() + 1`
/// tokens, all but the last equal to the drafts.
pub fn plausible_greedy(draft: &[u32], answer: &[u32]) -> bool {
    !answer.is_empty()
        && answer.len() <= draft.len() + 1
        && answer[..answer.len() - 1] == draft[..answer.len() - 1]
}

fn prob(dist: &[(u32, f32)], token: u32) -> f32 {
    dist.iter()
        .find(|(t, _)| *t == token)
        .map_or(0.0, |(_, p)| *p)
}

/// Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): `target[i]` is the target
/// model's sampling distribution at verified position `i` (`draft.len() + 1` of them), and
/// `proposal[i]` the drafter's at draft `i` (`None`: a deterministic drafter, all its mass on
/// the draft). Draft `i` is accepted with probability `min(1, p(d) / q(d))`; at the first
/// rejection a token is drawn from `max(0, p - q)` renormalised and the step ends; when every
/// draft is accepted one more token is drawn from the last position. Each emitted token is
/// distributed exactly as if sampled from the target one position at a time.
pub fn accept_sampled(
    target: &[Distribution],
    draft: &[u32],
    proposal: Option<&[Distribution]>,
    sampler: &mut Sampler,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(draft.len() + 1);
    for (i, &d) in draft.iter().enumerate() {
        let Some(p) = target.get(i) else { break };
        let q = proposal.and_then(|q| q.get(i));
        let (pd, qd) = (prob(p, d), q.map_or(1.0, |q| prob(q, d)));
        if qd > 0.0 && sampler.uniform() < (pd / qd).min(1.0) {
            out.push(d);
            continue;
        }
        let residual: Vec<(u32, f32)> = p
            .iter()
            .map(|(t, pt)| {
                let qt = match q {
                    Some(q) => prob(q, *t),
                    None => f32::from(u8::from(*t == d)),
                };
                (*t, (pt - qt).max(0.0))
            })
            .filter(|(_, w)| *w > 0.0)
            .collect();
        out.push(if residual.is_empty() {
            sampler.draw(p)
        } else {
            sampler.draw(&residual)
        });
        return out;
    }
    if let Some(p) = target.get(out.len()) {
        out.push(sampler.draw(p));
    }
    out
}

/// Expected tokens one pass yields with `k` drafts when each is accepted with probability
/// `alpha` independently until the first rejection: `(1 - alpha^(k+1)) / (1 - alpha)`
/// (the accepted drafts plus the one token every pass ends with).
pub fn expected_tokens(alpha: f64, k: usize) -> f64 {
    let a = alpha.clamp(0.0, 1.0);
    if a >= 1.0 - 1e-12 {
        return (k + 1) as f64;
    }
    (1.0 - a.powi(k as i32 + 1)) / (1.0 - a)
}

/// Weight each new observation of the acceptance rate gets (about the last 30 drafts).
const ACCEPT_DECAY: f64 = 0.97;
/// Weight each new pass time gets in its draft length's running mean.
const TIME_WEIGHT: f64 = 0.25;
/// Passes after which the cost of a pass without drafts is measured again if it is stale.
const PROBE_EVERY: u64 = 32;

/// Picks the number of drafts per pass: the `k` in `0..=max` that maximises the expected
/// tokens per second, `expected_tokens(alpha, k) / time(k)`, with `alpha` the measured
/// acceptance rate (a decaying count of accepted and rejected drafts, starting at one each)
/// and `time(k)` the pass time, a line through the measured mean pass times per `k` (a pass
/// without drafts starts from the plan's predicted time per token). When drafting does not
/// pay (prose: few drafts accepted), `k` falls to 0; passes without drafts still compare the
/// drafter's first proposal with the token that came ([`Adaptive::shadow`]), so `k` rises
/// again when the text turns repetitive.
#[derive(Debug, Clone)]
pub struct Adaptive {
    max: usize,
    hits: f64,
    misses: f64,
    /// Running mean pass time per draft count, seconds, with its number of samples.
    times: Vec<Option<(f64, u64)>>,
    passes: u64,
    last_plain: u64,
}

impl Adaptive {
    /// A controller drafting at most `max` tokens; `plain_s` is the plan's predicted seconds
    /// per pass without drafts (a prior until one is measured).
    pub fn new(max: usize, plain_s: f64) -> Self {
        let mut times = vec![None; max + 1];
        if plain_s.is_finite() && plain_s > 0.0 {
            times[0] = Some((plain_s, 0));
        }
        Adaptive {
            max,
            hits: 1.0,
            misses: 1.0,
            times,
            passes: 0,
            last_plain: 0,
        }
    }

    /// The measured acceptance rate of one draft.
    pub fn acceptance(&self) -> f64 {
        self.hits / (self.hits + self.misses)
    }

    fn observe(&mut self, hits: usize, misses: usize) {
        for _ in 0..hits + misses {
            self.hits *= ACCEPT_DECAY;
            self.misses *= ACCEPT_DECAY;
        }
        self.hits += hits as f64;
        self.misses += misses as f64;
    }

    /// A pass with `k` drafts of which `accepted` were accepted took `secs` (drafting
    /// included).
    pub fn record(&mut self, k: usize, accepted: usize, secs: f64) {
        let k = k.min(self.max);
        // Drafts after the first rejection were not tested.
        self.observe(accepted.min(k), usize::from(accepted < k));
        self.passes += 1;
        if k == 0 {
            self.last_plain = self.passes;
        }
        if secs.is_finite() && secs >= 0.0 {
            self.times[k] = Some(match self.times[k] {
                Some((mean, n)) if n > 0 => (mean + TIME_WEIGHT * (secs - mean), n + 1),
                _ => (secs, 1),
            });
        }
    }

    /// A pass without drafts in which the drafter would have proposed `proposed` first and
    /// the model chose `actual`: counts as one tested draft.
    pub fn shadow(&mut self, proposed: u32, actual: u32) {
        let hit = proposed == actual;
        self.observe(usize::from(hit), usize::from(!hit));
    }

    /// The pass time `k` drafts are expected to take: the least-squares line through the
    /// known mean times (a single known time is assumed flat).
    pub fn time(&self, k: usize) -> Option<f64> {
        let known: Vec<(f64, f64)> = self
            .times
            .iter()
            .enumerate()
            .filter_map(|(k, t)| t.map(|(mean, _)| (k as f64, mean)))
            .collect();
        match known.len() {
            0 => None,
            1 => Some(known[0].1),
            n => {
                let n = n as f64;
                let (sx, sy) = known
                    .iter()
                    .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
                let (mx, my) = (sx / n, sy / n);
                let sxx: f64 = known.iter().map(|(x, _)| (x - mx).powi(2)).sum();
                let sxy: f64 = known.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
                let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
                Some((my + slope * (k as f64 - mx)).max(1e-6))
            }
        }
    }

    /// The number of drafts for the next pass, at most `available` (what the drafter has).
    pub fn choose(&self, available: usize) -> usize {
        let top = self.max.min(available);
        if top == 0 {
            return 0;
        }
        // Measure a pass without drafts now and then, so the line stays anchored.
        let plain_measured = self.times[0].is_some_and(|(_, n)| n > 0);
        if self.passes > 0
            && (!plain_measured || self.passes - self.last_plain >= PROBE_EVERY)
            && self.passes.is_multiple_of(PROBE_EVERY)
        {
            return 0;
        }
        let alpha = self.acceptance();
        let rate = |k: usize| match self.time(k) {
            Some(t) => expected_tokens(alpha, k) / t,
            None => expected_tokens(alpha, k),
        };
        (0..=top)
            .max_by(|a, b| rate(*a).total_cmp(&rate(*b)))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_model::SamplingConfig;

    #[test]
    fn prompt_lookup_continues_the_latest_match_of_the_longest_ngram() {
        // "1 2 3 9 ... 1 2 3" -> the tokens after the earlier "1 2 3".
        let h = [1, 2, 3, 9, 8, 7, 5, 2, 3, 4, 1, 2, 3];
        assert_eq!(ngram_draft(&h, 3), vec![9, 8, 7]);
        // The latest of two matches wins.
        let h = [5, 6, 1, 5, 6, 2, 5, 6];
        assert_eq!(ngram_draft(&h, 2), vec![2, 5]);
        // A continuation that reaches the end repeats the period found.
        let h = [4, 4, 4, 4];
        assert_eq!(ngram_draft(&h, 5), vec![4; 5]);
        let h = [7, 1, 2, 3, 1, 2, 3, 1, 2];
        assert_eq!(ngram_draft(&h, 5), vec![3, 1, 2, 3, 1]);
        // No earlier bigram: nothing (single tokens do not count).
        assert!(ngram_draft(&[1, 2, 3, 4, 1], 4).is_empty());
        assert!(ngram_draft(&[1], 4).is_empty());
        assert!(ngram_draft(&[1, 2, 1, 2], 0).is_empty());
    }

    #[test]
    fn greedy_acceptance_keeps_the_agreeing_prefix_and_one_more() {
        assert_eq!(accept_greedy(&[5, 6, 7], &[5, 6, 7, 8]), vec![5, 6, 7, 8]);
        assert_eq!(accept_greedy(&[5, 6, 7], &[5, 9, 7, 8]), vec![5, 9]);
        assert_eq!(accept_greedy(&[5, 6, 7], &[4, 6, 7, 8]), vec![4]);
        assert_eq!(accept_greedy(&[], &[3]), vec![3]);
        assert!(plausible_greedy(&[5, 6, 7], &[5, 9]));
        assert!(plausible_greedy(&[5, 6, 7], &[5, 6, 7, 1]));
        assert!(!plausible_greedy(&[5, 6, 7], &[4, 9]));
        assert!(!plausible_greedy(&[5], &[5, 1, 2]));
        assert!(!plausible_greedy(&[5], &[]));
    }

    /// Pearson's chi-square statistic of `counts` against `probs`.
    fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .map(|(c, p)| {
                let e = p * n as f64;
                (*c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// Seeded statistical test of the sampling rule: with a fixed target `p` at every position
    /// (so the target sequence is i.i.d. `p`), each emitted position's token must follow `p`,
    /// for a model drafter with its own `q` and for a deterministic drafter. Chi-square with 4
    /// degrees of freedom; 18.47 is its 0.1% quantile, so a correct rule fails one seed in a
    /// thousand, and this seed is fixed.
    #[test]
    fn sampled_acceptance_keeps_the_target_distribution() {
        let p = vec![(0u32, 0.4f32), (1, 0.3), (2, 0.15), (3, 0.1), (4, 0.05)];
        let q = vec![(0u32, 0.1f32), (1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)];
        let probs: Vec<f64> = p.iter().map(|(_, x)| f64::from(*x)).collect();
        let config = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 11,
        };
        let mut sampler = Sampler::new(config);
        let mut drafter = Sampler::new(SamplingConfig { seed: 12, ..config });
        let k = 3;
        let trials = 60_000;
        for model_drafter in [true, false] {
            let mut counts = vec![[0u64; 5]; k + 1];
            let mut accepted = 0usize;
            for _ in 0..trials {
                let (draft, proposal): (Vec<u32>, Option<Vec<Distribution>>) = if model_drafter {
                    (
                        (0..k).map(|_| drafter.draw(&q)).collect(),
                        Some(vec![q.clone(); k]),
                    )
                } else {
                    (vec![3, 0, 4], None)
                };
                let target = vec![p.clone(); k + 1];
                let out = accept_sampled(&target, &draft, proposal.as_deref(), &mut sampler);
                assert!(!out.is_empty() && out.len() <= k + 1);
                accepted += out.len() - 1;
                for (pos, t) in out.iter().enumerate() {
                    counts[pos][*t as usize] += 1;
                }
            }
            for (pos, c) in counts.iter().enumerate() {
                if c.iter().sum::<u64>() < 2000 {
                    continue;
                }
                let x2 = chi_square(c, &probs);
                assert!(
                    x2 < 18.47,
                    "model drafter {model_drafter}, position {pos}: chi2 {x2:.1}, {c:?}"
                );
            }
            // The expected acceptance of one draft is sum(min(p, q)) (0.5 here) for the
            // model drafter; the deterministic one drafts [3, 0, 4]: p(3) = 0.1.
            let rate = accepted as f64 / trials as f64;
            let expect = if model_drafter {
                let a = 0.5f64;
                a + a * a + a * a * a
            } else {
                0.1 + 0.1 * 0.4 + 0.1 * 0.4 * 0.05
            };
            assert!(
                (rate - expect).abs() < 0.03,
                "accepted per pass {rate:.3}, expected {expect:.3}"
            );
        }
    }

    #[test]
    fn expected_tokens_per_pass() {
        assert_eq!(expected_tokens(0.0, 4), 1.0);
        assert_eq!(expected_tokens(1.0, 4), 5.0);
        assert!((expected_tokens(0.5, 2) - 1.75).abs() < 1e-12);
        assert_eq!(expected_tokens(0.7, 0), 1.0);
    }

    #[test]
    fn the_controller_drafts_when_it_pays_and_backs_off_when_it_does_not() {
        // A weak link: a pass costs 150 ms, each draft adds 2 ms.
        let pass = |k: usize| 0.150 + 0.002 * k as f64;
        let mut c = Adaptive::new(6, 0.150);
        assert_eq!(c.choose(6), 6, "optimistic before any measurement");
        assert_eq!(c.choose(2), 2, "never more than the drafter has");
        assert_eq!(c.choose(0), 0);
        // Repetitive text: 9 in 10 drafts accepted.
        for i in 0..200 {
            let k = c.choose(6);
            let accepted = if k == 0 {
                0
            } else {
                k - usize::from(i % 2 == 0)
            };
            c.record(k, accepted, pass(k));
        }
        assert!(c.acceptance() > 0.8, "{}", c.acceptance());
        assert!(c.choose(6) >= 5, "high acceptance drafts long");
        // Prose on a fast link, where a draft costs a third of a pass: nothing is accepted.
        let fast = |k: usize| 0.010 + 0.0035 * k as f64;
        let mut c = Adaptive::new(6, 0.010);
        for _ in 0..200 {
            let k = c.choose(6);
            c.record(k, 0, fast(k));
            if k == 0 {
                c.shadow(1, 2);
            }
        }
        assert!(c.acceptance() < 0.1, "{}", c.acceptance());
        assert_eq!(c.choose(6), 0, "backs off");
        // The text turns repetitive: shadow hits raise the rate and drafting resumes.
        for _ in 0..60 {
            c.shadow(3, 3);
        }
        assert!(c.choose(6) > 0);
    }

    #[test]
    fn pass_times_are_a_line_through_the_measured_means() {
        let mut c = Adaptive::new(4, 0.0);
        assert_eq!(c.time(2), None);
        c.record(4, 4, 0.2);
        assert_eq!(c.time(0), Some(0.2), "one point: flat");
        c.record(0, 0, 0.1);
        let t2 = c.time(2).unwrap();
        assert!((t2 - 0.15).abs() < 1e-9, "{t2}");
        assert_eq!("ngram".parse::<DrafterKind>(), Ok(DrafterKind::Ngram));
        assert!("magic".parse::<DrafterKind>().is_err());
    }
}
