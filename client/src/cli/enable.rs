//! `backup-client enable`: turn encrypted backup on (a new key, kept by the user or deposited in the vault).

use client::{BackupKey, BackupSettings, ClientError, DeviceIdentity, Protection, VaultClient};

use crate::cli::common::*;
use crate::cli::prompt::*;
use crate::Cli;

pub(crate) async fn enable(
    cli: &Cli,
    key_only: bool,
    replace: bool,
    keep: usize,
) -> anyhow::Result<()> {
    if BackupSettings::load(&cli.device)?.is_some() {
        anyhow::bail!("encrypted backup is already on for this device; `backup-client disable` first to start over");
    }
    let device = DeviceIdentity::load(&cli.device)?;
    let account_id = device.account_hint()?;
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
        location: cli.location.clone(),
        account_id,
        keep,
        key,
    }
    .save(&cli.device)?;
    println!("backups will go to {}", cli.location);
    Ok(())
}
