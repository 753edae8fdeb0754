#![allow(clippy::unwrap_used)]
//! The gateway as a real process, stopped the way systemd and Kubernetes
//! stop it (SIGTERM), under load, with a second gateway serving the same
//! vault cluster: the first drains (no new connection, requests in flight
//! answered, logins already started allowed to finish), exits by itself
//! within its deadline, and the phones carry on on the second: the client
//! library reconnects by itself when told `GOING_AWAY` (the profile lists
//! both gateways). No phone sees an error, and no guess is burned.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{BackupKey, ClientError, ClientProfile, GatewayConnection};
use testing::helpers::{register, vault};
use testing::local_stack::{LocalStack, StackOptions};

fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Connects `dev` to `profile`'s gateway, retrying while it is not up yet
/// (bounded: 20 s).
async fn connect_when_up(
    profile: &ClientProfile,
    dev: &client::DeviceIdentity,
) -> GatewayConnection {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match GatewayConnection::connect(profile, dev).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    Instant::now() < until,
                    "the gateway process did not come up: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_under_load_and_phones_carry_on_on_the_other_gateway() {
    let stack = LocalStack::start(StackOptions {
        replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    // Gateway A: a process with the stack's gateway keys and its cluster.
    // Gateway B: the stack's own, in this process.
    let addr_a = free_udp();
    let replicas: Vec<String> = (0..3)
        .map(|i| stack.replica_addr(0, i).to_string())
        .collect();
    let mut child = tokio::process::Command::new(testing::bins::gateway())
        .arg("run")
        .arg("--state-dir")
        .arg(stack.gateway_dir())
        .arg("--listen")
        .arg(addr_a.to_string())
        .arg("--vault-replicas")
        .arg(replicas.join(","))
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr_b = stack.profile.gateway_addr;
    let mut profile_a = stack.profile.clone();
    profile_a.gateway_addr = addr_a;
    profile_a.other_gateways = vec![addr_b];

    let phones = 4;
    let mut keys = Vec::new();
    for i in 0..phones {
        let key = BackupKey::generate();
        assert!(register(&stack, &format!("phone-{i}"), b"right", &key).await);
        keys.push(key);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let on_b = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        let dev = stack.enroll_device(&format!("phone-{i}")).unwrap();
        let conn = connect_when_up(&profile_a, &dev).await;
        let (stop, on_b) = (stop.clone(), on_b.clone());
        let stack_profile = stack.profile.clone();
        tasks.push(tokio::spawn(async move {
            let mut moved = false;
            let mut ok = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let v = client::VaultClient::new(&conn, &stack_profile)
                    .unwrap()
                    .with_ksf(protocol_spec::opaque_profile::cheap_ksf_for_load_tests());
                match v.recover(b"right").await {
                    Ok(got) => {
                        assert_eq!(got, key);
                        ok += 1;
                        // Phones served on B so far (each counted once).
                        if !moved && conn.quic().remote_address() == addr_b {
                            moved = true;
                            on_b.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // The gateway's budget for this device: wait as told.
                    Err(ClientError::Busy { retry_after, .. }) => {
                        tokio::time::sleep(retry_after).await
                    }
                    Err(e) => panic!("phone {i} failed with {e:?}"),
                }
            }
            conn.close().await;
            (ok, moved)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = child.id().unwrap();
    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the gateway exits by itself within its drain deadline")
        .unwrap();
    let took = signalled.elapsed();
    assert!(exit.success(), "{exit:?}");
    // The phones carry on on B.
    let until = Instant::now() + Duration::from_secs(20);
    while on_b.load(Ordering::Relaxed) < phones && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        let (ok, moved) = t.await.unwrap();
        assert!(moved, "every phone moved to the other gateway");
        total += ok;
    }
    eprintln!("SIGTERM: gateway exited after {took:?}; {total} recovers; every phone moved to the other gateway");
    // No guess burned: every account's count is back to the limit once the
    // resets of the last recovers land.
    for i in 0..phones {
        let conn = testing::helpers::connect(&stack, &format!("phone-{i}")).await;
        testing::helpers::status_eventually(
            &vault(&conn, &stack),
            client::Status::Active {
                attempts_left: 10,
                max_attempts: 10,
                replacement_in: None,
            },
        )
        .await;
        conn.close().await;
    }
    stack.shutdown().await;
}
