//! The table of generation sessions one stage holds: a bound on their number and eviction of
//! idle ones (swept on every use, so an abandoned session's cache is freed without a timer). Pure bookkeeping; time is passed in, so tests drive it deterministically.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Sessions by id, each with its last use.
#[derive(Debug)]
pub(crate) struct SessionTable<S> {
    map: HashMap<u64, (S, Instant)>,
    max: usize,
    idle: Duration,
}

impl<S> SessionTable<S> {
    /// At most `max` sessions; one unused for `idle` may be evicted.
    pub(crate) fn new(max: usize, idle: Duration) -> Self {
        SessionTable {
            map: HashMap::new(),
            max: max.max(1),
            idle,
        }
    }

    /// The session `id`, created with `make` if absent; evicts idle sessions to make room.
    pub(crate) fn get_or_create(
        &mut self,
        id: u64,
        now: Instant,
        make: impl FnOnce() -> S,
    ) -> Result<&mut S> {
        self.evict_idle_except(now, Some(id));
        if !self.map.contains_key(&id) {
            if self.map.len() >= self.max {
                return Err(Error::TooManySessions { max: self.max });
            }
            self.map.insert(id, (make(), now));
        }
        match self.map.get_mut(&id) {
            Some((s, t)) => {
                *t = now;
                Ok(s)
            }
            None => Err(Error::TooManySessions { max: self.max }),
        }
    }

    /// The session `id`, if present.
    pub(crate) fn get(&self, id: u64) -> Option<&S> {
        self.map.get(&id).map(|(s, _)| s)
    }

    /// The session `id` to change, if present (its last use is not touched).
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut S> {
        self.map.get_mut(&id).map(|(s, _)| s)
    }

    /// Marks `id` as used at `now`.
    pub(crate) fn touch(&mut self, id: u64, now: Instant) {
        if let Some((_, t)) = self.map.get_mut(&id) {
            *t = now;
        }
    }

    /// Forgets `id`; whether it existed.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        self.map.remove(&id).is_some()
    }

    /// Drops sessions unused for longer than the idle timeout; returns how many.
    pub(crate) fn evict_idle(&mut self, now: Instant) -> usize {
        self.evict_idle_except(now, None)
    }

    /// Like [`SessionTable::evict_idle`], sparing `keep` (the session being used right now).
    fn evict_idle_except(&mut self, now: Instant, keep: Option<u64>) -> usize {
        let before = self.map.len();
        let idle = self.idle;
        self.map
            .retain(|id, (_, t)| Some(*id) == keep || now.saturating_duration_since(*t) <= idle);
        let evicted = before - self.map.len();
        if evicted > 0 {
            tracing::debug!(evicted, "evicted idle sessions");
        }
        evicted
    }

    /// Number of sessions held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_and_idle_eviction() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(2, Duration::from_secs(10));
        *t.get_or_create(1, t0, || 0).unwrap() += 1;
        t.get_or_create(2, t0 + Duration::from_secs(5), || 0)
            .unwrap();
        // Full and nobody idle long enough: refused.
        assert!(matches!(
            t.get_or_create(3, t0 + Duration::from_secs(9), || 0),
            Err(Error::TooManySessions { max: 2 })
        ));
        // Session 1 idle 11 s: evicted to make room; session 2 (6 s) stays.
        t.get_or_create(3, t0 + Duration::from_secs(11), || 0)
            .unwrap();
        assert!(t.get(1).is_none());
        assert_eq!(t.get(2), Some(&0));
        assert_eq!(t.len(), 2);
        assert!(t.remove(2));
        assert!(!t.remove(2));
        assert_eq!(t.evict_idle(t0 + Duration::from_secs(100)), 1);
    }

    #[test]
    fn every_use_sweeps_idle_sessions_but_spares_the_one_used() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(8, Duration::from_secs(10));
        *t.get_or_create(1, t0, || 0).unwrap() = 7;
        t.get_or_create(2, t0, || 0).unwrap();
        // Session 1 comes back after 20 s: it keeps its state; idle session 2 is swept.
        assert_eq!(
            *t.get_or_create(1, t0 + Duration::from_secs(20), || 0)
                .unwrap(),
            7
        );
        assert!(t.get(2).is_none());
        assert_eq!(t.len(), 1);
    }
}
