//! The account state machine (openraft `RaftStateMachine`): applies
//! committed entries to the accounts table with the applied log id in the
//! same transaction, builds and installs snapshots, and tracks the
//! cluster's active command version.
//!
//! Must never: apply an entry or install a snapshot of a newer release
//! (the replica stops instead), or apply outside the log's order.

#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable};

use super::gated::Db;
use serde::Deserialize;

use crate::account::{StoredAccount, Write};
use crate::raft::member::ReplicaNode;
use crate::raft::{apply, codec, Command, CommandResult, NodeId, TypeConfig};
use crate::store::ACCOUNTS;

use super::db::*;

/// Snapshot data in version 0 (release 0.1.0's layout, frozen), generic
/// over how the rows are held: written by [`encode_snapshot_of`] straight
/// from the table, and read with rows borrowed from the snapshot's bytes
/// (`Rows<'_>`) rather than copied out of them.
#[derive(serde::Serialize, Deserialize)]
pub(super) struct SnapshotV0<R> {
    pub(super) last_applied: Option<LogId<NodeId>>,
    pub(super) membership: StoredMembership<NodeId, ReplicaNode>,
    pub(super) accounts: R,
}

/// Snapshot data in version 1: as version 0, plus the active version.
#[derive(serde::Serialize, Deserialize)]
pub(super) struct SnapshotV1<R> {
    pub(super) last_applied: Option<LogId<NodeId>>,
    pub(super) membership: StoredMembership<NodeId, ReplicaNode>,
    pub(super) accounts: R,
    pub(super) command_version: u32,
}

/// Rows borrowed from a snapshot's bytes.
type Rows<'a> = Vec<(&'a str, &'a [u8])>;

/// Encodes a snapshot of `accounts` in `version`'s layout (`SnapshotV0` or
/// `SnapshotV1`, byte for byte) straight from the table: one buffer of
/// the snapshot's exact size, with no copy of the rows beside it. (Encoding
/// a copied `Vec` of the rows held about three times the snapshot at once;
/// `examples/snapshot_memory.rs` measures it.)
pub(super) fn encode_snapshot_of(
    accounts: &impl ReadableTable<&'static str, &'static [u8]>,
    version: u32,
    last_applied: &Option<LogId<NodeId>>,
    membership: &StoredMembership<NodeId, ReplicaNode>,
) -> Result<Vec<u8>, SErr> {
    let mut head = codec::snapshot_header(version).map_err(w)?;
    head = postcard::to_extend(last_applied, head).map_err(w)?;
    head = postcard::to_extend(membership, head).map_err(w)?;
    let rows = accounts.len().map_err(r)?;
    head = postcard::to_extend(&rows, head).map_err(w)?;
    let tail = if version == codec::LEGACY_VERSION {
        Vec::new()
    } else {
        postcard::to_allocvec(&version).map_err(w)?
    };
    // A first pass sizes the buffer, so that it is never reallocated (which
    // holds the old and the new buffer at once).
    let mut body = 0usize;
    for item in accounts.iter().map_err(r)? {
        let (k, v) = item.map_err(r)?;
        body += varint_len(k.value().len()) + k.value().len();
        body += varint_len(v.value().len()) + v.value().len();
    }
    let mut out = Vec::with_capacity(head.len() + body + tail.len());
    out.extend_from_slice(&head);
    let mut written = 0u64;
    for item in accounts.iter().map_err(r)? {
        let (k, v) = item.map_err(r)?;
        out = postcard::to_extend(&(k.value(), v.value()), out).map_err(w)?;
        written += 1;
    }
    // Read in one transaction, so both passes saw the same rows.
    if written != rows {
        return Err(r(format!(
            "the accounts table changed under a snapshot ({rows} rows, then {written})"
        )));
    }
    out.extend_from_slice(&tail);
    Ok(out)
}

/// Decodes `T`, which borrows from `b`.
fn borrowed<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, SErr> {
    postcard::from_bytes(b).map_err(r)
}

/// Bytes of postcard's varint encoding of `n`.
fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

/// The cluster's active command version as this replica has applied it,
/// shared with the ledger, which proposes commands in it.
#[derive(Debug, Clone, Default)]
pub struct ActiveVersion(Arc<std::sync::atomic::AtomicU32>);

impl ActiveVersion {
    /// The version to write commands in.
    pub fn get(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set(&self, v: u32) {
        self.0.store(v, std::sync::atomic::Ordering::Release)
    }
}

/// The account state machine (openraft `RaftStateMachine`) over redb.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Db>,
    erasures: Option<tokio::sync::mpsc::UnboundedSender<u64>>,
    version: ActiveVersion,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateMachine")
    }
}

impl StateMachine {
    /// State machine over `db`.
    pub fn new(db: Arc<Db>) -> Result<Self, SErr> {
        let version = ActiveVersion::default();
        version.set(COMMAND_VERSION.read(&db)?.unwrap_or(codec::LEGACY_VERSION));
        Ok(Self {
            db,
            erasures: None,
            version,
        })
    }

    /// Reports the log index of every applied batch that erased a sealed
    /// record (see `erasure`).
    pub fn with_erasure_notices(mut self, tx: tokio::sync::mpsc::UnboundedSender<u64>) -> Self {
        self.erasures = Some(tx);
        self
    }

    /// The active command version, as applied here.
    pub fn active_version(&self) -> ActiveVersion {
        self.version.clone()
    }
}

pub(super) fn decode_row(b: &[u8]) -> Result<StoredAccount, SErr> {
    codec::decode_row(b).map_err(r)
}

/// Applies one command to the accounts table ([`apply::to_row`] decides);
/// the flag says whether a sealed record was erased.
pub(super) fn apply_command(
    t: &mut redb::Table<'_, &'static str, &'static [u8]>,
    id: &str,
    cmd: &Command,
    row_version: u32,
) -> Result<(CommandResult, bool), SErr> {
    let row = match t.get(id).map_err(r)? {
        Some(v) => Some(decode_row(v.value())?),
        None => None,
    };
    let applied = apply::to_row(row, cmd).map_err(r)?;
    match applied.write {
        Write::Keep => {}
        Write::Put(mut row) => {
            row.version = row_version;
            t.insert(id, row.encode_to_vec().as_slice()).map_err(w)?;
        }
        Write::Delete => {
            t.remove(id).map_err(w)?;
        }
    }
    Ok((applied.result, applied.erased))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let db = self.db.clone();
        let started = std::time::Instant::now();
        // Reading every account, encoding and an fsync: not on a worker.
        let (meta, data) = off_worker(move || {
            // The applied log id, the membership, the version and the rows
            // from one read transaction: openraft builds a snapshot in a
            // task of its own while entries go on being applied, and rows
            // read after the log id was (as they were until the chaos run
            // caught two replicas one guess apart at the same index) hold
            // entries the snapshot says it does not, which a follower that
            // installs it then applies a second time.
            let txn = db.begin_read().map_err(r)?;
            let last_applied = APPLIED.read_in(&txn)?.flatten();
            let membership = MEMBERSHIP.read_in(&txn)?.unwrap_or_default();
            let version = COMMAND_VERSION
                .read_in(&txn)?
                .unwrap_or(codec::LEGACY_VERSION);
            let t = txn.open_table(ACCOUNTS).map_err(r)?;
            // Snapshots follow the active version: a follower of the older
            // release during an upgrade must be able to install them.
            let data = encode_snapshot_of(&t, version, &last_applied, &membership)?;
            drop(t);
            drop(txn);
            let snapshot_id = match last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
                None => format!("empty-{}", rand::random::<u32>()),
            };
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            };
            store_snapshot(&db, &meta, &data)?;
            Ok((meta, data))
        })
        .await?;
        snapshot_done("build", &meta, data.len(), started);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Counts and logs a snapshot built or installed (`step`): how often a
/// follower needs a whole copy of the state, and its size, are what size a
/// replica's memory and its peers' links.
fn snapshot_done(
    step: &'static str,
    meta: &SnapshotMeta<NodeId, ReplicaNode>,
    bytes: usize,
    started: std::time::Instant,
) {
    let seconds = started.elapsed().as_secs_f64();
    metrics::counter!("vault_raft_snapshots_total", "step" => step).increment(1);
    metrics::histogram!("vault_raft_snapshot_seconds", "step" => step).record(seconds);
    metrics::gauge!("vault_raft_snapshot_bytes").set(bytes as f64);
    tracing::info!(
        step,
        index = meta.last_log_id.map(|l| l.index),
        bytes,
        seconds,
        "raft snapshot"
    );
}

pub(super) fn store_snapshot(
    db: &Db,
    meta: &SnapshotMeta<NodeId, ReplicaNode>,
    data: &[u8],
) -> Result<(), SErr> {
    let txn = db.begin_write().map_err(w)?;
    SNAP_META.write(&txn, meta)?;
    {
        let mut t = txn.open_table(SNAPSHOT).map_err(w)?;
        t.remove(K_SNAP_DATA).map_err(w)?;
        let mut chunks = txn.open_table(SNAPSHOT_CHUNKS).map_err(w)?;
        chunks.retain(|_, _| false).map_err(w)?;
        for (i, chunk) in data.chunks(SNAPSHOT_CHUNK).enumerate() {
            let i = u32::try_from(i).map_err(w)?;
            chunks.insert(i, chunk).map_err(w)?;
        }
    }
    commit_durable(txn)
}

/// The current snapshot's data: its chunks in order, read into one buffer
/// of their exact total size (or the single value of older files).
pub(super) fn read_snapshot_data(db: &Db) -> Result<Option<Vec<u8>>, SErr> {
    let txn = db.begin_read().map_err(r)?;
    let chunks = txn.open_table(SNAPSHOT_CHUNKS).map_err(r)?;
    let mut size = 0usize;
    for item in chunks.iter().map_err(r)? {
        size += item.map_err(r)?.1.value().len();
    }
    if size == 0 {
        let t = txn.open_table(SNAPSHOT).map_err(r)?;
        return Ok(t.get(K_SNAP_DATA).map_err(r)?.map(|v| v.value().to_vec()));
    }
    let mut data = Vec::with_capacity(size);
    for item in chunks.iter().map_err(r)? {
        data.extend_from_slice(item.map_err(r)?.1.value());
    }
    Ok(Some(data))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ReplicaNode>), SErr> {
        let txn = self.db.begin_read().map_err(r)?;
        let applied = APPLIED.read_in(&txn)?.flatten();
        let membership = MEMBERSHIP.read_in(&txn)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let db = self.db.clone();
        let start_version = self.version.get();
        let (out, erased, last, version) = off_worker(move || {
            let txn = db.begin_write().map_err(w)?;
            let mut out = Vec::new();
            let mut last = None;
            let mut membership = None;
            let mut erased = false;
            let mut version = start_version;
            {
                // One table handle for the whole batch, not one per login.
                let mut accounts = txn.open_table(ACCOUNTS).map_err(w)?;
                for e in entries {
                    last = Some(e.log_id);
                    out.push(match e.payload {
                        EntryPayload::Blank => CommandResult::Nothing,
                        EntryPayload::Normal(p) => match p.command() {
                            // Stop before anything of this batch is applied:
                            // the transaction is dropped, and openraft stops
                            // this replica with the error.
                            None => {
                                let why = codec::newer("log entry", p.version);
                                tracing::error!(index = e.log_id.index, "{why}");
                                return Err(StorageIOError::apply(e.log_id, any(why)).into());
                            }
                            Some(Command::UseVersion { version: v }) => {
                                if *v > codec::MAX_VERSION {
                                    let why = codec::newer("cluster version switch", *v);
                                    tracing::error!(index = e.log_id.index, "{why}");
                                    return Err(StorageIOError::apply(e.log_id, any(why)).into());
                                }
                                // Versions only rise.
                                version = version.max(*v);
                                COMMAND_VERSION.write(&txn, &version)?;
                                CommandResult::Done
                            }
                            Some(cmd) => {
                                let id = cmd.account_id().unwrap_or_default();
                                let (result, gone) = apply_command(
                                    &mut accounts,
                                    id,
                                    cmd,
                                    codec::row_version(version),
                                )?;
                                erased |= gone;
                                result
                            }
                        },
                        EntryPayload::Membership(m) => {
                            membership = Some(StoredMembership::new(Some(e.log_id), m));
                            CommandResult::Nothing
                        }
                    });
                }
            }
            if let Some(l) = last {
                APPLIED.write(&txn, &Some(l))?;
            }
            if let Some(mem) = membership {
                MEMBERSHIP.write(&txn, &mem)?;
            }
            // The log holds these entries durably; after a crash they are re-applied.
            commit_lazy(txn)?;
            Ok((out, erased, last, version))
        })
        .await?;
        if version != start_version {
            tracing::info!(version, "the cluster now writes command version {version}");
            self.version.set(version);
        }
        if let (true, Some(tx), Some(l)) = (erased, &self.erasures, last) {
            let _ = tx.send(l.index);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ReplicaNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let started = std::time::Instant::now();
        let len = snapshot.get_ref().len();
        let (db, owned) = (self.db.clone(), meta.clone());
        let version = off_worker(move || {
            let meta = owned;
            let data = snapshot.into_inner();
            let (version, body) = codec::snapshot_version(&data).map_err(r)?;
            let (accounts, command_version) = match version {
                codec::LEGACY_VERSION => (borrowed::<SnapshotV0<Rows>>(body)?.accounts, version),
                _ => {
                    let b: SnapshotV1<Rows> = borrowed(body)?;
                    (b.accounts, b.command_version)
                }
            };
            if command_version > codec::MAX_VERSION {
                return Err(r(codec::newer("snapshot", command_version)));
            }
            // Every row is checked before any is written.
            for (_, v) in &accounts {
                decode_row(v)?;
            }
            let txn = db.begin_write().map_err(w)?;
            {
                let mut t = txn.open_table(ACCOUNTS).map_err(w)?;
                t.retain(|_, _| false).map_err(w)?;
                for (k, v) in &accounts {
                    t.insert(*k, *v).map_err(w)?;
                }
            }
            APPLIED.write(&txn, &meta.last_log_id)?;
            MEMBERSHIP.write(&txn, &meta.last_membership)?;
            COMMAND_VERSION.write(&txn, &command_version)?;
            commit_durable(txn)?;
            drop(accounts);
            store_snapshot(&db, &meta, &data)?;
            Ok(command_version)
        })
        .await?;
        snapshot_done("install", meta, len, started);
        self.version.set(version);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let Some(meta) = SNAP_META.read(&self.db)? else {
            return Ok(None);
        };
        let db = self.db.clone();
        let Some(data) = off_worker(move || read_snapshot_data(&db)).await? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
