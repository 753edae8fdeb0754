//! `vault-backend`: create a cluster, issue gateway certificates, run a
//! replica, show a cluster's status.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vault_backend::admin;
use vault_backend::config::{files, Member, VaultConfig};
use vault_backend::keyprotect::KeyProtection;
use vault_backend::provision::{self, layout};
use vault_backend::raft::member::ReplicaNode;
use vault_backend::raft::network::{self, AdminRequest};
use vault_backend::replica::Replica;

#[derive(Parser)]
#[command(name = "vault-backend", version, about = "Backup Key Vault replica")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log lines on stderr as `text` or `json`.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a cluster: fleet secrets, cluster CA, one folder per replica
    /// (secrets 0600, certificate, `replica.toml`), and a gateway certificate.
    /// With --fleet-from, a further cluster of an existing fleet.
    InitCluster {
        /// Folder to create (`replica-N/`, `gateway/`, and `fleet/` with the fleet secrets and cluster CA).
        #[arg(long, default_value = "vault-cluster")]
        out: PathBuf,
        /// Number of replicas (1, 3, 5 or 7).
        #[arg(long, default_value_t = 5)]
        replicas: u64,
        /// Fleet id clients pin (OPAQUE server identity).
        #[arg(long, default_value = "bkv-fleet-1")]
        fleet_id: String,
        /// Address the replicas listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// Replica N serves gateways on base+N-1, peers on base+100+N-1 and
        /// its admin port on base+200+N-1.
        #[arg(long, default_value_t = 7801)]
        base_port: u16,
        /// Password guesses a deposit allows.
        #[arg(long, default_value_t = protocol_spec::limits::DEFAULT_MAX_ATTEMPTS)]
        max_attempts: u32,
        /// What seals each replica's copy of the fleet secrets: `software`
        /// (a key file per replica) or `pkcs11` (a key inside a token; the
        /// PIN comes from $BKV_PKCS11_PIN).
        #[arg(long, default_value = "software")]
        key_protection: String,
        /// PKCS#11 module, for --key-protection pkcs11.
        #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
        pkcs11_module: PathBuf,
        /// Label of the PKCS#11 token, for --key-protection pkcs11; `{id}`
        /// becomes each replica's id (one token per replica).
        #[arg(long)]
        pkcs11_token: Option<String>,
        /// An existing cluster folder whose fleet (secrets, CA) to join.
        #[arg(long)]
        fleet_from: Option<PathBuf>,
        /// Extra DNS names / IPs on the replica certificates.
        #[arg(long, default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        name: Vec<String>,
    },
    /// Issue another gateway client certificate from a cluster's CA.
    IssueGatewayCert {
        /// The `fleet/` folder `init-cluster` wrote.
        #[arg(long)]
        fleet_dir: PathBuf,
        /// Folder to write `vault-client.pem|.key` and `vault-cluster-ca.pem` into.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Run a replica.
    Run {
        /// TOML config file: the `replica.toml` that `init-cluster` or
        /// `new-replica` wrote; every key, with its default, is printed by
        /// `vault-backend default-config`. Flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The replica's data folder (database, sealed secrets, certificate)
        /// [config key `state_dir`].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// UDP address gateways connect to [config key `listen`].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Password guesses a deposit allows [config key `max_attempts`];
        /// must be the same on every replica.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// TCP address of the admin port (/metrics, /health, /ready,
        /// /status) [config key `admin_listen`].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Print the default configuration as TOML: every key `run --config`
    /// reads, with its default value.
    DefaultConfig,
    /// Prepare the folder of a replica that will join an existing cluster
    /// (to replace a dead one, or to grow the cluster): certificate, sealed
    /// fleet secrets, and a config with `join = true`. Run it where the
    /// cluster's `fleet/` folder is; then start the replica and run
    /// `add-learner` and `promote`.
    NewReplica {
        /// The cluster folder `init-cluster` wrote (holds `fleet/`).
        #[arg(long)]
        cluster_dir: PathBuf,
        /// An existing member's config to copy settings and members from.
        #[arg(long)]
        like: PathBuf,
        /// The new replica's id: never one the cluster has used.
        #[arg(long)]
        id: u64,
        /// Its gateway-facing address.
        #[arg(long)]
        serve: SocketAddr,
        /// Its peer (Raft) address.
        #[arg(long)]
        peer: SocketAddr,
        /// Its admin HTTP address.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Extra DNS names / IPs on its certificate.
        #[arg(long, default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        name: Vec<String>,
        /// Its PKCS#11 token, when the cluster uses PKCS#11 (default: the
        /// token of `--like`'s setting; `{id}` becomes the new id).
        #[arg(long)]
        pkcs11_token: Option<String>,
    },
    /// Add a running replica that joins (its config says `join = true`) to
    /// its cluster as a learner, and wait until it has caught up.
    AddLearner {
        /// The joining replica's config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Make a learner a voting member.
    Promote {
        /// Any member's config (its certificate authorizes the request).
        #[arg(long)]
        config: PathBuf,
        /// The learner's id.
        #[arg(long)]
        id: u64,
    },
    /// Remove a member (voter or learner) from the cluster for good.
    RemoveMember {
        /// Any member's config (its certificate authorizes the request).
        #[arg(long)]
        config: PathBuf,
        /// The member's id.
        #[arg(long)]
        id: u64,
    },
    /// Show each replica's view of the cluster (role, term, indexes, lag).
    Status {
        /// A replica config: asks every member that has an admin address.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Admin addresses to ask (instead of, or besides, --config).
        #[arg(long)]
        admin: Vec<SocketAddr>,
    },
}

// mimalloc: measured faster than glibc malloc under load (BENCHMARKS.md,
// "Allocator"); quinn and rustls allocate on every packet. Counted, so
// that /metrics tells the heap from the RSS (service_kit::heap).
#[global_allocator]
static ALLOCATOR: service_kit::heap::Allocator = service_kit::heap::allocator();

/// Threads of Tokio's blocking pool, where a replica runs every database
/// call, snapshot build and install and erasure pass (Tokio's default: up
/// to 512). Each thread that allocates keeps partly used allocator pages
/// of its own, and with the default a leader ran 17–18 threads and kept
/// 15–20 MiB over its heap, growing through the soak (+8.1 MiB in 7
/// minutes; RELIABILITY.md, runs 15–16). With 4 it ran 8 threads and grew
/// +2.8 MiB, starting 5 MiB lower, while the soak's closed loop completed
/// 108,717 operations against 102,409–104,253 with the default (run 19).
/// Four is enough for 2–4 cores: the work is CPU and fsync, and redb takes
/// one writer at a time.
const BLOCKING_THREADS: usize = 4;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    service_kit::observability::init_logging("info,openraft=warn", cli.log_format == "json");
    service_kit::heap::follow_the_heap();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", service_kit::report::one_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::InitCluster {
            out,
            replicas,
            fleet_id,
            host,
            base_port,
            max_attempts,
            fleet_from,
            name,
            key_protection,
            pkcs11_module,
            pkcs11_token,
        } => {
            let key_protection = match key_protection.as_str() {
                "software" => KeyProtection::default(),
                "pkcs11" => KeyProtection::Pkcs11 {
                    module: pkcs11_module,
                    token_label: pkcs11_token
                        .context("--key-protection pkcs11 needs --pkcs11-token LABEL")?,
                    key_label: "bkv-fleet-kek".into(),
                    pin_env: "BKV_PKCS11_PIN".into(),
                },
                other => {
                    anyhow::bail!("--key-protection must be `software` or `pkcs11`, not `{other}`")
                }
            };
            let fleet = fleet_from
                .as_deref()
                .map(provision::FleetMaterial::from_cluster)
                .transpose()?;
            anyhow::ensure!(
                (1..=7).contains(&replicas),
                "--replicas must be between 1 and 7"
            );
            let port = |off: u64| -> anyhow::Result<u16> {
                u16::try_from(u64::from(base_port) + off).context("--base-port is too high")
            };
            let members = (1..=replicas)
                .map(|id| {
                    Ok(Member {
                        id,
                        serve: SocketAddr::new(host, port(id - 1)?),
                        peer: SocketAddr::new(host, port(100 + id - 1)?),
                        admin: Some(SocketAddr::new(host, port(200 + id - 1)?)),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let names: Vec<&str> = name.iter().map(String::as_str).collect();
            let init = provision::init_cluster(
                &out,
                &fleet_id,
                &members,
                &names,
                max_attempts,
                fleet,
                &key_protection,
            )?;
            println!("fleet id:         {}", init.public.fleet_id);
            println!("fleet public key: {}", init.public.fleet_public_key);
            for r in &init.replicas {
                println!(
                    "replica {}: serves {}, peers {}  -> vault-backend run --config {}",
                    r.node_id,
                    r.listen,
                    r.peer_listen,
                    r.state_dir.join(files::CONFIG).display()
                );
            }
            println!(
                "gateway certificate: {}",
                out.join(layout::GATEWAY_DIR).display()
            );
            println!(
                "keep {} offline: it issues certificates for this cluster",
                out.join(layout::CA_DIR).display()
            );
        }
        Cmd::IssueGatewayCert { fleet_dir, out_dir } => {
            provision::issue_gateway_cert(&fleet_dir, &out_dir, layout::GATEWAY_CERT)?;
            println!("gateway certificate written to {}", out_dir.display());
        }
        Cmd::DefaultConfig => {
            print!(
                "# vault-backend run --config FILE: every key, with its default\n{}",
                toml::to_string_pretty(&vault_backend::config::VaultConfig::default())?
            );
        }
        Cmd::Run {
            config,
            state_dir,
            listen,
            max_attempts,
            admin_listen,
        } => {
            let mut cfg = match config {
                Some(p) => VaultConfig::load(&p)?,
                None => VaultConfig::default(),
            };
            if let Some(v) = state_dir {
                cfg.state_dir = v;
            }
            if let Some(v) = listen {
                cfg.listen = v;
            }
            if let Some(v) = max_attempts {
                cfg.max_attempts = v;
            }
            if admin_listen.is_some() {
                cfg.admin_listen = admin_listen;
            }
            service_kit::observability::install_recorder()?;
            service_kit::heap::export(&ALLOCATOR);
            vault_backend::telemetry::describe();
            let replica = Replica::start(&cfg)
                .await
                .context("cannot start the replica")?;
            tracing::info!(
                id = cfg.node_id,
                addr = %replica.serve_addr()?,
                peer = %cfg.peer_listen,
                "vault replica serving"
            );
            tokio::select! {
                r = shutdown_signal() => r?,
                why = replica.stopped() => {
                    replica.shutdown().await;
                    anyhow::bail!("this replica's consensus engine stopped: {why}");
                }
            }
            tracing::info!("shutting down");
            replica.shutdown().await;
        }
        Cmd::NewReplica {
            cluster_dir,
            like,
            id,
            serve,
            peer,
            admin,
            name,
            pkcs11_token,
        } => {
            let like = VaultConfig::load(&like)?;
            let names: Vec<&str> = name.iter().map(String::as_str).collect();
            let member = Member {
                id,
                serve,
                peer,
                admin,
            };
            let kp = match (like.key_protection.clone(), pkcs11_token) {
                (
                    KeyProtection::Pkcs11 {
                        module,
                        key_label,
                        pin_env,
                        ..
                    },
                    Some(token_label),
                ) => KeyProtection::Pkcs11 {
                    module,
                    token_label,
                    key_label,
                    pin_env,
                },
                (_, Some(_)) => anyhow::bail!("--pkcs11-token: the cluster does not use PKCS#11"),
                (kp, None) => kp,
            };
            let cfg = provision::new_replica(&cluster_dir, &like, member, &names, &kp)?;
            let path = cfg.state_dir.join(files::CONFIG);
            println!(
                "replica {id}: start it with `vault-backend run --config {p}`, then \
                 `vault-backend add-learner --config {p}` and `vault-backend promote --config {p} --id {id}`",
                p = path.display()
            );
        }
        Cmd::AddLearner { config } => {
            let cfg = VaultConfig::load(&config)?;
            let node = ReplicaNode::new(cfg.peer_listen, cfg.listen, cfg.admin_listen);
            let req = AdminRequest::AddLearner {
                id: cfg.node_id,
                node,
            };
            let at = membership_request(&cfg, req, true).await?;
            println!(
                "replica {} is a learner and has caught up (membership {at}); next: \
                 `vault-backend promote --config {} --id {}`",
                cfg.node_id,
                config.display(),
                cfg.node_id
            );
        }
        Cmd::Promote { config, id } => {
            let cfg = VaultConfig::load(&config)?;
            let at = membership_request(&cfg, AdminRequest::Promote { id }, false).await?;
            println!("replica {id} votes (membership {at})");
        }
        Cmd::RemoveMember { config, id } => {
            let cfg = VaultConfig::load(&config)?;
            let at = membership_request(&cfg, AdminRequest::Remove { id }, false).await?;
            println!(
                "replica {id} is no longer a member (membership {at}); stop it and never \
                 reuse its id or folder"
            );
        }
        Cmd::Status { config, admin } => {
            let mut targets = admin;
            if let Some(p) = config {
                let cfg = VaultConfig::load(&p)?;
                for m in cfg.cluster()?.values() {
                    if let Some(a) = m.admin {
                        if !targets.contains(&a) {
                            targets.push(a);
                        }
                    }
                }
            }
            anyhow::ensure!(
                !targets.is_empty(),
                "nothing to ask: pass --config with admin addresses or --admin ADDR"
            );
            println!(
                "{:<8} {:<10} {:<8} {:>6} {:>7} {:>9} {:>9} {:>9} {:>8}  lag",
                "replica",
                "role",
                "member",
                "term",
                "leader",
                "last log",
                "applied",
                "snapshot",
                "records"
            );
            let mut failures = Vec::new();
            let mut summary = None;
            let mut asked = Vec::new();
            while let Some(a) = targets.first().copied() {
                targets.remove(0);
                asked.push(a);
                match admin::fetch_status(a).await {
                    Ok(s) => {
                        let member = if s.voters.contains(&s.id) {
                            "voter"
                        } else if s.learners.contains(&s.id) {
                            "learner"
                        } else {
                            "none"
                        };
                        println!(
                            "{:<8} {:<10} {:<8} {:>6} {:>7} {:>9} {:>9} {:>9} {:>8}  {}",
                            s.id,
                            s.role,
                            member,
                            s.term,
                            opt(s.leader),
                            opt(s.last_log_index),
                            opt(s.applied_index),
                            opt(s.snapshot_index),
                            s.records,
                            s.lag
                                .as_ref()
                                .map(|l| l
                                    .iter()
                                    .map(|(id, b)| format!("{id}:{}", opt(*b)))
                                    .collect::<Vec<_>>()
                                    .join(" "))
                                .unwrap_or_default()
                        );
                        // The membership names members the config does not.
                        for m in s.admin_addrs.values() {
                            if !asked.contains(m) && !targets.contains(m) {
                                targets.push(*m);
                            }
                        }
                        if s.leader == Some(s.id) || summary.is_none() {
                            summary = Some(s);
                        }
                    }
                    Err(e) => failures.push((a, e)),
                }
            }
            // An address the membership does not list is a removed member.
            let mut down = 0;
            for (a, e) in failures {
                let member = summary
                    .as_ref()
                    // Members recorded by release 0.1.0 have no admin address.
                    .is_none_or(|s| {
                        s.admin_addrs.values().any(|m| *m == a)
                            || s.admin_addrs.len() < s.members.len()
                    });
                match member {
                    true => {
                        down += 1;
                        println!("{a:<8} unreachable: {e}");
                    }
                    false => println!("{a:<8} not a member (removed; drop it from the config)"),
                }
            }
            if let Some(s) = summary {
                let ids = |v: &[u64]| {
                    v.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                println!(
                    "voters: {}; learners: {}; command version: {}",
                    ids(&s.voters),
                    if s.learners.is_empty() {
                        "none".into()
                    } else {
                        ids(&s.learners)
                    },
                    s.command_version
                );
            }
            anyhow::ensure!(down == 0, "{down} member(s) did not answer");
        }
    }
    Ok(())
}

/// Sends a membership request to the leader of `cfg`'s cluster, asking
/// the members in its member table (but itself, when it is the one that
/// joins) and following "ask the leader".
async fn membership_request(
    cfg: &VaultConfig,
    req: AdminRequest,
    skip_self: bool,
) -> anyhow::Result<u64> {
    let ep = provision::operator_endpoint(cfg)?;
    let seeds: Vec<SocketAddr> = cfg
        .cluster()?
        .values()
        .filter(|m| !(skip_self && m.id == cfg.node_id))
        .map(|m| m.peer)
        .collect();
    anyhow::ensure!(!seeds.is_empty(), "the config lists no other member to ask");
    // Adding a learner waits for it to catch up, which can take a snapshot.
    let ttl = std::time::Duration::from_secs(120);
    let out = network::admin_request(&ep, &seeds, req, ttl)
        .await
        .map_err(|e| anyhow::anyhow!("the cluster refused: {e}"));
    ep.close(0u32.into(), b"done");
    out
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
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
        let def = vault_backend::config::VaultConfig::default();
        let text = toml::to_string_pretty(&def).expect("encodes");
        let back: vault_backend::config::VaultConfig = toml::from_str(&text).expect("reads back");
        assert_eq!(format!("{back:?}"), format!("{def:?}"));
    }
}
