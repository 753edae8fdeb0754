//! Admission before authentication (DESIGN.md "Front door"): what an
//! unauthenticated peer can cost. A bound on connections still in their
//! handshake (QUIC + TLS + Noise), in total and per source address; above
//! a threshold, QUIC address validation (a Retry round trip) before any
//! state is kept, so spoofed sources cost one stateless packet.
//!
//! When every place is taken, a new attempt from a validated address takes
//! the place of a handshake that has stalled (in progress longer than
//! [`AdmissionConfig::stalled_after_ms`]) of the source holding the most
//! places, provided the newcomer's source holds fewer (max-min fairness):
//! a flood that opens handshakes and never finishes them (slowloris) then
//! keeps its places only as long as no other source needs them, cannot
//! take them from phones, and costs its sender a full QUIC and TLS
//! handshake per place each time; phones, whose handshakes take a few
//! round trips, still get in.
//!
//! A plain type: the accept loop asks [`Admission::decide`] with the
//! source, whether it is validated and the time, and holds the returned
//! [`Permit`] until the connection's handshake ends (authenticated or not);
//! a permit whose place was taken says so ([`Permit::evicted`]) and its
//! connection is closed as timed out.
//!
//! Must never: keep state for a refused or retried attempt, or count a
//! connection past its handshake (authenticated phones are budgeted by
//! `budget`, not here).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use serde::{Deserialize, Serialize};

/// Limits on connections in their handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Connections in their handshake at once; more are refused. Default
    /// 1024 (about 40 KB each: 40 MB).
    pub max_handshakes: usize,
    /// Above this many handshakes, an unvalidated source must first answer
    /// a QUIC Retry. Default 256.
    pub retry_above: usize,
    /// Handshakes at once from one source address. Default 64 (carrier NAT
    /// puts many phones behind one address).
    pub max_handshakes_per_source: usize,
    /// With every place taken, a handshake in progress longer than this
    /// may give its place to a new attempt from a source holding fewer
    /// places. Default 1000 ms (a phone's QUIC, TLS and Noise handshakes
    /// take about three round trips, 30 ms on loopback under load and well
    /// under a second on mobile networks; at 1 s the 1024 places turn over
    /// about 1000 times a second under a flood).
    pub stalled_after_ms: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_handshakes: 1024,
            retry_above: 256,
            max_handshakes_per_source: 64,
            stalled_after_ms: 1000,
        }
    }
}

/// What to do with a connection attempt.
#[derive(Debug)]
pub enum Decision {
    /// Go on with the handshake, holding the permit until it ends.
    Accept(Permit),
    /// Ask the source to prove its address first (stateless).
    Retry,
    /// Refuse (stateless), for this reason.
    Refuse(Refusal),
}

/// Why an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many handshakes in total.
    Full,
    /// Too many handshakes from this source.
    PerSource,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full => "handshakes_full",
            Refusal::PerSource => "per_source",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Handshakes in progress, oldest first: (start, id) -> its source and
    /// the signal that tells it its place was taken.
    order: BTreeMap<(Instant, u64), (IpAddr, Arc<Notify>)>,
    next_id: u64,
}

impl State {
    /// The handshake a source holding `holds` places may displace at
    /// `now`: the oldest one stalled for `stalled` among the sources that
    /// hold the most places, if they hold at least two more; else, for a
    /// source holding none, the oldest stalled one.
    fn victim(&self, holds: usize, now: Instant, stalled: Duration) -> Option<(Instant, u64)> {
        let is_stalled = |key: &(Instant, u64)| now.saturating_duration_since(key.0) >= stalled;
        let most = self.per_source.values().copied().max()?;
        let holds_most = |ip: &IpAddr| self.per_source.get(ip).copied().unwrap_or(0) == most;
        if holds + 1 < most {
            // Of the sources holding the most, the oldest stalled place.
            return self
                .order
                .iter()
                .find(|(k, (ip, _))| holds_most(ip) && is_stalled(k))
                .map(|(k, _)| *k);
        }
        // No strictly fairer swap: only a source that holds no place at
        // all takes the oldest stalled one (a flood from as many addresses
        // as there are places); sources that hold places do not churn
        // each other's (each swap would cost the gateway a handshake).
        if holds > 0 {
            return None;
        }
        self.order
            .iter()
            .find(|(k, _)| is_stalled(k))
            .map(|(k, _)| *k)
    }

    /// Frees the place of handshake `key`, if it still holds one.
    fn free(&mut self, key: &(Instant, u64)) -> Option<Arc<Notify>> {
        let (source, evicted) = self.order.remove(key)?;
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
        Some(evicted)
    }
}

/// The handshakes in progress of one gateway.
#[derive(Debug, Clone)]
pub struct Admission {
    cfg: AdmissionConfig,
    state: Arc<Mutex<State>>,
}

/// A handshake in progress; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    key: (Instant, u64),
    evicted: Arc<Notify>,
    state: Arc<Mutex<State>>,
}

impl Permit {
    /// Resolves if another attempt took this handshake's place (it had
    /// stalled while every place was taken): close the connection.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.free(&self.key);
        }
    }
}

impl Admission {
    /// No handshake in progress yet.
    pub fn new(cfg: AdmissionConfig) -> Self {
        Self {
            cfg,
            state: Arc::default(),
        }
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.state.lock().map(|s| s.total).unwrap_or(0)
    }

    /// Decides on an attempt from `source` at `now`; `validated` says
    /// whether QUIC has already validated its address (it answered a
    /// Retry).
    pub fn decide(&self, source: IpAddr, validated: bool, now: Instant) -> Decision {
        let Ok(mut s) = self.state.lock() else {
            return Decision::Refuse(Refusal::Full);
        };
        let from_source = s.per_source.get(&source).copied().unwrap_or(0);
        if s.total >= self.cfg.max_handshakes {
            if !validated && s.total >= self.cfg.retry_above {
                return Decision::Retry;
            }
            // Only a validated source may displace a stalled handshake (a
            // spoofed one must not cut real ones), and only one that would
            // still hold fewer places than the source it takes from: so
            // sources that flood cannot displace each other's places, and
            // every other source, phones first, gets places back from the
            // source that holds the most.
            let stalled = Duration::from_millis(self.cfg.stalled_after_ms);
            let victim = validated
                .then(|| s.victim(from_source, now, stalled))
                .flatten();
            match victim.and_then(|key| s.free(&key)) {
                Some(evicted) => evicted.notify_one(),
                None => return Decision::Refuse(Refusal::Full),
            }
        }
        if !validated && s.total >= self.cfg.retry_above {
            return Decision::Retry;
        }
        let from_source = s.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.cfg.max_handshakes_per_source {
            return Decision::Refuse(Refusal::PerSource);
        }
        s.total += 1;
        *s.per_source.entry(source).or_default() += 1;
        s.next_id += 1;
        let key = (now, s.next_id);
        let evicted = Arc::new(Notify::new());
        s.order.insert(key, (source, evicted.clone()));
        Decision::Accept(Permit {
            key,
            evicted,
            state: self.state.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn cfg() -> AdmissionConfig {
        AdmissionConfig {
            max_handshakes: 4,
            retry_above: 2,
            max_handshakes_per_source: 2,
            stalled_after_ms: 1000,
        }
    }

    fn accept(d: Decision) -> Permit {
        match d {
            Decision::Accept(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn above_the_threshold_unvalidated_sources_must_prove_their_address() {
        let a = Admission::new(cfg());
        let t = Instant::now();
        let _p1 = accept(a.decide(ip(1), false, t));
        let _p2 = accept(a.decide(ip(2), false, t));
        assert!(matches!(a.decide(ip(3), false, t), Decision::Retry));
        // After the Retry round trip, the same source is validated.
        let _p3 = accept(a.decide(ip(3), true, t));
        assert_eq!(a.in_progress(), 3);
    }

    #[test]
    fn the_total_and_each_source_are_bounded_and_places_come_back() {
        let a = Admission::new(cfg());
        let t = Instant::now();
        let p1 = accept(a.decide(ip(1), true, t));
        let _p2 = accept(a.decide(ip(1), true, t));
        assert!(matches!(
            a.decide(ip(1), true, t),
            Decision::Refuse(Refusal::PerSource)
        ));
        let _p3 = accept(a.decide(ip(2), true, t));
        let _p4 = accept(a.decide(ip(3), true, t));
        assert!(matches!(
            a.decide(ip(4), true, t),
            Decision::Refuse(Refusal::Full)
        ));
        drop(p1);
        assert_eq!(a.in_progress(), 3);
        let _p5 = accept(a.decide(ip(1), true, t));
    }

    #[test]
    fn when_full_a_validated_attempt_takes_the_place_of_the_oldest_stalled_one() {
        let a = Admission::new(cfg());
        let t = Instant::now();
        let oldest = accept(a.decide(ip(1), true, t));
        let _p2 = accept(a.decide(ip(2), true, t + Duration::from_millis(10)));
        let _p3 = accept(a.decide(ip(3), true, t + Duration::from_millis(20)));
        let _p4 = accept(a.decide(ip(4), true, t + Duration::from_millis(30)));
        // Full, nothing stalled yet.
        let soon = t + Duration::from_millis(500);
        assert!(matches!(
            a.decide(ip(5), true, soon),
            Decision::Refuse(Refusal::Full)
        ));
        // An unvalidated source is asked to validate, never lets one go.
        let late = t + Duration::from_millis(1000);
        assert!(matches!(a.decide(ip(5), false, late), Decision::Retry));
        let _p5 = accept(a.decide(ip(5), true, late));
        assert_eq!(a.in_progress(), 4);
        // The oldest was told, and its drop frees nothing twice.
        let told = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(1), oldest.evicted())
                    .await
                    .is_ok()
            });
        assert!(told);
        drop(oldest);
        assert_eq!(a.in_progress(), 4);
        // The next stalled one is p2 (started 10 ms after).
        let _p6 = accept(a.decide(ip(6), true, late + Duration::from_millis(10)));
        assert_eq!(a.in_progress(), 4);
    }

    #[test]
    fn a_source_holding_the_most_gives_places_to_the_others_and_cannot_take_them_back() {
        let a = Admission::new(AdmissionConfig {
            max_handshakes: 4,
            retry_above: 4,
            max_handshakes_per_source: 4,
            stalled_after_ms: 1000,
        });
        let t = Instant::now();
        let flood: Vec<Permit> = (0..3).map(|_| accept(a.decide(ip(1), true, t))).collect();
        let _phone = accept(a.decide(ip(2), true, t));
        let late = t + Duration::from_secs(1);
        // The flooding source, already holding the most, is refused...
        assert!(matches!(
            a.decide(ip(1), true, late),
            Decision::Refuse(Refusal::Full)
        ));
        // ...while the phone's source takes one of its stalled places.
        let _second = accept(a.decide(ip(2), true, late));
        // Now both hold two: neither takes from the other.
        assert!(matches!(
            a.decide(ip(1), true, late),
            Decision::Refuse(Refusal::Full)
        ));
        assert!(matches!(
            a.decide(ip(2), true, late),
            Decision::Refuse(Refusal::Full)
        ));
        // A third source, holding none, takes one of the oldest.
        let _third = accept(a.decide(ip(3), true, late));
        assert_eq!(a.in_progress(), 4);
        drop(flood);
        assert_eq!(a.in_progress(), 3, "the evicted ones were freed once");
    }
}
