#![allow(clippy::unwrap_used)]
//! The gateway's admin port says what it means: `/health` while the
//! process runs, `/ready` only while every vault cluster has a leader that
//! answers a quorum read (false when quorum is lost, true again when it
//! returns), `/metrics` only on `/metrics`.

use std::time::{Duration, Instant};

use testing::local_stack::{LocalStack, StackOptions};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn wait_ready(addr: std::net::SocketAddr, want: u16) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(addr, "/ready").await;
        if code == want {
            return body;
        }
        assert!(Instant::now() < until, "/ready stayed {code}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_vaults_quorum_and_paths_mean_what_they_say() {
    let mut stack = LocalStack::start(StackOptions {
        replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let readiness = stack.gateway.as_ref().unwrap().readiness();
    let task = gateway::admin::serve(listener, readiness, None);

    assert_eq!(get(admin, "/health").await.0, 200);
    assert_eq!(get(admin, "/nothing-here").await.0, 404);
    wait_ready(admin, 200).await;

    // Two of three replicas go: no quorum, not ready (the process is fine).
    stack.stop_replica(0, 0).await;
    stack.stop_replica(0, 1).await;
    let why = wait_ready(admin, 503).await;
    assert!(why.contains("vault cluster"), "{why}");
    assert_eq!(get(admin, "/health").await.0, 200);

    // They come back: ready again.
    stack.start_replica(0, 0).await.unwrap();
    stack.start_replica(0, 1).await.unwrap();
    wait_ready(admin, 200).await;
    task.abort();
    stack.shutdown().await;
}
