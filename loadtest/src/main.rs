//! `loadtest`: drive a gateway with simulated phones, or measure the crypto
//! floor. `loadtest recover --embedded --rate 200 --duration 20` sizes the
//! whole system on this machine with one command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use loadtest::floor;
use loadtest::run::{self, Plan, Scenario, World};
use loadtest::target::{self, Target};

// The same allocator as the gateway and vault binaries, so an embedded run
// measures what they run with (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: service_kit::heap::Allocator = service_kit::heap::allocator();

#[derive(Parser)]
#[command(name = "loadtest", version, about = "Backup Key Vault load generator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// New QUIC connection + Noise authentication per session.
    Connect(Common),
    /// Connect and deposit a key per session.
    Register(Common),
    /// Connect and recover the key (OPAQUE login) per session.
    Recover(Common),
    /// Connect, then recover / wrong password / status / re-register.
    Mixed(Common),
    /// Open and hold authenticated connections.
    Idle(Common),
    /// Gateway relay overhead: `status` through the gateway against the
    /// same request sent straight to the vault (embedded only).
    Relay(Common),
    /// Measure the CPU cost of the cryptography a session cannot avoid.
    Floor {
        /// Write the figures as JSON here.
        #[arg(long)]
        report_json: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Start the whole local stack in this process (loopback, temporary
    /// folder) and drive it.
    #[arg(long)]
    embedded: bool,
    /// Replicas of the embedded vault cluster.
    #[arg(long, default_value_t = 5)]
    replicas: u64,
    /// Client profile of a stack started elsewhere (gateway address and pins).
    #[arg(long, conflicts_with = "embedded")]
    profile: Option<PathBuf>,
    /// Override the profile's gateway address.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// The account-service key that mints credentials for the phones
    /// (`account-service.key` in the gateway's state folder).
    #[arg(long)]
    credential_key: Option<PathBuf>,
    /// The gateway's `/metrics` URL, to cross-check its counters.
    #[arg(long)]
    metrics: Option<String>,
    /// Open loop: sessions started per second.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: sessions in flight. Without --rate or --concurrency a
    /// run is a closed loop of 16 (the run says so when it starts). Idle:
    /// handshakes in flight while connections open (default 64, the
    /// gateway's default cap of handshakes from one source address).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds of load (idle: seconds to hold the connections).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Simulated phones (distinct accounts).
    #[arg(long, default_value_t = 200)]
    phones: usize,
    /// UDP sockets the phones share.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Idle: connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Idle: the gateway's process id, to read its memory (embedded: this
    /// process).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Draw the run into this SVG file: latency second by second (p50,
    /// p99), sessions per second, and the latency distribution.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Print the gateway's (embedded: the whole stack's) metrics whose names
    /// start with this, after the run (e.g. `vault_commit_seconds`).
    #[arg(long)]
    show_metrics: Vec<String>,
    /// connect: first measure a bare quinn accept loop with the gateway's
    /// QUIC/TLS settings for the same time, and report the ratio (embedded).
    #[arg(long)]
    compare_bare_quinn: bool,
    /// Flood the gateway with this many connections that hold their
    /// handshake open (QUIC and TLS done, a 16 KiB Noise frame announced,
    /// nothing sent) while the phones run; they start 2 s before the run.
    /// Loopback targets only.
    #[arg(long, default_value_t = 0)]
    flood: usize,
    /// The flood's source addresses (127.0.0.2 and up; the phones use
    /// 127.0.0.1).
    #[arg(long, default_value_t = 16)]
    flood_sources: u8,
}

/// Sessions in flight when neither `--rate` nor `--concurrency` is given.
const DEFAULT_CONCURRENCY: usize = 16;

/// Handshakes in flight while `idle` opens its connections: the gateway's
/// default `max_handshakes_per_source`, since every simulated phone shares
/// one source address. More are refused by the gateway's front door.
const IDLE_CONCURRENCY: usize = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the servers do (service_kit::heap): memory that follows the heap.
    service_kit::heap::follow_the_heap();
    let cli = Cli::parse();
    let (scenario, c, relay) = match cli.cmd {
        Cmd::Floor { report_json } => {
            let f = tokio::task::spawn_blocking(floor::measure_floor).await??;
            println!(
                "crypto floor on this machine ({} cores), µs of CPU:",
                f.cores
            );
            println!("{:<26} {:>10} {:>10}", "operation", "server", "client");
            for (k, v) in &f.operations {
                println!("{:<26} {:>10.1} {:>10.1}", k, v.server_us, v.client_us);
            }
            println!(
                "per recover session (TLS + Noise IK + OPAQUE login): server {:.1} µs, client {:.1} µs",
                f.server_us_per_session, f.client_us_per_session
            );
            println!(
                "  with snow's default X25519 instead of aws-lc-rs: server {:.1} µs, client {:.1} µs",
                f.session_with_snow_default_dh.server_us, f.session_with_snow_default_dh.client_us
            );
            if let Some(p) = report_json {
                service_kit::files::write_public(&p, serde_json::to_string_pretty(&f)?.as_bytes())?;
            }
            return Ok(());
        }
        Cmd::Connect(c) => (Scenario::Connect, c, false),
        Cmd::Register(c) => (Scenario::Register, c, false),
        Cmd::Recover(c) => (Scenario::Recover, c, false),
        Cmd::Mixed(c) => (Scenario::Mixed, c, false),
        Cmd::Idle(c) => (Scenario::Idle, c, false),
        // Relay keeps persistent connections; the phones need no deposit.
        Cmd::Relay(c) => (Scenario::Connect, c, true),
    };
    if let Some(p) = &c.plot {
        loadtest::plot::check_path(p)?;
    }
    let target = if c.embedded {
        Target::embedded(c.replicas, protocol_spec::limits::DEFAULT_MAX_ATTEMPTS).await?
    } else {
        let profile = c
            .profile
            .clone()
            .context("pass --embedded, or --profile FILE --credential-key FILE for a stack started elsewhere")?;
        let key = c
            .credential_key
            .clone()
            .context("--profile needs --credential-key (the gateway's account-service.key)")?;
        Target::remote(profile, key, c.target, c.metrics.clone())?
    };
    if c.rate.is_none() && c.concurrency.is_none() && scenario != Scenario::Idle {
        eprintln!(
            "neither --rate nor --concurrency given: a closed loop of {DEFAULT_CONCURRENCY} sessions in flight"
        );
    }
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let plan = Plan {
        scenario,
        rate: c.rate,
        concurrency: c.concurrency.unwrap_or(if scenario == Scenario::Idle {
            IDLE_CONCURRENCY
        } else {
            DEFAULT_CONCURRENCY
        }),
        duration: Duration::from_secs_f64(c.duration),
        phones: c.phones.max(1),
        sockets: c.sockets,
        connections: c.connections,
        progress: !c.quiet,
    };
    let world = World::prepare(target, &plan).await?;
    // After the (unmeasured) registrations of the set-up.
    let before = world.target.scrape().await;
    let auth_before = before
        .as_deref()
        .map(|t| target::counter_sum(t, "gateway_authenticated_total"));
    let keys = match &world.target.stack {
        Some(s) => Some(gateway::keys::GatewayKeys::load(&s.gateway_dir())?),
        None => None,
    };
    if relay {
        let (keys, stack) = keys
            .as_ref()
            .zip(world.target.stack.as_ref())
            .context("relay needs --embedded")?;
        let (via, direct, bare) = loadtest::baseline::relay(
            &world,
            keys,
            stack.cluster_configs(),
            plan.concurrency,
            plan.duration,
        )
        .await?;
        let via = via.report("status via gateway", plan.duration);
        let direct = direct.report("status over the vault link", plan.duration);
        let bare = bare.report("status over a bare vault connection", plan.duration);
        println!("{}{}{}", via.table(), direct.table(), bare.table());
        let (a, b, z) = (
            &via.latency_us["status"],
            &direct.latency_us["status"],
            &bare.latency_us["status"],
        );
        println!(
            "relay overhead: p50 {:.2} ms vs {:.2} ms ({:.2}x), throughput {:.0}/s vs {:.0}/s ({:.2}x)",
            a.p50 as f64 / 1000.0,
            b.p50 as f64 / 1000.0,
            a.p50 as f64 / b.p50.max(1) as f64,
            via.throughput_per_s,
            direct.throughput_per_s,
            via.throughput_per_s / direct.throughput_per_s.max(1e-9)
        );
        println!(
            "vault link (relay stack) vs bare connection: p50 {:.2} ms vs {:.2} ms ({:.2}x), throughput {:.0}/s vs {:.0}/s ({:.2}x)",
            b.p50 as f64 / 1000.0,
            z.p50 as f64 / 1000.0,
            b.p50 as f64 / z.p50.max(1) as f64,
            direct.throughput_per_s,
            bare.throughput_per_s,
            direct.throughput_per_s / bare.throughput_per_s.max(1e-9)
        );
        return Ok(());
    }
    let bare = if c.compare_bare_quinn && scenario == Scenario::Connect {
        let keys = keys
            .as_ref()
            .context("--compare-bare-quinn needs --embedded")?;
        Some(
            loadtest::baseline::bare_quinn(&world, keys, plan.concurrency, plan.duration)
                .await?
                .0,
        )
    } else {
        None
    };
    let flood = if c.flood > 0 {
        let addr = world.target.profile.gateway_addr;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "--flood only against a gateway on loopback"
        );
        let tls = client::connection::rustls_config(&world.target.profile)?;
        let cfg = client::connection::quinn_config(tls)?;
        let f = loadtest::flood::Flood::start(
            addr,
            &world.target.profile.gateway_server_name,
            cfg,
            c.flood,
            c.flood_sources,
        )?;
        let rss0 = target::rss_bytes("self");
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "flood: {} connections from {} addresses; {} holding a handshake after 2 s",
            c.flood,
            c.flood_sources,
            f.stats.holding.load(std::sync::atomic::Ordering::Relaxed)
        );
        Some((f, rss0, world.target.scrape().await))
    } else {
        None
    };
    let report = if scenario == Scenario::Idle {
        let pid = c
            .gateway_pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "self".into());
        let rss0 = target::rss_bytes(&pid);
        let heap0 = world.target.heap_bytes().await;
        let started = std::time::Instant::now();
        let (conns, up) = world
            .idle(plan.connections, plan.concurrency, plan.duration)
            .await;
        let rss1 = target::rss_bytes(&pid);
        let heap1 = world.target.heap_bytes().await;
        let r = world.rec.report("idle", started.elapsed());
        println!(
            "idle: {} of {} connections opened, {} still up after {:.0} s",
            conns.len(),
            plan.connections,
            up,
            plan.duration.as_secs_f64()
        );
        if let (Some(a), Some(b)) = (rss0, rss1) {
            let per = b.saturating_sub(a) as f64 / conns.len().max(1) as f64;
            println!(
                "memory of {}: {:.1} MiB -> {:.1} MiB, {:.0} bytes per connection{}",
                if c.gateway_pid.is_some() {
                    "the gateway"
                } else {
                    "this process (gateway, vault and phones together)"
                },
                a as f64 / 1048576.0,
                b as f64 / 1048576.0,
                per,
                if c.gateway_pid.is_some() {
                    ""
                } else {
                    " (an upper bound for the gateway's share)"
                }
            );
        }
        if let (Some(a), Some(b)) = (heap0, heap1) {
            println!(
                "heap (process_heap_allocated_bytes at --metrics): {:.1} MiB -> {:.1} MiB, {:.0} bytes per connection",
                a / 1048576.0,
                b / 1048576.0,
                (b - a) / conns.len().max(1) as f64
            );
        }
        for conn in conns {
            conn.close().await;
            world.rec.closed();
        }
        r
    } else {
        let elapsed = run::drive(&world, &plan).await;
        world.rec.report(scenario.name(), elapsed)
    };
    println!("{}", report.table());
    if let Some((f, rss0, before)) = flood {
        use std::sync::atomic::Ordering::Relaxed;
        let held = f.stats.holding.load(Relaxed);
        let rss1 = target::rss_bytes("self");
        let after = world.target.scrape().await;
        let st = &f.stats;
        println!(
            "flood: {} attempts, {} got a connection, {} refused; {} holding at the end",
            st.attempts.load(Relaxed),
            st.accepted.load(Relaxed),
            st.refused.load(Relaxed),
            held
        );
        if let (Some(b), Some(a)) = (before, after) {
            let d = |name: &str| target::counter_sum(&a, name) - target::counter_sum(&b, name);
            println!(
                "gateway during the run: {:.0} handshakes refused (full or per source), {:.0} Retry, {:.0} stalled handshakes evicted",
                d("gateway_handshakes_refused_total"),
                d("gateway_handshakes_retried_total"),
                d("gateway_handshakes_evicted_total"),
            );
        }
        if let (Some(a), Some(b)) = (rss0, rss1) {
            println!(
                "memory of this process (gateway, vault, phones and flood together): {:.1} MiB -> {:.1} MiB",
                a as f64 / 1048576.0,
                b as f64 / 1048576.0
            );
        }
        f.stop();
    }
    if let Some(bare) = bare {
        println!(
            "bare quinn accept loop (same TLS/QUIC settings, same run): {bare:.0} connections/s; connect + Noise through the gateway: {:.0}/s ({:.2} of bare)",
            report.throughput_per_s,
            report.throughput_per_s / bare.max(1e-9)
        );
    }
    if let (Some(b), Some(after)) = (auth_before, world.target.scrape().await) {
        let delta = target::counter_sum(&after, "gateway_authenticated_total") - b;
        let ours = report
            .latency_us
            .get("auth")
            .map(|p| p.count)
            .unwrap_or_default();
        println!(
            "cross-check: the gateway counted {delta:.0} authentications during the run; the generator completed {ours}{}",
            if (delta - ours as f64).abs() < 0.5 {
                " (match)"
            } else {
                " (MISMATCH)"
            }
        );
    }
    if !c.show_metrics.is_empty() {
        if let Some(text) = world.target.scrape().await {
            for line in text
                .lines()
                .filter(|l| c.show_metrics.iter().any(|p| l.starts_with(p.as_str())))
            {
                println!("{line}");
            }
        }
    }
    if let Some(p) = &c.report_json {
        let mut report = report.clone();
        report.params = Some(loadtest::report::RunParams {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at,
            command: std::env::args().collect(),
            loop_kind: if plan.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_owned(),
            rate_per_s: plan.rate,
            concurrency: plan.rate.is_none().then_some(plan.concurrency),
            duration_s: plan.duration.as_secs_f64(),
            phones: plan.phones,
            sockets: plan.sockets,
            connections: plan.connections,
            target: if c.embedded { "embedded" } else { "remote" }.to_owned(),
            replicas: c.embedded.then_some(c.replicas),
        });
        service_kit::files::write_public(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    if let Some(p) = &c.plot {
        // Idle opens connections and holds them: its latency is the handshake.
        let phase = if scenario == Scenario::Idle {
            "auth"
        } else {
            "session"
        };
        loadtest::plot::write_svg(
            p,
            scenario.name(),
            phase,
            &world.rec.timeline(phase),
            world.rec.histogram(phase).as_ref(),
        )
        .with_context(|| format!("cannot draw the plot into {}", p.display()))?;
        println!("plot written to {}", p.display());
    }
    if let Ok(w) = std::sync::Arc::try_unwrap(world) {
        if let Ok(t) = std::sync::Arc::try_unwrap(w.target) {
            t.shutdown().await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_has_help() {
        use clap::CommandFactory;
        let missing = service_kit::cli::flags_without_help(&super::Cli::command());
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
