//! The table of pending logins: what a replica remembers between a
//! `LoginStart` whose guess it counted and the `LoginFinish` that may
//! verify it, and between a verified change-password login and its
//! `RegisterFinish`. A plain type: the caller passes the time.
//!
//! Must never: hand a session to a device of another account (nor let one
//! burn it by trying), hand one out twice, hand out one older than its
//! lifetime, grow past its bound (a full table answers "busy" after
//! dropping the expired ones), or let one account hold more than its budget
//! of open sessions (so no account can make every login on a replica busy).

use std::collections::{HashMap, VecDeque};
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

/// Room for one more session of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// There was room.
    Room,
    /// The account had its whole budget of open sessions: its oldest was
    /// dropped (its guess stays counted; a login is never left without a
    /// way to start again).
    EvictedOldest(SessionId),
}

/// Pending logins of one replica, bounded (in total and per account) and
/// expiring. Expired sessions are swept on every reservation, oldest first,
/// in time proportional to what expired.
#[derive(Debug)]
pub struct PendingLogins<S> {
    map: HashMap<SessionId, Pending<S>>,
    /// Sessions in the order they were inserted, with their start time.
    order: VecDeque<(Instant, SessionId)>,
    /// Each account's open sessions, oldest first.
    by_account: HashMap<String, VecDeque<SessionId>>,
    max: usize,
    per_account: usize,
    ttl: Duration,
}

impl<S> PendingLogins<S> {
    /// An empty table of at most `max` sessions, at most `per_account` of
    /// one account, each usable for `ttl`.
    pub fn new(max: usize, per_account: usize, ttl: Duration) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            by_account: HashMap::new(),
            max,
            per_account: per_account.max(1),
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

    /// Open sessions of `account_id`.
    pub fn of_account(&self, account_id: &str) -> usize {
        self.by_account.get(account_id).map_or(0, VecDeque::len)
    }

    /// Drops the sessions expired at `now`, oldest first, and returns them.
    pub fn sweep(&mut self, now: Instant) -> Vec<Pending<S>> {
        let mut out = Vec::new();
        while let Some(&(created, id)) = self.order.front() {
            if now.saturating_duration_since(created) < self.ttl {
                break;
            }
            self.order.pop_front();
            // The entry may have been taken, or replaced by a later one.
            if self.map.get(&id).is_some_and(|p| p.created == created) {
                if let Some(p) = self.remove(&id) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Makes room for one more session of `account_id` at `now`, before its
    /// guess is counted (so a full table refuses before any state changes):
    /// sweeps expired sessions, drops the account's oldest if it has its
    /// whole budget open, and refuses if the table is still full.
    pub fn reserve(&mut self, account_id: &str, now: Instant) -> Result<Reserved, Full> {
        self.sweep(now);
        let mut reserved = Reserved::Room;
        if self.of_account(account_id) >= self.per_account {
            let oldest = self
                .by_account
                .get(account_id)
                .and_then(|q| q.front().copied());
            if let Some(id) = oldest {
                self.remove(&id);
                reserved = Reserved::EvictedOldest(id);
            }
        }
        if self.map.len() >= self.max {
            return Err(Full);
        }
        Ok(reserved)
    }

    /// Remembers a session (replacing one with the same id).
    pub fn insert(&mut self, id: SessionId, pending: Pending<S>) {
        self.remove(&id);
        self.order.push_back((pending.created, id));
        self.by_account
            .entry(pending.account_id.clone())
            .or_default()
            .push_back(id);
        self.map.insert(id, pending);
    }

    fn remove(&mut self, id: &SessionId) -> Option<Pending<S>> {
        let p = self.map.remove(id)?;
        if let Some(q) = self.by_account.get_mut(&p.account_id) {
            q.retain(|s| s != id);
            if q.is_empty() {
                self.by_account.remove(&p.account_id);
            }
        }
        Some(p)
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
        let p = self.remove(&key)?;
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
        let mut table = PendingLogins::new(10, 4, TTL);
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
        let mut table = PendingLogins::new(10, 4, TTL);
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
        let mut table = PendingLogins::new(2, 4, TTL);
        table.insert([1; 16], login("a", t, 0));
        table.insert([2; 16], login("b", t + Duration::from_secs(60), 0));
        assert_eq!(table.reserve("c", t + Duration::from_secs(61)), Err(Full));
        // The first has expired by now: swept, and there is room.
        assert_eq!(table.reserve("c", t + TTL), Ok(Reserved::Room));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn expired_sessions_are_swept_without_waiting_for_a_full_table() {
        let t = Instant::now();
        let mut table = PendingLogins::new(1000, 4, TTL);
        for i in 0..10u8 {
            table.insert([i; 16], login(&format!("a{i}"), t, 0));
        }
        assert_eq!(table.reserve("b", t + TTL / 2), Ok(Reserved::Room));
        assert_eq!(table.len(), 10);
        assert_eq!(table.sweep(t + TTL).len(), 10);
        assert!(table.is_empty());
        assert_eq!(table.of_account("a0"), 0);
    }

    #[test]
    fn one_account_cannot_hold_more_than_its_budget() {
        let t = Instant::now();
        let mut table = PendingLogins::new(1000, 3, TTL);
        for i in 0..3u8 {
            assert_eq!(table.reserve("mallory", t), Ok(Reserved::Room));
            table.insert(
                [i; 16],
                login("mallory", t + Duration::from_millis(i.into()), i),
            );
        }
        table.insert([9; 16], login("alice", t, 9));
        // The fourth evicts mallory's oldest, never someone else's.
        assert_eq!(
            table.reserve("mallory", t),
            Ok(Reserved::EvictedOldest([0; 16]))
        );
        assert_eq!(table.of_account("mallory"), 2);
        assert_eq!(table.of_account("alice"), 1);
        assert!(table.take(&[9; 16], "alice", t, |_| true).is_some());
        assert!(table.take(&[0; 16], "mallory", t, |_| true).is_none());
    }
}
