//! The replica's database behind a gate that the erasure scrubber can
//! close: [`Db`] derefs to redb's `Database` for reads, and its own
//! `begin_write` admits a writer only while no scrub pass holds the gate.
//!
//! Why: a pass fills the free pages with zeros until only a small reserve
//! is left, commits, then drops the fill; until the drop is committed and
//! released, a writer that needs more than the reserve (a few Raft appends,
//! a snapshot) makes redb grow the file, doubling it, and redb then puts
//! later pages in the grown end and cannot give it back. The soak's fifth
//! run measured it: files of 10–20 MB on three replicas and 207 MB and
//! 885 MB on the two others after 27 minutes, each pass writing more.
//! Closing the gate for the pass (its fill is one write transaction that
//! holds other writers up anyway; the gate adds its few closing commits)
//! leaves the reserve to the pass alone.
//!
//! Must never: be bypassed by a writer (every write transaction of the
//! replica goes through [`Db::begin_write`]; only the scrubber writes
//! through [`Db::scrub`]), or block readers.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, PoisonError};

use redb::{Database, TransactionError, WriteTransaction};

/// The replica database and its writers' gate.
pub struct Db {
    db: Database,
    gate: Mutex<Gate>,
    changed: Condvar,
}

#[derive(Default)]
struct Gate {
    /// Write transactions begun through the gate and not yet ended.
    writers: usize,
    /// A scrub pass holds the gate, or waits for the writers to end.
    scrubbing: bool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Puts `db` behind a gate.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            gate: Mutex::new(Gate::default()),
            changed: Condvar::new(),
        }
    }

    /// A write transaction, once no scrub pass holds the gate. Blocking:
    /// call it off the async workers (as every storage write is).
    #[allow(clippy::disallowed_methods)] // the gate's own door
    pub fn begin_write(&self) -> Result<Write<'_>, TransactionError> {
        {
            let mut g = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
            while g.scrubbing {
                g = self.changed.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            g.writers += 1;
        }
        let ticket = Ticket(self);
        Ok(Write {
            txn: self.db.begin_write()?,
            _ticket: ticket,
        })
    }

    /// Closes the gate until the returned guard drops: waits for the
    /// writers in flight to end and holds new ones back. For the erasure
    /// scrubber only. Blocking.
    pub fn scrub(&self) -> Scrubbing<'_> {
        let mut g = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        while g.scrubbing {
            g = self.changed.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
        g.scrubbing = true;
        while g.writers > 0 {
            g = self.changed.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
        Scrubbing(self)
    }
}

impl Deref for Db {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

/// A writer's place in the gate, given back when its transaction ends.
struct Ticket<'a>(&'a Db);

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut g = self.0.gate.lock().unwrap_or_else(PoisonError::into_inner);
        g.writers -= 1;
        if g.writers == 0 {
            self.0.changed.notify_all();
        }
    }
}

/// A write transaction begun through the gate; derefs to redb's.
pub struct Write<'a> {
    txn: WriteTransaction,
    _ticket: Ticket<'a>,
}

impl Write<'_> {
    /// Commits the transaction and gives back its place in the gate.
    pub fn commit(self) -> Result<(), redb::CommitError> {
        self.txn.commit()
    }
}

impl Deref for Write<'_> {
    type Target = WriteTransaction;
    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

impl DerefMut for Write<'_> {
    fn deref_mut(&mut self) -> &mut WriteTransaction {
        &mut self.txn
    }
}

/// The gate closed for a scrub pass; the pass writes through
/// [`Scrubbing::db`].
pub struct Scrubbing<'a>(&'a Db);

impl Scrubbing<'_> {
    /// The database, for the pass's own transactions.
    pub fn db(&self) -> &Database {
        &self.0.db
    }
}

impl Drop for Scrubbing<'_> {
    fn drop(&mut self) {
        let mut g = self.0.gate.lock().unwrap_or_else(PoisonError::into_inner);
        g.scrubbing = false;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A pass waits for the writer in flight, and no writer begins while
    /// the pass holds the gate.
    #[test]
    fn a_scrub_waits_for_writers_and_holds_new_ones_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::new(
            Database::create(dir.path().join("g.redb")).unwrap(),
        ));
        let w = db.begin_write().unwrap();
        let scrubbing = Arc::new(AtomicBool::new(false));
        let (db2, s2) = (db.clone(), scrubbing.clone());
        let pass = std::thread::spawn(move || {
            let g = db2.scrub();
            s2.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            s2.store(false, Ordering::SeqCst);
            drop(g);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !scrubbing.load(Ordering::SeqCst),
            "the pass began beside a writer"
        );
        w.commit().unwrap();
        while !scrubbing.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let w = db.begin_write().unwrap();
        assert!(
            !scrubbing.load(Ordering::SeqCst),
            "a writer began inside the pass"
        );
        w.commit().unwrap();
        pass.join().unwrap();
    }
}
