//! Erasure that sticks: once a record is erased (lockout, delete, or a
//! replaced deposit), its sealed bytes must not stay readable anywhere in
//! the replica's file.
//!
//! Three places can still hold them after the state machine drops the row:
//! the Raft log entries that carried it (a registration, a verified last
//! guess), the current snapshot, and pages redb has freed but not reused —
//! redb does not zero freed pages (measured: a deleted value's bytes stay in
//! the file until the page is reused). So after an erasure is applied the
//! scrubber (1) builds a new snapshot, which replaces the old one, (2) waits
//! for the log to be purged up to it, and (3) overwrites every free page by
//! filling the free space with zeros in a scratch table and dropping it.
//! Erasures arriving within `delay` share one pass. Known limit (measured
//! with passes every second under sustained load): redb does not always
//! reuse the freed pages the fill targets, so frequent passes grow the file;
//! lockouts and deletes are rare enough for a long `delay` (30 s default),
//! and per-registration crypto-shredding would remove the need for passes.
//!
//! Must never: run while holding up consensus for long (each step is one
//! short redb write transaction), or skip step 3 (the purge alone only
//! frees the pages).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, TableDefinition};
use tokio::sync::mpsc;

use super::Raft;

const SCRATCH: TableDefinition<u64, &[u8]> = TableDefinition::new("erasure_scratch");
const FILL_CHUNK: usize = 1024;

/// Overwrites the free pages of `db` (whose file is `path`) with zeros.
/// Returns the bytes written. Blocking.
///
/// Pages freed by a commit become reusable only after later durable
/// commits, so each pass first commits twice with nothing in it; then it
/// fills a scratch table until redb has allocated every page the file has
/// (so every free page now holds zeros) and drops it. Filling by allocated
/// pages, not by bytes written, keeps the file from growing: filling more
/// would only extend the file, and the next pass would have more to fill.
pub fn scrub_free_space(db: &Database, path: &Path) -> Result<u64, redb::Error> {
    let mut written = 0;
    for _ in 0..2 {
        for _ in 0..2 {
            let mut t = db.begin_write()?;
            t.set_durability(Durability::Immediate)?;
            t.commit()?;
        }
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let st = txn.stats()?;
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let free = len.saturating_sub(st.allocated_pages() * st.page_size() as u64);
        // Leaves of 1 KiB values are about three-quarters full, so this many
        // values take about every free page and no more.
        let values = free * 3 / 4 / FILL_CHUNK as u64;
        {
            let zeros = [0u8; FILL_CHUNK];
            let mut t = txn.open_table(SCRATCH)?;
            for i in 0..values {
                t.insert(i, zeros.as_slice())?;
            }
            written += values * FILL_CHUNK as u64;
        }
        txn.commit()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.delete_table(SCRATCH)?;
        txn.commit()?;
    }
    Ok(written)
}

/// Runs scrub passes for the erasures the state machine reports (the log
/// index of the entry that erased) until the channel closes.
pub fn spawn_scrubber(
    raft: Raft,
    db: Arc<Database>,
    path: PathBuf,
    mut erased: mpsc::UnboundedReceiver<u64>,
    delay: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pending: Option<u64> = None;
        loop {
            let mut index = match pending.take() {
                Some(i) => i,
                None => match erased.recv().await {
                    Some(i) => i,
                    None => break,
                },
            };
            tokio::time::sleep(delay).await;
            while let Ok(i) = erased.try_recv() {
                index = index.max(i);
            }
            let started = Instant::now();
            if let Err(e) = compact_past(&raft, index).await {
                tracing::warn!(error = %e, "erasure: snapshot and purge did not complete; retrying");
                pending = Some(index);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let (db2, path2) = (db.clone(), path.clone());
            match tokio::task::spawn_blocking(move || scrub_free_space(&db2, &path2)).await {
                Ok(Ok(bytes)) => {
                    metrics::counter!("vault_erasure_scrubs_total").increment(1);
                    metrics::histogram!("vault_erasure_scrub_seconds")
                        .record(started.elapsed().as_secs_f64());
                    tracing::info!(bytes, "erasure: free pages overwritten");
                }
                Ok(Err(e)) => tracing::error!(error = %e, "erasure: scrubbing free pages failed"),
                Err(e) => tracing::error!(error = %e, "erasure: scrub task failed"),
            }
        }
    })
}

/// Builds a snapshot covering `index` and waits for the log before it to be
/// purged.
async fn compact_past(raft: &Raft, index: u64) -> anyhow::Result<()> {
    for _ in 0..3 {
        raft.trigger().snapshot().await?;
        let covered = raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| {
                    m.snapshot.is_some_and(|s| s.index >= index)
                        && m.purged.is_some_and(|p| p.index >= index)
                },
                "snapshot and purge past an erasure",
            )
            .await;
        if covered.is_ok() {
            return Ok(());
        }
    }
    anyhow::bail!("no snapshot covering log index {index} was built and purged")
}
