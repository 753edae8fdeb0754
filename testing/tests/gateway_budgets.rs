#![allow(clippy::unwrap_used)]
//! One credential beyond its budgets (DESIGN.md invariant 9's second half):
//! requests that count no guess but cost the vault work (`RegisterStart`:
//! an OPRF evaluation) are budgeted per device and per account at the
//! gateway; the excess is answered `BUSY` with a wait and never reaches the
//! vault, whose own request counters (read from each replica process's
//! `/metrics`) show only what the budgets let through.

use std::time::Duration;

use client::GatewayConnection;
use opaque_ke::ClientRegistration;
use protocol_spec::msg::{self, request::Kind as Req, response::Kind as Resp, ErrorCode};
use protocol_spec::opaque_profile::Suite;
use rand::rngs::OsRng;
use testing::helpers::connect;
use testing::local_stack::{LocalStack, StackOptions};

fn register_start() -> msg::Request {
    let start = ClientRegistration::<Suite>::start(&mut OsRng, b"any").unwrap();
    msg::Request {
        kind: Some(Req::RegisterStart(msg::RegisterStartRequest {
            registration_request: start.message.serialize().to_vec(),
        })),
    }
}

/// (answered by the vault, refused by a budget with this scope's message).
async fn burst(conn: &GatewayConnection, n: usize) -> (usize, Vec<msg::Error>) {
    let reqs: Vec<msg::Request> = (0..n).map(|_| register_start()).collect();
    let answers = futures::future::join_all(reqs.iter().map(|r| conn.request(r))).await;
    let (mut passed, mut refused) = (0, Vec::new());
    for a in answers {
        match a.unwrap().kind.unwrap() {
            Resp::RegisterStart(_) => passed += 1,
            Resp::Error(e) if e.code() == ErrorCode::Busy => refused.push(e),
            other => panic!("{other:?}"),
        }
    }
    (passed, refused)
}

/// The `register_start` requests the vault's replicas say they answered.
async fn vault_register_starts(stack: &LocalStack) -> u64 {
    let mut total = 0.0;
    for cfg in &stack.clusters[0].configs {
        let admin = cfg.admin_listen.unwrap();
        total += testing::helpers::metric_sum(
            admin,
            "vault_requests_total",
            &["request=\"register_start\""],
        )
        .await;
    }
    total as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credential_beyond_its_budgets_is_refused_before_the_vault() {
    let stack = LocalStack::start(StackOptions {
        replica_binary: Some(testing::bins::vault_backend()),
        ..Default::default()
    })
    .await
    .unwrap();
    let before = vault_register_starts(&stack).await;

    // One device: its burst (5) passes, the rest wait.
    let device = connect(&stack, "victim").await;
    let (passed, refused) = burst(&device, 30).await;
    assert_eq!(passed, 5, "the device's burst");
    assert_eq!(refused.len(), 25);
    for e in &refused {
        assert!(e.message.contains("device"), "{e:?}");
        assert!(e.retry_after_ms > 0 && e.retry_after_ms <= 10_000, "{e:?}");
    }
    // More devices of the same account (a SIM swap mints as many as it
    // likes) share the account's budget (10).
    let second = connect(&stack, "victim").await;
    let (passed2, _) = burst(&second, 10).await;
    assert_eq!(passed2, 5, "the rest of the account's burst");
    let third = connect(&stack, "victim").await;
    let (passed3, refused3) = burst(&third, 5).await;
    assert_eq!(passed3, 0);
    assert!(
        refused3.iter().all(|e| e.message.contains("account")),
        "{refused3:?}"
    );
    // Another account is untouched.
    let other = connect(&stack, "bystander").await;
    assert_eq!(burst(&other, 3).await.0, 3);

    // The vault evaluated only what passed (its counters may lag a scrape).
    let expected = before + 5 + 5 + 3;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = vault_register_starts(&stack).await;
    while seen < expected && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = vault_register_starts(&stack).await;
    }
    assert_eq!(seen, expected, "the vault saw none of the excess");
    for c in [device, second, third, other] {
        c.close().await;
    }
    stack.shutdown().await;
}

/// Connections per device and per account: one credential that opens
/// connection after connection only replaces its own oldest ones (closed,
/// counted), and its newest ones serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_oldest_connections_give_way_to_its_newest() {
    let stack = LocalStack::start(StackOptions {
        replicas: 3,
        gateway_connections: gateway::connections::ConnectionCaps {
            per_device: 2,
            per_account: 2,
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let opts = client::connection::ConnectOptions {
        no_reconnect: true,
        ..Default::default()
    };
    let dev = stack.enroll_device("many").unwrap();
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(
            GatewayConnection::connect_with(&stack.profile, &dev, &opts)
                .await
                .unwrap(),
        );
    }
    let status = msg::Request {
        kind: Some(Req::Status(msg::StatusRequest {})),
    };
    // The two oldest were closed by the gateway, saying why.
    for c in &conns[..2] {
        let why = tokio::time::timeout(Duration::from_secs(5), c.quic().closed())
            .await
            .unwrap();
        assert!(
            why.to_string().contains("replaced by a newer connection"),
            "{why}"
        );
    }
    for c in &conns[2..] {
        assert!(matches!(
            c.request(&status).await.unwrap().kind,
            Some(Resp::Status(_))
        ));
    }
    // A second device of the same account: the account's cap (2) takes
    // the oldest of the first device's.
    let other = stack.enroll_device("many").unwrap();
    let fifth = GatewayConnection::connect_with(&stack.profile, &other, &opts)
        .await
        .unwrap();
    let why = tokio::time::timeout(Duration::from_secs(5), conns[2].quic().closed())
        .await
        .unwrap();
    assert!(why.to_string().contains("replaced"), "{why}");
    assert!(matches!(
        fifth.request(&status).await.unwrap().kind,
        Some(Resp::Status(_))
    ));
    assert!(matches!(
        conns[3].request(&status).await.unwrap().kind,
        Some(Resp::Status(_))
    ));
    stack.shutdown().await;
}
