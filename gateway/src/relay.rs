//! The relay of one phone request to its vault cluster, as a `tower` stack
//! (outermost first):
//!
//! 1. load shedding: when the cluster's in-flight limit is reached the
//!    request is answered `BUSY` at once, before anything is sent;
//! 2. a concurrency limit per cluster ([`RelayConfig::max_in_flight`]);
//! 3. a timeout of [`VAULT_CALL_DEADLINE`] over every attempt, redirect and
//!    pause (nested inside the gateway's stream timeout, SPEC §7);
//! 4. retries, decided by the sans-IO [`Retry`] machine (SPEC §8.1: a
//!    request moves on only when it certainly did nothing, or changes
//!    nothing);
//! 5. one attempt at one replica (`vault_client::Link::attempt`), which
//!    also tells the replica health table what it saw.
//!
//! Every way a call can end is one [`Relayed`] value, and
//! [`Relayed::into_response`] maps each, with one exhaustive match, to what
//! the phone receives and to the `outcome` label of
//! `gateway_requests_total`.
//!
//! Must never: re-send a state-changing request after it may have been
//! delivered (that is the retry machine's rule; this module only carries
//! out its decisions), or put a replica's address in what the phone sees.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use protocol_spec::classify::{classify, BUSY_RETRY_AFTER};
use protocol_spec::internal::VaultRequest;
use protocol_spec::limits::VAULT_CALL_DEADLINE;
use protocol_spec::msg::{self, ErrorCode};
use serde::{Deserialize, Serialize};
use tower::{BoxError, Service, ServiceBuilder};

use crate::retry::{Decision, Failure, GaveUp, Retry};
use crate::vault_client::Link;

/// Bounds of the relay to each vault cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Requests in flight to one cluster at once, from this gateway; the
    /// next is answered `BUSY` (shed) without reaching the vault. Default
    /// 1024: a cluster commits a few hundred logins per second at tens of
    /// milliseconds each (BENCHMARKS.md), so it holds about 30 in flight
    /// when saturated; 1024 only bounds what a stalled cluster can pile up
    /// in the gateway (each waiting call holds a task and a stream).
    pub max_in_flight: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
        }
    }
}

/// One call as it moves through the stack: the request, where the next
/// attempt goes, and the retry machine's state (cloned for each attempt by
/// `tower::retry`, so what the policy decides carries to the next one).
#[derive(Debug, Clone)]
pub struct Call {
    /// What goes to the replica.
    pub req: Arc<VaultRequest>,
    /// The replica of the next attempt; `None`: the link picks one (the
    /// cached leader, else a replica that is not down).
    pub target: Option<SocketAddr>,
    /// The time the next attempt may take.
    pub budget: Duration,
    retry: Retry,
}

impl Call {
    /// A call started at `now` to a cluster of `replicas` members.
    pub fn new(req: VaultRequest, replicas: usize, now: Instant) -> Self {
        let idempotent =
            crate::retry::is_idempotent(req.request.as_ref().and_then(|r| r.kind.as_ref()));
        let mut retry = Retry::new(now, VAULT_CALL_DEADLINE, replicas, idempotent);
        let budget = retry.next_attempt(now).unwrap_or(VAULT_CALL_DEADLINE);
        Self {
            req: Arc::new(req),
            target: None,
            budget,
            retry,
        }
    }
}

/// How one attempt failed (the replica's details are for the log).
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The replica is not the leader; `redirect` is a member it named.
    #[error("replica {target} is not the leader")]
    NotLeader {
        /// Who was asked.
        target: SocketAddr,
        /// The leader it named, already checked against the membership.
        redirect: Option<SocketAddr>,
    },
    /// Nothing was sent.
    #[error("replica {target}: not sent: {why}")]
    NotSent {
        /// Who was to be asked.
        target: SocketAddr,
        /// Why.
        why: String,
    },
    /// The replica refused the gateway's certificate.
    #[error("replica {target} refused this gateway: {why}")]
    Refused {
        /// Who refused.
        target: SocketAddr,
        /// Why.
        why: String,
    },
    /// Sent, then the link failed or the attempt ran out of time.
    #[error("replica {target}: outcome unknown: {why}")]
    Lost {
        /// Who was asked.
        target: SocketAddr,
        /// Why.
        why: String,
        /// The attempt's time ran out (rather than the link breaking).
        timed_out: bool,
    },
    /// The retry machine stopped the call.
    #[error("gave up: {}", .0.label())]
    GaveUp(GaveUp),
}

/// One attempt at one replica.
#[derive(Clone)]
pub struct AttemptService {
    link: Arc<Link>,
}

impl Service<Call> for AttemptService {
    type Response = msg::Response;
    type Error = AttemptError;
    type Future = BoxFuture<'static, Result<msg::Response, AttemptError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let link = self.link.clone();
        Box::pin(async move { link.attempt(call.target, &call.req, call.budget).await })
    }
}

/// `tower::retry`'s policy: the retry machine's decision, carried out.
#[derive(Clone)]
pub struct RelayPolicy {
    link: Arc<Link>,
}

impl tower::retry::Policy<Call, msg::Response, AttemptError> for RelayPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        call: &mut Call,
        result: &mut Result<msg::Response, AttemptError>,
    ) -> Option<Self::Future> {
        let now = Instant::now();
        let r = &mut call.retry;
        let decision = match result {
            Ok(_) | Err(AttemptError::GaveUp(_)) => return None,
            Err(AttemptError::NotLeader { redirect, .. }) => r.failed(
                Failure::NotLeader {
                    redirect: *redirect,
                },
                now,
            ),
            Err(AttemptError::NotSent { why, .. }) => r.failed(Failure::NotSent(why.clone()), now),
            Err(AttemptError::Refused { why, .. }) => r.failed(Failure::Refused(why.clone()), now),
            Err(AttemptError::Lost {
                timed_out: true, ..
            }) => r.timed_out(now),
            Err(AttemptError::Lost { why, .. }) => r.failed(Failure::Lost(why.clone()), now),
        };
        self.carry_out(call, result, decision, now)
    }

    fn clone_request(&mut self, call: &Call) -> Option<Call> {
        Some(call.clone())
    }
}

impl RelayPolicy {
    fn carry_out(
        &self,
        call: &mut Call,
        result: &mut Result<msg::Response, AttemptError>,
        decision: Decision,
        now: Instant,
    ) -> Option<tokio::time::Sleep> {
        let pause = match decision {
            Decision::Redirect(leader) => {
                self.link.set_leader(Some(leader));
                call.target = Some(leader);
                Duration::ZERO
            }
            Decision::Retry { after } => {
                metrics::counter!("gateway_vault_retries_total").increment(1);
                call.target = None;
                after
            }
            Decision::GiveUp(why) => {
                *result = Err(AttemptError::GaveUp(why));
                return None;
            }
        };
        match call.retry.next_attempt(now + pause) {
            Ok(left) => call.budget = left,
            Err(why) => {
                *result = Err(AttemptError::GaveUp(why));
                return None;
            }
        }
        Some(tokio::time::sleep(pause))
    }
}

/// The stack for one cluster (cloned per call: the clones share the
/// concurrency limit).
pub type Stack = tower::load_shed::LoadShed<
    tower::limit::ConcurrencyLimit<
        tower::timeout::Timeout<tower::retry::Retry<RelayPolicy, AttemptService>>,
    >,
>;

/// Builds the stack over `link`.
pub fn stack(link: Arc<Link>, config: RelayConfig) -> Stack {
    ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(config.max_in_flight.max(1))
        .timeout(VAULT_CALL_DEADLINE)
        .retry(RelayPolicy { link: link.clone() })
        .service(AttemptService { link })
}

/// How a relayed call ended.
#[derive(Debug)]
pub enum Relayed {
    /// The vault answered (which may be its own error, relayed unchanged).
    Answer(msg::Response),
    /// Shed: the cluster's in-flight limit was reached; nothing was sent.
    Shed,
    /// The call's deadline passed.
    TimedOut,
    /// The retry machine gave up.
    GaveUp(GaveUp),
}

impl Relayed {
    /// Classifies what the stack returned.
    pub fn from_result(result: Result<msg::Response, BoxError>) -> Self {
        let e = match result {
            Ok(r) => return Self::Answer(r),
            Err(e) => e,
        };
        if e.is::<tower::load_shed::error::Overloaded>() {
            return Self::Shed;
        }
        if e.is::<tower::timeout::error::Elapsed>() {
            return Self::TimedOut;
        }
        match e.downcast::<AttemptError>() {
            Ok(a) => match *a {
                AttemptError::GaveUp(why) => Self::GaveUp(why),
                // The policy turns every failure it stops on into a
                // give-up; these are its fallbacks.
                AttemptError::NotLeader { .. } => Self::GaveUp(GaveUp::Electing),
                AttemptError::NotSent { .. } => Self::GaveUp(GaveUp::Unreachable),
                AttemptError::Refused { .. } => Self::GaveUp(GaveUp::Refused),
                AttemptError::Lost { .. } => Self::GaveUp(GaveUp::Lost),
            },
            Err(other) => {
                tracing::error!(error = %other, "unexpected error from the relay stack");
                Self::GaveUp(GaveUp::NoAnswer)
            }
        }
    }

    /// What the phone receives, and the `outcome` label.
    pub fn into_response(self) -> (msg::Response, &'static str) {
        match self {
            Self::Answer(r) => {
                let label = match &r.kind {
                    Some(msg::response::Kind::Error(e)) => ErrorCode::try_from(e.code)
                        .map(|c| c.label())
                        .unwrap_or("unknown_error"),
                    _ => "ok",
                };
                (r, label)
            }
            Self::Shed => {
                let mut e = msg::Error::new(
                    ErrorCode::Busy,
                    "the vault is busy with other requests; retry in a moment",
                );
                e.retry_after_ms = u32::try_from(BUSY_RETRY_AFTER.as_millis()).unwrap_or(500);
                (error(e), "shed")
            }
            Self::TimedOut => (unavailable(GaveUp::TimedOut.reason()), "timed_out"),
            Self::GaveUp(why) => {
                metrics::counter!("gateway_vault_gave_up_total", "reason" => why.label())
                    .increment(1);
                (unavailable(why.reason()), why.label())
            }
        }
    }
}

fn error(e: msg::Error) -> msg::Response {
    msg::Response {
        kind: Some(msg::response::Kind::Error(e)),
    }
}

/// The phone's `UNAVAILABLE`, in words without any internal detail.
pub fn unavailable(why: &str) -> msg::Response {
    let mut e = msg::Error::new(
        ErrorCode::Unavailable,
        format!("the vault is unavailable ({why}); retry in a moment"),
    );
    e.retry_after_ms = classify(ErrorCode::Unavailable).retry_after_ms();
    error(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: &msg::Response) -> Option<ErrorCode> {
        match &r.kind {
            Some(msg::response::Kind::Error(e)) => Some(e.code()),
            _ => None,
        }
    }

    #[test]
    fn every_ending_is_a_typed_answer_and_one_label_without_an_address() {
        let gave_up = [
            GaveUp::NoAnswer,
            GaveUp::Electing,
            GaveUp::Unreachable,
            GaveUp::Refused,
            GaveUp::Lost,
            GaveUp::TimedOut,
        ];
        let mut endings = vec![
            (Relayed::Shed, ErrorCode::Busy, "shed"),
            (Relayed::TimedOut, ErrorCode::Unavailable, "timed_out"),
        ];
        for g in gave_up {
            endings.push((Relayed::GaveUp(g), ErrorCode::Unavailable, g.label()));
        }
        for (ending, want, want_label) in endings {
            let (r, label) = ending.into_response();
            assert_eq!(code(&r), Some(want), "{label}");
            assert_eq!(label, want_label);
            let Some(msg::response::Kind::Error(e)) = &r.kind else {
                unreachable!()
            };
            assert!(
                e.retry_after_ms > 0,
                "{label}: the phone is told when to retry"
            );
            assert!(!e.message.chars().any(|c| c.is_ascii_digit()), "{e:?}");
        }
        // The vault's own answers pass unchanged, labelled by their code.
        let wrong = msg::Response::error(ErrorCode::WrongPassword, "wrong");
        let (r, label) = Relayed::Answer(wrong.clone()).into_response();
        assert_eq!((r, label), (wrong, "wrong_password"));
        let ok = msg::Response {
            kind: Some(msg::response::Kind::Status(msg::StatusResponse::default())),
        };
        assert_eq!(Relayed::Answer(ok).into_response().1, "ok");
    }

    #[test]
    fn the_stacks_errors_are_classified() {
        let shed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert!(matches!(Relayed::from_result(Err(shed)), Relayed::Shed));
        let gave_up: BoxError = Box::new(AttemptError::GaveUp(GaveUp::Lost));
        assert!(matches!(
            Relayed::from_result(Err(gave_up)),
            Relayed::GaveUp(GaveUp::Lost)
        ));
        let target = SocketAddr::from(([127, 0, 0, 1], 1));
        let lost: BoxError = Box::new(AttemptError::Lost {
            target,
            why: "reset".into(),
            timed_out: false,
        });
        assert!(matches!(
            Relayed::from_result(Err(lost)),
            Relayed::GaveUp(GaveUp::Lost)
        ));
    }
}
