//! A ledger in one process's memory: the replicated state machine's own
//! apply rules ([`crate::raft::apply`]) over a map, without replication,
//! disk or membership. It lets the request handler run alone, from a frame
//! to an answer: the service's unit tests and the fuzz harness (`fuzz/`,
//! target `vault_handler`) drive [`crate::service::Vault`] over it.
//!
//! Must never: serve a deployment. Nothing here survives the process or is
//! agreed by a majority; the vault binary never constructs it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::account::{LastGuessHold, StoredAccount, Write};
use crate::ledger::AccountLedger;
use crate::raft::{apply, codec, Command, CommandResult};
use crate::VaultError;

/// Rows by account id, shared by its clones (two "leaders" over one ledger).
#[derive(Debug, Default, Clone)]
pub struct MemoryLedger {
    rows: Arc<Mutex<BTreeMap<String, StoredAccount>>>,
}

impl MemoryLedger {
    /// A ledger holding `rows`.
    pub fn from_rows(rows: BTreeMap<String, StoredAccount>) -> Self {
        Self {
            rows: Arc::new(Mutex::new(rows)),
        }
    }

    fn rows(&self) -> MutexGuard<'_, BTreeMap<String, StoredAccount>> {
        // A panic while holding the lock cannot leave a half-applied row:
        // rows are replaced whole.
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One account's row now.
    pub fn row(&self, account_id: &str) -> Option<StoredAccount> {
        self.rows().get(account_id).cloned()
    }

    /// Every row now, by account id.
    pub fn snapshot(&self) -> BTreeMap<String, StoredAccount> {
        self.rows().clone()
    }

    /// Applies `cmd` as a committed log entry would be.
    pub fn apply(&self, cmd: &Command) -> Result<CommandResult, VaultError> {
        let id = cmd.account_id().unwrap_or_default().to_owned();
        let mut rows = self.rows();
        let applied = apply::to_row(rows.get(&id).cloned(), cmd)
            .map_err(VaultError::internal_from("reading the account row"))?;
        match applied.write {
            Write::Keep => {}
            Write::Put(row) => {
                rows.insert(id, row);
            }
            Write::Delete => {
                rows.remove(&id);
            }
        }
        Ok(applied.result)
    }
}

impl AccountLedger for MemoryLedger {
    async fn write(&self, cmd: Command) -> Result<CommandResult, VaultError> {
        self.apply(&cmd)
    }

    async fn read(&self, account_id: &str) -> Result<Option<StoredAccount>, VaultError> {
        Ok(self.row(account_id))
    }

    fn command_version(&self) -> u32 {
        codec::MAX_VERSION
    }

    async fn held_logins(&self) -> Result<Vec<(String, LastGuessHold)>, VaultError> {
        Ok(self
            .rows()
            .iter()
            .filter_map(|(k, r)| r.hold.clone().map(|h| (k.clone(), h)))
            .collect())
    }
}
