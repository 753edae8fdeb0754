//! Heap a replica allocates to build, serve and install one snapshot, against
//! the snapshot's own size: the soak found replica memory growing with the
//! data (RELIABILITY.md), and a snapshot operation that holds several copies
//! of the whole state at once is the suspect.
//!
//! ```sh
//! cargo run --release -p vault-backend --example snapshot_memory -- --accounts 14000
//! ```
//!
//! Each step runs in a child process of its own under dhat's heap profiler,
//! started after the state machine is filled: its peak is the most heap the
//! step's own allocations held at once (redb's page cache, filled before,
//! is not counted).

use clap::Parser;
use openraft::storage::RaftStateMachine;
use openraft::{Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use vault_backend::account::Authorization;
use vault_backend::raft::storage::{open_database_with_cache, StateMachine};
use vault_backend::raft::{Command, Proposal, TypeConfig};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[derive(Parser)]
struct Args {
    /// Accounts in the state machine.
    #[arg(long, default_value_t = 14_000)]
    accounts: u32,
    /// Bytes of each sealed record (an OPAQUE registration upload sealed
    /// under the replica key is about 230).
    #[arg(long, default_value_t = 232)]
    record_bytes: usize,
    /// The replica's page cache (`raft.cache_mib`), in MiB.
    #[arg(long, default_value_t = 16)]
    cache_mib: usize,
    /// Run one step (build, serve or install) and print its peak; without
    /// it, each step runs in a child process and the three are compared.
    #[arg(long)]
    step: Option<String>,
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(step) = args.step.clone() else {
        let mut size = 0;
        let mut rows = Vec::new();
        for step in ["build", "serve", "install"] {
            let out = std::process::Command::new(std::env::current_exe()?)
                .args(std::env::args().skip(1))
                .args(["--step", step])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "step {step} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout)?;
            let mut it = text.split_whitespace().map(str::parse::<usize>);
            size = it.next().ok_or_else(|| anyhow::anyhow!("no size"))??;
            rows.push((step, it.next().ok_or_else(|| anyhow::anyhow!("no peak"))??));
        }
        println!(
            "{} accounts, snapshot {} ({} B per account)",
            args.accounts,
            mib(size),
            size / args.accounts.max(1) as usize
        );
        for (step, peak) in rows {
            println!(
                "{step:>8}: peak heap {:>10} = {:.2} x the snapshot",
                mib(peak),
                peak as f64 / size.max(1) as f64
            );
        }
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    let (size, peak) = rt.block_on(run(&args, &step))?;
    println!("{size} {peak}");
    Ok(())
}

/// Fills a state machine, then runs `step` under the profiler: returns the
/// snapshot's size and the step's peak heap.
async fn run(args: &Args, step: &str) -> anyhow::Result<(usize, usize)> {
    let dir = tempfile::tempdir()?;
    let cache = args.cache_mib * 1024 * 1024;
    let mut a = StateMachine::new(open_database_with_cache(&dir.path().join("a.redb"), cache)?)?;
    let mut b = StateMachine::new(open_database_with_cache(&dir.path().join("b.redb"), cache)?)?;
    let mut index = 0;
    for chunk in (0..args.accounts).collect::<Vec<_>>().chunks(1000) {
        let entries: Vec<Entry<TypeConfig>> = chunk
            .iter()
            .map(|i| {
                index += 1;
                Entry {
                    log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(Proposal::current(Command::Register {
                        account_id: format!("account-{i:08}"),
                        authorization: Authorization::None,
                        registration_id: i.to_le_bytes().repeat(4),
                        sealed_record: vec![(*i % 251) as u8; args.record_bytes],
                    })),
                }
            })
            .collect();
        a.apply(entries).await?;
    }
    let profiled = |step_is: &str| step == step_is;
    let profiler = profiled("build").then(|| dhat::Profiler::builder().testing().build());
    let snap = a.get_snapshot_builder().await.build_snapshot().await?;
    let size = snap.snapshot.get_ref().len();
    let mut peak = 0;
    if profiler.is_some() {
        peak = dhat::HeapStats::get().max_bytes;
    }
    drop(snap);
    drop(profiler);
    let profiler = profiled("serve").then(|| dhat::Profiler::builder().testing().build());
    let current = a
        .get_current_snapshot()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no snapshot stored"))?;
    if profiler.is_some() {
        peak = dhat::HeapStats::get().max_bytes;
    }
    drop(profiler);
    let (meta, data) = (current.meta, current.snapshot);
    let profiler = profiled("install").then(|| dhat::Profiler::builder().testing().build());
    let mut receiving = b.begin_receiving_snapshot().await?;
    receiving.get_mut().extend_from_slice(data.get_ref());
    drop(data);
    b.install_snapshot(&meta, receiving).await?;
    if profiler.is_some() {
        peak = dhat::HeapStats::get().max_bytes;
    }
    drop(profiler);
    Ok((size, peak))
}
