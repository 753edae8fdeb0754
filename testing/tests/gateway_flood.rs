#![allow(clippy::unwrap_used)]
//! A handshake flood against the gateway as a real process (issue 13's
//! attack): thousands of connections from a thousand source ports on ten
//! source addresses complete QUIC and TLS, open the Noise stream, announce
//! a full 16 KiB frame and send nothing, and come back as soon as they are
//! closed or refused. Meanwhile phones from another address connect and
//! authenticate. Bounded in time: the flood lasts 12 s (longer than the
//! gateway's 10 s handshake timeout, so held connections are cut and come
//! back once).
//!
//! What must hold: at least 99 % of the phones connect (p99 printed); the
//! gateway's resident memory grows by less than 96 MiB; the per-source cap
//! refuses the excess and QUIC Retry is engaged (both counted on /metrics).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::GatewayConnection;
use testing::local_stack::{LocalStack, StackOptions};

const ATTACKER_ADDRS: u8 = 10;
const SOCKETS_PER_ADDR: usize = 100;
const CONNECTIONS_PER_SOCKET: usize = 3;
const FLOOD: Duration = Duration::from_secs(12);
const PHONES: usize = 100;
/// The gateway holds at most 640 of the flood's handshakes (64 per source
/// address); before admission control it held all 3,000 (+121 MB).
const MAX_GROWTH_BYTES: u64 = 96 << 20;

fn free_port(proto_udp: bool) -> SocketAddr {
    if proto_udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }
}

fn rss_bytes(pid: u32) -> u64 {
    testing::helpers::rss_kib(pid).map_or(0, |kb| kb * 1024)
}

/// One attacking connection, over and over until `stop`: QUIC + TLS, the
/// Noise stream opened with a 16 KiB length announced and nothing sent,
/// held until the gateway closes it (or refused at once).
async fn attack(ep: quinn::Endpoint, gateway: SocketAddr, name: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(connecting) = ep.connect(gateway, &name) else {
            return;
        };
        match connecting.await {
            Ok(conn) => {
                if let Ok((mut send, _recv)) = conn.open_bi().await {
                    let _ = send.write_all(&(16u32 * 1024).to_be_bytes()).await;
                    // Held until the gateway gives up on it.
                    let _ = tokio::time::timeout(FLOOD, conn.closed()).await;
                }
            }
            // Refused: come back soon (a real flood would at once; a
            // second keeps this test from starving the gateway's two cores
            // with its own client handshakes).
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_leaves_phones_connecting_with_bounded_memory() {
    let stack = LocalStack::start(StackOptions {
        replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let public = free_port(true);
    let admin = free_port(false);
    let replicas: Vec<String> = (0..3)
        .map(|i| stack.replica_addr(0, i).to_string())
        .collect();
    let mut child = tokio::process::Command::new(testing::bins::gateway())
        .args(["run", "--state-dir"])
        .arg(stack.gateway_dir())
        .arg("--listen")
        .arg(public.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--vault-replicas")
        .arg(replicas.join(","))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut profile = stack.profile.clone();
    profile.gateway_addr = public;
    // Up, and warmed by one phone.
    let until = Instant::now() + Duration::from_secs(20);
    let dev = stack.enroll_device("warm-up").unwrap();
    loop {
        match GatewayConnection::connect(&profile, &dev).await {
            Ok(c) => {
                c.close().await;
                break;
            }
            Err(e) => assert!(Instant::now() < until, "the gateway did not come up: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = rss_bytes(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let tls = client::connection::rustls_config(&profile).unwrap();
    let cfg = client::connection::quinn_config(tls).unwrap();
    let mut attackers = Vec::new();
    for a in 0..ATTACKER_ADDRS {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + a));
        for _ in 0..SOCKETS_PER_ADDR {
            let mut ep = quinn::Endpoint::client(SocketAddr::new(ip, 0)).unwrap();
            ep.set_default_client_config(cfg.clone());
            for _ in 0..CONNECTIONS_PER_SOCKET {
                attackers.push(tokio::spawn(attack(
                    ep.clone(),
                    public,
                    profile.gateway_server_name.clone(),
                    stop.clone(),
                )));
            }
        }
    }
    let flood_started = Instant::now();
    // Memory, sampled through the flood.
    let peak = Arc::new(AtomicU64::new(before));
    let held = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, held, stop) = (peak.clone(), held.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                let open = testing::helpers::metric_sum(admin, "gateway_connections", &[]).await;
                held.fetch_max(open as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Let the flood fill its places, then the phones come, four at a time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut latencies = Vec::new();
    let mut failed = Vec::new();
    let devices: Vec<_> = (0..PHONES)
        .map(|i| stack.enroll_device(&format!("phone-{i}")).unwrap())
        .collect();
    for chunk in devices.chunks(4) {
        let tries = chunk.iter().map(|dev| {
            let profile = profile.clone();
            async move {
                let t = Instant::now();
                let out = GatewayConnection::connect(&profile, dev).await;
                (t.elapsed(), out)
            }
        });
        for (took, out) in futures::future::join_all(tries).await {
            match out {
                Ok(c) => {
                    latencies.push(took);
                    c.close().await;
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
    }
    let phones_done = flood_started.elapsed();
    tokio::time::sleep(FLOOD.saturating_sub(flood_started.elapsed())).await;
    let retried =
        testing::helpers::metric_sum(admin, "gateway_handshakes_retried_total", &[]).await;
    let per_source = testing::helpers::metric_sum(
        admin,
        "gateway_handshakes_refused_total",
        &["reason=\"per_source\""],
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    for a in &attackers {
        a.abort();
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let peak = peak.load(Ordering::Relaxed);
    let growth = peak.saturating_sub(before);
    let held = held.load(Ordering::Relaxed).max(1);
    eprintln!(
        "flood of {} connections from {} source ports: {}/{PHONES} phones connected in {phones_done:?} \
         (p50 {:?}, p99 {:?}); gateway RSS {} MiB before, {} MiB peak (+{} KiB, at most {held} \
         connections open: {} KiB each); {retried} Retry, {per_source} refused per source",
        attackers.len(),
        usize::from(ATTACKER_ADDRS) * SOCKETS_PER_ADDR,
        latencies.len(),
        p(0.5),
        p(0.99),
        before >> 20,
        peak >> 20,
        growth >> 10,
        (growth / held) >> 10,
    );
    assert!(
        latencies.len() * 100 >= PHONES * 99,
        "{} of {PHONES} phones failed: {failed:?}",
        failed.len()
    );
    assert!(
        growth < MAX_GROWTH_BYTES,
        "gateway memory grew by {} MiB",
        growth >> 20
    );
    assert!(retried > 0.0, "QUIC Retry never engaged");
    assert!(per_source > 0.0, "the per-source cap never refused");
    child.kill().await.unwrap();
    stack.shutdown().await;
}
