#![allow(clippy::unwrap_used)]
//! A phone that changes network (Wi-Fi to cellular: a new source address)
//! keeps its authenticated connection: QUIC migrates it, the next request
//! goes through on the same connection with no new TLS or Noise handshake,
//! and the gateway process counts the migration on its `/metrics`.

use client::{BackupKey, GatewayConnection, VaultClient};
use protocol_spec::opaque_profile::cheap_ksf_for_load_tests;
use testing::gateway_process::GatewayProcess;
use testing::helpers::{metric_sum, register};
use testing::local_stack::{LocalStack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_changes_network_keeps_its_authenticated_connection() {
    let stack = LocalStack::start(StackOptions {
        replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = GatewayProcess::start(&stack, "gateway-migration", |_| {})
        .await
        .unwrap();
    let mut profile = stack.profile.clone();
    profile.gateway_addr = gw.addr;
    profile.other_gateways.clear();
    let key = BackupKey::generate();
    assert!(register(&stack, "mover", b"right", &key).await);

    let dev = stack.enroll_device("mover").unwrap();
    let conn = GatewayConnection::connect(&profile, &dev).await.unwrap();
    let vault = VaultClient::new(&conn, &profile)
        .unwrap()
        .with_ksf(cheap_ksf_for_load_tests());
    assert!(vault.recover(b"right").await.unwrap() == key);
    let quic = conn.quic();
    let authenticated = metric_sum(gw.admin, "gateway_authenticated_total", &[]).await;
    assert_eq!(authenticated, 1.0);
    // The gateway process exports its heap (service_kit::heap).
    assert!(metric_sum(gw.admin, service_kit::heap::GAUGE, &[]).await > 1e6);
    assert_eq!(
        metric_sum(gw.admin, "gateway_connection_migrations_total", &[]).await,
        0.0
    );

    // The phone moves: a new socket, so a new source port.
    let before = conn.local_addr().unwrap();
    conn.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let after = conn.local_addr().unwrap();
    assert_ne!(before, after);

    // The next request goes through on the same connection.
    assert!(vault.recover(b"right").await.unwrap() == key);
    assert_eq!(
        conn.quic().stable_id(),
        quic.stable_id(),
        "no new connection"
    );
    assert!(quic.close_reason().is_none());
    assert_eq!(
        metric_sum(gw.admin, "gateway_authenticated_total", &[]).await,
        authenticated,
        "no new handshake"
    );
    assert_eq!(
        metric_sum(gw.admin, "gateway_connection_migrations_total", &[]).await,
        1.0
    );
    // A wrong guess on the new path is still this device's, counted once.
    let err = vault.recover(b"wrong").await.unwrap_err();
    assert!(
        matches!(err, client::ClientError::WrongPassword { .. }),
        "{err}"
    );
    assert_eq!(
        metric_sum(gw.admin, "gateway_connection_migrations_total", &[]).await,
        1.0
    );
    conn.close().await;
}
