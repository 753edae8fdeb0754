#![allow(clippy::unwrap_used)]
// Tests write fixtures and forged files directly.
#![allow(clippy::disallowed_methods)]
//! What a person does, over the real stack on loopback (QUIC gateway, Noise,
//! OPAQUE vault, redb): turn backup on, back up a folder, lose the phone,
//! restore on a new one — with the password, or with the 64-digit key while
//! the vault is down; change the password; turn backup off; use up the guesses.
//! The CLI runs as a real `backup-client` process.

use std::path::{Path, PathBuf};
use std::process::Output;

use client::{
    backups, BackupKey, BackupSettings, BackupStore, ClientError, GatewayConnection, Protection,
    VaultClient,
};
use testing::local_stack::{LocalStack, StackOptions, PROFILE_FILE};

struct World {
    stack: LocalStack,
    tmp: tempfile::TempDir,
}

impl World {
    async fn new(max_attempts: u32) -> Self {
        let stack = LocalStack::start(StackOptions {
            max_attempts,
            ..Default::default()
        })
        .await
        .unwrap();
        Self {
            stack,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn drive(&self) -> String {
        self.tmp.path().join("drive").to_str().unwrap().to_owned()
    }

    /// A new phone of `account`: fresh device key, fresh credential.
    fn phone(&self, name: &str, account: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        self.stack
            .enroll_device(account)
            .unwrap()
            .save(&dir)
            .unwrap();
        dir
    }

    async fn cli(&self, phone: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.cli_in(None, phone, Some(&self.drive()), args, env)
            .await
    }

    /// The CLI run from working folder `cwd`, with `--location` if given.
    async fn cli_in(
        &self,
        cwd: Option<&Path>,
        phone: &Path,
        location: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut cmd = tokio::process::Command::new(testing::bins::backup_client());
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        if let Some(l) = location {
            cmd.arg("--location").arg(l);
        }
        cmd.arg("--profile")
            .arg(self.stack.dir.join(PROFILE_FILE))
            .arg("--device")
            .arg(phone)
            .args(args)
            .env_remove("BKV_PASSWORD")
            .env_remove("BKV_NEW_PASSWORD")
            .env_remove("BKV_BACKUP_KEY")
            .env_remove("BKV_BACKUP_LOCATION")
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().await.unwrap()
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "command failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "command unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A folder with nested files, an empty file and a multi-chunk file.
fn chat_history(root: &Path) {
    std::fs::create_dir_all(root.join("media/2026")).unwrap();
    std::fs::write(root.join("msgstore.db"), b"hello from the old phone").unwrap();
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("media/2026/video.bin"), big).unwrap();
}

fn assert_same_tree(a: &Path, b: &Path) {
    let mut names = Vec::new();
    for e in std::fs::read_dir(a).unwrap().flatten() {
        let p = e.path();
        let other = b.join(e.file_name());
        if p.is_dir() {
            assert_same_tree(&p, &other);
        } else {
            assert_eq!(
                std::fs::read(&p).unwrap(),
                std::fs::read(&other).unwrap(),
                "{}",
                p.display()
            );
        }
        names.push(e.file_name());
    }
    assert_eq!(
        names.len(),
        std::fs::read_dir(b).unwrap().count(),
        "{}",
        b.display()
    );
}

#[tokio::test]
async fn password_backup_survives_losing_the_phone() {
    let w = World::new(10).await;
    let history = w.tmp.path().join("history");
    chat_history(&history);
    let pw = [("BKV_PASSWORD", "correct horse battery")];

    let a = w.phone("phone-a", "alice");
    let out = ok(&w.cli(&a, &["enable"], &pw).await);
    assert!(out.contains("protected by your password"), "{out}");
    let key = BackupSettings::load(&a).unwrap().unwrap().key;
    assert!(
        !out.contains(&key.to_display()) && !out.contains(&hex::encode(key.as_bytes())),
        "password mode never shows the key"
    );
    let out = ok(&w.cli(&a, &["backup", history.to_str().unwrap()], &[]).await);
    assert!(out.contains("backed up"), "{out}");
    let status = ok(&w.cli(&a, &["status"], &[]).await);
    assert!(status.contains("backups: 1"), "{status}");
    assert!(
        status.contains("10 of 10 password attempts left"),
        "{status}"
    );

    // Phone A is lost.
    std::fs::remove_dir_all(&a).unwrap();

    let b = w.phone("phone-b", "alice");
    let restored = w.tmp.path().join("restored");
    let o = w
        .cli(
            &b,
            &[
                "restore",
                "--with-password",
                "--to",
                restored.to_str().unwrap(),
            ],
            &pw,
        )
        .await;
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("10 password attempt(s) left"));
    assert_same_tree(&history, &restored);

    // Phone B carries on backing up under the same key.
    ok(&w.cli(&b, &["backup", history.to_str().unwrap()], &[]).await);
    let status = ok(&w.cli(&b, &["status"], &[]).await);
    assert!(status.contains("backups: 2"), "{status}");
    w.stack.shutdown().await;
}

#[tokio::test]
async fn key_only_backup_restores_with_the_vault_down() {
    let mut w = World::new(10).await;
    let history = w.tmp.path().join("history");
    chat_history(&history);
    let a = w.phone("phone-a", "bob");
    let out = ok(&w.cli(&a, &["enable", "--key-only"], &[]).await);
    let key_line = out
        .lines()
        .map(str::trim)
        .find(|l| BackupKey::parse(l).is_ok())
        .expect("the key is shown")
        .to_owned();
    ok(&w.cli(&a, &["backup", history.to_str().unwrap()], &[]).await);
    std::fs::remove_dir_all(&a).unwrap();

    w.stack.stop_vault().await;
    let b = w.phone("phone-b", "bob");
    let restored = w.tmp.path().join("restored");
    let to = restored.to_str().unwrap();

    // The password route needs the vault: a typed "unavailable", nothing restored.
    let err = failed(
        &w.cli(
            &b,
            &["restore", "--with-password", "--to", to],
            &[("BKV_PASSWORD", "whatever1")],
        )
        .await,
    );
    assert!(err.contains("unavailable"), "{err}");
    assert!(!restored.exists());

    // A mistyped key is reported as a wrong key, not as a damaged backup.
    let wrong = BackupKey::generate().to_display();
    let err = failed(
        &w.cli(
            &b,
            &["restore", "--with-key", "--to", to],
            &[("BKV_BACKUP_KEY", &wrong)],
        )
        .await,
    );
    assert!(err.contains("wrong key"), "{err}");
    assert_eq!(err.matches("wrong key").count(), 1, "said once: {err}");
    assert!(!restored.exists(), "a failed restore leaves nothing behind");

    ok(&w
        .cli(
            &b,
            &["restore", "--with-key", "--to", to],
            &[("BKV_BACKUP_KEY", &key_line.to_uppercase())],
        )
        .await);
    assert_same_tree(&history, &restored);
    w.stack.shutdown().await;
}

#[tokio::test]
async fn changed_password_restores_and_the_old_one_does_not() {
    let w = World::new(10).await;
    let history = w.tmp.path().join("history");
    chat_history(&history);
    let a = w.phone("phone-a", "carol");
    ok(&w
        .cli(&a, &["enable"], &[("BKV_PASSWORD", "old password")])
        .await);
    ok(&w.cli(&a, &["backup", history.to_str().unwrap()], &[]).await);
    ok(&w
        .cli(
            &a,
            &["change-password"],
            &[
                ("BKV_PASSWORD", "old password"),
                ("BKV_NEW_PASSWORD", "new password"),
            ],
        )
        .await);

    let b = w.phone("phone-b", "carol");
    let to = w.tmp.path().join("restored");
    let err = failed(
        &w.cli(
            &b,
            &["restore", "--with-password", "--to", to.to_str().unwrap()],
            &[("BKV_PASSWORD", "old password")],
        )
        .await,
    );
    assert!(err.contains("wrong password: 9 attempt(s) left"), "{err}");
    ok(&w
        .cli(
            &b,
            &["restore", "--with-password", "--to", to.to_str().unwrap()],
            &[("BKV_PASSWORD", "new password")],
        )
        .await);
    assert_same_tree(&history, &to);
    w.stack.shutdown().await;
}

#[tokio::test]
async fn disabled_backup_is_gone_from_the_vault_but_opens_with_a_kept_key() {
    let w = World::new(10).await;
    let history = w.tmp.path().join("history");
    chat_history(&history);
    let a = w.phone("phone-a", "dave");
    ok(&w
        .cli(&a, &["enable"], &[("BKV_PASSWORD", "dave's password")])
        .await);
    ok(&w.cli(&a, &["backup", history.to_str().unwrap()], &[]).await);
    // The user kept the key (a phone app could show it on request).
    let kept = BackupSettings::load(&a).unwrap().unwrap().key;
    // A second phone of the account, with backup on (restored earlier).
    let c = w.phone("phone-c", "dave");
    let restored_c = w.tmp.path().join("restored-c");
    ok(&w
        .cli(
            &c,
            &[
                "restore",
                "--with-password",
                "--to",
                restored_c.to_str().unwrap(),
            ],
            &[("BKV_PASSWORD", "dave's password")],
        )
        .await);
    let out = ok(&w
        .cli(&a, &["disable"], &[("BKV_PASSWORD", "dave's password")])
        .await);
    assert!(out.contains("deleted from the vault"), "{out}");
    assert!(
        BackupSettings::load(&a).unwrap().is_none(),
        "the device forgot the key"
    );
    // The other phone does not go on backing up as if nothing happened:
    // its status says why, and a backup is refused with what to do.
    let st = ok(&w.cli(&c, &["status"], &[]).await);
    assert!(
        st.contains("turned off") && st.contains("backup-client enable"),
        "{st}"
    );
    let err = failed(&w.cli(&c, &["backup", history.to_str().unwrap()], &[]).await);
    assert!(err.contains("no longer holds"), "{err}");

    let b = w.phone("phone-b", "dave");
    let to = w.tmp.path().join("restored");
    let err = failed(
        &w.cli(
            &b,
            &["restore", "--with-password", "--to", to.to_str().unwrap()],
            &[("BKV_PASSWORD", "dave's password")],
        )
        .await,
    );
    assert!(err.contains("no backup key is deposited"), "{err}");

    // The library route, as an app would use it: the kept key still opens the backup.
    let store = BackupStore::open(&w.drive(), "dave", 3).unwrap();
    let r = backups::restore_latest(&store, &kept, &to, &|_| {})
        .await
        .unwrap();
    assert_eq!(r.path, to);
    assert_same_tree(&history, &to);

    // And the vault confirms there is nothing to guess at.
    let dev = w.stack.enroll_device("dave").unwrap();
    let conn = GatewayConnection::connect(&w.stack.profile, &dev)
        .await
        .unwrap();
    let vault = VaultClient::new(&conn, &w.stack.profile).unwrap();
    assert!(matches!(
        vault.recover(b"dave's password").await,
        Err(ClientError::NotRegistered)
    ));
    conn.close().await;
    w.stack.shutdown().await;
}

#[tokio::test]
async fn using_up_the_guesses_ends_with_key_permanently_inaccessible() {
    let w = World::new(3).await;
    let history = w.tmp.path().join("history");
    chat_history(&history);
    let a = w.phone("phone-a", "erin");
    ok(&w
        .cli(&a, &["enable"], &[("BKV_PASSWORD", "the real one")])
        .await);
    assert_eq!(
        BackupSettings::load(&a).unwrap().unwrap().protection,
        Protection::Password
    );
    ok(&w.cli(&a, &["backup", history.to_str().unwrap()], &[]).await);

    let b = w.phone("phone-b", "erin");
    let to = w.tmp.path().join("restored");
    let to = to.to_str().unwrap();
    let guess = [("BKV_PASSWORD", "not it")];
    let args = ["restore", "--with-password", "--to", to];

    let o = w.cli(&b, &args, &guess).await;
    let err = failed(&o);
    assert!(err.contains("3 password attempt(s) left"), "{err}");
    assert!(err.contains("2 attempt(s) left"), "{err}");

    let err = failed(&w.cli(&b, &args, &guess).await);
    assert!(err.contains("1 attempt(s) left"), "{err}");

    let err = failed(&w.cli(&b, &args, &guess).await);
    assert!(
        err.contains("LAST attempt"),
        "warned before the last guess: {err}"
    );
    assert!(err.contains("erased the backup key for good"), "{err}");
    assert!(
        !err.contains("64-digit"),
        "a password user was never shown a 64-digit key: {err}"
    );

    // Even the right password cannot bring it back now.
    let err = failed(&w.cli(&b, &args, &[("BKV_PASSWORD", "the real one")]).await);
    assert!(err.contains("erased the backup key for good"), "{err}");
    let status = ok(&w.cli(&a, &["status"], &[]).await);
    assert!(status.contains("locked out"), "{status}");

    // The original phone still holds the key: `enable` protects that same
    // key with a new password, and the old backup restores with it.
    let out = ok(&w
        .cli(&a, &["enable"], &[("BKV_PASSWORD", "a new one")])
        .await);
    assert!(out.contains("still has it"), "{out}");
    ok(&w.cli(&b, &args, &[("BKV_PASSWORD", "a new one")]).await);
    // The backup made before the lockout restores.
    assert_same_tree(&history, Path::new(to));
    w.stack.shutdown().await;
}

#[tokio::test]
async fn a_new_phone_without_the_password_can_only_ask_for_a_replacement() {
    let w = World::new(10).await;
    let history = w.tmp.path().join("history");
    chat_history(&history);
    let a = w.phone("phone-a", "gina");
    ok(&w
        .cli(&a, &["enable"], &[("BKV_PASSWORD", "the real one")])
        .await);
    ok(&w.cli(&a, &["backup", history.to_str().unwrap()], &[]).await);

    // A new phone of the account (a SIM swap, or the owner without the
    // password) asks to replace the deposit: it is told to wait, and what
    // it can do meanwhile.
    let b = w.phone("phone-b", "gina");
    let err = failed(
        &w.cli(
            &b,
            &["enable", "--replace"],
            &[("BKV_PASSWORD", "the thief")],
        )
        .await,
    );
    assert!(err.contains("waiting period"), "{err}");
    assert!(err.contains("in 7 days"), "{err}");
    assert!(err.contains("enable --key-only"), "{err}");
    assert!(BackupSettings::load(&b).unwrap().is_none());
    // Every phone of the account sees it.
    let status = ok(&w.cli(&a, &["status"], &[]).await);
    assert!(status.contains("asked to replace this deposit"), "{status}");
    assert!(status.contains("in 7 days"), "{status}");
    // The owner's restore with the password (on another new phone) cancels it.
    let c = w.phone("phone-c", "gina");
    let to = w.tmp.path().join("restored");
    ok(&w
        .cli(
            &c,
            &["restore", "--with-password", "--to", to.to_str().unwrap()],
            &[("BKV_PASSWORD", "the real one")],
        )
        .await);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = ok(&w.cli(&a, &["status"], &[]).await);
        if !status.contains("asked to replace") {
            break;
        }
        assert!(std::time::Instant::now() < until, "not cancelled: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    w.stack.shutdown().await;
}

/// A relative `--location` is stored absolute: from another working
/// folder, `status` and `backup` use the same cloud folder; a different
/// `--location` after `enable` is refused rather than ignored. Backup
/// times read as dates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_location_means_one_folder_from_anywhere() {
    let w = World::new(10).await;
    let a = w.phone("phone-a", "erin");
    let here = w.tmp.path().join("here");
    let elsewhere = w.tmp.path().join("elsewhere");
    std::fs::create_dir_all(&here).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let data = w.tmp.path().join("chats");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), b"hello").unwrap();
    let d = data.to_str().unwrap();

    ok(&w
        .cli_in(
            Some(&here),
            &a,
            Some("rel-drive"),
            &["enable", "--key-only"],
            &[],
        )
        .await);
    ok(&w
        .cli_in(Some(&elsewhere), &a, None, &["backup", d], &[])
        .await);
    assert!(here.join("rel-drive").is_dir());
    assert!(!elsewhere.join("rel-drive").exists());
    let st = ok(&w.cli_in(Some(&elsewhere), &a, None, &["status"], &[]).await);
    assert!(st.contains("backups: 1"), "{st}");
    assert!(st.contains(" UTC ("), "times as dates: {st}");
    assert!(!st.contains("(unix)"), "{st}");

    let o = w
        .cli_in(
            Some(&elsewhere),
            &a,
            Some("other-drive"),
            &["backup", d],
            &[],
        )
        .await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not used"), "{err}");
    assert!(!elsewhere.join("other-drive").exists(), "{err}");
    w.stack.shutdown().await;
}

/// A gateway that does not answer: the phone says it is connecting, gives
/// up within the connect budget, and says that a 64-digit key works
/// without the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_does_not_answer_is_said_with_the_offline_hint() {
    let w = World::new(10).await;
    let a = w.phone("phone-a", "frank");
    // A socket that takes datagrams and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut profile = w.stack.profile.clone();
    profile.gateway_addr = silent.local_addr().unwrap();
    let path = w.tmp.path().join("silent-profile.toml");
    client::profile::save(&profile, &path).unwrap();
    // Built (when not current) before the clock starts: on a clean CI
    // machine that build took more than the minute this test allows.
    let backup_client = testing::bins::backup_client();
    let started = std::time::Instant::now();
    let o = tokio::process::Command::new(backup_client)
        .arg("--profile")
        .arg(&path)
        .arg("--device")
        .arg(&a)
        .arg("change-password")
        .env("BKV_PASSWORD", "x")
        .env("BKV_NEW_PASSWORD", "y")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("connecting to the gateway"), "{err}");
    assert!(err.contains("--with-key"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    drop(silent);
    w.stack.shutdown().await;
}
