#![allow(clippy::unwrap_used)]
//! The gateway's relay stack (`gateway::relay`): a replica that answers but
//! cannot serve is routed around and probed back, and a cluster's in-flight
//! limit sheds the excess as `BUSY` before it reaches the vault.

use std::time::{Duration, Instant};

use client::{BackupKey, Status};
use protocol_spec::msg::{self, request::Kind as Req, response::Kind as Resp, ErrorCode};
use testing::helpers::{connect, register_eventually, vault};
use testing::local_stack::{LocalStack, StackOptions};
use vault_backend::account::Pacing;

const CLUSTER: usize = 0;

fn options() -> StackOptions {
    StackOptions {
        max_attempts: 100_000,
        pacing: Pacing::OFF,
        gateway_budgets: gateway::budget::BudgetConfig::unlimited(),
        ..Default::default()
    }
}

/// The case: the leader's consensus engine stops but its listener
/// keeps answering, a second replica is down, and the three healthy ones
/// hold a majority. Before the relay stack, the gateway kept the stopped
/// replica as leader and every request failed; now each one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_consensus_stopped_is_routed_around_and_probed_back() {
    let mut stack = LocalStack::start(options()).await.unwrap();
    let key = BackupKey::generate();
    register_eventually(&stack, "owner", b"right", &key).await;
    let conn = connect(&stack, "owner").await;
    // The gateway now caches the leader.
    assert_eq!(vault(&conn, &stack).recover(b"right").await.unwrap(), key);
    let leader = stack
        .wait_for_leader(CLUSTER, Duration::from_secs(20))
        .await
        .unwrap();
    let other = (0..5).find(|&i| i != leader).unwrap();
    stack.stop_replica(CLUSTER, other).await;
    let stopped_addr = stack.replica_addr(CLUSTER, leader);
    stack.clusters[CLUSTER].replicas[leader]
        .in_process()
        .unwrap()
        .stop_consensus()
        .await;
    // No retry loop here: each recover must succeed at once (the gateway
    // rides out the election within its own deadline).
    for _ in 0..6 {
        assert_eq!(vault(&conn, &stack).recover(b"right").await.unwrap(), key);
    }
    let name = stack.clusters[CLUSTER].name.clone();
    let gw = stack.gateway.as_ref().unwrap();
    let down = gw.vault_down_replicas(&name).unwrap();
    assert!(down.contains(&stopped_addr), "{down:?}");
    assert_ne!(
        stack.leader(CLUSTER).await,
        Some(leader),
        "a new leader serves"
    );
    // Restarted, the replica serves again, and the gateway's probe (not a
    // phone's request) finds it healthy within its longest pause.
    stack.stop_replica(CLUSTER, leader).await;
    stack.start_replica(CLUSTER, leader).await.unwrap();
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        let v = vault(&conn, &stack);
        assert!(matches!(v.status().await.unwrap(), Status::Active { .. }));
        let down = stack
            .gateway
            .as_ref()
            .unwrap()
            .vault_down_replicas(&name)
            .unwrap();
        if !down.contains(&stopped_addr) {
            break;
        }
        assert!(Instant::now() < until, "never probed back: {down:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    conn.close().await;
    stack.shutdown().await;
}

/// With room for one request in flight to the cluster, a second one that
/// arrives while the first waits (here: on a quorum that is gone) is shed
/// at once as `BUSY` with a wait, without reaching the vault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_clusters_in_flight_limit_are_shed_as_busy() {
    let mut stack = LocalStack::start(StackOptions {
        gateway_relay: gateway::relay::RelayConfig { max_in_flight: 1 },
        ..options()
    })
    .await
    .unwrap();
    let waiting = connect(&stack, "waiting").await;
    let shed = connect(&stack, "shed").await;
    // No majority: a status read waits for its quorum until it times out.
    for i in 0..3 {
        stack.stop_replica(CLUSTER, i).await;
    }
    let status = msg::Request {
        kind: Some(Req::Status(msg::StatusRequest {})),
    };
    let first = {
        let status = status.clone();
        tokio::spawn(async move {
            let out = waiting.request(&status).await;
            waiting.close().await;
            out
        })
    };
    // Let it reach the relay first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let until = Instant::now() + Duration::from_secs(30);
    let busy = loop {
        assert!(
            !first.is_finished(),
            "the first request ended before a second one was shed"
        );
        match shed.request(&status).await.unwrap().kind {
            Some(Resp::Error(e)) if e.code() == ErrorCode::Busy => break e,
            Some(Resp::Error(e)) if e.code() == ErrorCode::Unavailable => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(busy.retry_after_ms > 0, "{busy:?}");
    assert!(
        !busy.message.chars().any(|c| c.is_ascii_digit()),
        "no address in {busy:?}"
    );
    // The first one ends on its own, typed.
    match first.await.unwrap().unwrap().kind {
        Some(Resp::Error(e)) => assert_eq!(e.code(), ErrorCode::Unavailable, "{e:?}"),
        other => panic!("{other:?}"),
    }
    shed.close().await;
    stack.shutdown().await;
}
