//! shoal's own per-peer score (pure logic): lowered on every piece of bad input, recovering
//! slowly, and a ban when it falls too low.
//!
//! The score is also handed to gossipsub as its application-specific score, so a peer that
//! sends garbage loses its place in the gossip mesh before it is banned outright.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;

/// Score lost per misbehaviour (a malformed, oversized or forged message).
pub const PENALTY: f64 = 10.0;
/// At or below this score the peer is disconnected and blocked.
pub const BAN_SCORE: f64 = -100.0;
/// Points regained per second of good behaviour, up to 0.
pub const RECOVERY_PER_S: f64 = 0.1;

/// Scores of all peers that ever misbehaved.
#[derive(Debug, Clone, Default)]
pub struct PeerScores {
    scores: HashMap<PeerId, f64>,
    counts: HashMap<&'static str, u64>,
}

impl PeerScores {
    /// Lowers `peer`'s score for `reason`; returns the new score and whether it is now at or
    /// below [`BAN_SCORE`].
    pub fn penalise(&mut self, peer: PeerId, reason: &'static str) -> (f64, bool) {
        *self.counts.entry(reason).or_default() += 1;
        let s = self.scores.entry(peer).or_default();
        *s -= PENALTY;
        (*s, *s <= BAN_SCORE)
    }

    /// The peer's score (0 when it never misbehaved).
    pub fn get(&self, peer: &PeerId) -> f64 {
        self.scores.get(peer).copied().unwrap_or(0.0)
    }

    /// Lets every score recover by `elapsed` worth of [`RECOVERY_PER_S`]; banned peers stay
    /// banned (the caller keeps the block list), their score only climbs back.
    pub fn decay(&mut self, elapsed: Duration) {
        let gain = RECOVERY_PER_S * elapsed.as_secs_f64();
        for s in self.scores.values_mut() {
            *s = (*s + gain).min(0.0);
        }
        self.scores.retain(|_, s| *s < 0.0);
    }

    /// Misbehaviours so far, by reason.
    pub fn counts(&self) -> &HashMap<&'static str, u64> {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_ban_and_recover() {
        let mut s = PeerScores::default();
        let p = PeerId::random();
        for i in 1..10 {
            assert_eq!(s.penalise(p, "malformed"), (-PENALTY * f64::from(i), false));
        }
        assert_eq!(s.penalise(p, "malformed"), (BAN_SCORE, true));
        s.decay(Duration::from_secs(100));
        assert_eq!(s.get(&p), BAN_SCORE + 10.0);
        s.decay(Duration::from_secs(10_000));
        assert_eq!(s.get(&p), 0.0);
        assert_eq!(s.counts()["malformed"], 10);
    }
}
