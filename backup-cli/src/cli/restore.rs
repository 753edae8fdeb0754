//! `backup-client restore`: get the key (typed, or recovered with the password) and restore the latest backup.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use client::backups;
use client::cloud::DEFAULT_KEEP;
use client::{
    BackupKey, BackupSettings, BackupStore, ClientError, ClientProfile, DeviceIdentity,
    GatewayConnection, Protection, Status, VaultClient,
};

use crate::cli::common::*;
use crate::cli::prompt::*;
use crate::Cli;

pub(crate) async fn recover_with_password(cli: &Cli) -> anyhow::Result<BackupKey> {
    let (profile, conn) = connect(cli).await?;
    let res = recover_loop(&conn, &profile).await;
    conn.close().await;
    res
}

pub(crate) async fn recover_loop(
    conn: &GatewayConnection,
    profile: &ClientProfile,
) -> anyhow::Result<BackupKey> {
    let vault = VaultClient::new(conn, profile)?;
    let mut left = match vault.status().await? {
        Status::Active { attempts_left, .. } => attempts_left,
        Status::LockedOut => return Err(ClientError::LockedOut.into()),
        Status::NotRegistered => anyhow::bail!(
            "{}: encrypted backup with a password was turned off or never set up for this account. Restore with the 64-digit key (`--with-key`) if you have it",
            ClientError::NotRegistered
        ),
    };
    loop {
        eprintln!("{left} password attempt(s) left");
        if left == 1 {
            eprintln!("warning: this is your LAST attempt. A wrong password makes the vault erase the backup key for good: your backups could then be restored only from a phone that still has backup turned on");
        }
        let pw = password("backup password: ")?;
        match vault.recover(pw.as_bytes()).await {
            Ok(k) => return Ok(k),
            Err(ClientError::WrongPassword { attempts_left }) if !scripted() => {
                eprintln!("wrong password");
                left = attempts_left;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub(crate) async fn restore(
    cli: &Cli,
    to: &Path,
    with_key: bool,
    with_password: bool,
) -> anyhow::Result<()> {
    if BackupSettings::load(&cli.device)?.is_some() {
        anyhow::bail!("this device already has encrypted backup on; restore on a new device folder, or `disable` first");
    }
    let device = DeviceIdentity::load(&cli.device)?;
    let account_id = device.account_hint()?;
    let use_key = if with_key || with_password {
        with_key
    } else if std::env::var_os("BKV_BACKUP_KEY").is_some() {
        true
    } else if std::io::stdin().is_terminal() && !scripted() {
        let mut line = String::new();
        eprint!("restore with your (p)assword or your 64-digit (k)ey? [p] ");
        std::io::stdin().read_line(&mut line)?;
        line.trim().eq_ignore_ascii_case("k")
    } else {
        false
    };
    let location = cli.location()?;
    let store = BackupStore::open(&location, &account_id, DEFAULT_KEEP)?;
    let latest = store
        .latest()
        .await?
        .ok_or_else(|| ClientError::NoBackup(store.location().to_owned()))?;
    eprintln!(
        "newest backup: version {} from {}, {} bytes",
        latest.id,
        human_time(latest.created),
        latest.size
    );
    let (key, protection) = if use_key {
        (read_key()?, Protection::KeyOnly)
    } else {
        (recover_with_password(cli).await?, Protection::Password)
    };
    let pb = progress_bar(latest.size, "restoring");
    let p2 = pb.clone();
    let t = Instant::now();
    let res =
        backups::restore_version(&store, &key, &latest, to, &move |n| p2.set_position(n)).await;
    pb.finish_and_clear();
    let r = res?;
    BackupSettings {
        protection,
        location,
        account_id,
        keep: DEFAULT_KEEP,
        key,
    }
    .save(&cli.device)?;
    println!(
        "restored version {} into {} ({} bytes, {:.1?}); encrypted backup is now on for this device",
        r.version.id,
        r.path.display(),
        r.bytes,
        t.elapsed()
    );
    Ok(())
}
