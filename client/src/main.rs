//! `backup-client`: the phone-side flows from a terminal.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use client::{
    BackupKey, ClientError, ClientProfile, DeviceIdentity, GatewayConnection, Status, VaultClient,
};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "backup-client",
    version,
    about = "End-to-end encrypted backup keys"
)]
struct Cli {
    /// Deployment profile (written by `local-stack`).
    #[arg(
        long,
        global = true,
        default_value = ".local-stack/client-profile.toml"
    )]
    profile: PathBuf,
    /// Device folder (device key and credential).
    #[arg(long, global = true, default_value = "my-phone")]
    device: PathBuf,
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
    /// Generate a new backup key and show it as 64 hex digits.
    NewKey,
    /// Check a typed 64-digit key for typos.
    CheckKey {
        /// The key (quote it, or omit to be prompted).
        key: Option<String>,
    },
    /// Deposit a new backup key in the vault, protected by a password.
    Register {
        /// Deposit this key instead of a new one.
        #[arg(long)]
        key: Option<String>,
        /// Replace an existing deposit (backups under the old one become unrecoverable via the vault).
        #[arg(long)]
        replace: bool,
    },
    /// Recover the backup key with the password.
    Recover,
    /// Show the deposit status and attempts left.
    Status,
    /// Change the password (needs the current one).
    ChangePassword,
    /// Delete the deposit (needs the password).
    Disable,
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

fn password(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var("BKV_PASSWORD") {
        return Ok(Zeroizing::new(p));
    }
    Ok(Zeroizing::new(
        rpassword::prompt_password(prompt).context("cannot read the password")?,
    ))
}

async fn connect(cli: &Cli) -> anyhow::Result<(ClientProfile, GatewayConnection)> {
    let profile = ClientProfile::load(&cli.profile)?;
    let device = DeviceIdentity::load(&cli.device)?;
    let conn = GatewayConnection::connect(&profile, &device).await?;
    Ok((profile, conn))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e:#}");
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
            d.save(&cli.device)?;
            println!("credential stored");
        }
        Cmd::NewKey => {
            println!("{}", BackupKey::generate().to_display());
        }
        Cmd::CheckKey { key } => {
            let text = match key {
                Some(k) => k.clone(),
                None => rpassword::prompt_password("64-digit key: ")?,
            };
            BackupKey::parse(&text)?;
            println!("the key is well-formed");
        }
        Cmd::Register { key, replace } => {
            let (profile, conn) = connect(&cli).await?;
            let vault = VaultClient::new(&conn, &profile)?;
            let k = match key {
                Some(k) => BackupKey::parse(k)?,
                None => BackupKey::generate(),
            };
            if *replace {
                eprintln!("warning: replacing the deposit makes backups protected by the old key unrecoverable through the vault");
            }
            let pw = password("new password: ")?;
            vault.register(pw.as_bytes(), &k, *replace).await?;
            println!("deposited. Backup key (shown once, write it down if you want a password-free way back):");
            println!("{}", k.to_display());
            conn.close().await;
        }
        Cmd::Recover => {
            let (profile, conn) = connect(&cli).await?;
            let vault = VaultClient::new(&conn, &profile)?;
            match vault.status().await? {
                Status::Active { attempts_left, .. } => {
                    eprintln!("{attempts_left} attempt(s) left");
                    if attempts_left == 1 {
                        eprintln!("warning: this is the LAST attempt; a wrong password erases the key for good");
                    }
                }
                Status::LockedOut => return Err(ClientError::LockedOut.into()),
                Status::NotRegistered => return Err(ClientError::NotRegistered.into()),
            }
            let pw = password("password: ")?;
            let k = vault.recover(pw.as_bytes()).await?;
            println!("{}", k.to_display());
            conn.close().await;
        }
        Cmd::Status => {
            let (profile, conn) = connect(&cli).await?;
            let vault = VaultClient::new(&conn, &profile)?;
            match vault.status().await? {
                Status::NotRegistered => println!("no key deposited"),
                Status::Active {
                    attempts_left,
                    max_attempts,
                } => {
                    println!("key deposited; {attempts_left} of {max_attempts} attempts left")
                }
                Status::LockedOut => println!("locked out: the deposited key was erased for good"),
            }
            conn.close().await;
        }
        Cmd::ChangePassword => {
            let (profile, conn) = connect(&cli).await?;
            let vault = VaultClient::new(&conn, &profile)?;
            let old = password("current password: ")?;
            let new = match std::env::var("BKV_NEW_PASSWORD") {
                Ok(p) => Zeroizing::new(p),
                Err(_) => Zeroizing::new(rpassword::prompt_password("new password: ")?),
            };
            vault
                .change_password(old.as_bytes(), new.as_bytes())
                .await?;
            println!("password changed");
            conn.close().await;
        }
        Cmd::Disable => {
            let (profile, conn) = connect(&cli).await?;
            let vault = VaultClient::new(&conn, &profile)?;
            let pw = password("password: ")?;
            vault.disable(pw.as_bytes()).await?;
            println!("deposit deleted");
            conn.close().await;
        }
    }
    Ok(())
}
