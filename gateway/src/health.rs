//! Which replicas of one vault cluster the gateway sends requests to, as a
//! plain state machine (outlier detection in Envoy's sense): a replica that
//! answers but cannot serve (its consensus engine stopped, it knows no
//! leader) or cannot be reached is marked down for a while that grows with
//! each strike; requests go to the others; once the while is over, a probe
//! (not a phone's request) asks it again, and a healthy answer brings it
//! back. `vault_client` feeds it what each attempt and probe came to and
//! the time, and asks it where to send.
//!
//! Must never: leave a request with nowhere to go (when every replica is
//! down, the one whose pause ends first is still tried), or keep a replica
//! down after it answered as healthy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Why a replica was marked down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// Its consensus engine stopped: it will not serve until restarted.
    Stopped,
    /// It knows no leader (an election, or it is cut off from a majority).
    NoLeader,
    /// No connection could be made, or the link broke.
    Unreachable,
}

impl Strike {
    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::NoLeader => "no_leader",
            Self::Unreachable => "unreachable",
        }
    }

    /// The first pause after this strike. An election takes about one
    /// election timeout (150–300 ms by default), so a replica without a
    /// leader is skipped only briefly; a stopped engine does not come back
    /// on its own.
    fn first_pause(self) -> Duration {
        match self {
            Self::NoLeader => Duration::from_millis(200),
            Self::Unreachable => Duration::from_millis(500),
            Self::Stopped => Duration::from_secs(1),
        }
    }
}

/// The longest a replica stays down before it is probed again.
pub const MAX_PAUSE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Down {
    until: Instant,
    strikes: u32,
}

/// The health of one cluster's replicas.
#[derive(Debug, Default)]
pub struct Health {
    down: HashMap<SocketAddr, Down>,
}

impl Health {
    /// Whether requests may go to `addr`: it is not down (a replica whose
    /// pause is over waits for the probe's healthy answer).
    pub fn usable(&self, addr: SocketAddr) -> bool {
        !self.down.contains_key(&addr)
    }

    /// Whether `addr` is down and its pause is over (a probe may ask it).
    fn probe_due(&self, addr: SocketAddr, now: Instant) -> bool {
        self.down.get(&addr).is_some_and(|d| d.until <= now)
    }

    /// How many replicas are marked down.
    pub fn down_count(&self) -> usize {
        self.down.len()
    }

    /// Marks `addr` down at `now`; returns whether it was up before (the
    /// caller logs and counts only that transition). Each further strike
    /// doubles the pause, up to [`MAX_PAUSE`].
    pub fn strike(&mut self, addr: SocketAddr, why: Strike, now: Instant) -> bool {
        let was_up = !self.down.contains_key(&addr);
        let strikes = self.down.get(&addr).map_or(0, |d| d.strikes + 1);
        let pause = why
            .first_pause()
            .saturating_mul(1u32 << strikes.min(8))
            .min(MAX_PAUSE);
        self.down.insert(
            addr,
            Down {
                until: now + pause,
                strikes,
            },
        );
        was_up
    }

    /// `addr` answered as healthy; returns whether it was down before.
    pub fn healthy(&mut self, addr: SocketAddr) -> bool {
        self.down.remove(&addr).is_some()
    }

    /// The down replicas among `replicas` whose pause is over: the probe
    /// asks each of them.
    pub fn due(&self, replicas: &[SocketAddr], now: Instant) -> Vec<SocketAddr> {
        replicas
            .iter()
            .copied()
            .filter(|a| self.probe_due(*a, now))
            .collect()
    }

    /// Where to send a request that has no leader to go to: the first
    /// replica not down in round-robin order from `start`, else (every one
    /// down) the one whose pause ends first. `None` only for no replicas.
    pub fn pick(&self, replicas: &[SocketAddr], start: usize) -> Option<SocketAddr> {
        let n = replicas.len();
        (0..n)
            .map(|i| replicas[(start + i) % n])
            .find(|a| !self.down.contains_key(a))
            .or_else(|| {
                replicas
                    .iter()
                    .copied()
                    .min_by_key(|a| self.down.get(a).map(|d| d.until))
            })
    }

    /// Forgets replicas that are no longer members.
    pub fn retain(&mut self, replicas: &[SocketAddr]) {
        self.down.retain(|a, _| replicas.contains(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn a_stopped_replica_is_skipped_and_comes_back_after_a_healthy_probe() {
        let t = Instant::now();
        let r = [addr(1), addr(2), addr(3)];
        let mut h = Health::default();
        assert!(h.strike(addr(1), Strike::Stopped, t));
        assert!(!h.usable(addr(1)));
        // Round robin from the stopped one goes to the next.
        assert_eq!(h.pick(&r, 0), Some(addr(2)));
        assert!(h.due(&r, t).is_empty());
        let later = t + Duration::from_secs(1);
        assert_eq!(h.due(&r, later), vec![addr(1)]);
        // Still stopped: the pause doubles.
        assert!(!h.strike(addr(1), Strike::Stopped, later));
        assert!(h.due(&r, later + Duration::from_millis(1999)).is_empty());
        assert_eq!(h.due(&r, later + Duration::from_secs(2)), vec![addr(1)]);
        assert!(h.healthy(addr(1)));
        assert!(h.usable(addr(1)));
        assert!(
            !h.healthy(addr(1)),
            "a second healthy answer is no transition"
        );
    }

    #[test]
    fn pauses_grow_to_the_cap_and_never_past_it() {
        let t = Instant::now();
        let mut h = Health::default();
        for _ in 0..40 {
            h.strike(addr(1), Strike::Unreachable, t);
        }
        assert!(h
            .due(&[addr(1)], t + MAX_PAUSE - Duration::from_millis(1))
            .is_empty());
        assert_eq!(h.due(&[addr(1)], t + MAX_PAUSE), vec![addr(1)]);
    }

    #[test]
    fn with_every_replica_down_the_one_back_first_is_still_tried() {
        let t = Instant::now();
        let r = [addr(1), addr(2)];
        let mut h = Health::default();
        h.strike(addr(1), Strike::Stopped, t);
        h.strike(addr(2), Strike::NoLeader, t);
        assert_eq!(h.pick(&r, 0), Some(addr(2)));
        assert_eq!(h.pick(&[], 0), None);
    }

    #[test]
    fn removed_members_are_forgotten() {
        let t = Instant::now();
        let mut h = Health::default();
        h.strike(addr(1), Strike::Stopped, t);
        h.retain(&[addr(2)]);
        assert_eq!(h.down_count(), 0);
    }
}
