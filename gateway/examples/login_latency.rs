//! Login latency through the whole path — phone QUIC connection, Noise-
//! authenticated gateway, Raft-replicated vault cluster — on this machine.
//!
//! Closed loop (`--concurrency N`) finds the maximum login rate; open loop
//! (`--rate R`) measures latency at a given arrival rate, from each login's
//! *intended* start so a stalled server cannot hide its queue. Simulated
//! phones use the cheap client KSF (the vault's work is unchanged).
//!
//! `cargo run --release -p gateway --example login_latency -- --rate 200`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{BackupKey, ClientProfile, GatewayConnection, VaultClient};
use gateway::local_stack::{LocalStack, StackOptions};
use protocol_spec::opaque_profile::cheap_ksf_for_load_tests;

struct Args {
    replicas: u64,
    accounts: usize,
    seconds: u64,
    rate: Option<f64>,
    concurrency: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        replicas: 5,
        accounts: 64,
        seconds: 10,
        rate: None,
        concurrency: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{k} needs a value"))
        };
        match k.as_str() {
            "--replicas" => a.replicas = v()?.parse()?,
            "--accounts" => a.accounts = v()?.parse()?,
            "--seconds" => a.seconds = v()?.parse()?,
            "--rate" => a.rate = Some(v()?.parse()?),
            "--concurrency" => a.concurrency = v()?.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

#[derive(Clone)]
struct Recorder {
    profile: ClientProfile,
    hist: Arc<std::sync::Mutex<hdrhistogram::Histogram<u64>>>,
    errors: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
}

impl Recorder {
    /// One full login (OPAQUE start + finish, two Raft commits), timed from
    /// `intended`.
    async fn login(&self, conn: Arc<GatewayConnection>, intended: Instant) {
        let v = match VaultClient::new(&conn, &self.profile) {
            Ok(v) => v.with_ksf(cheap_ksf_for_load_tests()),
            Err(_) => return,
        };
        match v.recover(b"pw").await {
            Ok(_) => {
                let us = intended.elapsed().as_micros() as u64;
                if let Ok(mut h) = self.hist.lock() {
                    let _ = h.record(us.max(1));
                }
                self.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let stack = LocalStack::start(StackOptions {
        replicas: a.replicas,
        ..Default::default()
    })
    .await?;
    let profile = stack.profile.clone();
    // One phone per account, each with its own authenticated connection.
    let mut phones = Vec::new();
    for i in 0..a.accounts {
        let dev = stack.enroll_device(&format!("bench-{i}"))?;
        let conn = GatewayConnection::connect(&profile, &dev).await?;
        VaultClient::new(&conn, &profile)?
            .with_ksf(cheap_ksf_for_load_tests())
            .register(b"pw", &BackupKey::generate(), false)
            .await?;
        phones.push(Arc::new(conn));
    }
    let rec = Recorder {
        profile,
        hist: Arc::new(std::sync::Mutex::new(hdrhistogram::Histogram::new(3)?)),
        errors: Arc::new(AtomicU64::new(0)),
        done: Arc::new(AtomicU64::new(0)),
    };
    let started = Instant::now();
    let until = started + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    match a.rate {
        Some(rate) => {
            let gap = Duration::from_secs_f64(1.0 / rate);
            let mut next = Instant::now();
            let mut i = 0usize;
            while next < until {
                tokio::time::sleep_until(next.into()).await;
                let (rec, conn) = (rec.clone(), phones[i % phones.len()].clone());
                tasks.push(tokio::spawn(async move { rec.login(conn, next).await }));
                i += 1;
                next += gap;
            }
        }
        None => {
            for w in 0..a.concurrency {
                let (rec, phones) = (rec.clone(), phones.clone());
                let step = a.concurrency;
                tasks.push(tokio::spawn(async move {
                    let mut i = w;
                    while Instant::now() < until {
                        rec.login(phones[i % phones.len()].clone(), Instant::now())
                            .await;
                        i += step;
                    }
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let done = rec.done.load(Ordering::Relaxed);
    {
        let h = rec.hist.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "mode={} replicas={} logins={} errors={} rate={:.0}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
            match a.rate {
                Some(r) => format!("open@{r}/s"),
                None => format!("closed@{}", a.concurrency),
            },
            a.replicas,
            done,
            rec.errors.load(Ordering::Relaxed),
            done as f64 / secs,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            h.max() as f64 / 1000.0
        );
    }
    for p in phones {
        if let Ok(c) = Arc::try_unwrap(p) {
            c.close().await;
        }
    }
    stack.shutdown().await;
    Ok(())
}
