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
//! Erasures arriving within `delay` share one pass, which never grows the
//! file: it leaves a reserve of a few pages for its closing commits (most
//! of which they overwrite with tree pages). Pages freed while a reader is
//! open (a snapshot being sent or installed) cannot be reused until it
//! ends: a pass that finds more than a little such space says it is
//! incomplete and is retried after another `delay`; see
//! [`scrub_free_space`]. Per-registration crypto-shredding would remove
//! the need for passes.
//!
//! A pass closes the database's writer gate ([`crate::raft::storage::Db`])
//! for its duration: Raft's appends wait for it, as they waited for the
//! fill's one write transaction before, now also for its few closing
//! commits, so that none of them takes the reserve and grows the file.
//!
//! Must never: let a pass's length grow with anything but the free space
//! it overwrites (it is what holds Raft's writes up), or skip step 3 (the
//! purge alone only frees the pages).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, TableDefinition};
use tokio::sync::mpsc;

use super::storage::Db;
use super::Raft;

const SCRATCH: TableDefinition<u64, &[u8]> = TableDefinition::new("erasure_scratch");
const FILL_CHUNK: usize = 1024;
/// Free pages a fill leaves for the commits that end the pass (its own and
/// the scratch table's deletion, measured at 1–3 and 9–10 pages) and for
/// Raft's appends in between. Taking the last one makes redb grow the file
/// (doubling it while it is under one region), and redb then places later
/// pages in the grown end, which it can no longer give back (redb #1165):
/// that was the ratchet the soak found.
const RESERVE_PAGES: u64 = 32;
/// Empty commits that let redb release freed pages and shrink the file.
const RELEASE_COMMITS: usize = 4;
/// Passes in a row retried because readers pinned some free pages.
const MAX_PARTIAL_PASSES: u32 = 5;
/// Pinned pages a pass tolerates before it calls itself incomplete: about
/// what a Raft append or two in flight frees.
const PINNED_SLACK: u64 = 64 * 1024;

/// What one scrub pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scrub {
    /// Bytes of zeros written.
    pub written: u64,
    /// Bytes of free pages the pass left for its closing commits (at most
    /// [`RESERVE_PAGES`] pages; the deletion's commit overwrites most of
    /// them with tree pages).
    pub reserve: u64,
    /// Bytes of pages freed since some reader began (a snapshot being sent
    /// or installed), which redb cannot reuse, so cannot overwrite, until
    /// the reader ends.
    pub pinned: u64,
    /// Whether every free page was overwritten but the reserve: `false`
    /// when readers pinned more than [`PINNED_SLACK`], or a concurrent
    /// writer made the file grow during the fill. A later pass overwrites
    /// them.
    pub complete: bool,
}

/// One pass: overwrites the free pages of `db` (whose file is `path`) with
/// zeros without growing the file. Blocking.
///
/// Pages freed by a commit become reusable only after later durable
/// commits (and only once no reader older than the free remains), so a
/// pass first commits a few times with nothing in it; then it fills a
/// scratch table with zeros until [`RESERVE_PAGES`] free pages are left,
/// commits, and drops the table; twice, so that the second round covers
/// the first one's reserve. Found by the soak, twice: a fill sized
/// from the free space and not stopped by growth doubled the file every
/// pass under pinned pages (followers went from 80 MB to 8 GB in 40
/// minutes); its successor stopped at the first growth, but one growth a
/// pass was enough, since redb puts later pages in the grown end and
/// cannot give it back, and the files climbed 0.4 → 110 MB in 30 minutes
/// (reproduced by [`tests::passes_beside_a_growing_table_keep_the_file_near_its_data`]).
/// The pass checks its progress geometrically (a check after half the
/// remaining free pages' worth of values, each taking at most one page), so
/// it reads the allocator's count about twenty times, not once a value.
pub fn scrub_free_space(db: &Db, path: &Path) -> Result<Scrub, redb::Error> {
    // No other writer until the pass ends (see `storage::gated`).
    let gate = db.scrub();
    let db = gate.db();
    let mut pass = Scrub {
        written: 0,
        reserve: 0,
        pinned: 0,
        complete: true,
    };
    // The pages a round leaves as its reserve are not the ones the next
    // round leaves (its closing commits took some, and the freed scratch
    // pages merge back into larger runs), so two rounds reach them
    // (measured: the pinned-reader test leaves 88 KiB-windows of sevens
    // after one round, none after two).
    for _ in 0..ROUNDS {
        let round = fill_once(db, path)?;
        pass.written += round.written;
        pass.reserve = round.reserve;
        pass.pinned = pass.pinned.max(round.pinned);
        pass.complete &= round.complete;
    }
    Ok(pass)
}

/// Rounds of filling and dropping in a pass (see [`scrub_free_space`]).
const ROUNDS: usize = 2;

// The pass writes with the gate closed (`scrub_free_space`).
#[allow(clippy::disallowed_methods)]
fn fill_once(db: &Database, path: &Path) -> Result<Scrub, redb::Error> {
    let file_len = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    release(db)?;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let len = file_len();
    let st = txn.stats()?;
    let page = st.page_size() as u64;
    // Every page is reachable from a tree, free in the allocator, or
    // pinned: freed, but still visible to a reader (checked against the
    // allocator's count in the pinned-reader test).
    let pinned =
        len.saturating_sub(st.stored_bytes() + st.metadata_bytes() + st.fragmented_bytes());
    let free_pages = |txn: &redb::WriteTransaction| -> Result<u64, redb::Error> {
        Ok((len / page).saturating_sub(txn.stats()?.allocated_pages()))
    };
    let mut written = 0;
    let mut grew = false;
    // A file with less free space than twice the reserve (a young replica)
    // is filled to the brim instead: the one growth that ends it doubles
    // the file (as redb would once its data outgrew it), after which the
    // reserve fits.
    // Not while readers pin pages: the pass is retried after they end.
    let brim = free_pages(&txn)? < 2 * RESERVE_PAGES && pinned <= PINNED_SLACK;
    {
        let zeros = [0u8; FILL_CHUNK];
        let mut t = txn.open_table(SCRATCH)?;
        let mut i = 0u64;
        // Values until one lands beyond the file's end (brim), or in
        // rounds of half the room left above the reserve (each value takes
        // at most a page, so the reserve is never reached).
        let step = |free: u64| -> u64 {
            if brim {
                1
            } else {
                free.saturating_sub(RESERVE_PAGES).div_ceil(2)
            }
        };
        loop {
            let n = step(if brim { 0 } else { free_pages(&txn)? });
            if file_len() > len {
                grew = !brim;
                break;
            }
            if n == 0 {
                break;
            }
            for _ in 0..n {
                t.insert(i, zeros.as_slice())?;
                written += FILL_CHUNK as u64;
                i += 1;
            }
        }
    }
    txn.commit()?;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let reserve = free_pages(&txn)? * page;
    txn.delete_table(SCRATCH)?;
    txn.commit()?;
    release(db)?;
    Ok(Scrub {
        written,
        reserve,
        pinned,
        complete: !grew && pinned <= PINNED_SLACK,
    })
}

/// Empty durable commits, after which redb reuses the pages freed before
/// them (when no older reader holds them) and gives back a free end.
#[allow(clippy::disallowed_methods)] // with the gate closed
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
    db: Arc<Db>,
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
                        reserve = pass.reserve,
                        pinned = pass.pinned,
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
        Db,
        Option<redb::ReadTransaction>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.redb");
        let db = Db::new(Database::create(&path).unwrap());
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
        for _ in 0..10 {
            let pass = scrub_free_space(&db, &path).unwrap();
            assert!(pass.complete && pass.written > 0, "{pass:?}");
            assert!(pass.reserve <= RESERVE_PAGES * 4096, "{pass:?}");
            assert!(
                len(&path) <= before,
                "the file grew from {before} to {} bytes",
                len(&path)
            );
        }
        assert_eq!(sevens_left(&path), 0);
    }

    /// Found by the soak's full 30 minutes: a pass that stopped at the
    /// first growth still grew the file once a pass, redb put later pages
    /// (the snapshot rewritten before each pass, Raft's appends) in the
    /// grown end and could not give it back, and the files climbed from
    /// 0.4 to 110 MB for a few MB of data. Here: a log appended to and
    /// purged, and a snapshot value growing by 256 KiB before each pass
    /// (that alone makes redb double the file now and then, passes or not:
    /// a large value needs an aligned run of free pages). With the
    /// previous pass the file reached 60–115 MB here. The log is written
    /// by a thread of its own, as Raft writes beside the scrubber: the
    /// soak's fifth run found passes that left their reserve to such
    /// writers growing the file just the same (to 885 MB).
    #[test]
    fn passes_beside_a_growing_table_add_nothing_to_the_file() {
        fn run(scrub: bool) -> (u64, u64) {
            use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
            const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
            const SNAP: TableDefinition<u64, &[u8]> = TableDefinition::new("snap");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("v.redb");
            let db = Arc::new(Db::new(Database::create(&path).unwrap()));
            let appended = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (db, appended, stop) = (db.clone(), appended.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let t = db.begin_write().unwrap();
                        {
                            let mut tab = t.open_table(LOG).unwrap();
                            tab.insert(i, [7u8; 600].as_slice()).unwrap();
                            if i >= 200 {
                                tab.remove(i - 200).unwrap();
                            }
                        }
                        t.commit().unwrap();
                        i += 1;
                        appended.store(i, Ordering::SeqCst);
                    }
                })
            };
            let mut largest = 0;
            for k in 0..16u64 {
                let until = appended.load(Ordering::SeqCst) + 300;
                while appended.load(Ordering::SeqCst) < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let snap = vec![5u8; (256 * 1024 * (k + 1)) as usize];
                let t = db.begin_write().unwrap();
                t.open_table(SNAP)
                    .unwrap()
                    .insert(0, snap.as_slice())
                    .unwrap();
                t.commit().unwrap();
                if scrub {
                    let pass = scrub_free_space(&db, &path).unwrap();
                    assert!(pass.complete && pass.written > 0, "pass {k}: {pass:?}");
                }
                largest = largest.max(len(&path));
            }
            stop.store(true, Ordering::SeqCst);
            writer.join().unwrap();
            (largest, len(&path))
        }
        let (bare_largest, bare_end) = run(false);
        let (largest, end) = run(true);
        assert!(
            largest <= bare_largest + bare_largest / 8 && end <= bare_end + bare_end / 8,
            "with passes the file reached {largest} bytes and ended at {end}; \
             without, {bare_largest} and {bare_end}"
        );
    }

    /// Pages freed while a reader is open (a snapshot being sent or
    /// installed) cannot be reused until it ends: passes meanwhile say so
    /// and leave the file as it is, and one after it overwrites them.
    #[test]
    fn passes_while_a_reader_pins_freed_pages_stop_and_a_later_one_finishes() {
        let (_dir, path, db, reader) = freed(4000, true);
        let before = len(&path);
        for _ in 0..4 {
            let pass = scrub_free_space(&db, &path).unwrap();
            assert!(!pass.complete, "{pass:?}");
            assert!(pass.pinned >= 3 << 20, "{pass:?}");
        }
        assert!(
            len(&path) <= before,
            "the file grew from {before} to {} bytes",
            len(&path)
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
        assert!(len(&path) <= before);
        assert_eq!(sevens_left(&path), 0);
    }

    /// One pass leaves no byte of the freed values, whatever the share of
    /// the file they took, pinned by a reader first or not.
    #[test]
    fn one_pass_overwrites_freed_values_of_any_size() {
        for n in [3, 40, 700, 2500, 9000] {
            for pin in [false, true] {
                let (_dir, path, db, reader) = freed(n, pin);
                drop(reader);
                let before = len(&path);
                let pass = scrub_free_space(&db, &path).unwrap();
                assert!(pass.complete, "{n} KiB, pinned {pin}: {pass:?}");
                assert_eq!(sevens_left(&path), 0, "{n} KiB, pinned {pin}: {pass:?}");
                // A file with less free space than twice the reserve is
                // filled to the brim, and doubles once.
                assert!(
                    len(&path) <= 2 * before + (64 << 10),
                    "{n} KiB, pinned {pin}: the file grew"
                );
            }
        }
    }
}
