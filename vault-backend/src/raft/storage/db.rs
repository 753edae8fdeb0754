//! The replica database's tables and typed slots, and the transaction
//! helpers every part of the storage shares (durable and lazy commits, work
//! off the async workers).
//!
//! Must never: read a value with another type than it was written with
//! (every persisted value has one [`Slot`]).

#![allow(clippy::result_large_err)]

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use openraft::{
    AnyError, LogId, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::gated::{Db, Write};
use serde::{Deserialize, Serialize};

use crate::raft::member::ReplicaNode;
use crate::raft::{codec, NodeId};
use crate::store::ACCOUNTS;

pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub(super) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
pub(super) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// The current snapshot's data in chunks of [`SNAPSHOT_CHUNK`] bytes, in
/// order. (Release 0.3.0 and earlier kept it as one value, `K_SNAP_DATA` in
/// [`SNAPSHOT`], which is still read when there are no chunks.) One value
/// of the snapshot's size made redb hold a buffer rounded up to the next
/// power of two while writing it and another of the whole size to read it.
pub(super) const SNAPSHOT_CHUNKS: TableDefinition<u32, &[u8]> =
    TableDefinition::new("snapshot_chunks");
pub(super) const SNAPSHOT_CHUNK: usize = 60 * 1024;

pub(super) const K_SNAP_DATA: &str = "data";

/// One persisted value: its table, its key and its type. Every read and
/// every write of a key goes through its slot, so a value cannot be written
/// as one type and read back as another. (Release 0.1.0 wrote `last_purged`
/// as an `Option<LogId>` and read it as a `LogId`; postcard read the
/// option's tag as the term and ignored the last byte, so every replica that
/// had purged its log failed to restart.) The tests open every slot through
/// a real close and reopen of the database.
pub(super) struct Slot<T> {
    table: TableDefinition<'static, &'static str, &'static [u8]>,
    key: &'static str,
    _type: PhantomData<fn() -> T>,
}

impl<T: Serialize + for<'a> Deserialize<'a>> Slot<T> {
    pub(super) const fn new(
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &'static str,
    ) -> Self {
        Self {
            table,
            key,
            _type: PhantomData,
        }
    }

    pub(super) fn read(&self, db: &Database) -> Result<Option<T>, SErr> {
        self.read_in(&db.begin_read().map_err(r)?)
    }

    /// Reads the value as `txn` sees it, for a reader that needs several
    /// values and rows from one point in time.
    pub(super) fn read_in(&self, txn: &redb::ReadTransaction) -> Result<Option<T>, SErr> {
        let t = txn.open_table(self.table).map_err(r)?;
        let v = t.get(self.key).map_err(r)?;
        v.map(|v| dec(v.value())).transpose()
    }

    pub(super) fn write(&self, txn: &redb::WriteTransaction, value: &T) -> Result<(), SErr> {
        let bytes = enc(value)?;
        let mut t = txn.open_table(self.table).map_err(w)?;
        t.insert(self.key, bytes.as_slice()).map_err(w)?;
        Ok(())
    }
}

/// The vote (fsync'd before `save_vote` returns).
pub(super) const VOTE: Slot<Vote<NodeId>> = Slot::new(META, "vote");
/// The last committed log id openraft reported (written lazily).
pub(super) const COMMITTED: Slot<Option<LogId<NodeId>>> = Slot::new(META, "committed");
/// The last log id purged from the log.
pub(super) const PURGED: Slot<Option<LogId<NodeId>>> = Slot::new(META, "last_purged");
/// The last log id the state machine applied (same transaction as the rows).
pub(super) const APPLIED: Slot<Option<LogId<NodeId>>> = Slot::new(SM_META, "last_applied");
/// The last membership the state machine applied.
pub(super) const MEMBERSHIP: Slot<StoredMembership<NodeId, ReplicaNode>> =
    Slot::new(SM_META, "membership");
/// The cluster's active command version (`codec`), applied with the rows;
/// absent in release 0.1.0's files, which means version 0.
pub(super) const COMMAND_VERSION: Slot<u32> = Slot::new(SM_META, "command_version");
/// The database file's format (`codec::STORAGE_FORMAT`); absent in release
/// 0.1.0's files, which are format 1.
pub(super) const FORMAT: Slot<u32> = Slot::new(META, "format");
/// The current snapshot's metadata (its data is stored raw beside it).
pub(super) const SNAP_META: Slot<SnapshotMeta<NodeId, ReplicaNode>> = Slot::new(SNAPSHOT, "meta");

pub(super) type SErr = StorageError<NodeId>;

pub(super) fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

pub(super) fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, SErr> {
    postcard::to_allocvec(v).map_err(|e| StorageIOError::write(any(e)).into())
}

pub(super) fn dec<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, SErr> {
    postcard::from_bytes(b).map_err(|e| StorageIOError::read(any(e)).into())
}

pub(super) fn w(e: impl std::fmt::Display) -> SErr {
    StorageIOError::write(any(e)).into()
}

pub(super) fn r(e: impl std::fmt::Display) -> SErr {
    StorageIOError::read(any(e)).into()
}

/// redb's own default page cache (1 GiB).
pub const DEFAULT_CACHE_BYTES: usize = 1024 * 1024 * 1024;

/// Opens (or creates) the replica database with every table present, and
/// refuses a file written in a newer storage format.
pub fn open_database(path: &Path) -> Result<Arc<Db>, SErr> {
    open_database_with_cache(path, DEFAULT_CACHE_BYTES)
}

/// [`open_database`] with a page cache of `cache_bytes`.
pub fn open_database_with_cache(path: &Path, cache_bytes: usize) -> Result<Arc<Db>, SErr> {
    let db = Db::new(
        redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(r)?,
    );
    let txn = db.begin_write().map_err(w)?;
    txn.open_table(LOG).map_err(w)?;
    txn.open_table(META).map_err(w)?;
    txn.open_table(SM_META).map_err(w)?;
    txn.open_table(SNAPSHOT).map_err(w)?;
    txn.open_table(SNAPSHOT_CHUNKS).map_err(w)?;
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
pub(super) fn commit_durable(txn: Write<'_>) -> Result<(), SErr> {
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
pub(super) async fn off_worker<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SErr> + Send + 'static,
) -> Result<T, SErr> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| w(format!("storage task ended abnormally: {e}")))?
}

/// Writes one Raft metadata value, committed by `commit`.
pub(super) async fn put_meta<T: Serialize + for<'a> Deserialize<'a> + Send + 'static>(
    db: &Arc<Db>,
    slot: &'static Slot<T>,
    value: T,
    commit: for<'a> fn(Write<'a>) -> Result<(), SErr>,
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
pub(super) fn commit_lazy(txn: Write<'_>) -> Result<(), SErr> {
    let mut txn = txn;
    txn.set_durability(Durability::None).map_err(w)?;
    txn.commit().map_err(w)
}
