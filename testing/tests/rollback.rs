#![allow(clippy::unwrap_used)]
// Tests write fixtures and forged files directly.
#![allow(clippy::disallowed_methods)]
//! Rolling back a disk gains nothing (DESIGN.md invariant 11): replicas run
//! as separate processes whose secrets and freshness anchors are in a
//! SoftHSM2 token; data folders are copied, guesses are counted, and the
//! old copies are put back while the token is kept. A rolled-back replica
//! refuses to start, saying why; no replica panics; the guesses counted
//! since the copy stay counted.
//!
//! Needs SoftHSM2 (`apt-get install softhsm2`; `.ci/test` installs it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use client::{BackupKey, ClientError, GatewayConnection, Status, VaultClient};
use protocol_spec::msg::{self, response::Kind as Resp, ErrorCode};
use protocol_spec::opaque_profile::cheap_ksf_for_load_tests;
use testing::helpers::{connect, login_start};
use testing::local_stack::{LocalStack, StackOptions};
use testing::softhsm::{SoftHsm, MODULE};
use vault_backend::keyprotect::KeyProtection;

const CLUSTER: usize = 0;
const LIMIT: u32 = 10;

/// SoftHSM2 tokens in a temporary folder, for this process (which seals
/// the secrets when it creates the clusters) and the replica processes it
/// starts (they inherit the environment): one token per replica of each of
/// the two stacks, `bkv-<stack>-<id>`, as each replica host has its own HSM.
fn tokens() -> SoftHsm {
    let hsm = SoftHsm::new();
    for stack in ["a", "b"] {
        for id in 1..=5 {
            hsm.init_token(&format!("bkv-{stack}-{id}"), "1234");
        }
    }
    let conf = hsm.conf.clone();
    // The only test in this binary: nothing else reads the environment.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    std::env::set_var("BKV_PKCS11_PIN", "1234");
    hsm
}

async fn start_stack(name: &str) -> LocalStack {
    LocalStack::start(StackOptions {
        max_attempts: LIMIT,
        // Rolling back is what this tests, not pacing: guesses come fast.
        pacing: vault_backend::account::Pacing::OFF,
        replica_binary: Some(testing::bins::vault_backend()),
        key_protection: KeyProtection::Pkcs11 {
            module: MODULE.into(),
            token_label: format!("bkv-{name}-{{id}}"),
            key_label: "bkv-fleet-kek".into(),
            pin_env: "BKV_PKCS11_PIN".into(),
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

fn data_dir(stack: &LocalStack, i: usize) -> PathBuf {
    let cfg = &stack.clusters[CLUSTER].configs[i];
    cfg.state_dir.join(&cfg.data_dir)
}

fn copy_dir(from: &Path, to: &Path) {
    testing::helpers::copy_dir(from, to).unwrap();
}

/// Puts `from`'s files in place of `to`'s.
fn restore_dir(from: &Path, to: &Path) {
    std::fs::remove_dir_all(to).unwrap();
    copy_dir(from, to);
}

async fn wait_caught_up(stack: &LocalStack) {
    stack
        .wait_caught_up(CLUSTER, Duration::from_secs(30))
        .await
        .unwrap();
}

/// Copies replica `i`'s data folder as the host would (the replica
/// stopped, so the copy is consistent), and starts it again.
async fn snapshot_data(stack: &mut LocalStack, i: usize, to: &Path) {
    let exit = stack
        .terminate_replica(CLUSTER, i, Duration::from_secs(15))
        .await
        .unwrap();
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
    copy_dir(&data_dir(stack, i), to);
    stack.start_replica(CLUSTER, i).await.unwrap();
    wait_caught_up(stack).await;
}

/// One login start: `Some(attempts_left)` if the vault evaluated the OPRF,
/// `None` if it refused as unavailable.
async fn guess(conn: &GatewayConnection) -> Option<u32> {
    match conn.request(&login_start(b"a wrong guess")).await {
        Ok(msg::Response {
            kind: Some(Resp::LoginStart(s)),
        }) => Some(s.attempts_left),
        Ok(msg::Response {
            kind: Some(Resp::Error(e)),
        }) if e.code() == ErrorCode::Unavailable => None,
        Err(ClientError::Unavailable(_)) => None,
        other => panic!("a login start got {other:?}"),
    }
}

/// A guess that must be evaluated (retrying while the cluster elects).
async fn counted_guess(conn: &GatewayConnection) -> u32 {
    for _ in 0..50 {
        if let Some(left) = guess(conn).await {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the cluster never evaluated a guess");
}

/// Waits (bounded) for replica `i`'s process to exit on its own; returns
/// its log.
async fn wait_refused(stack: &mut LocalStack, i: usize) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = stack.replica_exit(CLUSTER, i) {
            let log = stack.replica_log(CLUSTER, i);
            assert!(!exit.success(), "a rolled-back replica exited 0:\n{log}");
            return log;
        }
        assert!(
            Instant::now() < until,
            "rolled-back replica {i} kept running:\n{}",
            stack.replica_log(CLUSTER, i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_no_panic(stack: &LocalStack) {
    for i in 0..stack.clusters[CLUSTER].configs.len() {
        let log = stack.replica_log(CLUSTER, i);
        assert!(!log.contains("panicked"), "replica {i} panicked:\n{log}");
    }
}

async fn status(stack: &LocalStack, conn: &GatewayConnection) -> Status {
    VaultClient::new(conn, &stack.profile)
        .unwrap()
        .with_ksf(cheap_ksf_for_load_tests())
        .status()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_data_folders_grant_no_extra_guesses() {
    let _hsm = tokens();
    let backups = tempfile::tempdir().unwrap();

    // One of five rolled back.
    let mut stack = start_stack("a").await;
    let conn = connect(&stack, "target").await;
    let v = VaultClient::new(&conn, &stack.profile)
        .unwrap()
        .with_ksf(cheap_ksf_for_load_tests());
    v.register(b"right", &BackupKey::generate(), false)
        .await
        .unwrap();
    let leader = stack
        .wait_for_leader(CLUSTER, Duration::from_secs(20))
        .await
        .unwrap();
    let j = (0..5).find(|&i| i != leader).unwrap();
    let copy = backups.path().join("one");
    snapshot_data(&mut stack, j, &copy).await;
    let mut left = LIMIT;
    for _ in 0..5 {
        let now = counted_guess(&conn).await;
        assert_eq!(now, left - 1);
        left = now;
    }
    wait_caught_up(&stack).await;
    stack.stop_replica(CLUSTER, j).await;
    restore_dir(&copy, &data_dir(&stack, j));
    stack.start_replica(CLUSTER, j).await.unwrap();
    let log = wait_refused(&mut stack, j).await;
    assert!(log.contains("older than its freshness anchor"), "{log}");
    // The others go on counting from where they were.
    let after = counted_guess(&conn).await;
    let extra_one = after as i64 - (left as i64 - 1);
    assert_eq!(
        after,
        left - 1,
        "guesses granted back by rolling back one replica"
    );
    assert_eq!(
        status(&stack, &conn).await,
        Status::Active {
            attempts_left: after,
            max_attempts: LIMIT,
            replacement_in: None
        }
    );
    assert_no_panic(&stack);
    eprintln!("ROLLBACK 1 of 5: refused to start; extra guesses granted: {extra_one}");
    conn.close().await;
    stack.shutdown().await;

    // Three of five rolled back: a majority of old copies.
    let mut stack = start_stack("b").await;
    let conn = connect(&stack, "target").await;
    let v = VaultClient::new(&conn, &stack.profile)
        .unwrap()
        .with_ksf(cheap_ksf_for_load_tests());
    v.register(b"right", &BackupKey::generate(), false)
        .await
        .unwrap();
    let leader = stack
        .wait_for_leader(CLUSTER, Duration::from_secs(20))
        .await
        .unwrap();
    let rolled: Vec<usize> = (0..5).filter(|&i| i != leader).take(3).collect();
    for &i in &rolled {
        snapshot_data(&mut stack, i, &backups.path().join(format!("three-{i}"))).await;
    }
    let mut left = LIMIT;
    for _ in 0..5 {
        left = counted_guess(&conn).await;
    }
    assert_eq!(left, LIMIT - 5);
    wait_caught_up(&stack).await;
    // The current folders, which an operator would put back afterwards.
    for &i in &rolled {
        let exit = stack
            .terminate_replica(CLUSTER, i, Duration::from_secs(15))
            .await
            .unwrap();
        assert!(exit.is_some_and(|e| e.success()));
        copy_dir(
            &data_dir(&stack, i),
            &backups.path().join(format!("now-{i}")),
        );
    }
    for &i in &rolled {
        restore_dir(
            &backups.path().join(format!("three-{i}")),
            &data_dir(&stack, i),
        );
        stack.start_replica(CLUSTER, i).await.unwrap();
        let log = wait_refused(&mut stack, i).await;
        assert!(log.contains("older than its freshness anchor"), "{log}");
    }
    // The two current replicas are no majority: nothing is evaluated. (Each
    // try may still commit once a majority is back: a guess that got no
    // answer counts, which errs on the owner's side of the limit.)
    let probes = 2;
    let mut evaluated = 0;
    for _ in 0..probes {
        if guess(&conn).await.is_some() {
            evaluated += 1;
        }
    }
    assert_eq!(
        evaluated, 0,
        "OPRF evaluations served by a rolled-back majority"
    );
    assert_no_panic(&stack);
    // With the current folders back, the count is where it was.
    for &i in &rolled {
        restore_dir(
            &backups.path().join(format!("now-{i}")),
            &data_dir(&stack, i),
        );
        stack.start_replica(CLUSTER, i).await.unwrap();
    }
    if let Err(e) = stack
        .wait_for_leader(CLUSTER, Duration::from_secs(30))
        .await
    {
        for i in 0..5 {
            let log = stack.replica_log(CLUSTER, i);
            let tail: Vec<&str> = log.lines().rev().take(6).collect();
            eprintln!(
                "=== replica {i}:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        panic!("{e}");
    }
    let after = counted_guess(&conn).await;
    // Counted: the 5 before, this one, and perhaps the unanswered probes.
    assert!(
        (left - 1 - probes..=left - 1).contains(&after),
        "the guesses counted before the rollback stay counted: {after} left"
    );
    assert_no_panic(&stack);
    eprintln!(
        "ROLLBACK 3 of 5: each refused to start; OPRF evaluations while rolled back: {evaluated}; \
         extra guesses granted: {} ({} unanswered probes counted later)",
        (after as i64 - (left as i64 - 1)).max(0),
        left - 1 - after
    );
    conn.close().await;
    stack.shutdown().await;
}
