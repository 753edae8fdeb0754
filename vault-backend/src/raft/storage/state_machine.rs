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
use serde::{Deserialize, Serialize};

use crate::account::{StoredAccount, Write};
use crate::raft::member::ReplicaNode;
use crate::raft::{apply, codec, Command, CommandResult, NodeId, TypeConfig};
use crate::store::ACCOUNTS;

use super::db::*;

/// Snapshot data in version 0 (release 0.1.0's layout, frozen).
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotV0 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ReplicaNode>,
    accounts: Vec<(String, Vec<u8>)>,
}

/// Snapshot data in version 1: as version 0, plus the active version.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotV1 {
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

pub(super) fn store_snapshot(
    db: &Db,
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
