#![allow(clippy::unwrap_used)]
//! Admission before authentication: connections that hold their handshake
//! open (QUIC and TLS done, no Noise) are bounded per source address and
//! refused beyond it, statelessly; their places come back when they go;
//! above the threshold, sources first answer a QUIC Retry, which a real
//! phone does without noticing.

use std::time::Duration;

use client::GatewayConnection;
use gateway::admission::AdmissionConfig;
use testing::helpers::connect;
use testing::local_stack::{LocalStack, StackOptions};

async fn stack(admission: AdmissionConfig) -> LocalStack {
    LocalStack::start(StackOptions {
        replicas: 3,
        gateway_admission: admission,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A QUIC + TLS connection to the gateway that never starts Noise.
async fn holder(stack: &LocalStack) -> Result<quinn::Connection, quinn::ConnectionError> {
    let tls = client::connection::rustls_config(&stack.profile).unwrap();
    let cfg = client::connection::quinn_config(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let name = stack.profile.gateway_server_name.clone();
    ep.connect(stack.profile.gateway_addr, &name).unwrap().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_held_open_are_bounded_per_source_and_their_places_come_back() {
    let stack = stack(AdmissionConfig {
        max_handshakes_per_source: 3,
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match holder(&stack).await {
            Ok(c) => held.push(c),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        (held.len(), refused),
        (3, 3),
        "three held, the rest refused"
    );
    // A phone from the same address waits for a place...
    let dev = stack.enroll_device("phone").unwrap();
    let blocked = tokio::time::timeout(
        Duration::from_secs(5),
        GatewayConnection::connect(&stack.profile, &dev),
    )
    .await;
    assert!(
        !matches!(blocked, Ok(Ok(_))),
        "the source's places are taken"
    );
    // ...and gets one once the holders go.
    for c in held {
        c.close(0u32.into(), b"bye");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conn = connect(&stack, "phone").await;
    conn.close().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_asked_to_validate_its_address_connects_as_usual() {
    // Every attempt is above the threshold: each must answer a Retry.
    let stack = stack(AdmissionConfig {
        retry_above: 0,
        ..Default::default()
    })
    .await;
    let conn = connect(&stack, "phone").await;
    let st = testing::helpers::vault(&conn, &stack)
        .status()
        .await
        .unwrap();
    assert_eq!(st, client::Status::NotRegistered);
    conn.close().await;
    stack.shutdown().await;
}
