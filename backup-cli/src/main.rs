//! `backup-client`: the phone-side flows from a terminal — turn encrypted
//! backup on, back up, restore on a new phone, change the password, turn it
//! off.
//!
//! Passwords are read without echo (or from `BKV_PASSWORD` /
//! `BKV_NEW_PASSWORD` for scripts), held in zeroizing buffers, and never
//! printed or logged.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use client::cloud::DEFAULT_KEEP;
use client::{BackupKey, DeviceIdentity, VaultClient};
use zeroize::Zeroizing;

mod cli;

use cli::backup::backup;
use cli::common::connect;
use cli::disable::disable;
use cli::enable::enable;
use cli::prompt::{new_password, password, prompt_secret};
use cli::restore::restore;
use cli::status::status;

#[derive(Parser)]
#[command(
    name = "backup-client",
    version,
    about = "End-to-end encrypted chat backups: protected by a password in the Backup Key Vault, or by a 64-digit key"
)]
struct Cli {
    /// Deployment profile (written by `local-stack`).
    #[arg(
        long,
        global = true,
        default_value = ".local-stack/client-profile.toml"
    )]
    profile: PathBuf,
    /// Device folder (device key, credential, backup settings).
    #[arg(long, global = true, default_value = "my-phone")]
    device: PathBuf,
    /// Cloud location for backups: a folder (stands in for Drive/iCloud),
    /// file:///..., or s3://bucket/prefix (AWS_* variables configure S3).
    /// Read when backup is turned on (`enable`, `restore`) and stored with
    /// the settings, a folder as an absolute path; later commands use the
    /// stored one [default: .local-stack/cloud-drive].
    #[arg(long, global = true, env = "BKV_BACKUP_LOCATION")]
    location: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Device identity management.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Turn on encrypted backup: protect a new backup key with a password
    /// (deposited in the vault) or with a 64-digit key you write down.
    Enable {
        /// Use a 64-digit key instead of a password (shown once, never stored off this device).
        #[arg(long)]
        key_only: bool,
        /// Replace a key already deposited for this account (its backups become unrecoverable through the vault).
        #[arg(long)]
        replace: bool,
        /// Backup versions to keep in the cloud.
        #[arg(long, default_value_t = DEFAULT_KEEP)]
        keep: usize,
    },
    /// Back up a file or folder (encrypted on this device, then uploaded).
    Backup {
        /// What to back up.
        path: PathBuf,
    },
    /// Restore the newest backup on this (new) device, with the password or the 64-digit key.
    Restore {
        /// Folder to restore into (new or empty).
        #[arg(long)]
        to: PathBuf,
        /// Use the 64-digit key (works even when the vault is down).
        #[arg(long, conflicts_with = "with_password")]
        with_key: bool,
        /// Use the password (the vault releases the key).
        #[arg(long)]
        with_password: bool,
    },
    /// Show backup settings, stored backups and the vault deposit.
    Status,
    /// Change the backup password (needs the current one).
    ChangePassword,
    /// Turn encrypted backup off: delete the vault deposit (needs the password) and forget the key on this device.
    Disable,
    /// Generate a new backup key and show it as 64 hex digits and 4 check digits.
    NewKey,
    /// Check a typed key for typos (its check digits catch any one mistyped digit).
    CheckKey {
        /// The key (omit to be prompted).
        key: Option<String>,
    },
    /// Low-level vault operations, for testing a deployment (hidden: under
    /// one parent so that a mistyped everyday command is never "corrected"
    /// to one of them).
    #[command(hide = true, name = "low-level")]
    LowLevel {
        #[command(subcommand)]
        cmd: LowLevelCmd,
    },
}

#[derive(Subcommand)]
enum LowLevelCmd {
    /// Deposit a key in the vault (a new one unless --key is given).
    Register {
        /// The 64-digit key to deposit.
        #[arg(long)]
        key: Option<String>,
        /// Replace a key already deposited.
        #[arg(long)]
        replace: bool,
    },
    /// Recover the deposited key and print it.
    Recover,
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Create a device key; prints the public key to give the account service.
    New,
    /// Store the credential the account service minted for this device.
    SetCredential {
        /// PASETO token (v4.public...).
        token: String,
    },
}

/// Where backups go when `--location` is not given.
const DEFAULT_LOCATION: &str = ".local-stack/cloud-drive";

impl Cli {
    /// The location given (or the default), a folder made absolute so that
    /// the stored settings mean the same folder from any working folder.
    fn location(&self) -> anyhow::Result<String> {
        let l = self.location.as_deref().unwrap_or(DEFAULT_LOCATION);
        if l.contains("://") {
            return Ok(l.to_owned());
        }
        let abs = std::path::absolute(l)
            .map_err(|e| anyhow::anyhow!("the backup location {l} is not a usable path: {e}"))?;
        Ok(abs.to_string_lossy().into_owned())
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {}", cli::messages::report(&e));
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Device {
            cmd: DeviceCmd::New,
        } => {
            if cli.device.join(client::device::DEVICE_FILE).exists() {
                anyhow::bail!("{} already holds a device identity", cli.device.display());
            }
            let d = DeviceIdentity::generate()?;
            d.save(&cli.device)?;
            println!("device key: {}", hex::encode(d.static_public));
            println!("have the account service mint a credential for it, then run `backup-client device set-credential TOKEN`");
        }
        Cmd::Device {
            cmd: DeviceCmd::SetCredential { token },
        } => {
            let mut d = DeviceIdentity::load(&cli.device)?;
            d.credential = Some(token.trim().to_owned());
            let account = d.account_hint()?;
            d.save(&cli.device)?;
            println!("credential stored (account {account})");
        }
        Cmd::Enable {
            key_only,
            replace,
            keep,
        } => enable(&cli, *key_only, *replace, *keep).await?,
        Cmd::Backup { path } => backup(&cli, path).await?,
        Cmd::Restore {
            to,
            with_key,
            with_password,
        } => restore(&cli, to, *with_key, *with_password).await?,
        Cmd::Status => status(&cli).await?,
        Cmd::ChangePassword => {
            let (profile, conn) = connect(&cli).await?;
            let vault = VaultClient::new(&conn, &profile)?;
            let old = password("current password: ")?;
            let new = new_password("BKV_NEW_PASSWORD")?;
            let res = vault.change_password(old.as_bytes(), new.as_bytes()).await;
            conn.close().await;
            res?;
            println!("password changed; use the new one to restore from now on");
        }
        Cmd::Disable => disable(&cli).await?,
        Cmd::NewKey => {
            println!("{}", BackupKey::generate().to_display());
        }
        Cmd::CheckKey { key } => {
            let text = match key {
                Some(k) => Zeroizing::new(k.clone()),
                None => prompt_secret("64-digit key: ")?,
            };
            BackupKey::parse(&text)?;
            if BackupKey::has_check_digits(&text) {
                println!("the key is well-formed and its check digits match");
            } else {
                println!("the key is well-formed, but it was written down without its check group (a key from before version 0.3), so a mistyped digit cannot be caught: compare each group carefully");
            }
        }
        Cmd::LowLevel {
            cmd: LowLevelCmd::Register { key, replace },
        } => {
            let (profile, conn) = connect(&cli).await?;
            let vault = VaultClient::new(&conn, &profile)?;
            let k = match key {
                Some(k) => BackupKey::parse(k)?,
                None => BackupKey::generate(),
            };
            let pw = password("new password: ")?;
            vault.register(pw.as_bytes(), &k, *replace).await?;
            println!("{}", k.to_display());
            conn.close().await;
        }
        Cmd::LowLevel {
            cmd: LowLevelCmd::Recover,
        } => {
            let (profile, conn) = connect(&cli).await?;
            let vault = VaultClient::new(&conn, &profile)?;
            let pw = password("password: ")?;
            let k = vault.recover(pw.as_bytes()).await?;
            println!("{}", k.to_display());
            conn.close().await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_typo_is_never_corrected_to_a_hidden_command() {
        for typo in ["regster", "recovr", "restor"] {
            let e = Cli::try_parse_from(["backup-client", typo])
                .err()
                .unwrap()
                .to_string();
            assert!(!e.contains("'register'") && !e.contains("'recover'"), "{e}");
        }
    }

    #[test]
    fn every_flag_has_help() {
        use clap::CommandFactory;
        let missing = service_kit::cli::flags_without_help(&Cli::command());
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
