#![allow(clippy::unwrap_used)]
//! What a second device of the victim's account can do without the
//! password (a SIM swap: a freshly minted credential), through the gateway
//! to a real cluster: it cannot use up the guesses in a burst (pacing,
//! DESIGN.md invariant 9), its guesses stay paced across a leader change
//! and a full restart (the pacing is in the committed row), and it cannot
//! replace the deposit before the waiting period, nor at all if the owner
//! logs in meanwhile (invariant 10).

use std::time::{Duration, Instant};

use client::{BackupKey, ClientError, GatewayConnection, Status};
use protocol_spec::msg::{self, response::Kind as Resp, ErrorCode};
use testing::helpers::{connect, login_start, register, vault};
use testing::local_stack::{LocalStack, StackOptions};
use vault_backend::account::Pacing;

const CLUSTER: usize = 0;

async fn stack(pacing: Pacing, replacement_wait_ms: u64) -> LocalStack {
    LocalStack::start(StackOptions {
        pacing,
        replacement_wait_ms,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Sends one request, again while the vault answers "unavailable"
/// (bounded: 30 s), and returns the first other answer.
async fn request_eventually(conn: &GatewayConnection, req: &msg::Request) -> Resp {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let kind = conn.request(req).await.unwrap().kind.unwrap();
        match &kind {
            Resp::Error(e) if e.code() == ErrorCode::Unavailable && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            _ => return kind,
        }
    }
}

fn paced_wait(r: &Resp) -> Option<u32> {
    match r {
        Resp::Error(e) if e.code() == ErrorCode::Busy => Some(e.retry_after_ms),
        _ => None,
    }
}

#[tokio::test]
async fn a_burst_of_ten_login_starts_from_a_second_device_counts_only_the_policys_burst() {
    let stack = stack(Pacing::default(), 7 * 24 * 3600 * 1000).await;
    let key = BackupKey::generate();
    assert!(register(&stack, "victim", b"right", &key).await);
    // The attacker's device, on several connections so the starts really
    // run in parallel; each start a random blinded element.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(connect(&stack, "victim").await);
    }
    let requests: Vec<msg::Request> = (0..10).map(|i| login_start(&[i; 8])).collect();
    let started = Instant::now();
    let answers = futures::future::join_all(
        requests
            .iter()
            .enumerate()
            .map(|(i, r)| conns[i % conns.len()].request(r)),
    )
    .await;
    let took = started.elapsed();
    let (mut evaluated, mut paced) = (0, 0);
    for a in answers {
        let kind = a.unwrap().kind.unwrap();
        match (&kind, paced_wait(&kind)) {
            (Resp::LoginStart(_), _) => evaluated += 1,
            (_, Some(wait)) => {
                assert!(wait > 0 && wait <= 60_000, "{kind:?}");
                paced += 1;
            }
            _ => panic!("unexpected {kind:?}"),
        }
    }
    eprintln!("SIM SWAP BURST: {evaluated} of 10 evaluated, {paced} paced, in {took:?}");
    assert_eq!(evaluated, 3, "only the policy's burst is counted");
    assert_eq!(paced, 7);
    // The deposit is intact; the owner sees the count, and is told in words
    // how long to wait before the next attempt.
    let owner = connect(&stack, "victim").await;
    let v = vault(&owner, &stack);
    assert_eq!(
        v.status().await.unwrap(),
        Status::Active {
            attempts_left: 7,
            max_attempts: 10,
            replacement_in: None
        }
    );
    match v.recover(b"right").await {
        Err(e @ ClientError::Paced { .. }) => {
            let text = e.to_string();
            assert!(text.contains("1 minute"), "{text}");
        }
        other => panic!("expected a paced refusal, got {other:?}"),
    }
    for c in conns {
        c.close().await;
    }
    owner.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn pacing_survives_a_leader_change_and_a_full_cluster_restart() {
    // One guess at once, then an hour's wait.
    let pacing = Pacing {
        free_guesses: 1,
        first_wait_ms: 3_600_000,
        growth: 2,
        max_wait_ms: 24 * 3_600_000,
    };
    let mut stack = stack(pacing, 7 * 24 * 3600 * 1000).await;
    assert!(register(&stack, "victim", b"right", &BackupKey::generate()).await);
    let attacker = connect(&stack, "victim").await;
    let first = request_eventually(&attacker, &login_start(b"guess 1")).await;
    assert!(matches!(first, Resp::LoginStart(_)), "{first:?}");
    let second = request_eventually(&attacker, &login_start(b"guess 2")).await;
    assert!(paced_wait(&second).is_some(), "{second:?}");

    // A new leader applies the same committed row.
    let leader = stack
        .wait_for_leader(CLUSTER, Duration::from_secs(20))
        .await
        .unwrap();
    stack.stop_replica(CLUSTER, leader).await;
    stack
        .wait_for_leader(CLUSTER, Duration::from_secs(20))
        .await
        .unwrap();
    let after_failover = request_eventually(&attacker, &login_start(b"guess 2")).await;
    let wait = paced_wait(&after_failover).expect("still paced after a leader change");
    assert!(wait > 3_500_000, "{after_failover:?}");

    // Every replica restarts from its files.
    stack.stop_vault().await;
    stack.start_vault().await.unwrap();
    let after_restart = request_eventually(&attacker, &login_start(b"guess 2")).await;
    let wait = paced_wait(&after_restart).expect("still paced after a full restart");
    assert!(wait > 3_500_000, "{after_restart:?}");
    let owner = connect(&stack, "victim").await;
    match vault(&owner, &stack).status().await.unwrap() {
        Status::Active { attempts_left, .. } => assert_eq!(attempts_left, 9),
        other => panic!("{other:?}"),
    }
    attacker.close().await;
    owner.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_replacement_from_a_second_device_waits_and_the_owners_login_cancels_it() {
    let wait_ms = 2_000;
    let stack = stack(Pacing::default(), wait_ms).await;
    let key = BackupKey::generate();
    assert!(register(&stack, "victim", b"right", &key).await);
    let owner = connect(&stack, "victim").await;
    let attacker = connect(&stack, "victim").await;
    let thief_key = BackupKey::generate();

    // The second device asks to replace the deposit: it only waits.
    match vault(&attacker, &stack)
        .register(b"thief", &thief_key, true)
        .await
    {
        Err(ClientError::ReplacementPending { retry_after }) => {
            assert!(retry_after <= Duration::from_millis(wait_ms))
        }
        other => panic!("expected a pending replacement, got {other:?}"),
    }
    // Every device sees it, and the owner's password still works...
    match vault(&owner, &stack).status().await.unwrap() {
        Status::Active { replacement_in, .. } => assert!(replacement_in.is_some()),
        other => panic!("{other:?}"),
    }
    assert_eq!(vault(&owner, &stack).recover(b"right").await.unwrap(), key);
    // ...and that login cancelled it (the reset commits after the answer).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match vault(&attacker, &stack).status().await.unwrap() {
            Status::Active {
                replacement_in: None,
                ..
            } => break,
            _ if Instant::now() < until => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("the owner's login did not cancel the replacement: {other:?}"),
        }
    }
    // Asked again, it waits its whole period, and after it the device that
    // asked completes it; the old password then opens nothing.
    let retry_after = match vault(&attacker, &stack)
        .register(b"thief", &thief_key, true)
        .await
    {
        Err(ClientError::ReplacementPending { retry_after }) => retry_after,
        other => panic!("{other:?}"),
    };
    tokio::time::sleep(retry_after + Duration::from_millis(100)).await;
    vault(&attacker, &stack)
        .register(b"thief", &thief_key, true)
        .await
        .expect("the asking device completes the replacement after the wait");
    assert_eq!(
        vault(&attacker, &stack).recover(b"thief").await.unwrap(),
        thief_key
    );
    assert!(matches!(
        vault(&owner, &stack).recover(b"right").await,
        Err(ClientError::WrongPassword { .. })
    ));
    for c in [owner, attacker] {
        c.close().await;
    }
    stack.shutdown().await;
}
