//! `backup-client enable`: turn encrypted backup on (a new key, kept by the user or deposited in the vault).

use client::{
    BackupKey, BackupSettings, ClientError, DeviceIdentity, Protection, Status, VaultClient,
};

use crate::cli::common::*;
use crate::cli::prompt::*;
use crate::Cli;

pub(crate) async fn enable(
    cli: &Cli,
    key_only: bool,
    replace: bool,
    keep: usize,
) -> anyhow::Result<()> {
    if let Some(current) = BackupSettings::load(&cli.device)? {
        return reprotect(cli, current, key_only).await;
    }
    let device = DeviceIdentity::load(&cli.device)?;
    let account_id = device.account_hint()?;
    let location = cli.location()?;
    let key = BackupKey::generate();
    let protection = if key_only {
        println!("Your backup key (64 digits). Write it down and keep it safe:");
        println!();
        println!("    {}", key.to_display());
        println!();
        println!("It is shown only this once and is not stored anywhere but on this device.");
        println!("Without it (or this device) your backups cannot be restored; nobody can recover it for you.");
        Protection::KeyOnly
    } else {
        if replace {
            eprintln!("warning: replacing the deposited key makes backups protected by the old key unrecoverable through the vault");
        }
        let pw = new_password("BKV_PASSWORD")?;
        let (profile, conn) = connect(cli).await?;
        let vault = VaultClient::new(&conn, &profile)?;
        let res = vault.register(pw.as_bytes(), &key, replace).await;
        conn.close().await;
        match res {
            Err(ClientError::AlreadyRegistered) => anyhow::bail!(
                "{}; to replace it, run `backup-client enable --replace`",
                ClientError::AlreadyRegistered
            ),
            // Nothing is saved: run `enable --replace` again when the wait
            // is over (or `enable --key-only` to back up meanwhile).
            other => other?,
        }
        println!(
            "encrypted backup is on: the backup key is in the vault, protected by your password"
        );
        println!(
            "the vault allows a limited number of wrong guesses, then erases the key for good"
        );
        Protection::Password
    };
    BackupSettings {
        protection,
        location: location.clone(),
        account_id,
        keep,
        key,
    }
    .save(&cli.device)?;
    println!("backups will go to {location}");
    Ok(())
}

/// `enable` on a phone where backup is already on. If the vault erased its
/// deposit (too many wrong passwords, perhaps not typed here), this phone
/// still holds the backup key: it protects that same key again, with a new
/// password (a fresh registration) or as a 64-digit key, so that its
/// existing backups stay readable. Otherwise there is nothing to do.
async fn reprotect(cli: &Cli, mut current: BackupSettings, key_only: bool) -> anyhow::Result<()> {
    let erased = if current.protection == Protection::Password {
        let (profile, conn) = connect(cli).await?;
        let st = VaultClient::new(&conn, &profile)?.status().await;
        conn.close().await;
        matches!(st?, Status::LockedOut | Status::NotRegistered)
    } else {
        false
    };
    if !erased {
        anyhow::bail!("encrypted backup is already on for this device; `backup-client disable` first to start over");
    }
    if key_only {
        println!("The vault erased the deposited key, but this phone still has it.");
        println!("Your backup key (64 digits). Write it down and keep it safe:");
        println!();
        println!("    {}", current.key.to_display());
        println!();
        println!("It opens every backup this phone made; nobody can recover it for you.");
        current.protection = Protection::KeyOnly;
    } else {
        println!("The vault erased the deposited key, but this phone still has it: protecting it again with a new password.");
        let pw = new_password("BKV_PASSWORD")?;
        let (profile, conn) = connect(cli).await?;
        let vault = VaultClient::new(&conn, &profile)?;
        let res = vault.register(pw.as_bytes(), &current.key, false).await;
        conn.close().await;
        res?;
        println!("the backup key is in the vault again, protected by your new password; existing backups stay readable");
    }
    current.save(&cli.device)?;
    Ok(())
}
