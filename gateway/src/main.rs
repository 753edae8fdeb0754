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
        /// The gateway\'s state folder (its keys, from `gateway init`).
        #[arg(long, default_value = "gateway-state")]
        state_dir: PathBuf,
        /// DNS names / IPs on the TLS certificate.
        #[arg(long, default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        name: Vec<String>,
    },
    /// Write the client profile (SPEC §1.1) phones need for this gateway
    /// and a vault fleet: address, TLS trust and name, Noise key (and the
    /// prepared next one), fleet id and public key.
    ClientProfile {
        /// The gateway\'s state folder (its keys, from `gateway init`).
        #[arg(long, default_value = "gateway-state")]
        state_dir: PathBuf,
        /// The address phones reach this gateway at (an IP and UDP port).
        #[arg(long)]
        public_addr: SocketAddr,
        /// Further gateways of the deployment (same keys), tried after a
        /// drain; repeat the flag for each.
        #[arg(long)]
        other_gateway: Vec<SocketAddr>,
        /// The TLS name phones check: one of the gateway certificate's
        /// names (`gateway init --name`).
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// The fleet's `fleet-public.toml` (written by `vault-backend
        /// init-cluster` in the cluster folder).
        #[arg(long)]
        fleet_public: PathBuf,
        /// Where to write the profile (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Mint a device credential (stands in for the account service's phone-number check).
    MintCredential {
        /// The gateway\'s state folder (its keys, from `gateway init`).
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
    /// Prepare the Noise key the next rotation makes current, and print
    /// its public key: ship it in client profiles (`gateway_noise_next_key`)
    /// ahead of the rotation.
    PrepareNoiseKey {
        /// The gateway\'s state folder (its keys, from `gateway init`).
        #[arg(long, default_value = "gateway-state")]
        state_dir: PathBuf,
    },
    /// Rotate the Noise key: the prepared next key (or a new one) becomes
    /// current; the old one is still accepted for `--overlap-days`, and
    /// phones that use it are told the new key. Then send the running
    /// gateway SIGHUP.
    RotateNoiseKey {
        /// The gateway\'s state folder (its keys, from `gateway init`).
        #[arg(long, default_value = "gateway-state")]
        state_dir: PathBuf,
        /// How long phones pinned to the old key still get in (and learn
        /// the new one).
        #[arg(long, default_value_t = 30.0)]
        overlap_days: f64,
    },
    /// Run the gateway. SIGHUP reloads its keys (TLS certificate, Noise
    /// keys, account-service keys, vault-link certificate) from the state
    /// folder without dropping connections; SIGTERM or SIGINT drains.
    Run {
        /// TOML config file; every key, with its default, is printed by
        /// `gateway default-config`. Flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder with the gateway's keys (`gateway init`) [config key
        /// `state_dir`, default gateway-state].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// UDP address phones connect to [config key `listen`, default
        /// 127.0.0.1:7443].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Replicas of a single vault cluster, comma-separated (replaces
        /// the config's `vault_clusters`).
        #[arg(long, value_delimiter = ',')]
        vault_replicas: Vec<SocketAddr>,
        /// TCP address of the admin port (/metrics, /health, /ready)
        /// [config key `admin_listen`; off by default].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Print the default configuration as TOML: every key `run --config`
    /// reads, with its default value.
    DefaultConfig,
}

// mimalloc: measured faster than glibc malloc under load (BENCHMARKS.md,
// "Allocator"); quinn and rustls allocate on every packet. Counted, so
// that /metrics tells the heap from the RSS (service_kit::heap).
#[global_allocator]
static ALLOCATOR: service_kit::heap::Allocator = service_kit::heap::allocator();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    service_kit::observability::init_logging("info,openraft=warn", cli.log_format == "json");
    service_kit::heap::follow_the_heap();
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
        Cmd::ClientProfile {
            state_dir,
            public_addr,
            other_gateway,
            server_name,
            fleet_public,
            out,
        } => {
            let text = std::fs::read_to_string(&fleet_public).with_context(|| {
                format!(
                    "cannot read {}; it is in the cluster folder `vault-backend init-cluster` wrote",
                    fleet_public.display()
                )
            })?;
            let fleet =
                protocol_spec::profile::FleetPublic::from_toml(&text).with_context(|| {
                    format!("{} is not a fleet-public.toml", fleet_public.display())
                })?;
            let profile =
                keys::client_profile(&state_dir, public_addr, &other_gateway, &server_name, fleet)?;
            let toml = profile.to_toml()?;
            match out {
                Some(p) => {
                    service_kit::files::write_public(&p, toml.as_bytes())?;
                    eprintln!("client profile written to {}", p.display());
                }
                None => print!("{toml}"),
            }
        }
        Cmd::PrepareNoiseKey { state_dir } => {
            let public = keys::prepare_noise_key(&state_dir)?;
            println!("{public}");
            eprintln!(
                "next Noise key prepared in {}; put it in client profiles as gateway_noise_next_key, then run `gateway rotate-noise-key`",
                state_dir.display()
            );
        }
        Cmd::RotateNoiseKey {
            state_dir,
            overlap_days,
        } => {
            anyhow::ensure!(
                overlap_days.is_finite() && (0.0..=3650.0).contains(&overlap_days),
                "--overlap-days must be between 0 and 3650"
            );
            let public = keys::rotate_noise_key(
                &state_dir,
                Duration::from_secs_f64(overlap_days * 86_400.0),
            )?;
            println!("{public}");
            eprintln!(
                "the Noise key is rotated in {}; the old one is accepted for {overlap_days} more day(s). Send the running gateway SIGHUP to take it",
                state_dir.display()
            );
        }
        Cmd::DefaultConfig => {
            print!(
                "# gateway run --config FILE: every key, with its default\n{}",
                toml::to_string_pretty(&GatewayConfig::default())?
            );
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
            service_kit::heap::export(&ALLOCATOR);
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
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut hup = signal(SignalKind::hangup())?;
            loop {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => break r?,
                    _ = term.recv() => break,
                    _ = hup.recv() => {
                        // Nothing is replaced unless every file reads and
                        // builds: a half-written rotation keeps the old keys.
                        match GatewayKeys::load(&cfg.state_dir).and_then(|k| gw.reload(&k)) {
                            Ok(()) => {
                                metrics::counter!("gateway_reloads_total", "result" => "ok").increment(1);
                                metrics::gauge!("gateway_reload_failed").set(0.0);
                                tracing::info!("keys reloaded");
                            }
                            Err(e) => {
                                metrics::counter!("gateway_reloads_total", "result" => "failed").increment(1);
                                metrics::gauge!("gateway_reload_failed").set(1.0);
                                tracing::error!(error = %e, "keys not reloaded; the gateway keeps the ones it had");
                            }
                        }
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_help_and_the_default_config_reads_back() {
        use clap::CommandFactory;
        let missing = service_kit::cli::flags_without_help(&Cli::command());
        assert!(missing.is_empty(), "flags without help: {missing:?}");
        let text = toml::to_string_pretty(&GatewayConfig::default()).expect("encodes");
        let back: GatewayConfig = toml::from_str(&text).expect("reads back");
        assert_eq!(
            format!("{back:?}"),
            format!("{:?}", GatewayConfig::default())
        );
    }
}
