//! The membership table (pure logic, no IO): who is in the swarm right now.
//!
//! A member is a node whose last capability announcement is younger than the liveness
//! timeout (DESIGN.md, coordinator rotation). The node feeds announcements in with
//! [`Membership::observe`] and advances time with [`Membership::expire`]; both return the
//! [`MembershipEvent`]s they cause. Time is a caller-supplied [`Duration`] since an arbitrary
//! origin, so tests drive the table deterministically.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_keys::NodeId;

/// A change of membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipEvent {
    /// The node announced itself and was not a member before.
    Joined(NodeId),
    /// The node's last announcement is older than the liveness timeout.
    Left(NodeId),
}

/// One member's entry.
#[derive(Debug, Clone)]
pub struct Member<T> {
    /// When its latest announcement arrived (caller's clock).
    pub last_seen: Duration,
    /// What it announced (the capability message, for the node).
    pub info: T,
}

/// The table: members keyed by node id (ordered, so iteration is deterministic).
#[derive(Debug, Clone)]
pub struct Membership<T> {
    timeout: Duration,
    members: BTreeMap<NodeId, Member<T>>,
}

impl<T> Membership<T> {
    /// An empty table with this liveness timeout.
    pub fn new(timeout: Duration) -> Self {
        Membership {
            timeout,
            members: BTreeMap::new(),
        }
    }

    /// Records an announcement from `node` at time `now`; `Joined` if it was not a member.
    /// An announcement older than the entry we hold is ignored.
    pub fn observe(&mut self, node: NodeId, info: T, now: Duration) -> Option<MembershipEvent> {
        match self.members.get_mut(&node) {
            Some(m) if m.last_seen > now => None,
            Some(m) => {
                m.last_seen = now;
                m.info = info;
                None
            }
            None => {
                self.members.insert(
                    node,
                    Member {
                        last_seen: now,
                        info,
                    },
                );
                Some(MembershipEvent::Joined(node))
            }
        }
    }

    /// Drops every member not heard from within the timeout before `now`.
    pub fn expire(&mut self, now: Duration) -> Vec<MembershipEvent> {
        let timeout = self.timeout;
        let gone: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_sub(m.last_seen) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.members.remove(id);
        }
        gone.into_iter().map(MembershipEvent::Left).collect()
    }

    /// Removes a member at once (e.g. it was banned); `Left` if it was one.
    pub fn remove(&mut self, node: &NodeId) -> Option<MembershipEvent> {
        self.members
            .remove(node)
            .map(|_| MembershipEvent::Left(*node))
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.members.contains_key(node)
    }

    /// A member's entry.
    pub fn get(&self, node: &NodeId) -> Option<&Member<T>> {
        self.members.get(node)
    }

    /// The member ids in ascending order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// Members and their entries in ascending id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Member<T>)> {
        self.members.iter()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_keys::Identity;

    fn id(seed: u8) -> NodeId {
        Identity::from_secret_bytes([seed; 32]).node_id()
    }

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }

    #[test]
    fn join_refresh_and_leave() {
        let mut m = Membership::new(s(10));
        assert_eq!(
            m.observe(id(1), (), s(0)),
            Some(MembershipEvent::Joined(id(1)))
        );
        assert_eq!(
            m.observe(id(2), (), s(1)),
            Some(MembershipEvent::Joined(id(2)))
        );
        assert_eq!(m.observe(id(1), (), s(8)), None);
        assert!(m.expire(s(11)).is_empty());
        assert_eq!(m.expire(s(12)), vec![MembershipEvent::Left(id(2))]);
        assert_eq!(m.ids(), vec![id(1)]);
        assert_eq!(m.expire(s(19)), vec![MembershipEvent::Left(id(1))]);
        assert!(m.is_empty());
    }

    #[test]
    fn older_announcement_does_not_rewind() {
        let mut m = Membership::new(s(10));
        m.observe(id(1), 1, s(5));
        m.observe(id(1), 0, s(3));
        assert_eq!(m.get(&id(1)).unwrap().info, 1);
        assert_eq!(m.get(&id(1)).unwrap().last_seen, s(5));
    }
}
