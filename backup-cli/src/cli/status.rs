//! `backup-client status`: what this device and the vault say about the backup.

use std::time::Duration;

use client::{BackupSettings, BackupStore, Protection, Status};

use crate::cli::common::*;
use crate::Cli;

pub(crate) async fn status(cli: &Cli) -> anyhow::Result<()> {
    let Some(s) = BackupSettings::load(&cli.device)? else {
        println!("encrypted backup: off on this device");
        return Ok(());
    };
    check_location(cli, &s)?;
    println!(
        "encrypted backup: on, protected by {}",
        match s.protection {
            Protection::Password => "a password (key deposited in the vault)",
            Protection::KeyOnly => "a 64-digit key only",
        }
    );
    println!("location: {} (keeping {} versions)", s.location, s.keep);
    let store = BackupStore::open(&s.location, &s.account_id, s.keep)?;
    match store.list().await {
        Ok(v) if v.is_empty() => println!("backups: none yet"),
        Ok(v) => {
            println!("backups: {}", v.len());
            for b in v.iter().rev() {
                println!("  {}  {}  {} bytes", b.id, human_time(b.created), b.size);
            }
        }
        Err(e) => println!("backups: cannot list ({e})"),
    }
    if s.protection == Protection::Password {
        let res = vault_status(cli, Duration::from_secs(15)).await;
        match res {
            Some(Ok(Status::Active {
                attempts_left,
                max_attempts,
                replacement_in,
            })) => {
                println!(
                    "vault: key deposited; {attempts_left} of {max_attempts} password attempts left"
                );
                if let Some(wait) = replacement_in {
                    println!(
                        "vault: WARNING: another phone asked to replace this deposit without the password; \
                         it can complete the replacement {}. If that was not you, run `backup-client restore` \
                         (or any login with your password) to cancel it",
                        if wait.is_zero() {
                            "now".to_owned()
                        } else {
                            format!("in {}", client::wait_in_words(wait))
                        }
                    );
                }
            }
            Some(Ok(Status::LockedOut)) => {
                println!("vault: locked out; the deposited key was erased for good (run `backup-client enable` on this phone to protect its key with a new password)")
            }
            Some(Ok(Status::NotRegistered)) => println!(
                "vault: no key deposited for this account: backup was turned off (or replaced) on another phone, so backups made here can no longer be restored with a password. Run `backup-client enable` to deposit this phone's key again, or `backup-client disable` to turn backup off here too"
            ),
            Some(Err(e)) => println!("vault: unreachable ({e:#})"),
            None => println!("vault: no answer within 15 s"),
        }
    }
    Ok(())
}
