//! `gateway`: create keys, run the public endpoint, mint device credentials.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::config::GatewayConfig;
use gateway::keys::{self, GatewayKeys};
use gateway::server::Gateway;

#[derive(Parser)]
#[command(name = "gateway", version, about = "Backup Key Vault QUIC gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log lines on stderr as `text` or `json`.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the gateway's TLS identity, Noise key and account-service key pair.
    Init {
        #[arg(long, default_value = "gateway-state")]
        state_dir: PathBuf,
        /// DNS names / IPs on the TLS certificate.
        #[arg(long, default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        name: Vec<String>,
    },
    /// Mint a device credential (stands in for the account service's phone-number check).
    MintCredential {
        #[arg(long, default_value = "gateway-state")]
        state_dir: PathBuf,
        /// Account id.
        #[arg(long)]
        account: String,
        /// Device static Noise public key, hex (see `backup-client device new`).
        #[arg(long)]
        device_key: String,
        /// Validity in hours.
        #[arg(long, default_value_t = 24 * 30)]
        ttl_hours: u64,
    },
    /// Run the gateway.
    Run {
        /// TOML config (see `GatewayConfig`); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Replicas of a single vault cluster (replaces `vault_clusters`).
        #[arg(long, value_delimiter = ',')]
        vault_replicas: Vec<SocketAddr>,
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
}

// mimalloc: measured faster than glibc malloc under load (BENCHMARKS.md,
// "Allocator"); quinn and rustls allocate on every packet.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    service_kit::observability::init_logging("info,openraft=warn", cli.log_format == "json");
    match cli.cmd {
        Cmd::Init { state_dir, name } => {
            let names: Vec<&str> = name.iter().map(String::as_str).collect();
            keys::init(&state_dir, &names)?;
            println!("gateway keys in {}", state_dir.display());
            println!(
                "next: vault-backend issue-gateway-cert --fleet-dir <cluster>/fleet --out-dir {}",
                state_dir.display()
            );
        }
        Cmd::MintCredential {
            state_dir,
            account,
            device_key,
            ttl_hours,
        } => {
            let secret = keys::account_service_secret(&state_dir)?;
            let dev: [u8; 32] = hex::decode(device_key.trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .context("--device-key must be 64 hex digits (the device's Noise public key)")?;
            let token = protocol_spec::credential::mint(
                &secret,
                &account,
                &dev,
                Duration::from_secs(ttl_hours * 3600),
            )?;
            println!("{token}");
        }
        Cmd::Run {
            config,
            state_dir,
            listen,
            vault_replicas,
            admin_listen,
        } => {
            let mut cfg = match config {
                Some(p) => GatewayConfig::load(&p)?,
                None => GatewayConfig::default(),
            };
            if let Some(v) = state_dir {
                cfg.state_dir = v;
            }
            if let Some(v) = listen {
                cfg.listen = v;
            }
            if !vault_replicas.is_empty() {
                cfg.vault_clusters = vec![gateway::vault_client::ClusterConfig {
                    name: "default".into(),
                    replicas: vault_replicas,
                    server_name: service_kit::pki::REPLICA_ROLE_NAME.into(),
                }];
            }
            if admin_listen.is_some() {
                cfg.admin_listen = admin_listen;
            }
            service_kit::observability::install_recorder()?;
            gateway::telemetry::describe();
            let keys = GatewayKeys::load(&cfg.state_dir)?;
            let door = gateway::server::FrontDoor {
                budgets: cfg.budgets,
                admission: cfg.admission,
                relay: cfg.relay,
                connections: cfg.connections,
            };
            let gw = Gateway::start_with(cfg.listen, &keys, &cfg.vault_clusters, &door)?;
            let _admin = match cfg.admin_listen {
                Some(addr) => {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot bind the admin port {addr}"))?;
                    Some(gateway::admin::serve(
                        listener,
                        gw.readiness(),
                        service_kit::observability::prometheus(),
                    ))
                }
                None => None,
            };
            // Once every port is bound (test harnesses wait for this line).
            tracing::info!(addr = %gw.local_addr()?, "gateway serving");
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r?,
                _ = term.recv() => {}
            }
            let deadline = std::time::Duration::from_millis(cfg.drain_deadline_ms);
            tracing::info!(
                deadline_ms = cfg.drain_deadline_ms,
                "draining: no new connections; requests in flight finish"
            );
            let d = gw.drain(deadline).await;
            tracing::info!(
                cut = d.cut,
                took_ms = d.took.as_millis() as u64,
                "drained; exiting"
            );
        }
    }
    Ok(())
}
