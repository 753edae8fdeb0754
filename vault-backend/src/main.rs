//! `vault-backend`: initialise a fleet, issue gateway certificates, run a replica.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vault_backend::config::VaultConfig;
use vault_backend::replica::{self, Replica};

#[derive(Parser)]
#[command(name = "vault-backend", version, about = "Backup Key Vault replica")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a fleet: secrets (owner-only), cluster CA, replica certificate.
    Init {
        /// State folder to create.
        #[arg(long, default_value = "vault-state")]
        state_dir: PathBuf,
        /// Fleet id clients pin (OPAQUE server identity).
        #[arg(long, default_value = "bkv-fleet-1")]
        fleet_id: String,
        /// DNS names / IPs on the replica certificate.
        #[arg(long, default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        name: Vec<String>,
    },
    /// Issue a client certificate that lets a gateway connect to this fleet.
    IssueGatewayCert {
        #[arg(long, default_value = "vault-state")]
        state_dir: PathBuf,
        /// Folder to write `vault-client.pem|.key` and `vault-cluster-ca.pem` into.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Run a replica.
    Run {
        /// TOML config file (see `VaultConfig`); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long)]
        max_attempts: Option<u32>,
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    vault_backend::observability::init_tracing("info");
    match Cli::parse().cmd {
        Cmd::Init {
            state_dir,
            fleet_id,
            name,
        } => {
            let names: Vec<&str> = name.iter().map(String::as_str).collect();
            let public = replica::init(&state_dir, &fleet_id, &names)?;
            println!("fleet id:         {}", public.fleet_id);
            println!("fleet public key: {}", public.fleet_public_key);
            println!("state written to  {}", state_dir.display());
        }
        Cmd::IssueGatewayCert { state_dir, out_dir } => {
            replica::issue_gateway_cert(&state_dir, &out_dir, "vault-client")?;
            println!("gateway certificate written to {}", out_dir.display());
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
            vault_backend::observability::install_metrics(cfg.admin_listen)?;
            let replica = Replica::start(&cfg).context("cannot start the replica")?;
            tracing::info!(addr = %replica.server.local_addr()?, "vault replica serving");
            tokio::signal::ctrl_c().await?;
            tracing::info!("shutting down");
            replica.shutdown().await;
        }
    }
    Ok(())
}
