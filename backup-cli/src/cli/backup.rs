//! `backup-client backup`: archive, encrypt and upload a folder.

use std::path::Path;
use std::time::Instant;

use std::time::Duration;

use client::{backups, BackupStore, Protection, Status};

use crate::cli::common::*;
use crate::Cli;

pub(crate) async fn backup(cli: &Cli, path: &Path) -> anyhow::Result<()> {
    let s = settings(cli)?;
    if s.protection == Protection::Password {
        deposit_still_there(cli).await?;
    }
    let store = BackupStore::open(&s.location, &s.account_id, s.keep)?;
    let pb = progress_bar(client::archive::estimate_size(path), "encrypting");
    let p2 = pb.clone();
    let t = Instant::now();
    let res = backups::backup_path(&store, &s.key, path, &move |n| p2.set_position(n)).await;
    pb.finish_and_clear();
    let v = res?;
    println!(
        "backed up {} as version {} ({} bytes encrypted, {:.1?}); keeping the newest {}",
        path.display(),
        v.id,
        v.size,
        t.elapsed(),
        s.keep
    );
    Ok(())
}

/// A password-protected backup is only worth making while the vault still
/// holds the key: if backup was turned off (or the guesses used up) on
/// another phone of the account, a backup made here could not be restored
/// with the password, so this phone says so instead of uploading. A vault
/// out of reach does not stop a backup (it is not needed to make one).
async fn deposit_still_there(cli: &Cli) -> anyhow::Result<()> {
    let check = vault_status(cli, Duration::from_secs(5)).await;
    match check {
        Some(Ok(Status::NotRegistered | Status::LockedOut)) => anyhow::bail!(
            "the vault no longer holds this account's backup key (backup was turned off, or the password guesses used up, on another phone), so a backup made now could not be restored with a password. Run `backup-client enable` to deposit this phone's key again with a password (its backups stay readable), or `backup-client disable` to turn backup off here too"
        ),
        Some(Ok(Status::Active { .. })) => Ok(()),
        Some(Err(_)) | None => {
            eprintln!("note: the vault could not be checked just now; backing up anyway");
            Ok(())
        }
    }
}
