//! Committed guess-counter increments per second on an in-process Raft group
//! of real replicas (QUIC with mutual TLS on loopback, redb with fsync).
//!
//! ```sh
//! cargo run --release -p vault-backend --example raft_throughput -- --replicas 5 --concurrency 64
//! cargo run --release -p vault-backend --example raft_throughput -- --replicas 5 --concurrency 1
//! cargo run --release -p vault-backend --example raft_throughput -- --replicas 5 --concurrency 64 --async-flush
//! cargo run --release -p vault-backend --example raft_throughput -- --replicas 5 --rate 500
//! cargo run --release -p vault-backend --example raft_throughput -- --replicas 5 --concurrency 64 --anchor
//! ```
//!
//! Closed loop (`--concurrency`): that many writers each wait for their
//! commit. Open loop (`--rate`): arrivals at a fixed rate, latency measured
//! from the intended start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use service_kit::pki::{self, Usage};
use vault_backend::account::Authorization;
use vault_backend::keyprotect::KeyProtection;
use vault_backend::raft::member::ReplicaNode;
use vault_backend::raft::node::{bind_peer_endpoint, AnchorSeam, RaftNode, RaftTuning};
use vault_backend::raft::{Command, CommandResult, Proposal, Raft};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 5)]
    replicas: u64,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: arrivals per second (overrides --concurrency).
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Acknowledge appends from a flusher thread (see `raft::storage`).
    #[arg(long)]
    async_flush: bool,
    /// Keep each replica's freshness anchor (`raft::freshness`) as the
    /// software backend does: a sealed two-slot file beside the key, one
    /// slot rewritten and fdatasync'd after every durable append batch.
    /// Off: no anchor.
    #[arg(long)]
    anchor: bool,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn guess(raft: &Raft, i: usize) -> bool {
    matches!(
        raft.client_write(Proposal::current(Command::LoginStart {
            account_id: format!("acct{i}"),
            max_attempts: u32::MAX,
        }))
        .await,
        Ok(r) if matches!(r.data, CommandResult::Guess { .. })
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let ca = pki::new_ca("bench CA")?;
    let tuning = RaftTuning {
        async_flush: args.async_flush,
        snapshot_every: 1_000_000,
        ..Default::default()
    };
    let mut eps = BTreeMap::new();
    let mut members = BTreeMap::new();
    for i in 1..=args.replicas {
        let id = pki::issue(&ca, "replica", &[pki::REPLICA_ROLE_NAME], Usage::Peer)?;
        let ep = bind_peer_endpoint("127.0.0.1:0".parse()?, &id, &ca.cert_pem)?;
        members.insert(i, ep.local_addr()?);
        eps.insert(i, ep);
    }
    let mut nodes = Vec::new();
    let kp = KeyProtection::default();
    for (i, ep) in eps {
        let seam = match args.anchor {
            false => None,
            true => {
                let keys = dir.path().join(format!("keys-{i}"));
                std::fs::create_dir_all(&keys)?;
                Some(AnchorSeam {
                    store: kp.open_anchor(&keys, "bkv-freshness")?,
                    protector: kp.open(&keys, true)?.into(),
                })
            }
        };
        nodes.push(
            RaftNode::start(
                i,
                (i == 1).then_some(&ReplicaNode::peers(&members)),
                ep,
                &dir.path().join(format!("r{i}.redb")),
                &tuning,
                seam,
            )
            .await?,
        );
    }
    let leader = loop {
        if let Some(n) = nodes
            .iter()
            .find(|n| n.raft.metrics().borrow().current_leader == Some(n.id))
        {
            break n.raft.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut set = tokio::task::JoinSet::new();
    for i in 0..args.accounts {
        let raft = leader.clone();
        set.spawn(async move {
            raft.client_write(Proposal::current(Command::Register {
                account_id: format!("acct{i}"),
                authorization: Authorization::ReplaceExisting,
                registration_id: vec![1; 16],
                sealed_record: vec![2; 200],
            }))
            .await
            .is_ok()
        });
        if set.len() >= 64 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut lat = Vec::new();
    if let Some(rate) = args.rate {
        let mut tasks = tokio::task::JoinSet::new();
        let gap = Duration::from_secs_f64(1.0 / rate as f64);
        let mut n = 0u64;
        loop {
            let intended = started + gap * n as u32;
            if intended >= deadline {
                break;
            }
            tokio::time::sleep_until(intended.into()).await;
            let raft = leader.clone();
            let i = (n as usize * 7919) % args.accounts;
            tasks.spawn(async move { (guess(&raft, i).await, intended.elapsed()) });
            n += 1;
        }
        while let Some(Ok((ok, d))) = tasks.join_next().await {
            if ok {
                done.fetch_add(1, Ordering::Relaxed);
                lat.push(d);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    } else {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..args.concurrency {
            let raft = leader.clone();
            let accounts = args.accounts;
            tasks.spawn(async move {
                let mut mine = Vec::new();
                let mut k = w;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = guess(&raft, k % accounts).await;
                    if ok {
                        mine.push(t.elapsed());
                    }
                    k += 64;
                }
                mine
            });
        }
        while let Some(Ok(mine)) = tasks.join_next().await {
            done.fetch_add(mine.len() as u64, Ordering::Relaxed);
            lat.extend(mine);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "replicas={} async_flush={} anchor={} mode={} committed={} failed={} rate={:.0}/s p50={:.2}ms p99={:.2}ms",
        args.replicas,
        args.async_flush,
        args.anchor,
        args.rate.map(|r| format!("open@{r}/s")).unwrap_or(format!("closed@{}", args.concurrency)),
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        done.load(Ordering::Relaxed) as f64 / elapsed,
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
    );
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}
