//! A handshake flood beside a load run (issue 13's attack): connections
//! that complete QUIC and TLS, open the Noise stream, announce a full
//! 16 KiB frame and send nothing, from many source ports on several
//! loopback addresses, each coming back as soon as the gateway closes or
//! refuses it. The phones of the run then show what legitimate users get
//! while it lasts.
//!
//! Must never: send to anything but the target given (loopback in every
//! use here), or run past [`Flood::stop`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the flood did.
#[derive(Debug, Default)]
pub struct FloodStats {
    /// Connection attempts.
    pub attempts: AtomicU64,
    /// Attempts that got a connection (QUIC and TLS done).
    pub accepted: AtomicU64,
    /// Attempts the gateway refused or dropped.
    pub refused: AtomicU64,
    /// Connections holding a handshake now.
    pub holding: AtomicU64,
}

/// A running flood.
pub struct Flood {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Its counters.
    pub stats: Arc<FloodStats>,
}

impl std::fmt::Debug for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flood")
            .field("connections", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// Connections per UDP socket (so the ports number a third of them).
const PER_SOCKET: usize = 3;
/// A refused attacker comes back after this.
const COME_BACK: Duration = Duration::from_millis(500);

impl Flood {
    /// Starts `connections` flooding connections to `target` from
    /// `sources` loopback addresses (127.0.0.2 and up).
    pub fn start(
        target: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
        connections: usize,
        sources: u8,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FloodStats::default());
        let mut tasks = Vec::with_capacity(connections);
        let sockets = connections.div_ceil(PER_SOCKET);
        for s in 0..sockets {
            let ip = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                2 + (s % usize::from(sources.max(1))) as u8,
            ));
            let mut ep = quinn::Endpoint::client(SocketAddr::new(ip, 0))?;
            ep.set_default_client_config(config.clone());
            for _ in 0..PER_SOCKET.min(connections - tasks.len()) {
                tasks.push(tokio::spawn(attack(
                    ep.clone(),
                    target,
                    server_name.to_owned(),
                    stop.clone(),
                    stats.clone(),
                )));
            }
        }
        Ok(Self { stop, tasks, stats })
    }

    /// Stops every flooding connection.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn attack(
    ep: quinn::Endpoint,
    target: SocketAddr,
    name: String,
    stop: Arc<AtomicBool>,
    stats: Arc<FloodStats>,
) {
    while !stop.load(Ordering::Relaxed) {
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let Ok(connecting) = ep.connect(target, &name) else {
            return;
        };
        match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Ok(Ok(conn)) => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                if let Ok((mut send, _recv)) = conn.open_bi().await {
                    let _ = send.write_all(&(16u32 * 1024).to_be_bytes()).await;
                    stats.holding.fetch_add(1, Ordering::Relaxed);
                    conn.closed().await;
                    stats.holding.fetch_sub(1, Ordering::Relaxed);
                }
            }
            _ => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(COME_BACK).await;
            }
        }
    }
}
