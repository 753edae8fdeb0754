#![allow(clippy::unwrap_used)]
//! Erasure that sticks: after a lockout or a delete, the erased record's
//! sealed bytes are in no file of any replica (log, snapshot, free pages).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use client::{BackupKey, ClientError, GatewayConnection, VaultClient};
use protocol_spec::opaque_profile::cheap_ksf_for_load_tests;
use testing::local_stack::{LocalStack, StackOptions};

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Files (of any replica of cluster 0) holding `needle`.
fn holders(stack: &LocalStack, needle: &[u8]) -> Vec<PathBuf> {
    files_under(&stack.clusters[0].dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

/// A distinctive 32-byte piece of the account's sealed record, as stored.
async fn sealed_piece(stack: &LocalStack, account: &str) -> Vec<u8> {
    let rows = stack.rows(0, account).await.unwrap();
    let sealed = rows[0].as_ref().unwrap().sealed_record.clone();
    assert!(sealed.len() > 64);
    sealed[16..48].to_vec()
}

async fn wait_until_gone(stack: &LocalStack, needle: &[u8]) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let h = holders(stack, needle);
        if h.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "erased record bytes still in {h:?} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_and_delete_leave_no_sealed_record_bytes_in_any_replica_file() {
    let stack = LocalStack::start(StackOptions {
        max_attempts: 3,
        raft: vault_backend::config::RaftSettings {
            erasure_delay_ms: 500,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let connect = |a: &str| {
        let dev = stack.enroll_device(a).unwrap();
        let profile = stack.profile.clone();
        async move { GatewayConnection::connect(&profile, &dev).await.unwrap() }
    };

    // Lockout.
    let conn = connect("locked").await;
    let v = VaultClient::new(&conn, &stack.profile)
        .unwrap()
        .with_ksf(cheap_ksf_for_load_tests());
    v.register(b"right", &BackupKey::generate(), false)
        .await
        .unwrap();
    let locked = sealed_piece(&stack, "locked").await;
    // The scan finds what is there: every replica's file holds the record.
    assert_eq!(holders(&stack, &locked).len(), 5);
    loop {
        match v.recover(b"wrong").await {
            Err(ClientError::WrongPassword { .. }) => {}
            Err(ClientError::LockedOut) => break,
            other => panic!("{other:?}"),
        }
    }

    // Delete (disable after a verified login).
    let conn2 = connect("deleted").await;
    let v2 = VaultClient::new(&conn2, &stack.profile)
        .unwrap()
        .with_ksf(cheap_ksf_for_load_tests());
    v2.register(b"pw", &BackupKey::generate(), false)
        .await
        .unwrap();
    let deleted = sealed_piece(&stack, "deleted").await;
    assert_eq!(holders(&stack, &deleted).len(), 5);
    v2.disable(b"pw").await.unwrap();

    // A deposit that stays is untouched.
    let conn3 = connect("kept").await;
    let v3 = VaultClient::new(&conn3, &stack.profile)
        .unwrap()
        .with_ksf(cheap_ksf_for_load_tests());
    let kept_key = BackupKey::generate();
    v3.register(b"pw", &kept_key, false).await.unwrap();

    wait_until_gone(&stack, &locked).await;
    wait_until_gone(&stack, &deleted).await;
    assert_eq!(v3.recover(b"pw").await.unwrap(), kept_key);
    for c in [conn, conn2, conn3] {
        c.close().await;
    }
    stack.shutdown().await;
}
