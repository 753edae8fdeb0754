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
//! Erasures arriving within `delay` share one pass. Pages freed while a
//! reader is open (a snapshot being sent or installed) cannot be reused
//! until it ends: a pass stops at the first page redb takes from the file's
//! end instead of filling on (the soak saw followers go from 80 MB to 8 GB
//! that way), reports itself incomplete, and is retried after another
//! `delay`; see [`scrub_free_space`]. Per-registration crypto-shredding
//! would remove the need for passes.
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
/// Within this of the file's end, the fill checks after every value.
const NEAR_END: u64 = 256 * 1024;
/// Empty commits that let redb release freed pages and shrink the file.
const RELEASE_COMMITS: usize = 4;
/// Passes in a row retried because readers pinned some free pages.
const MAX_PARTIAL_PASSES: u32 = 5;

/// What one scrub pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scrub {
    /// Bytes of zeros written.
    pub written: u64,
    /// Whether every free page was overwritten. `false` when redb could not
    /// reuse most of the free space (pages freed since some reader began,
    /// such as a snapshot being sent or installed, stay unusable until it
    /// ends), or when the pass was skipped because the file is already
    /// mostly such space: a later pass overwrites them.
    pub complete: bool,
}

/// One pass: overwrites the free pages of `db` (whose file is `path`) with
/// zeros, without letting the file climb from one pass to the next.
/// Blocking.
///
/// Pages freed by a commit become reusable only after later durable
/// commits (and only once no reader older than the free remains), so a
/// pass first commits a few times with nothing in it; then it fills a
/// scratch table until redb takes a page from beyond the file's end (so
/// every reusable free page now holds zeros), stops there, and drops the
/// table. Found by the soak: the previous fill, sized from the free space
/// and not stopped by growth, under readers that kept pages pinned doubled
/// the file every pass (followers went from 80 MB to 8 GB in 40 minutes of
/// sustained lockouts). Stopping at the first growth bounds a pass to one
/// growth step; passes are skipped while the file is more than
/// [`SKIP_ABOVE_LIVE`] times its allocated pages plus [`SKIP_SLACK`] (pinned
/// space that filling again would only add to), so a reader that never
/// ends grows the file to at most twice that.
pub fn scrub_free_space(db: &Database, path: &Path) -> Result<Scrub, redb::Error> {
    let file_len = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    release(db)?;
    let mut written = 0;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let len = file_len();
    let st = txn.stats()?;
    let allocated = st.allocated_pages() * st.page_size() as u64;
    if len > SKIP_ABOVE_LIVE * allocated + SKIP_SLACK {
        txn.abort()?;
        return Ok(Scrub {
            written: 0,
            complete: false,
        });
    }
    let free = len.saturating_sub(allocated);
    {
        let zeros = [0u8; FILL_CHUNK];
        let mut t = txn.open_table(SCRATCH)?;
        let mut i = 0u64;
        let mut near_end = false;
        loop {
            // Far from the end, one look per 64 values (80 KiB with the
            // tree's pages); near it, one per value.
            if near_end || i.is_multiple_of(64) {
                if file_len() > len {
                    break;
                }
                let st = txn.stats()?;
                near_end = st.allocated_pages() * st.page_size() as u64 + NEAR_END >= len;
            }
            t.insert(i, zeros.as_slice())?;
            written += FILL_CHUNK as u64;
            i += 1;
        }
    }
    txn.commit()?;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.delete_table(SCRATCH)?;
    txn.commit()?;
    release(db)?;
    // 1 KiB values fill about three-quarters of their pages: a fill that
    // reached the end having written much less could not reuse most of
    // the free space.
    Ok(Scrub {
        written,
        complete: written >= free / 2,
    })
}

/// Scrub passes are skipped while the file is more than this many times
/// its allocated pages plus [`SKIP_SLACK`] (see [`scrub_free_space`]).
pub const SKIP_ABOVE_LIVE: u64 = 4;
/// See [`SKIP_ABOVE_LIVE`].
pub const SKIP_SLACK: u64 = 64 << 20;

/// Empty durable commits, after which redb reuses the pages freed before
/// them (when no older reader holds them) and gives back a free end.
fn release(db: &Database) -> Result<(), redb::Error> {
    for _ in 0..RELEASE_COMMITS {
        let mut t = db.begin_write()?;
        t.set_durability(Durability::Immediate)?;
        t.commit()?;
    }
    Ok(())
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
        // Passes in a row that could not reach every free page.
        let mut partial = 0;
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
                Ok(Ok(pass)) => {
                    metrics::counter!("vault_erasure_scrubs_total").increment(1);
                    metrics::histogram!("vault_erasure_scrub_seconds")
                        .record(started.elapsed().as_secs_f64());
                    tracing::info!(
                        bytes = pass.written,
                        complete = pass.complete,
                        "erasure: free pages overwritten"
                    );
                    // Pages a reader pinned are overwritten by a later pass,
                    // after another `delay`; a few tries, then the next
                    // erasure's pass takes them.
                    if pass.complete {
                        partial = 0;
                    } else {
                        // Every one counted (an alert watches the rate).
                        metrics::counter!("vault_erasure_scrubs_partial_total").increment(1);
                        if partial < MAX_PARTIAL_PASSES {
                            partial += 1;
                            pending = Some(index);
                        }
                    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use redb::ReadableDatabase;

    const DATA: TableDefinition<u64, &[u8]> = TableDefinition::new("data");

    fn len(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().len()
    }

    /// A database of `n` KiB of sevens, then all of it deleted.
    fn freed(
        n: u64,
        pin: bool,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        Database,
        Option<redb::ReadTransaction>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.redb");
        let db = Database::create(&path).unwrap();
        let t = db.begin_write().unwrap();
        {
            let mut tab = t.open_table(DATA).unwrap();
            for i in 0..n {
                tab.insert(i, [7u8; 1024].as_slice()).unwrap();
            }
        }
        t.commit().unwrap();
        let reader = pin.then(|| db.begin_read().unwrap());
        let t = db.begin_write().unwrap();
        t.delete_table(DATA).unwrap();
        t.commit().unwrap();
        (dir, path, db, reader)
    }

    /// No byte of the deleted values is left in the file.
    fn sevens_left(path: &Path) -> usize {
        let bytes = std::fs::read(path).unwrap();
        bytes
            .windows(1024)
            .step_by(512)
            .filter(|w| w.iter().all(|b| *b == 7))
            .count()
    }

    /// Found by the soak: each pass filled the free space to the file's
    /// very end, its commit needed a few more pages, redb doubled the file,
    /// and the next pass had twice as much to fill (followers went from
    /// 80 MB to 8 GB in 40 minutes under sustained lockouts).
    #[test]
    fn repeated_passes_overwrite_the_freed_pages_without_growing_the_file() {
        let (_dir, path, db, _) = freed(4000, false);
        let before = len(&path);
        assert!(sevens_left(&path) > 0);
        // redb gives back part of the end after each fill, so the file
        // swings between about 1.5 and 2.5 times its size; it must not climb.
        let mut largest = 0;
        for _ in 0..10 {
            let pass = scrub_free_space(&db, &path).unwrap();
            assert!(pass.complete && pass.written > 0, "{pass:?}");
            largest = largest.max(len(&path));
        }
        assert!(
            largest <= 3 * before,
            "the file grew from {before} to {largest} bytes"
        );
        assert_eq!(sevens_left(&path), 0);
    }

    /// Pages freed while a reader is open (a snapshot being sent or
    /// installed) cannot be reused until it ends: passes meanwhile stop
    /// rather than extend the file, and one after it overwrites them.
    #[test]
    fn passes_while_a_reader_pins_freed_pages_stop_and_a_later_one_finishes() {
        let (_dir, path, db, reader) = freed(4000, true);
        let before = len(&path);
        for _ in 0..4 {
            scrub_free_space(&db, &path).unwrap();
        }
        let after = len(&path);
        assert!(
            after <= 2 * (SKIP_ABOVE_LIVE * before + SKIP_SLACK),
            "the file grew from {before} to {after} bytes"
        );
        let reader = reader.unwrap();
        let tab = reader.open_table(DATA).unwrap();
        assert_eq!(
            tab.get(3999).unwrap().unwrap().value(),
            [7u8; 1024].as_slice()
        );
        drop(tab);
        drop(reader);
        let pass = scrub_free_space(&db, &path).unwrap();
        assert!(pass.complete && pass.written > 0, "{pass:?}");
        assert!(len(&path) <= after + after / 10);
        assert_eq!(sevens_left(&path), 0);
    }
}
