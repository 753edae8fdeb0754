//! The table of pending logins: what a replica remembers between a
//! `LoginStart` whose guess it counted and the `LoginFinish` that may
//! verify it, and between a verified change-password login and its
//! `RegisterFinish`. A plain type: the caller passes the time.
//!
//! Must never: hand a session to a device of another account (nor let one
//! burn it by trying), hand one out twice, hand out one older than its
//! lifetime, or grow past its bound (a full table answers "busy" after
//! dropping the expired ones).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol_spec::msg::LoginPurpose;

/// A login session id, as the phone echoes it back.
pub type SessionId = [u8; 16];

/// One pending login.
#[derive(Debug)]
pub struct Pending<S> {
    /// The account whose device started it; only it can finish it.
    pub account_id: String,
    /// The deposit the guess was counted against.
    pub registration_id: Vec<u8>,
    /// What the login is for.
    pub purpose: LoginPurpose,
    /// When it started (or, for a change authorization, was verified).
    pub created: Instant,
    /// The caller's state (the OPAQUE server state, the held record, ...).
    pub state: S,
}

/// The table is at its bound even after dropping expired sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Pending logins of one replica, bounded and expiring.
#[derive(Debug)]
pub struct PendingLogins<S> {
    map: HashMap<SessionId, Pending<S>>,
    max: usize,
    ttl: Duration,
}

impl<S> PendingLogins<S> {
    /// An empty table of at most `max` sessions, each usable for `ttl`.
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self {
            map: HashMap::new(),
            max,
            ttl,
        }
    }

    /// Sessions held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether one more session fits at `now`; sweeps expired sessions when
    /// the table is at its bound. Checked before a guess is counted, so a
    /// full table refuses before any state changes.
    pub fn reserve(&mut self, now: Instant) -> Result<(), Full> {
        if self.map.len() >= self.max {
            let ttl = self.ttl;
            self.map
                .retain(|_, p| now.saturating_duration_since(p.created) < ttl);
        }
        if self.map.len() >= self.max {
            return Err(Full);
        }
        Ok(())
    }

    /// Remembers a session (replacing one with the same id).
    pub fn insert(&mut self, id: SessionId, pending: Pending<S>) {
        self.map.insert(id, pending);
    }

    /// Takes session `id` if it belongs to `account_id`, is still within
    /// its lifetime at `now`, and `accept`s; otherwise leaves a live
    /// session of another account (or of another kind) where it is, drops
    /// an expired one, and returns `None`.
    pub fn take(
        &mut self,
        id: &[u8],
        account_id: &str,
        now: Instant,
        accept: impl Fn(&Pending<S>) -> bool,
    ) -> Option<Pending<S>> {
        let key: SessionId = id.try_into().ok()?;
        let p = self.map.get(&key)?;
        if p.account_id != account_id || !accept(p) {
            return None;
        }
        let p = self.map.remove(&key)?;
        (now.saturating_duration_since(p.created) < self.ttl).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(120);

    fn login(account: &str, at: Instant, state: u8) -> Pending<u8> {
        Pending {
            account_id: account.into(),
            registration_id: vec![1],
            purpose: LoginPurpose::Recover,
            created: at,
            state,
        }
    }

    #[test]
    fn a_session_is_taken_once_and_only_by_its_account() {
        let t = Instant::now();
        let mut table = PendingLogins::new(10, TTL);
        table.insert([7; 16], login("alice", t, 1));
        // Another account's device neither gets nor burns it.
        assert!(table.take(&[7; 16], "mallory", t, |_| true).is_none());
        assert_eq!(table.len(), 1);
        // Nor does a request for another kind of session.
        assert!(table.take(&[7; 16], "alice", t, |p| p.state == 2).is_none());
        assert_eq!(table.len(), 1);
        let p = table.take(&[7; 16], "alice", t, |_| true).unwrap();
        assert_eq!(p.state, 1);
        assert!(table.take(&[7; 16], "alice", t, |_| true).is_none());
        // A malformed id is no session.
        assert!(table.take(&[7; 3], "alice", t, |_| true).is_none());
    }

    #[test]
    fn a_session_expires_at_its_lifetime_and_is_dropped() {
        let t = Instant::now();
        let mut table = PendingLogins::new(10, TTL);
        table.insert([1; 16], login("a", t, 0));
        table.insert([2; 16], login("a", t, 0));
        assert!(table
            .take(&[1; 16], "a", t + TTL - Duration::from_millis(1), |_| true)
            .is_some());
        assert!(table.take(&[2; 16], "a", t + TTL, |_| true).is_none());
        assert!(table.is_empty());
    }

    #[test]
    fn a_full_table_sweeps_expired_sessions_and_then_refuses() {
        let t = Instant::now();
        let mut table = PendingLogins::new(2, TTL);
        table.insert([1; 16], login("a", t, 0));
        table.insert([2; 16], login("b", t + Duration::from_secs(60), 0));
        assert_eq!(table.reserve(t + Duration::from_secs(61)), Err(Full));
        // The first has expired by now: swept, and there is room.
        assert_eq!(table.reserve(t + TTL), Ok(()));
        assert_eq!(table.len(), 1);
    }
}
