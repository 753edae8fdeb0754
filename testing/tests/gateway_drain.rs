#![allow(clippy::unwrap_used)]
//! Draining the gateway (what SIGTERM and SIGINT do): every request in
//! flight is answered, a login already started may finish, no guess is
//! counted without its answer reaching the phone, idle phones are told `GOING_AWAY`, no new connection is taken,
//! and the drain ends well within its deadline.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use client::{BackupKey, GatewayConnection};
use protocol_spec::msg::{self, request::Kind as Req, response::Kind as Resp, ErrorCode};
use protocol_spec::CloseCode;
use testing::helpers::{login_start, register};
use testing::local_stack::{LocalStack, StackOptions};
use vault_backend::account::Pacing;

/// The application code `conn` was closed with by the gateway.
fn close_code(conn: &GatewayConnection) -> Option<u64> {
    match conn.quic().close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into()),
        _ => None,
    }
}

async fn connect_once(stack: &LocalStack, account: &str) -> GatewayConnection {
    let dev = stack.enroll_device(account).unwrap();
    let opts = client::connection::ConnectOptions {
        no_reconnect: true,
        ..Default::default()
    };
    GatewayConnection::connect_with(&stack.profile, &dev, &opts)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_answers_every_request_in_flight_then_says_going_away() {
    let mut stack = LocalStack::start(StackOptions {
        max_attempts: 100_000,
        pacing: Pacing::OFF,
        gateway_budgets: gateway::budget::BudgetConfig::unlimited(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(register(&stack, "owner", b"right", &BackupKey::generate()).await);
    // Phones that do not reconnect by themselves, so the test sees what
    // the gateway tells them.
    let idle = connect_once(&stack, "bystander").await;
    // A phone sending login starts back to back: each one a counted guess.
    let busy = connect_once(&stack, "owner").await;
    let answered = Arc::new(AtomicU32::new(0));
    let a = answered.clone();
    let phone = tokio::spawn(async move {
        loop {
            match busy.request(&login_start(b"a guess")).await {
                Ok(msg::Response {
                    kind: Some(Resp::LoginStart(ls)),
                }) => {
                    a.fetch_add(1, Ordering::SeqCst);
                    // As a client does after a wrong guess: it finishes the
                    // login (a drain lets it, even once started).
                    let finish = msg::Request {
                        kind: Some(Req::LoginFinish(msg::LoginFinishRequest {
                            login_session: ls.login_session,
                            credential_finalization: vec![0; 64],
                        })),
                    };
                    match busy.request(&finish).await.unwrap().kind {
                        Some(Resp::Error(e)) if e.code() == ErrorCode::WrongPassword => {}
                        other => panic!("a finish during the drain got {other:?}"),
                    }
                }
                // A new login on a draining gateway is turned away
                // unprocessed (its stream reset with GOING_AWAY).
                Ok(other) => panic!("{other:?}"),
                Err(e) => return e.to_string(),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let addr = stack.profile.gateway_addr;
    let drained = stack.drain_gateway(Duration::from_secs(20)).await.unwrap();
    eprintln!(
        "drain: {drained:?}, {} answered",
        answered.load(Ordering::SeqCst)
    );
    assert_eq!(drained.cut, 0, "every connection ended on its own");
    assert!(drained.took < Duration::from_secs(10), "{drained:?}");

    // The busy phone's next request found the connection going away...
    let err = tokio::time::timeout(Duration::from_secs(10), phone)
        .await
        .unwrap()
        .unwrap();
    assert!(
        err.contains("going away") || err.contains("shutting down"),
        "{err}"
    );
    // ...and every guess the vault counted was answered.
    let rows = stack.rows(0, "owner").await.unwrap();
    let counted = rows[0].as_ref().unwrap().guesses_used;
    assert!(answered.load(Ordering::SeqCst) > 0);
    assert_eq!(
        counted,
        answered.load(Ordering::SeqCst),
        "a guess counted without its answer"
    );
    // The idle phone was told too.
    let status = msg::Request {
        kind: Some(Req::Status(msg::StatusRequest {})),
    };
    let e = idle.request(&status).await.unwrap_err();
    assert!(e.to_string().contains("going away"), "{e}");
    // With `GOING_AWAY` (4): nothing it took was left unanswered.
    assert_eq!(close_code(&idle), Some(CloseCode::GoingAway as u64));
    // And nothing new is taken.
    let dev = stack.enroll_device("late").unwrap();
    let late = tokio::time::timeout(
        Duration::from_secs(5),
        GatewayConnection::connect(&stack.profile, &dev),
    )
    .await;
    assert!(
        !matches!(late, Ok(Ok(_))),
        "a drained gateway at {addr} took a new connection"
    );
    stack.shutdown().await;
}

/// A drain whose deadline passes with a connection still open (here: a
/// login started and never finished, which a drain waits up to 10 s for)
/// closes it with `SHUT_DOWN` (6), not `GOING_AWAY`: the gateway can no
/// longer promise that a request left without an answer was not relayed,
/// so the phone must not send it again unasked (SPEC §6.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_at_its_deadline_says_shut_down_not_going_away() {
    let mut stack = LocalStack::start(StackOptions::default()).await.unwrap();
    assert!(register(&stack, "owner", b"right", &BackupKey::generate()).await);
    let phone = connect_once(&stack, "owner").await;
    match phone.request(&login_start(b"a guess")).await.unwrap().kind {
        Some(Resp::LoginStart(_)) => {}
        other => panic!("{other:?}"),
    }
    let drained = stack
        .drain_gateway(Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(drained.cut, 1, "{drained:?}");
    let status = msg::Request {
        kind: Some(Req::Status(msg::StatusRequest {})),
    };
    let e = phone.request(&status).await.unwrap_err();
    assert!(e.to_string().contains("shut down"), "{e}");
    assert_eq!(close_code(&phone), Some(CloseCode::ShutDown as u64));
    stack.shutdown().await;
}
