//! The Raft log and vote (openraft `RaftLogStorage`): appends in one
//! transaction and one fsync per batch, the freshness anchor raised before
//! an append is acknowledged, truncation and purge.
//!
//! Must never: report entries persisted before their fsync, or leave a hole
//! in the log.

#![allow(clippy::result_large_err)]

use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, Vote};
use redb::{Durability, ReadableDatabase, ReadableTable};

use super::gated::Db;

use crate::raft::freshness::{Anchor, Freshness};
use crate::raft::{NodeId, TypeConfig};

use super::db::*;

/// Log storage (openraft `RaftLogStorage`) over redb.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    /// `Some`: appends are acknowledged by the flusher thread's fsync.
    flusher: Option<mpsc::Sender<Flush>>,
    /// The freshness anchor, raised before anything is acknowledged.
    anchor: Option<Arc<Anchor>>,
}

/// An append for the flusher thread to make durable and acknowledge.
pub(super) type Flush = (LogFlushed<TypeConfig>, Option<LogId<NodeId>>);

pub(super) fn anchor_err(e: impl std::fmt::Display) -> SErr {
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
    pub fn new(db: Arc<Db>, async_flush: bool) -> std::io::Result<Self> {
        Self::with_anchor(db, async_flush, None)
    }

    /// As [`LogStore::new`], raising `anchor` (see `freshness`) after each
    /// durable vote and append, before acknowledging it.
    pub fn with_anchor(
        db: Arc<Db>,
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
pub(super) fn flusher(db: Arc<Db>, anchor: Option<Arc<Anchor>>, rx: mpsc::Receiver<Flush>) {
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
