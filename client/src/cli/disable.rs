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
            Ok(()) | Err(ClientError::NotRegistered) => {}
            Err(e) => return Err(e.into()),
        }
        println!("the backup key was deleted from the vault");
    }
    BackupSettings::remove(&cli.device)?;
    println!("encrypted backup is off on this device. Existing backups in the cloud can now be opened only with the 64-digit key, if you wrote it down");
    Ok(())
}
