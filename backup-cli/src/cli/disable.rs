//! `backup-client disable`: remove the deposit from the vault after proving the password.

use client::{BackupSettings, ClientError, Protection, VaultClient};

use crate::cli::common::*;
use crate::cli::prompt::*;
use crate::Cli;

pub(crate) async fn disable(cli: &Cli) -> anyhow::Result<()> {
    let s = settings(cli)?;
    if s.protection == Protection::Password {
        let (profile, conn) = connect(cli).await?;
        let vault = VaultClient::new(&conn, &profile)?;
        let pw = password("backup password (to confirm): ")?;
        let res = vault.disable(pw.as_bytes()).await;
        conn.close().await;
        match res {
            Ok(()) => println!("the backup key was deleted from the vault"),
            // Nothing left in the vault to delete: turning off goes on.
            Err(ClientError::NotRegistered | ClientError::LockedOut) => {
                println!("the vault holds no key for this account any more")
            }
            Err(e) => return Err(e.into()),
        }
    }
    BackupSettings::remove(&cli.device)?;
    match s.protection {
        Protection::Password => println!("encrypted backup is off on this device. Existing backups in the cloud can no longer be restored: their key was in the vault"),
        Protection::KeyOnly => println!("encrypted backup is off on this device. Existing backups in the cloud can now be opened only with the 64-digit key, if you wrote it down"),
    }
    Ok(())
}
