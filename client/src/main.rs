//! `backup-client`: the phone-side flows from a terminal — turn encrypted
//! backup on, back up, restore on a new phone, change the password, turn it
//! off.
//!
//! Passwords are read without echo (or from `BKV_PASSWORD` /
//! `BKV_NEW_PASSWORD` for scripts), held in zeroizing buffers, and never
//! printed or logged.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use client::backups;
use client::cloud::DEFAULT_KEEP;
use client::{
    BackupKey, BackupSettings, BackupStore, ClientError, ClientProfile, DeviceIdentity,
    GatewayConnection, Protection, Status, VaultClient,
};
use indicatif::{ProgressBar, ProgressStyle};
use zeroize::Zeroizing;

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
    #[arg(
        long,
        global = true,
        env = "BKV_BACKUP_LOCATION",
        default_value = ".local-stack/cloud-drive"
    )]
    location: String,
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
    /// Generate a new backup key and show it as 64 hex digits.
    NewKey,
    /// Check a typed 64-digit key for typos.
    CheckKey {
        /// The key (omit to be prompted).
        key: Option<String>,
    },
    /// Low level: deposit a key in the vault.
    #[command(hide = true)]
    Register {
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        replace: bool,
    },
    /// Low level: recover the deposited key and print it.
    #[command(hide = true)]
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

const MIN_PASSWORD_CHARS: usize = 6;

fn env_secret(var: &str) -> Option<Zeroizing<String>> {
    std::env::var(var).ok().map(Zeroizing::new)
}

fn scripted() -> bool {
    std::env::var_os("BKV_PASSWORD").is_some()
}

fn prompt_secret(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    Ok(Zeroizing::new(rpassword::prompt_password(prompt).context(
        "cannot read from the terminal; set BKV_PASSWORD to run without one",
    )?))
}

fn password(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    match env_secret("BKV_PASSWORD") {
        Some(p) => Ok(p),
        None => prompt_secret(prompt),
    }
}

/// A new password, typed twice unless scripted.
fn new_password(env: &str) -> anyhow::Result<Zeroizing<String>> {
    if let Some(p) = env_secret(env) {
        check_new_password(&p)?;
        return Ok(p);
    }
    loop {
        let p = prompt_secret("choose a backup password: ")?;
        if let Err(e) = check_new_password(&p) {
            eprintln!("{e}");
            continue;
        }
        let again = prompt_secret("type it again: ")?;
        if *again == *p {
            return Ok(p);
        }
        eprintln!("the two passwords differ; try again");
    }
}

fn check_new_password(p: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        p.chars().count() >= MIN_PASSWORD_CHARS,
        "the password needs at least {MIN_PASSWORD_CHARS} characters"
    );
    Ok(())
}

async fn connect(cli: &Cli) -> anyhow::Result<(ClientProfile, GatewayConnection)> {
    let profile = ClientProfile::load(&cli.profile)?;
    let device = DeviceIdentity::load(&cli.device)?;
    let conn = GatewayConnection::connect(&profile, &device).await?;
    Ok((profile, conn))
}

fn settings(cli: &Cli) -> anyhow::Result<BackupSettings> {
    BackupSettings::load(&cli.device)?.ok_or_else(|| {
        anyhow::anyhow!(
            "encrypted backup is off on this device; turn it on with `backup-client enable`, or restore with `backup-client restore`"
        )
    })
}

fn progress_bar(total: u64, verb: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
    )) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn human_time(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ago = std::time::SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    format!("{secs} (unix), {ago} s ago")
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
            println!("the key is well-formed");
        }
        Cmd::Register { key, replace } => {
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
        Cmd::Recover => {
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

async fn enable(cli: &Cli, key_only: bool, replace: bool, keep: usize) -> anyhow::Result<()> {
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

async fn backup(cli: &Cli, path: &Path) -> anyhow::Result<()> {
    let s = settings(cli)?;
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

async fn recover_with_password(cli: &Cli) -> anyhow::Result<BackupKey> {
    let (profile, conn) = connect(cli).await?;
    let res = recover_loop(&conn, &profile).await;
    conn.close().await;
    res
}

async fn recover_loop(
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
            eprintln!("warning: this is your LAST attempt. A wrong password erases the backup key for good and your backups can then only be opened with the 64-digit key, if you kept it");
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

fn read_key() -> anyhow::Result<BackupKey> {
    if let Some(k) = env_secret("BKV_BACKUP_KEY") {
        return Ok(BackupKey::parse(&k)?);
    }
    loop {
        let k = prompt_secret("your 64-digit backup key: ")?;
        match BackupKey::parse(&k) {
            Ok(k) => return Ok(k),
            Err(e) => eprintln!("{e}"),
        }
    }
}

async fn restore(cli: &Cli, to: &Path, with_key: bool, with_password: bool) -> anyhow::Result<()> {
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
    let store = BackupStore::open(&cli.location, &account_id, DEFAULT_KEEP)?;
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
        location: cli.location.clone(),
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

async fn status(cli: &Cli) -> anyhow::Result<()> {
    let Some(s) = BackupSettings::load(&cli.device)? else {
        println!("encrypted backup: off on this device");
        return Ok(());
    };
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
        let res = tokio::time::timeout(Duration::from_secs(15), async {
            let (profile, conn) = connect(cli).await?;
            let st = VaultClient::new(&conn, &profile)?.status().await;
            conn.close().await;
            anyhow::Ok(st?)
        })
        .await;
        match res {
            Ok(Ok(Status::Active {
                attempts_left,
                max_attempts,
            })) => println!(
                "vault: key deposited; {attempts_left} of {max_attempts} password attempts left"
            ),
            Ok(Ok(Status::LockedOut)) => {
                println!("vault: locked out; the deposited key was erased for good")
            }
            Ok(Ok(Status::NotRegistered)) => println!("vault: no key deposited for this account"),
            Ok(Err(e)) => println!("vault: unreachable ({e:#})"),
            Err(_) => println!("vault: no answer within 15 s"),
        }
    }
    Ok(())
}

async fn disable(cli: &Cli) -> anyhow::Result<()> {
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
