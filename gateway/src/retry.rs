//! The gateway's retry decision for one vault call, as a plain state
//! machine: fed what each attempt came to and the time, it says whether to
//! follow a redirect at once, try another replica after a pause, or give up
//! with the reason the phone will see. `vault_client` only carries out its
//! decisions (connects, sends, sleeps, updates its leader cache).
//!
//! Must never: re-send a request whose outcome is unknown unless it changes
//! nothing (a `LoginStart` that reached a replica may have counted a guess;
//! sending it again could count a second one), or plan a pause or an attempt
//! past the call's deadline.

use std::time::{Duration, Instant};

use protocol_spec::msg::request::Kind;

/// Whether a request may be sent again after an attempt whose outcome is
/// unknown: only those that change nothing in the vault.
pub fn is_idempotent(kind: Option<&Kind>) -> bool {
    matches!(kind, Some(Kind::Status(_)) | Some(Kind::RegisterStart(_)))
}

/// What one attempt came to, short of an answer. The text of each is for
/// the gateway's log only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The replica is not the leader and named `redirect`, a member other
    /// than itself (already checked against the membership), or no one
    /// usable (an election is under way).
    NotLeader {
        /// Where to go next, if the replica named a usable leader.
        redirect: Option<std::net::SocketAddr>,
    },
    /// The request never left: no connection or no stream. Safe to retry.
    NotSent(String),
    /// The vault refused the gateway's certificate: no retry helps.
    Refused(String),
    /// The request may have been delivered and its answer was lost.
    Lost(String),
}

/// Why a call gave up, in words a phone may show: no internal address or
/// replica detail (those go to the gateway's log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// No replica answered before the attempts ran out.
    NoAnswer,
    /// The cluster had no leader for the whole budget.
    Electing,
    /// No replica could be reached.
    Unreachable,
    /// The vault refused the gateway (an operator must fix certificates).
    Refused,
    /// The request may have arrived and its answer was lost.
    Lost,
    /// The call's deadline passed.
    TimedOut,
}

impl GaveUp {
    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoAnswer => "no_answer",
            Self::Electing => "electing",
            Self::Unreachable => "unreachable",
            Self::Refused => "refused",
            Self::Lost => "lost",
            Self::TimedOut => "timed_out",
        }
    }

    /// The reason as the phone sees it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoAnswer => "no vault replica answered",
            Self::Electing => "the vault cluster is electing a leader",
            Self::Unreachable => "no vault replica is reachable",
            Self::Refused => "the vault refused this gateway",
            Self::Lost => "the answer was lost; the attempt may have been counted",
            Self::TimedOut => "the vault did not answer in time",
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send to this replica now (a redirect to the leader).
    Redirect(std::net::SocketAddr),
    /// Wait `after`, then try the next replica.
    Retry {
        /// The pause (exponential, capped, never past the deadline).
        after: Duration,
    },
    /// Stop and answer the phone `UNAVAILABLE` with this reason.
    GiveUp(GaveUp),
}

/// First pause between attempts.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(25);
/// Longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// The retry state of one call.
#[derive(Debug, Clone)]
pub struct Retry {
    deadline: Instant,
    idempotent: bool,
    tries_left: usize,
    unreachable_left: usize,
    backoff: Duration,
    last: GaveUp,
}

impl Retry {
    /// A call started at `now` with `budget` for all its attempts, to a
    /// cluster of `replicas` members.
    pub fn new(now: Instant, budget: Duration, replicas: usize, idempotent: bool) -> Self {
        let n = replicas.max(1);
        Self {
            deadline: now + budget,
            idempotent,
            // Enough for a few rounds over the replicas through an election.
            tries_left: 4 * n + 4,
            // A dead cluster is reported after one round of failed connects.
            unreachable_left: n + 1,
            backoff: FIRST_BACKOFF,
            last: GaveUp::NoAnswer,
        }
    }

    /// The time the next attempt may take, or why there is none (the
    /// deadline passed or the attempts are used up).
    pub fn next_attempt(&mut self, now: Instant) -> Result<Duration, GaveUp> {
        let left = self.deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(match self.last {
                GaveUp::NoAnswer => GaveUp::TimedOut,
                other => other,
            });
        }
        if self.tries_left == 0 {
            return Err(self.last);
        }
        self.tries_left -= 1;
        Ok(left)
    }

    /// An attempt ran out of its time (the call's deadline): its outcome is
    /// unknown.
    pub fn timed_out(&mut self, now: Instant) -> Decision {
        match self.failed(Failure::Lost("timed out waiting for the vault".into()), now) {
            Decision::GiveUp(GaveUp::Lost) => Decision::GiveUp(GaveUp::TimedOut),
            d => {
                self.last = GaveUp::TimedOut;
                d
            }
        }
    }

    /// An attempt failed with `failure` at `now`.
    pub fn failed(&mut self, failure: Failure, now: Instant) -> Decision {
        match failure {
            Failure::NotLeader {
                redirect: Some(leader),
            } => return Decision::Redirect(leader),
            Failure::NotLeader { redirect: None } => self.last = GaveUp::Electing,
            Failure::NotSent(_) => {
                self.unreachable_left = self.unreachable_left.saturating_sub(1);
                if self.unreachable_left == 0 {
                    return Decision::GiveUp(GaveUp::Unreachable);
                }
                self.last = GaveUp::Unreachable;
            }
            Failure::Refused(_) => return Decision::GiveUp(GaveUp::Refused),
            Failure::Lost(_) if self.idempotent => self.last = GaveUp::NoAnswer,
            Failure::Lost(_) => return Decision::GiveUp(GaveUp::Lost),
        }
        let after = self
            .backoff
            .min(self.deadline.saturating_duration_since(now));
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Decision::Retry { after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn only_requests_that_change_nothing_are_idempotent() {
        use protocol_spec::msg;
        assert!(is_idempotent(Some(&Kind::Status(msg::StatusRequest {}))));
        assert!(!is_idempotent(Some(&Kind::LoginStart(
            msg::LoginStartRequest::default()
        ))));
        assert!(!is_idempotent(None));
    }

    #[test]
    fn a_lost_login_start_is_never_sent_again() {
        let t = Instant::now();
        let mut r = Retry::new(t, Duration::from_secs(10), 5, false);
        assert!(r.next_attempt(t).is_ok());
        assert_eq!(
            r.failed(Failure::Lost("stream reset".into()), t),
            Decision::GiveUp(GaveUp::Lost)
        );
        // Nor one that ran out of time: it may have been counted.
        let mut r = Retry::new(t, Duration::from_secs(10), 5, false);
        assert_eq!(r.timed_out(t), Decision::GiveUp(GaveUp::TimedOut));
    }

    #[test]
    fn a_lost_status_is_retried_with_growing_capped_pauses() {
        let t = Instant::now();
        let mut r = Retry::new(t, Duration::from_secs(60), 5, true);
        let mut pauses = Vec::new();
        for _ in 0..6 {
            r.next_attempt(t).unwrap();
            match r.failed(Failure::Lost("reset".into()), t) {
                Decision::Retry { after } => pauses.push(after.as_millis()),
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(pauses, [25, 50, 100, 200, 400, 400]);
    }

    #[test]
    fn a_redirect_is_followed_at_once_and_an_election_waits() {
        let t = Instant::now();
        let mut r = Retry::new(t, Duration::from_secs(10), 5, false);
        assert_eq!(
            r.failed(
                Failure::NotLeader {
                    redirect: Some(addr(2))
                },
                t
            ),
            Decision::Redirect(addr(2))
        );
        assert!(matches!(
            r.failed(Failure::NotLeader { redirect: None }, t),
            Decision::Retry { .. }
        ));
        // Out of attempts, the phone hears why.
        let mut r = Retry::new(t, Duration::from_secs(10), 1, false);
        for _ in 0..8 {
            if r.next_attempt(t).is_err() {
                break;
            }
            r.failed(Failure::NotLeader { redirect: None }, t);
        }
        assert_eq!(r.next_attempt(t), Err(GaveUp::Electing));
    }

    #[test]
    fn a_dead_cluster_is_reported_after_one_round_of_failed_connects() {
        let t = Instant::now();
        let mut r = Retry::new(t, Duration::from_secs(10), 3, false);
        for i in 0..3 {
            r.next_attempt(t).unwrap();
            assert!(matches!(
                r.failed(Failure::NotSent(format!("r{i}")), t),
                Decision::Retry { .. }
            ));
        }
        r.next_attempt(t).unwrap();
        assert_eq!(
            r.failed(Failure::NotSent("r3".into()), t),
            Decision::GiveUp(GaveUp::Unreachable)
        );
    }

    #[test]
    fn no_pause_or_attempt_outlives_the_deadline() {
        let t = Instant::now();
        let mut r = Retry::new(t, Duration::from_millis(30), 5, true);
        let late = t + Duration::from_millis(20);
        r.next_attempt(late).unwrap();
        r.failed(Failure::Lost("x".into()), late);
        match r.failed(Failure::Lost("x".into()), late) {
            Decision::Retry { after } => assert!(after <= Duration::from_millis(10)),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            r.next_attempt(t + Duration::from_millis(30)),
            Err(GaveUp::TimedOut)
        );
        let mut r = Retry::new(t, Duration::from_secs(1), 5, true);
        assert_eq!(r.next_attempt(t), Ok(Duration::from_secs(1)));
        assert!(r.next_attempt(t + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn no_reason_a_phone_sees_names_an_address() {
        for g in [
            GaveUp::NoAnswer,
            GaveUp::Electing,
            GaveUp::Unreachable,
            GaveUp::Refused,
            GaveUp::Lost,
            GaveUp::TimedOut,
        ] {
            assert!(!g.reason().chars().any(|c| c.is_ascii_digit()), "{g:?}");
        }
    }

    #[test]
    fn a_refused_certificate_is_not_retried() {
        let t = Instant::now();
        let mut r = Retry::new(t, Duration::from_secs(10), 5, true);
        assert_eq!(
            r.failed(Failure::Refused("bad cert".into()), t),
            Decision::GiveUp(GaveUp::Refused)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Event {
            NotLeader(Option<u16>),
            NotSent,
            Refused,
            Lost,
            TimedOut,
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                proptest::option::of(1u16..6).prop_map(Event::NotLeader),
                Just(Event::NotSent),
                Just(Event::Refused),
                Just(Event::Lost),
                Just(Event::TimedOut),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

            /// Whatever the attempts come to: a request whose outcome is
            /// unknown (lost or timed out after sending) is never sent
            /// again unless it changes nothing; no pause runs past the
            /// deadline; and the attempts end.
            #[test]
            fn an_unknown_outcome_is_resent_only_for_requests_that_change_nothing(
                idempotent in any::<bool>(),
                replicas in 1usize..8,
                budget_ms in 1u64..30_000,
                events in proptest::collection::vec((event(), 0u64..3_000), 1..64),
            ) {
                let start = Instant::now();
                let deadline = start + Duration::from_millis(budget_ms);
                let mut r = Retry::new(start, Duration::from_millis(budget_ms), replicas, idempotent);
                let mut now = start;
                let mut attempts = 0usize;
                for (ev, elapsed) in events {
                    let Ok(left) = r.next_attempt(now) else { break };
                    attempts += 1;
                    prop_assert!(now + left <= deadline);
                    now += Duration::from_millis(elapsed);
                    let unknown = matches!(ev, Event::Lost | Event::TimedOut);
                    let d = match ev {
                        Event::NotLeader(p) => r.failed(
                            Failure::NotLeader { redirect: p.map(addr) },
                            now,
                        ),
                        Event::NotSent => r.failed(Failure::NotSent("x".into()), now),
                        Event::Refused => r.failed(Failure::Refused("x".into()), now),
                        Event::Lost => r.failed(Failure::Lost("x".into()), now),
                        Event::TimedOut => r.timed_out(now),
                    };
                    match d {
                        Decision::GiveUp(_) => break,
                        Decision::Redirect(_) => prop_assert!(!unknown),
                        Decision::Retry { after } => {
                            prop_assert!(!unknown || idempotent, "{ev:?} of a state-changing request resent");
                            prop_assert!(now + after <= deadline.max(now));
                            now += after;
                        }
                    }
                }
                prop_assert!(attempts <= 4 * replicas + 4);
            }
        }
    }
}
