//! The Raft log, vote and state machine of one replica, in one redb file.
//!
//! Durability and group commit: while one append is being fsync'd, openraft
//! queues the client writes that arrive and hands them to the next `append`
//! as one batch, which is written in one transaction with one fsync — so
//! throughput is not bounded by one fsync per login (BENCHMARKS.md: ~360/s
//! with one write in flight, ~2,500/s with 64). An optional flusher thread
//! (`async_flush`) acknowledges appends from a separate fsync instead; it
//! measured slower here, and no faster for latency at half load, so it is
//! off by default. The vote is fsync'd before
//! `save_vote` returns. The state machine is applied in the same
//! database with the applied log id in the same transaction, so after a crash
//! it is consistent with some applied prefix and openraft re-applies the rest
//! from the durable log.
//!
//! Must never: report entries persisted before their fsync, or leave a hole
//! in the log.

// openraft's trait signatures fix the (large) error types.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::freshness::{Anchor, Freshness};
use super::member::ReplicaNode;
use super::{apply, codec, Command, CommandResult, NodeId, TypeConfig};
use crate::account::{StoredAccount, Write};
use crate::store::ACCOUNTS;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const K_SNAP_DATA: &str = "data";

/// One persisted value: its table, its key and its type. Every read and
/// every write of a key goes through its slot, so a value cannot be written
/// as one type and read back as another. (Release 0.1.0 wrote `last_purged`
/// as an `Option<LogId>` and read it as a `LogId`; postcard read the
/// option's tag as the term and ignored the last byte, so every replica that
/// had purged its log failed to restart.) The tests open every slot through
/// a real close and reopen of the database.
struct Slot<T> {
    table: TableDefinition<'static, &'static str, &'static [u8]>,
    key: &'static str,
    _type: PhantomData<fn() -> T>,
}

impl<T: Serialize + for<'a> Deserialize<'a>> Slot<T> {
    const fn new(
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &'static str,
    ) -> Self {
        Self {
            table,
            key,
            _type: PhantomData,
        }
    }

    fn read(&self, db: &Database) -> Result<Option<T>, SErr> {
        let txn = db.begin_read().map_err(r)?;
        let t = txn.open_table(self.table).map_err(r)?;
        let v = t.get(self.key).map_err(r)?;
        v.map(|v| dec(v.value())).transpose()
    }

    fn write(&self, txn: &redb::WriteTransaction, value: &T) -> Result<(), SErr> {
        let bytes = enc(value)?;
        let mut t = txn.open_table(self.table).map_err(w)?;
        t.insert(self.key, bytes.as_slice()).map_err(w)?;
        Ok(())
    }
}

/// The vote (fsync'd before `save_vote` returns).
const VOTE: Slot<Vote<NodeId>> = Slot::new(META, "vote");
/// The last committed log id openraft reported (written lazily).
const COMMITTED: Slot<Option<LogId<NodeId>>> = Slot::new(META, "committed");
/// The last log id purged from the log.
const PURGED: Slot<Option<LogId<NodeId>>> = Slot::new(META, "last_purged");
/// The last log id the state machine applied (same transaction as the rows).
const APPLIED: Slot<Option<LogId<NodeId>>> = Slot::new(SM_META, "last_applied");
/// The last membership the state machine applied.
const MEMBERSHIP: Slot<StoredMembership<NodeId, ReplicaNode>> = Slot::new(SM_META, "membership");
/// The cluster's active command version (`codec`), applied with the rows;
/// absent in release 0.1.0's files, which means version 0.
const COMMAND_VERSION: Slot<u32> = Slot::new(SM_META, "command_version");
/// The database file's format (`codec::STORAGE_FORMAT`); absent in release
/// 0.1.0's files, which are format 1.
const FORMAT: Slot<u32> = Slot::new(META, "format");
/// The current snapshot's metadata (its data is stored raw beside it).
const SNAP_META: Slot<SnapshotMeta<NodeId, ReplicaNode>> = Slot::new(SNAPSHOT, "meta");

type SErr = StorageError<NodeId>;

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, SErr> {
    postcard::to_allocvec(v).map_err(|e| StorageIOError::write(any(e)).into())
}

fn dec<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, SErr> {
    postcard::from_bytes(b).map_err(|e| StorageIOError::read(any(e)).into())
}

fn w(e: impl std::fmt::Display) -> SErr {
    StorageIOError::write(any(e)).into()
}

fn r(e: impl std::fmt::Display) -> SErr {
    StorageIOError::read(any(e)).into()
}

/// Opens (or creates) the replica database with every table present, and
/// refuses a file written in a newer storage format.
pub fn open_database(path: &Path) -> Result<Arc<Database>, SErr> {
    let db = Database::create(path).map_err(r)?;
    let txn = db.begin_write().map_err(w)?;
    txn.open_table(LOG).map_err(w)?;
    txn.open_table(META).map_err(w)?;
    txn.open_table(SM_META).map_err(w)?;
    txn.open_table(SNAPSHOT).map_err(w)?;
    txn.open_table(ACCOUNTS).map_err(w)?;
    commit_durable(txn)?;
    match FORMAT.read(&db)? {
        Some(f) if f > codec::STORAGE_FORMAT => {
            return Err(r(format!(
            "{} is in storage format {f}, written by a newer release (this one reads up to {}): \
                 upgrade this replica",
            path.display(),
            codec::STORAGE_FORMAT
        )))
        }
        Some(_) => {}
        None => {
            let txn = db.begin_write().map_err(w)?;
            FORMAT.write(&txn, &codec::STORAGE_FORMAT)?;
            commit_durable(txn)?;
        }
    }
    Ok(Arc::new(db))
}

/// Commits a transaction with an fsync.
fn commit_durable(txn: redb::WriteTransaction) -> Result<(), SErr> {
    let mut txn = txn;
    txn.set_durability(Durability::Immediate).map_err(w)?;
    txn.commit().map_err(w)
}

/// Runs a write transaction on the blocking pool, never on an async worker:
/// redb admits one writer at a time, so `begin_write` waits out any other
/// writer's fsync, and a durable commit waits for the disk. On a worker
/// thread either would stall every task scheduled there (the replica's Raft
/// RPCs, the gateway link, and in one-process stacks the other replicas).
/// On this machine it changed neither throughput nor latency measurably
/// (BENCHMARKS.md, "Recover: where the CPU and the latency go"); it is here
/// for disks slower than this one.
async fn off_worker<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SErr> + Send + 'static,
) -> Result<T, SErr> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| w(format!("storage task ended abnormally: {e}")))?
}

/// Writes one Raft metadata value, committed by `commit`.
async fn put_meta<T: Serialize + for<'a> Deserialize<'a> + Send + 'static>(
    db: &Arc<Database>,
    slot: &'static Slot<T>,
    value: T,
    commit: fn(redb::WriteTransaction) -> Result<(), SErr>,
) -> Result<(), SErr> {
    let db = db.clone();
    off_worker(move || {
        let txn = db.begin_write().map_err(w)?;
        slot.write(&txn, &value)?;
        commit(txn)
    })
    .await
}

/// Commits without an fsync (made durable by the next durable commit).
fn commit_lazy(txn: redb::WriteTransaction) -> Result<(), SErr> {
    let mut txn = txn;
    txn.set_durability(Durability::None).map_err(w)?;
    txn.commit().map_err(w)
}

/// Log storage (openraft `RaftLogStorage`) over redb.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// `Some`: appends are acknowledged by the flusher thread's fsync.
    flusher: Option<mpsc::Sender<Flush>>,
    /// The freshness anchor, raised before anything is acknowledged.
    anchor: Option<Arc<Anchor>>,
}

/// An append for the flusher thread to make durable and acknowledge.
type Flush = (LogFlushed<TypeConfig>, Option<LogId<NodeId>>);

fn anchor_err(e: impl std::fmt::Display) -> SErr {
    w(format!(
        "cannot advance the freshness anchor ({e}); nothing is acknowledged without it"
    ))
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl LogStore {
    /// Log storage over `db`. By default each (batched) append is fsync'd in
    /// place; with `async_flush`, a flusher thread makes appends durable with
    /// shared fsyncs and acknowledges them afterwards.
    pub fn new(db: Arc<Database>, async_flush: bool) -> std::io::Result<Self> {
        Self::with_anchor(db, async_flush, None)
    }

    /// As [`LogStore::new`], raising `anchor` (see `freshness`) after each
    /// durable vote and append, before acknowledging it.
    pub fn with_anchor(
        db: Arc<Database>,
        async_flush: bool,
        anchor: Option<Arc<Anchor>>,
    ) -> std::io::Result<Self> {
        let flusher = if async_flush {
            let (tx, rx) = mpsc::channel::<Flush>();
            let (fdb, fanchor) = (db.clone(), anchor.clone());
            std::thread::Builder::new()
                .name("raft-log-flush".into())
                .spawn(move || flusher(fdb, fanchor, rx))?;
            Some(tx)
        } else {
            None
        };
        Ok(Self {
            db,
            flusher,
            anchor,
        })
    }

    /// What this log's data says about its freshness: its vote and last log
    /// id (checked against the anchor on start).
    pub async fn freshness(&mut self) -> Result<Freshness, SErr> {
        Ok(Freshness {
            vote: self.read_vote().await?.unwrap_or_default(),
            last_log: self.get_log_state().await?.last_log_id,
        })
    }
}

/// Waits for appends, then makes everything appended so far durable with one
/// fsync and acknowledges all of them.
fn flusher(db: Arc<Database>, anchor: Option<Arc<Anchor>>, rx: mpsc::Receiver<Flush>) {
    while let Ok((first, last)) = rx.recv() {
        let mut batch = vec![first];
        let mut last = last;
        while let Ok((more, l)) = rx.try_recv() {
            batch.push(more);
            last = last.max(l);
        }
        let started = std::time::Instant::now();
        let res = db
            .begin_write()
            .map_err(|e| e.to_string())
            .and_then(|mut t| {
                t.set_durability(Durability::Immediate)
                    .map_err(|e| e.to_string())?;
                t.commit().map_err(|e| e.to_string())
            });
        metrics::histogram!("vault_raft_log_fsync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("vault_raft_log_fsync_batch_size").record(batch.len() as f64);
        let res = match (res, &anchor, last) {
            (Ok(()), Some(a), Some(l)) => a.saw_log(l).map_err(|e| anchor_err(e).to_string()),
            (res, _, _) => res,
        };
        for cb in batch {
            cb.log_io_completed(res.clone().map_err(|e| std::io::Error::other(e.clone())));
        }
    }
}

impl LogStore {
    /// Writes `entries` to the log in one transaction: fsync'd before it
    /// returns, or (with `async_flush`) left for the flusher's next fsync.
    /// What `append` does before acknowledging.
    pub async fn write_entries(&self, entries: Vec<Entry<TypeConfig>>) -> Result<(), SErr> {
        let rows = entries
            .iter()
            .map(|e| Ok((e.log_id.index, enc(e)?)))
            .collect::<Result<Vec<_>, SErr>>()?;
        let db = self.db.clone();
        let durable = self.flusher.is_none();
        let (anchor, last) = (self.anchor.clone(), entries.last().map(|e| e.log_id));
        off_worker(move || {
            let txn = db.begin_write().map_err(w)?;
            {
                let mut t = txn.open_table(LOG).map_err(w)?;
                for (index, row) in &rows {
                    t.insert(*index, row.as_slice()).map_err(w)?;
                }
            }
            if !durable {
                return commit_lazy(txn);
            }
            let started = std::time::Instant::now();
            commit_durable(txn)?;
            metrics::histogram!("vault_raft_log_fsync_seconds")
                .record(started.elapsed().as_secs_f64());
            if let (Some(a), Some(l)) = (anchor, last) {
                let started = std::time::Instant::now();
                a.saw_log(l).map_err(anchor_err)?;
                metrics::histogram!("vault_raft_anchor_write_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Ok(())
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Bound::Included(*e),
            Bound::Excluded(e) => Bound::Excluded(*e),
            Bound::Unbounded => Bound::Unbounded,
        };
        let txn = self.db.begin_read().map_err(r)?;
        let t = txn.open_table(LOG).map_err(r)?;
        let mut out = Vec::new();
        for item in t.range::<u64>((Bound::Included(start), end)).map_err(r)? {
            let (_, v) = item.map_err(r)?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged = PURGED.read(&self.db)?.flatten();
        let txn = self.db.begin_read().map_err(r)?;
        let t = txn.open_table(LOG).map_err(r)?;
        let last = match t.last().map_err(r)? {
            Some((_, v)) => Some(dec::<Entry<TypeConfig>>(v.value())?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        put_meta(&self.db, &VOTE, *vote, commit_durable).await?;
        if let Some(a) = self.anchor.clone() {
            let vote = *vote;
            off_worker(move || a.saw_vote(vote).map_err(anchor_err)).await?;
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        VOTE.read(&self.db)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        put_meta(&self.db, &COMMITTED, committed, commit_lazy).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(COMMITTED.read(&self.db)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let last = entries.last().map(|e| e.log_id);
        let res = self.write_entries(entries).await;
        match &self.flusher {
            Some(f) => {
                res?;
                f.send((callback, last))
                    .map_err(|_| w("the log flusher stopped"))
            }
            None => {
                callback.log_io_completed(
                    res.as_ref()
                        .map(|_| ())
                        .map_err(|e| std::io::Error::other(e.to_string())),
                );
                res
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let db = self.db.clone();
        let anchor = self.anchor.clone();
        off_worker(move || {
            if let Some(a) = anchor {
                // The log's last id once truncated: the entry before, or the
                // purge point. The anchor goes down first.
                let kept = {
                    let txn = db.begin_read().map_err(r)?;
                    let t = txn.open_table(LOG).map_err(r)?;
                    let before = t.range::<u64>(..log_id.index).map_err(r)?.next_back();
                    match before {
                        Some(item) => {
                            let (_, v) = item.map_err(r)?;
                            Some(dec::<Entry<TypeConfig>>(v.value())?.log_id)
                        }
                        None => PURGED.read(&db)?.flatten(),
                    }
                };
                a.will_truncate_to(kept).map_err(anchor_err)?;
            }
            let txn = db.begin_write().map_err(w)?;
            {
                let mut t = txn.open_table(LOG).map_err(w)?;
                t.retain_in(log_id.index.., |_, _| false).map_err(w)?;
            }
            commit_durable(txn)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let db = self.db.clone();
        let anchor = self.anchor.clone();
        off_worker(move || {
            let txn = db.begin_write().map_err(w)?;
            PURGED.write(&txn, &Some(log_id))?;
            {
                let mut t = txn.open_table(LOG).map_err(w)?;
                t.retain_in(..=log_id.index, |_, _| false).map_err(w)?;
            }
            commit_durable(txn)?;
            // After a snapshot is installed the purge point is the last log id.
            if let Some(a) = anchor {
                a.saw_log(log_id).map_err(anchor_err)?;
            }
            Ok(())
        })
        .await
    }
}

/// Snapshot data in version 0 (release 0.1.0's layout, frozen).
#[derive(Serialize, Deserialize)]
struct SnapshotV0 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ReplicaNode>,
    accounts: Vec<(String, Vec<u8>)>,
}

/// Snapshot data in version 1: as version 0, plus the active version.
#[derive(Serialize, Deserialize)]
struct SnapshotV1 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ReplicaNode>,
    accounts: Vec<(String, Vec<u8>)>,
    command_version: u32,
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
    db: Arc<Database>,
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
    pub fn new(db: Arc<Database>) -> Result<Self, SErr> {
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

fn decode_row(b: &[u8]) -> Result<StoredAccount, SErr> {
    codec::decode_row(b).map_err(r)
}

/// Applies one command to the accounts table ([`apply::to_row`] decides);
/// the flag says whether a sealed record was erased.
fn apply_command(
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
        let (last_applied, membership) = self.applied_state().await?;
        let db = self.db.clone();
        let version = COMMAND_VERSION.read(&db)?.unwrap_or(codec::LEGACY_VERSION);
        // Reading every account, encoding and an fsync: not on a worker.
        let (meta, data) = off_worker(move || {
            let txn = db.begin_read().map_err(r)?;
            let t = txn.open_table(ACCOUNTS).map_err(r)?;
            let mut accounts = Vec::new();
            for item in t.iter().map_err(r)? {
                let (k, v) = item.map_err(r)?;
                accounts.push((k.value().to_owned(), v.value().to_vec()));
            }
            drop(t);
            drop(txn);
            // Snapshots follow the active version: a follower of the older
            // release during an upgrade must be able to install them.
            let data = match version {
                codec::LEGACY_VERSION => codec::encode_snapshot(
                    version,
                    &SnapshotV0 {
                        last_applied,
                        membership: membership.clone(),
                        accounts,
                    },
                ),
                _ => codec::encode_snapshot(
                    version,
                    &SnapshotV1 {
                        last_applied,
                        membership: membership.clone(),
                        accounts,
                        command_version: version,
                    },
                ),
            }
            .map_err(w)?;
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
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

fn store_snapshot(
    db: &Database,
    meta: &SnapshotMeta<NodeId, ReplicaNode>,
    data: &[u8],
) -> Result<(), SErr> {
    let txn = db.begin_write().map_err(w)?;
    SNAP_META.write(&txn, meta)?;
    {
        let mut t = txn.open_table(SNAPSHOT).map_err(w)?;
        t.insert(K_SNAP_DATA, data).map_err(w)?;
    }
    commit_durable(txn)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ReplicaNode>), SErr> {
        let applied = APPLIED.read(&self.db)?.flatten();
        let membership = MEMBERSHIP.read(&self.db)?.unwrap_or_default();
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
        let (db, meta) = (self.db.clone(), meta.clone());
        let version = off_worker(move || {
            let data = snapshot.into_inner();
            let (version, body) = codec::snapshot_version(&data).map_err(r)?;
            let (accounts, command_version) = match version {
                codec::LEGACY_VERSION => (dec::<SnapshotV0>(body)?.accounts, version),
                _ => {
                    let b: SnapshotV1 = dec(body)?;
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
                    t.insert(k.as_str(), v.as_slice()).map_err(w)?;
                }
            }
            APPLIED.write(&txn, &meta.last_log_id)?;
            MEMBERSHIP.write(&txn, &meta.last_membership)?;
            COMMAND_VERSION.write(&txn, &command_version)?;
            commit_durable(txn)?;
            store_snapshot(&db, &meta, &data)?;
            Ok(command_version)
        })
        .await?;
        self.version.set(version);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let Some(meta) = SNAP_META.read(&self.db)? else {
            return Ok(None);
        };
        let txn = self.db.begin_read().map_err(r)?;
        let t = txn.open_table(SNAPSHOT).map_err(r)?;
        let data = match t.get(K_SNAP_DATA).map_err(r)? {
            Some(v) => v.value().to_vec(),
            None => return Ok(None),
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use openraft::testing::log_id;
    use openraft::Membership;

    use super::*;
    use crate::account::Authorization;
    use crate::raft::Proposal;

    type E = Entry<TypeConfig>;

    fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> E {
        Entry {
            log_id: log_id(term, 1, index),
            payload,
        }
    }

    fn register(account: &str, id: u8) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(Proposal::current(Command::Register {
            account_id: account.into(),
            authorization: Authorization::None,
            registration_id: vec![id; 16],
            sealed_record: vec![id; 40],
        }))
    }

    fn membership(ids: &[u64]) -> EntryPayload<TypeConfig> {
        let nodes: BTreeMap<u64, ReplicaNode> = ids
            .iter()
            .map(|i| {
                let a = |p: u64| std::net::SocketAddr::from(([127, 0, 0, 1], (p + i) as u16));
                (*i, ReplicaNode::new(a(7900), a(7800), None))
            })
            .collect();
        EntryPayload::Membership(Membership::new(vec![ids.iter().copied().collect()], nodes))
    }

    /// Everything openraft can ask of a store after a restart.
    #[derive(Debug, PartialEq)]
    struct Seen {
        vote: Option<Vote<NodeId>>,
        committed: Option<LogId<NodeId>>,
        log: (Option<LogId<NodeId>>, Option<LogId<NodeId>>),
        entries: Vec<String>,
        applied: (Option<LogId<NodeId>>, StoredMembership<NodeId, ReplicaNode>),
        snapshot: Option<(SnapshotMeta<NodeId, ReplicaNode>, Vec<u8>)>,
        accounts: Vec<(String, Vec<u8>)>,
    }

    async fn seen(db: &Arc<Database>) -> Seen {
        let mut log = LogStore::new(db.clone(), false).unwrap();
        let mut sm = StateMachine::new(db.clone()).unwrap();
        let st = log.get_log_state().await.unwrap();
        let entries = log
            .try_get_log_entries(0..u64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        let snapshot = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .map(|s| (s.meta, s.snapshot.into_inner()));
        let txn = db.begin_read().unwrap();
        let accounts = txn
            .open_table(ACCOUNTS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value().to_owned(), v.value().to_vec())
            })
            .collect();
        Seen {
            vote: log.read_vote().await.unwrap(),
            committed: log.read_committed().await.unwrap(),
            log: (st.last_purged_log_id, st.last_log_id),
            entries,
            applied: sm.applied_state().await.unwrap(),
            snapshot,
            accounts,
        }
    }

    /// Closes the database for real: every handle is dropped, and redb lets
    /// the file be opened again only once the last one is gone.
    fn reopen(db: Arc<Database>, path: &Path) -> Arc<Database> {
        assert_eq!(Arc::strong_count(&db), 1, "a handle still holds the file");
        drop(db);
        open_database(path).unwrap()
    }

    #[tokio::test]
    async fn every_persisted_value_survives_a_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.redb");
        let db = open_database(&path).unwrap();
        {
            let mut log = LogStore::new(db.clone(), false).unwrap();
            let mut sm = StateMachine::new(db.clone()).unwrap();
            log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
            let first: Vec<E> = vec![
                entry(1, 1, membership(&[1, 2, 3])),
                entry(2, 2, EntryPayload::Blank),
                entry(2, 3, register("alice", 1)),
                entry(2, 4, register("bob", 2)),
                entry(
                    3,
                    5,
                    EntryPayload::Normal(Proposal::current(Command::LoginStart {
                        account_id: "alice".into(),
                        max_attempts: 10,
                    })),
                ),
                entry(3, 6, register("carol", 3)),
            ];
            log.write_entries(first.clone()).await.unwrap();
            log.save_committed(Some(log_id(3, 1, 6))).await.unwrap();
            sm.apply(first).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            log.purge(log_id(2, 1, 4)).await.unwrap();
            // Written after the snapshot and purge, one of them then truncated.
            log.write_entries(vec![
                entry(3, 7, register("dave", 4)),
                entry(3, 8, register("erin", 5)),
                entry(3, 9, register("frank", 6)),
            ])
            .await
            .unwrap();
            log.truncate(log_id(3, 1, 9)).await.unwrap();
        }
        let before = seen(&db).await;
        assert_eq!(before.log, (Some(log_id(2, 1, 4)), Some(log_id(3, 1, 8))));
        assert_eq!(before.entries.len(), 4, "{:?}", before.entries);
        assert_eq!(before.accounts.len(), 3);
        assert!(before.snapshot.is_some());
        let db = reopen(db, &path);
        assert_eq!(seen(&db).await, before);
        // And a second time, with nothing written in between.
        let db = reopen(db, &path);
        assert_eq!(seen(&db).await, before);
    }

    #[tokio::test]
    async fn an_installed_snapshot_survives_a_close_and_reopen() {
        for version in [codec::LEGACY_VERSION, codec::MAX_VERSION] {
            let dir = tempfile::tempdir().unwrap();
            // A snapshot built on one replica, in the cluster's version ...
            let src = open_database(&dir.path().join("a.redb")).unwrap();
            let mut entries = vec![entry(1, 1, membership(&[1, 2, 3]))];
            if version > 0 {
                let up = Command::UseVersion { version };
                entries.push(entry(1, 2, EntryPayload::Normal(Proposal::current(up))));
            } else {
                entries.push(entry(1, 2, EntryPayload::Blank));
            }
            entries.push(entry(1, 3, register("alice", 1)));
            entries.push(entry(1, 4, register("bob", 2)));
            let mut sm = StateMachine::new(src.clone()).unwrap();
            sm.apply(entries).await.unwrap();
            assert_eq!(sm.active_version().get(), version);
            let snap = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert_eq!(
                codec::snapshot_version(snap.snapshot.get_ref()).unwrap().0,
                version
            );
            // ... installed on an empty one, as openraft does: install, then purge.
            let path = dir.path().join("b.redb");
            let db = open_database(&path).unwrap();
            {
                let mut sm = StateMachine::new(db.clone()).unwrap();
                let mut log = LogStore::new(db.clone(), false).unwrap();
                sm.install_snapshot(&snap.meta, snap.snapshot)
                    .await
                    .unwrap();
                assert_eq!(sm.active_version().get(), version);
                log.purge(log_id(1, 1, 4)).await.unwrap();
            }
            let before = seen(&db).await;
            assert_eq!(before.log, (Some(log_id(1, 1, 4)), Some(log_id(1, 1, 4))));
            assert_eq!(before.applied.0, Some(log_id(1, 1, 4)));
            assert_eq!(before.accounts.len(), 2);
            let db = reopen(db, &path);
            assert_eq!(seen(&db).await, before);
            let sm = StateMachine::new(db.clone()).unwrap();
            assert_eq!(sm.active_version().get(), version, "survives the reopen");
            let row = crate::store::Store::from_db(db)
                .get("alice")
                .unwrap()
                .unwrap();
            assert_eq!(row.version, version);
        }
    }

    #[tokio::test]
    async fn a_file_of_a_newer_storage_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.redb");
        let db = open_database(&path).unwrap();
        let txn = db.begin_write().unwrap();
        FORMAT.write(&txn, &(codec::STORAGE_FORMAT + 1)).unwrap();
        txn.commit().unwrap();
        drop(db);
        let err = open_database(&path).unwrap_err().to_string();
        assert!(err.contains("newer release"), "{err}");
    }

    struct OnDisk;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir>
        for OnDisk
    {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), SErr> {
            let dir = tempfile::tempdir().map_err(w)?;
            let db = open_database(&dir.path().join("vault.redb")).map_err(w)?;
            let log = LogStore::new(db.clone(), false).map_err(w)?;
            Ok((dir, log, StateMachine::new(db)?))
        }
    }

    /// openraft's own conformance suite for storage implementations.
    #[test]
    fn openraft_storage_suite() {
        openraft::testing::Suite::test_all(OnDisk).unwrap();
    }
}
