#![allow(clippy::unwrap_used)]
//! Vault invariants over real sockets: QUIC + Noise through the gateway to a
//! replica with its redb database, all on loopback.

use std::time::Duration;

use client::connection::ConnectOptions;
use client::{BackupKey, ClientError, GatewayConnection, Status, VaultClient};
use opaque_ke::{ClientLogin, ClientLoginFinishParameters, CredentialResponse};
use protocol_spec::msg::{self, request::Kind as Req, response::Kind as Resp, LoginPurpose};
use protocol_spec::opaque_profile::{self as op, Suite};
use rand::rngs::OsRng;
use testing::helpers::{connect, status_eventually};
use testing::local_stack::{LocalStack, StackOptions};
use vault_backend::account::Pacing;
use vault_backend::provision;

async fn stack() -> LocalStack {
    LocalStack::start(StackOptions::default())
        .await
        .expect("stack starts")
}

#[tokio::test]
async fn register_then_recover_returns_the_same_key_with_ik_and_xx() {
    let stack = stack().await;
    let conn = connect(&stack, "alice").await;
    let vault = VaultClient::new(&conn, &stack.profile).unwrap();
    let key = BackupKey::generate();
    vault
        .register(b"hunter2 but longer", &key, false)
        .await
        .unwrap();
    assert_eq!(vault.recover(b"hunter2 but longer").await.unwrap(), key);

    // A second device of the same account, using XX (gateway key learned in the handshake).
    let dev = stack.enroll_device("alice").unwrap();
    let conn2 = GatewayConnection::connect_with(
        &stack.profile,
        &dev,
        &ConnectOptions {
            force_xx: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let vault2 = VaultClient::new(&conn2, &stack.profile).unwrap();
    assert_eq!(vault2.recover(b"hunter2 but longer").await.unwrap(), key);
    status_eventually(
        &vault2,
        Status::Active {
            attempts_left: 10,
            max_attempts: 10,
            replacement_in: None,
        },
    )
    .await;
    conn.close().await;
    conn2.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn wrong_passwords_count_down_then_lock_out_and_erase_the_record() {
    // The limit's rules without pacing (tested on its own in `sim_swap`).
    let stack = LocalStack::start(StackOptions {
        max_attempts: 4,
        pacing: Pacing::OFF,
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = connect(&stack, "bob").await;
    let vault = VaultClient::new(&conn, &stack.profile).unwrap();
    vault
        .register(b"right", &BackupKey::generate(), false)
        .await
        .unwrap();
    for left in (1..4).rev() {
        match vault.recover(b"wrong").await {
            Err(ClientError::WrongPassword { attempts_left }) => assert_eq!(attempts_left, left),
            other => panic!("expected wrong password, got {other:?}"),
        }
        assert_eq!(
            vault.status().await.unwrap(),
            Status::Active {
                attempts_left: left,
                max_attempts: 4,
                replacement_in: None
            }
        );
    }
    assert!(matches!(
        vault.recover(b"wrong").await,
        Err(ClientError::LockedOut)
    ));
    // Even the right password fails now, and the record is gone from storage.
    assert!(matches!(
        vault.recover(b"right").await,
        Err(ClientError::LockedOut)
    ));
    assert_eq!(vault.status().await.unwrap(), Status::LockedOut);
    let rows = stack.rows(0, "bob").await.unwrap();
    assert_eq!(rows.len(), 5);
    for row in rows {
        assert!(
            row.unwrap().sealed_record.is_empty(),
            "sealed record must be erased on every replica"
        );
    }
    // Re-registering starts a fresh deposit.
    let key2 = BackupKey::generate();
    vault.register(b"new start", &key2, false).await.unwrap();
    assert_eq!(vault.recover(b"new start").await.unwrap(), key2);
    conn.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn right_password_on_the_last_guess_still_recovers() {
    let stack = LocalStack::start(StackOptions {
        max_attempts: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = connect(&stack, "carol").await;
    let vault = VaultClient::new(&conn, &stack.profile).unwrap();
    let key = BackupKey::generate();
    vault.register(b"right", &key, false).await.unwrap();
    assert!(matches!(
        vault.recover(b"wrong").await,
        Err(ClientError::WrongPassword { attempts_left: 1 })
    ));
    assert_eq!(vault.recover(b"right").await.unwrap(), key);
    assert_eq!(
        vault.status().await.unwrap(),
        Status::Active {
            attempts_left: 2,
            max_attempts: 2,
            replacement_in: None
        }
    );
    conn.close().await;
    stack.shutdown().await;
}

fn login_start_request() -> msg::Request {
    let start = ClientLogin::<Suite>::start(&mut OsRng, b"whatever").unwrap();
    msg::Request {
        kind: Some(Req::LoginStart(msg::LoginStartRequest {
            credential_request: start.message.serialize().to_vec(),
            purpose: LoginPurpose::Recover as i32,
        })),
    }
}

#[tokio::test]
async fn fifty_concurrent_login_starts_yield_at_most_the_guesses_left() {
    // Count before answer under any interleaving, pacing off (with pacing
    // on, `sim_swap` shows the burst is cut to the pacing policy's).
    let stack = LocalStack::start(StackOptions {
        pacing: Pacing::OFF,
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = connect(&stack, "dave").await;
    VaultClient::new(&conn, &stack.profile)
        .unwrap()
        .register(b"pw", &BackupKey::generate(), false)
        .await
        .unwrap();
    // Several connections so that requests really run in parallel.
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(connect(&stack, "dave").await);
    }
    let requests: Vec<msg::Request> = (0..50).map(|_| login_start_request()).collect();
    let mut tasks = Vec::new();
    for (i, req) in requests.iter().enumerate() {
        tasks.push(conns[i % conns.len()].request(req));
    }
    let results = futures::future::join_all(tasks).await;
    let mut evaluations = 0;
    for r in results {
        match r.unwrap().kind {
            Some(Resp::LoginStart(_)) => evaluations += 1,
            // Refused once the limit is used up: locked out, or busy while
            // the last guess's login is still open.
            Some(Resp::Error(e)) => assert!(
                matches!(e.code(), msg::ErrorCode::LockedOut | msg::ErrorCode::Busy),
                "{e:?}"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(evaluations, 10, "exactly the guess limit may be evaluated");
    for c in conns {
        c.close().await;
    }
    conn.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_guess_counted_during_the_owners_login_is_not_forgiven_by_its_success() {
    let stack = stack().await;
    let owner = connect(&stack, "olga").await;
    let vault = VaultClient::new(&owner, &stack.profile).unwrap();
    vault
        .register(b"right", &BackupKey::generate(), false)
        .await
        .unwrap();

    // The owner's login, step by step, so that a guess lands in between.
    let ksf = op::client_ksf();
    let start = ClientLogin::<Suite>::start(&mut OsRng, b"right").unwrap();
    let resp = owner
        .request(&msg::Request {
            kind: Some(Req::LoginStart(msg::LoginStartRequest {
                credential_request: start.message.serialize().to_vec(),
                purpose: LoginPurpose::Recover as i32,
            })),
        })
        .await
        .unwrap();
    let Some(Resp::LoginStart(ls)) = resp.kind else {
        panic!("{resp:?}")
    };
    assert_eq!(ls.attempts_left, 9);

    // An attacker holding a device credential of the same account (a new
    // phone after a SIM swap) guesses while the owner's login is open.
    let attacker = connect(&stack, "olga").await;
    let resp = attacker.request(&login_start_request()).await.unwrap();
    let Some(Resp::LoginStart(guess)) = resp.kind else {
        panic!("{resp:?}")
    };
    assert_eq!(guess.attempts_left, 8);

    let finish = start
        .state
        .finish(
            &mut OsRng,
            b"right",
            CredentialResponse::<Suite>::deserialize(&ls.credential_response).unwrap(),
            ClientLoginFinishParameters::new(
                None,
                op::identifiers("olga", &stack.profile.fleet_id),
                Some(&ksf),
            ),
        )
        .unwrap();
    let resp = owner
        .request(&msg::Request {
            kind: Some(Req::LoginFinish(msg::LoginFinishRequest {
                login_session: ls.login_session,
                credential_finalization: finish.message.serialize().to_vec(),
            })),
        })
        .await
        .unwrap();
    assert!(matches!(resp.kind, Some(Resp::LoginFinish(_))), "{resp:?}");

    // The owner's success forgave the owner's guess, not the attacker's
    // (its reset commits after the answer).
    status_eventually(
        &vault,
        Status::Active {
            attempts_left: 9,
            max_attempts: 10,
            replacement_in: None,
        },
    )
    .await;
    attacker.close().await;
    owner.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn vault_restart_between_login_start_and_finish_keeps_the_counted_guess() {
    let mut stack = stack().await;
    let conn = connect(&stack, "erin").await;
    let vault = VaultClient::new(&conn, &stack.profile).unwrap();
    vault
        .register(b"pw", &BackupKey::generate(), false)
        .await
        .unwrap();
    let resp = conn.request(&login_start_request()).await.unwrap();
    let Some(Resp::LoginStart(ls)) = resp.kind else {
        panic!("{resp:?}")
    };
    assert_eq!(ls.attempts_left, 9);

    stack.stop_vault().await;
    stack.start_vault().await.unwrap();

    // The pending login died with the process; the counted guess did not.
    let finish = msg::Request {
        kind: Some(Req::LoginFinish(msg::LoginFinishRequest {
            login_session: ls.login_session,
            credential_finalization: vec![0; 64],
        })),
    };
    let mut answer = None;
    for _ in 0..50 {
        let r = conn.request(&finish).await.unwrap();
        match r.kind {
            Some(Resp::Error(e)) if e.code() == msg::ErrorCode::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => {
                answer = other;
                break;
            }
        }
    }
    match answer {
        Some(Resp::Error(e)) => assert!(e.code() == msg::ErrorCode::SessionExpired, "{e:?}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        vault.status().await.unwrap(),
        Status::Active {
            attempts_left: 9,
            max_attempts: 10,
            replacement_in: None
        }
    );
    conn.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn client_refuses_to_upload_to_a_vault_that_is_not_the_pinned_one() {
    let stack = stack().await;
    let other = LocalStack::start(StackOptions::default()).await.unwrap();
    // A profile pinning another fleet's key: what a client sees when a
    // malicious gateway routes it to an impostor vault.
    let mut profile = stack.profile.clone();
    profile.fleet_public_key = other.profile.fleet_public_key.clone();
    let conn = connect(&stack, "frank").await;
    let vault = VaultClient::new(&conn, &profile).unwrap();
    match vault.register(b"pw", &BackupKey::generate(), false).await {
        Err(ClientError::VaultKeyMismatch { got, pinned }) => {
            assert_eq!(got, stack.profile.fleet_public_key);
            assert_eq!(pinned, other.profile.fleet_public_key);
        }
        r => panic!("expected a pin mismatch, got {r:?}"),
    }
    // Nothing was uploaded.
    assert_eq!(vault.status().await.unwrap(), Status::NotRegistered);
    conn.close().await;
    other.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn change_password_and_disable_need_the_current_password() {
    let stack = stack().await;
    let conn = connect(&stack, "gina").await;
    let vault = VaultClient::new(&conn, &stack.profile).unwrap();
    let key = BackupKey::generate();
    vault.register(b"old", &key, false).await.unwrap();
    assert!(matches!(
        vault.register(b"x", &BackupKey::generate(), false).await,
        Err(ClientError::AlreadyRegistered)
    ));
    assert!(matches!(
        vault.change_password(b"nope", b"new").await,
        Err(ClientError::WrongPassword { .. })
    ));
    vault.change_password(b"old", b"new").await.unwrap();
    assert!(matches!(
        vault.recover(b"old").await,
        Err(ClientError::WrongPassword { .. })
    ));
    assert_eq!(vault.recover(b"new").await.unwrap(), key);
    assert!(matches!(
        vault.disable(b"old").await,
        Err(ClientError::WrongPassword { .. })
    ));
    vault.disable(b"new").await.unwrap();
    assert_eq!(vault.status().await.unwrap(), Status::NotRegistered);
    assert!(matches!(
        vault.recover(b"new").await,
        Err(ClientError::NotRegistered)
    ));
    conn.close().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_sharded_across_two_clusters_by_rendezvous_hashing() {
    let stack = LocalStack::start(StackOptions {
        clusters: 2,
        replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let accounts: Vec<String> = (0..10).map(|i| format!("shard-{i}")).collect();
    let mut keys = Vec::new();
    for a in &accounts {
        let conn = connect(&stack, a).await;
        let key = BackupKey::generate();
        VaultClient::new(&conn, &stack.profile)
            .unwrap()
            .register(b"pw", &key, false)
            .await
            .unwrap();
        keys.push(key);
        conn.close().await;
    }
    let mut per_cluster = [0; 2];
    for (a, key) in accounts.iter().zip(&keys) {
        let home = stack.cluster_of(a);
        per_cluster[home] += 1;
        // The deposit lives on its cluster's replicas only.
        let here = stack.rows(home, a).await.unwrap();
        assert!(here.iter().all(|r| r.is_some()), "{a} on cluster {home}");
        let there = stack.rows(1 - home, a).await.unwrap();
        assert!(
            there.iter().all(|r| r.is_none()),
            "{a} leaked to the other cluster"
        );
        let conn = connect(&stack, a).await;
        let got = VaultClient::new(&conn, &stack.profile)
            .unwrap()
            .recover(b"pw")
            .await
            .unwrap();
        assert_eq!(&got, key);
        conn.close().await;
    }
    assert!(per_cluster.iter().all(|&n| n > 0), "{per_cluster:?}");
    // Both clusters serve the one fleet key clients pin.
    let a = provision::read_fleet_public(&stack.clusters[0].dir).unwrap();
    let b = provision::read_fleet_public(&stack.clusters[1].dir).unwrap();
    assert_eq!(a, b);
    stack.shutdown().await;
}

/// The timeouts nest (`protocol_spec::limits`): a cluster that cannot
/// commit, or has no leader, answers the phone a typed `UNAVAILABLE` with
/// `retry_after_ms` before any outer timer drops the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_that_cannot_commit_answers_unavailable_with_a_retry_hint() {
    let mut stack = stack().await;
    let conn = connect(&stack, "nest").await;
    VaultClient::new(&conn, &stack.profile)
        .unwrap()
        .with_ksf(op::cheap_ksf_for_load_tests())
        .register(b"pw", &BackupKey::generate(), false)
        .await
        .unwrap();
    let leader = stack
        .wait_for_leader(0, Duration::from_secs(20))
        .await
        .unwrap();
    let expect_unavailable = |r: Result<msg::Response, ClientError>, what: &str| match r {
        Ok(msg::Response {
            kind: Some(Resp::Error(e)),
        }) => {
            assert_eq!(e.code(), msg::ErrorCode::Unavailable, "{what}: {e:?}");
            assert!(e.retry_after_ms > 0, "{what}: no retry hint in {e:?}");
            assert!(
                !e.message.contains("127.0.0.1"),
                "{what}: an internal address reached the phone: {}",
                e.message
            );
        }
        other => panic!("{what}: the phone got {other:?}, not a typed UNAVAILABLE"),
    };

    // The leader and one follower stay: the leader cannot commit the guess.
    let followers: Vec<usize> = (0..5).filter(|&i| i != leader).collect();
    for &i in &followers[..3] {
        stack.stop_replica(0, i).await;
    }
    let started = std::time::Instant::now();
    expect_unavailable(conn.request(&login_start_request()).await, "no majority");
    let took = started.elapsed();
    assert!(
        took < protocol_spec::limits::VAULT_CALL_DEADLINE,
        "answered after {took:?}"
    );

    // And without a leader at all: the gateway's own deadline answers.
    stack.stop_replica(0, leader).await;
    expect_unavailable(conn.request(&login_start_request()).await, "no leader");
    conn.close().await;
    stack.shutdown().await;
}
