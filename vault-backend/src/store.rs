//! Durable account rows in an embedded redb database. Each state transition
//! is one write transaction committed with `Durability::Immediate` (fsync)
//! before the call returns; redb serializes write transactions, so the
//! read-decide-write of a transition is atomic with respect to every other.
//!
//! Must never: return before the commit of a transition it reports as done,
//! or log account ids.

use std::path::Path;
use std::sync::Arc;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::account::{StoredAccount, Write};
use crate::VaultError;

pub(crate) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

/// Handle to the database (cheap to clone).
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens or creates the database file.
    pub fn open(path: &Path) -> Result<Self, VaultError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(ACCOUNTS)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// A store over an already opened database (the replica's Raft
    /// database, whose `accounts` table the state machine maintains).
    pub fn from_db(db: Arc<Database>) -> Self {
        Self { db }
    }

    /// Reads one row.
    pub fn get(&self, account_id: &str) -> Result<Option<StoredAccount>, VaultError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        let row = table.get(account_id)?;
        row.map(|v| decode(v.value())).transpose()
    }

    /// Runs `f` on the current row and durably applies the write it returns.
    /// Blocking: call from `spawn_blocking`.
    pub fn transition<T, E>(
        &self,
        account_id: &str,
        f: impl FnOnce(Option<StoredAccount>) -> Result<(Write, T), E>,
    ) -> Result<Result<T, E>, VaultError> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut table = txn.open_table(ACCOUNTS)?;
            let current = table
                .get(account_id)?
                .map(|v| decode(v.value()))
                .transpose()?;
            match f(current) {
                Err(e) => return Ok(Err(e)),
                Ok((Write::Keep, t)) => t,
                Ok((Write::Put(row), t)) => {
                    table.insert(account_id, row.encode_to_vec().as_slice())?;
                    t
                }
                Ok((Write::Delete, t)) => {
                    table.remove(account_id)?;
                    t
                }
            }
        };
        txn.commit()?;
        Ok(Ok(out))
    }

    /// Number of rows (for metrics and tests).
    pub fn len(&self) -> Result<u64, VaultError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ACCOUNTS)?.len()?)
    }

    /// True if no rows.
    pub fn is_empty(&self) -> Result<bool, VaultError> {
        Ok(self.len()? == 0)
    }
}

fn decode(bytes: &[u8]) -> Result<StoredAccount, VaultError> {
    StoredAccount::decode(bytes).map_err(|e| VaultError::Storage(format!("corrupt row: {e}")))
}
