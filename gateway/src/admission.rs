//! Admission before authentication (DESIGN.md "Front door"): what an
//! unauthenticated peer can cost. A bound on connections still in their
//! handshake (QUIC + TLS + Noise), in total and per source address; above
//! a threshold, QUIC address validation (a Retry round trip) before any
//! state is kept, so spoofed sources cost one stateless packet.
//!
//! A plain type: the accept loop asks [`Admission::decide`] with the
//! source and whether it is validated, and holds the returned [`Permit`]
//! until the connection's handshake ends (authenticated or not).
//!
//! Must never: keep state for a refused or retried attempt, or count a
//! connection past its handshake (authenticated phones are budgeted by
//! `budget`, not here).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

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
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_handshakes: 1024,
            retry_above: 256,
            max_handshakes_per_source: 64,
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
    source: IpAddr,
    state: Arc<Mutex<State>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.total = s.total.saturating_sub(1);
            if let Some(n) = s.per_source.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    s.per_source.remove(&self.source);
                }
            }
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

    /// Decides on an attempt from `source`; `validated` says whether QUIC
    /// has already validated its address (it answered a Retry).
    pub fn decide(&self, source: IpAddr, validated: bool) -> Decision {
        let Ok(mut s) = self.state.lock() else {
            return Decision::Refuse(Refusal::Full);
        };
        if s.total >= self.cfg.max_handshakes {
            return Decision::Refuse(Refusal::Full);
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
        Decision::Accept(Permit {
            source,
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
        let _p1 = accept(a.decide(ip(1), false));
        let _p2 = accept(a.decide(ip(2), false));
        assert!(matches!(a.decide(ip(3), false), Decision::Retry));
        // After the Retry round trip, the same source is validated.
        let _p3 = accept(a.decide(ip(3), true));
        assert_eq!(a.in_progress(), 3);
    }

    #[test]
    fn the_total_and_each_source_are_bounded_and_places_come_back() {
        let a = Admission::new(cfg());
        let p1 = accept(a.decide(ip(1), true));
        let _p2 = accept(a.decide(ip(1), true));
        assert!(matches!(
            a.decide(ip(1), true),
            Decision::Refuse(Refusal::PerSource)
        ));
        let _p3 = accept(a.decide(ip(2), true));
        let _p4 = accept(a.decide(ip(3), true));
        assert!(matches!(
            a.decide(ip(4), true),
            Decision::Refuse(Refusal::Full)
        ));
        drop(p1);
        assert_eq!(a.in_progress(), 3);
        let _p5 = accept(a.decide(ip(1), true));
    }
}
