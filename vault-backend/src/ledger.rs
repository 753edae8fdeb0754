//! The replicated account ledger the service reads and writes: every state
//! change is a Raft log entry committed on a majority and applied before the
//! call returns; every read first confirms leadership with a quorum
//! (`ensure_linearizable`) so a deposed leader cannot serve stale counters.
//!
//! Owns the mapping from openraft's outcomes to what a gateway can act on:
//! "not the leader, ask replica N at address A" (nothing was written), and
//! "unavailable" (no majority within the commit timeout; the change may
//! still commit later, which only ever counts a guess that got no answer).
//!
//! Must never: retry a write on its own (a timed-out login start may still
//! commit, and a retry would count a second guess), or read without the
//! leadership check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use protocol_spec::internal::ReplicaHealth;

use crate::account::{LastGuessHold, StoredAccount};
use crate::raft::member::ReplicaNode;
use crate::raft::storage::ActiveVersion;
use crate::raft::{Command, CommandResult, NodeId, Proposal, Raft};
use crate::store::Store;
use crate::VaultError;

/// What the vault service needs of its ledger: commit a command and get
/// what applying it produced, and read a row linearizably. [`Ledger`] is
/// the replicated one; the service's unit tests and the fuzz harness run
/// on an in-memory one ([`crate::memory_ledger`]) that applies commands
/// with the same [`crate::raft::apply`] rules.
pub trait AccountLedger: Send + Sync + 'static {
    /// Commits `cmd` and returns what applying it produced.
    fn write(
        &self,
        cmd: Command,
    ) -> impl std::future::Future<Output = Result<CommandResult, VaultError>> + Send;

    /// Reads one row, as of after every write acknowledged before the call.
    fn read(
        &self,
        account_id: &str,
    ) -> impl std::future::Future<Output = Result<Option<StoredAccount>, VaultError>> + Send;

    /// The command version the cluster writes (`raft::codec`).
    fn command_version(&self) -> u32;

    /// The last guesses on hold, as applied here (on the leader; empty
    /// elsewhere, where nothing could be committed anyway).
    fn held_logins(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<(String, LastGuessHold)>, VaultError>> + Send;
}

impl AccountLedger for Ledger {
    async fn write(&self, cmd: Command) -> Result<CommandResult, VaultError> {
        Ledger::write(self, cmd).await
    }

    async fn read(&self, account_id: &str) -> Result<Option<StoredAccount>, VaultError> {
        Ledger::read(self, account_id).await
    }

    fn command_version(&self) -> u32 {
        self.version.get()
    }

    async fn held_logins(&self) -> Result<Vec<(String, LastGuessHold)>, VaultError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.held())
            .await
            .map_err(VaultError::internal_from("scanning for held logins"))?
    }
}

/// Handle to the replicated ledger of one replica (cheap to clone).
#[derive(Clone)]
pub struct Ledger {
    raft: Raft,
    store: Store,
    version: ActiveVersion,
    serve_addrs: BTreeMap<NodeId, SocketAddr>,
    commit_timeout: Duration,
    barrier: Arc<ReadBarrier>,
}

/// Shares one leadership check among the reads that arrive while another
/// is running (group commit, for reads): a check that *started* after a
/// read arrived proves leadership at a moment after the read began, and
/// `ensure_linearizable` has applied everything committed before it, so the
/// read may use it. Without this, openraft runs one heartbeat round per read
/// and status reads queue behind each other.
#[derive(Default)]
struct ReadBarrier {
    /// Held while a check runs.
    lock: tokio::sync::Mutex<()>,
    /// Checks started so far.
    started: AtomicU64,
    /// The start number of the latest check that succeeded.
    succeeded: AtomicU64,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// A ledger over a started Raft node whose state machine maintains the
    /// `accounts` table of `store`. `serve_addrs` maps every member to its
    /// gateway-facing address (for "ask the leader" answers).
    pub fn new(
        raft: Raft,
        store: Store,
        version: ActiveVersion,
        serve_addrs: BTreeMap<NodeId, SocketAddr>,
        commit_timeout: Duration,
    ) -> Self {
        Self {
            raft,
            store,
            version,
            serve_addrs,
            commit_timeout,
            barrier: Arc::new(ReadBarrier::default()),
        }
    }

    /// The local store (its rows are the applied state; reading them without
    /// [`Ledger::read`]'s leadership check is for tests and metrics only).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Commits `cmd` on a majority and returns what applying it produced.
    /// It is written in the cluster's active command version, which every
    /// member reads (see `raft::codec`).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, VaultError> {
        self.refuse_if_stopped()?;
        let started = Instant::now();
        let proposal = Proposal::new(self.version.get(), cmd);
        let out = tokio::time::timeout(self.commit_timeout, self.raft.client_write(proposal)).await;
        metrics::histogram!("vault_commit_seconds").record(started.elapsed().as_secs_f64());
        match out {
            Err(_) => Err(self.no_quorum()),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(self.not_leader(&f))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(VaultError::internal_from("changing the membership")(e))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(engine_stopped(&e)),
        }
    }

    /// Reads one row after confirming with a quorum that this replica is
    /// still the leader and has applied everything committed before the read.
    pub async fn read(&self, account_id: &str) -> Result<Option<StoredAccount>, VaultError> {
        self.refuse_if_stopped()?;
        let started = Instant::now();
        let deadline = started + self.commit_timeout;
        let arrived = self.barrier.started.load(Ordering::Acquire);
        let turn = tokio::time::timeout(self.commit_timeout, self.barrier.lock.lock())
            .await
            .map_err(|_| self.no_quorum())?;
        // A read changes nothing, so a leadership check that missed its
        // quorum (a heartbeat answered late on a busy machine) is simply
        // asked again, within the same time budget.
        loop {
            if self.barrier.succeeded.load(Ordering::Acquire) > arrived {
                // A check that started after this read arrived succeeded.
                metrics::counter!("vault_reads_coalesced_total").increment(1);
                break;
            }
            let number = self.barrier.started.fetch_add(1, Ordering::AcqRel) + 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let check = tokio::time::timeout(left, self.raft.ensure_linearizable()).await;
            match check {
                Err(_) => return Err(self.no_quorum()),
                Ok(Ok(_)) => {
                    self.barrier.succeeded.fetch_max(number, Ordering::AcqRel);
                    break;
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(self.not_leader(&f))
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                    if Instant::now() + Duration::from_millis(20) >= deadline {
                        return Err(self.no_quorum());
                    }
                    metrics::counter!("vault_read_retries_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(Err(RaftError::Fatal(e))) => return Err(engine_stopped(&e)),
            }
        }
        drop(turn);
        metrics::histogram!("vault_read_seconds").record(started.elapsed().as_secs_f64());
        let store = self.store.clone();
        let id = account_id.to_owned();
        tokio::task::spawn_blocking(move || store.get(&id))
            .await
            .map_err(VaultError::internal_from("reading the account row"))?
    }

    /// "Ask the leader", at its gateway-facing address as the membership
    /// records it (a member recorded by release 0.1.0 has none there: then
    /// the config's member table).
    fn not_leader(&self, f: &ForwardToLeader<NodeId, ReplicaNode>) -> VaultError {
        let from_membership = f.leader_node.as_ref().and_then(|n| n.serve);
        VaultError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: from_membership.or_else(|| {
                f.leader_id
                    .and_then(|id| self.serve_addrs.get(&id).copied())
            }),
        }
    }

    /// A replica whose consensus engine has stopped leads nothing and does
    /// nothing: it says "not the leader, no leader known" before proposing,
    /// so that the gateway may send the request elsewhere (SPEC 8.1; its
    /// answers' `health` says `STOPPED`, and the gateway routes around it).
    /// Only an engine that stops during a proposal leaves the outcome
    /// unknown (`Unavailable`, below).
    fn refuse_if_stopped(&self) -> Result<(), VaultError> {
        if self.raft.metrics().borrow().running_state.is_err() {
            metrics::counter!("vault_refused_while_stopped_total").increment(1);
            return Err(VaultError::NotLeader {
                leader_id: None,
                leader_addr: None,
            });
        }
        Ok(())
    }

    /// Whether this replica can serve, as the gateway should know it.
    pub fn health(&self) -> ReplicaHealth {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.running_state.is_err() {
            ReplicaHealth::Stopped
        } else if m.current_leader.is_none() {
            ReplicaHealth::NoLeader
        } else {
            ReplicaHealth::Serving
        }
    }

    /// The log index of the membership this replica last applied.
    pub fn membership_id(&self) -> u64 {
        let m = self.raft.metrics();
        let id = m.borrow().membership_config.log_id().map(|l| l.index);
        id.unwrap_or(0)
    }

    /// The cluster's members as this replica last applied them: id,
    /// gateway-facing address, and whether it votes; and the log index of
    /// that membership (it only grows, so a gateway keeps the newest).
    pub fn members(&self) -> (u64, Vec<(NodeId, Option<SocketAddr>, bool)>) {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let index = m.log_id().map(|l| l.index).unwrap_or(0);
        let voters: std::collections::BTreeSet<NodeId> = m.membership().voter_ids().collect();
        let list = m
            .nodes()
            .map(|(id, n)| {
                let serve = n.serve.or_else(|| self.serve_addrs.get(id).copied());
                (*id, serve, voters.contains(id))
            })
            .collect();
        (index, list)
    }

    fn no_quorum(&self) -> VaultError {
        metrics::counter!("vault_commit_timeouts_total").increment(1);
        VaultError::Unavailable(
            "no majority of the vault cluster's replicas is reachable; retry later".into(),
        )
    }
}

/// The engine's fatal error goes to this replica's log; the phone (through
/// the gateway, which passes vault answers unchanged) gets words without
/// the engine's details, which can name peers' addresses.
fn engine_stopped(e: &dyn std::fmt::Display) -> VaultError {
    tracing::error!(error = %e, "the consensus engine stopped");
    VaultError::Unavailable(
        "this vault replica's consensus engine stopped; retry in a moment".into(),
    )
}
