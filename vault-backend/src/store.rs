//! Read access to the account rows in a replica's redb database. Rows are
//! written only by the Raft state machine (`raft::storage`) as it applies
//! committed entries; this module reads them.
//!
//! Must never: write rows (that would bypass consensus), or log account ids.

use std::sync::Arc;

use redb::{ReadableDatabase, TableDefinition};

use crate::account::{LastGuessHold, StoredAccount};
use crate::VaultError;

pub(crate) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

/// Handle to the database (cheap to clone).
#[derive(Clone)]
pub struct Store {
    db: Arc<crate::raft::storage::Db>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// A store over an already opened database (the replica's Raft
    /// database, whose `accounts` table the state machine maintains).
    pub fn from_db(db: Arc<crate::raft::storage::Db>) -> Self {
        Self { db }
    }

    /// Reads one row.
    pub fn get(&self, account_id: &str) -> Result<Option<StoredAccount>, VaultError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        let row = table.get(account_id)?;
        row.map(|v| decode(v.value())).transpose()
    }

    /// Every row's last guess on hold. A scan of the whole table (about
    /// 1 µs a row): run by the leader every few seconds, it costs 0.1 s
    /// per 100,000 deposits.
    pub fn held(&self) -> Result<Vec<(String, LastGuessHold)>, VaultError> {
        use redb::ReadableTable;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            if let Some(h) = decode(v.value())?.hold {
                out.push((k.value().to_owned(), h));
            }
        }
        Ok(out)
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
    crate::raft::codec::decode_row(bytes).map_err(|e| VaultError::Storage(e.into()))
}
