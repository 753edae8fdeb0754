//! A gateway as a real `gateway run` child process serving a
//! [`LocalStack`]'s vault clusters with the stack's gateway keys: started
//! on a fixed loopback port (so a restart comes back where phones look for
//! it), stopped with SIGTERM (it drains) or SIGKILL.
//!
//! Must never: listen beyond loopback; leave its process behind (killed on
//! drop).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gateway::config::GatewayConfig;

use crate::local_stack::LocalStack;

/// One gateway process.
#[derive(Debug)]
pub struct GatewayProcess {
    /// Its phone-facing UDP address.
    pub addr: SocketAddr,
    /// Its admin HTTP address (`/health`, `/ready`, `/metrics`).
    pub admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl GatewayProcess {
    /// Writes `name.toml` in the stack's folder (the stack's clusters,
    /// free loopback ports, then `tune`) and starts the process.
    pub async fn start(
        stack: &LocalStack,
        name: &str,
        tune: impl FnOnce(&mut GatewayConfig),
    ) -> anyhow::Result<Self> {
        let addr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut cfg = GatewayConfig {
            listen: addr,
            state_dir: stack.gateway_dir(),
            vault_clusters: stack.cluster_configs(),
            admin_listen: Some(admin),
            ..Default::default()
        };
        tune(&mut cfg);
        let config = stack.dir.join(format!("{name}.toml"));
        service_kit::files::write_public(&config, toml::to_string(&cfg)?.as_bytes())?;
        let mut g = Self {
            addr: cfg.listen,
            admin: cfg.admin_listen.unwrap_or(admin),
            config,
            log: stack.dir.join(format!("{name}.log")),
            child: None,
        };
        g.spawn().await?;
        Ok(g)
    }

    /// Starts the process again (a no-op while it runs) and waits
    /// (bounded: 20 s) until it says it serves. Its admin port was found
    /// free by binding port 0 and letting it go, so another test can take
    /// it first (seen in CI for replicas): then it gets a new one and the
    /// process starts again (up to 3 times).
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        for _ in 0..3 {
            match self.spawn_once().await? {
                Started::Serving => return Ok(()),
                Started::AdminPortTaken => {
                    self.admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
                    let text = std::fs::read_to_string(&self.config)?;
                    let mut cfg: GatewayConfig = toml::from_str(&text)?;
                    cfg.admin_listen = Some(self.admin);
                    service_kit::files::write_public(
                        &self.config,
                        toml::to_string(&cfg)?.as_bytes(),
                    )?;
                }
            }
        }
        anyhow::bail!("the gateway process found its admin port taken 3 times")
    }

    async fn spawn_once(&mut self) -> anyhow::Result<Started> {
        if self.running() {
            return Ok(Started::Serving);
        }
        let logged = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = tokio::process::Command::new(crate::bins::gateway())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            // Its own word, not a connection to its admin port, which
            // whoever took that port would answer.
            let said = crate::local_stack::log_since(&self.log, logged);
            if said.contains("gateway serving") {
                return Ok(Started::Serving);
            }
            if let Some(exit) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let said = crate::local_stack::log_since(&self.log, logged);
                if said.contains("cannot bind the admin port") {
                    self.child = None;
                    return Ok(Started::AdminPortTaken);
                }
                anyhow::bail!(
                    "the gateway process exited at start ({exit}):\n{}",
                    self.log()
                );
            }
            anyhow::ensure!(
                Instant::now() < until,
                "the gateway process did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// SIGTERM, then waits (bounded by `within`) for it to drain and exit.
    pub async fn terminate(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow::anyhow!("the gateway is not running"))?;
        crate::local_stack::terminate(&mut child, within, "the gateway").await
    }

    /// SIGHUP, then waits (bounded: 10 s) for the process to say whether
    /// it reloaded its keys: `Ok(true)` if it did, `Ok(false)` if it kept
    /// the old ones.
    pub async fn reload(&self) -> anyhow::Result<bool> {
        let count = |log: &str| {
            (
                log.matches("keys reloaded").count(),
                log.matches("keys not reloaded").count(),
            )
        };
        let before = count(&self.log());
        let pid = self
            .pid()
            .ok_or_else(|| anyhow::anyhow!("the gateway is not running"))?;
        crate::local_stack::signal(pid, "HUP").await?;
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let now = count(&self.log());
            if now.0 > before.0 {
                return Ok(true);
            }
            if now.1 > before.1 {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("the gateway said nothing about its keys within 10 s of SIGHUP")
    }

    /// SIGKILL: no drain, connections die with the process.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// How a start of the process went.
enum Started {
    Serving,
    AdminPortTaken,
}
