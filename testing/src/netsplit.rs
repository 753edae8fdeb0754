//! Network partitions between vault replicas, made by a proxy this process
//! controls: each replica's peer address in the membership is a proxy
//! socket that forwards UDP datagrams to the port the replica really binds
//! (and the answers back). Cutting replica X off drops every datagram to
//! X's proxy and every datagram X sends from its peer port, so X can reach
//! no peer and no peer can reach X, while the gateway still reaches X on
//! its serve port: the case of a leader that lost its majority but still
//! takes phones' requests.
//!
//! Must never: forward anything but loopback traffic, or let its buffers
//! grow with what peers send (one datagram buffer per direction, a bounded
//! number of sources).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Largest UDP payload on loopback.
const DATAGRAM: usize = 65_535;
/// Distinct sources one proxy forwards for (peers and operator commands);
/// datagrams of sources beyond it are dropped.
const MAX_SOURCES: usize = 256;

/// The real peer ports currently cut off, shared by every proxy.
#[derive(Debug, Clone, Default)]
pub struct Cuts(Arc<Mutex<BTreeSet<SocketAddr>>>);

impl Cuts {
    fn is_cut(&self, addr: &SocketAddr) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(addr)
    }

    fn set(&self, addr: SocketAddr, cut: bool) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match cut {
            true => s.insert(addr),
            false => s.remove(&addr),
        };
    }
}

/// One replica's proxy: `front` is its peer address in the membership,
/// `replica` the port it binds.
#[derive(Debug)]
pub struct PeerProxy {
    /// The address peers send to.
    pub front: SocketAddr,
    /// The replica's own peer port.
    pub replica: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxies of one cluster and the cuts between them.
#[derive(Debug, Default)]
pub struct PeerProxies {
    cuts: Cuts,
    proxies: Vec<PeerProxy>,
}

impl PeerProxies {
    /// Starts a proxy on the bound socket `front` for the replica whose
    /// peer port is `replica`; returns its index.
    pub fn add(
        &mut self,
        front: std::net::UdpSocket,
        replica: SocketAddr,
    ) -> anyhow::Result<usize> {
        front.set_nonblocking(true)?;
        let front = Arc::new(UdpSocket::from_std(front)?);
        let addr = front.local_addr()?;
        let task = tokio::spawn(forward(front, replica, self.cuts.clone()));
        self.proxies.push(PeerProxy {
            front: addr,
            replica,
            task,
        });
        Ok(self.proxies.len() - 1)
    }

    /// Cuts the replica whose peer port is `replica` off from every peer
    /// (`true`) or joins it again (`false`).
    pub fn cut(&self, replica: SocketAddr, cut: bool) {
        self.cuts.set(replica, cut);
    }

    /// Whether `replica`'s peer port is behind a proxy of this set.
    pub fn proxies(&self, replica: SocketAddr) -> bool {
        self.proxies.iter().any(|p| p.replica == replica)
    }

    /// The real peer port behind proxy `i`.
    ///
    /// # Panics
    ///
    /// If there is no proxy `i`.
    pub fn replica_of(&self, i: usize) -> SocketAddr {
        self.proxies[i].replica
    }

    /// Joins every replica again.
    pub fn heal_all(&self) {
        for p in &self.proxies {
            self.cuts.set(p.replica, false);
        }
    }
}

/// Forwards datagrams from any source to `replica` through one upstream
/// socket per source (so the replica's answers find their way back).
async fn forward(front: Arc<UdpSocket>, replica: SocketAddr, cuts: Cuts) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    // The answer tasks end with this one (a JoinSet aborts them on drop).
    let mut answers = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        // An ICMP "port unreachable" (the replica is down) surfaces as an
        // error on some receive; the socket itself stays usable.
        let Ok((n, src)) = front.recv_from(&mut buf).await else {
            continue;
        };
        if cuts.is_cut(&replica) || cuts.is_cut(&src) {
            continue;
        }
        let up = match upstreams.get(&src) {
            Some(u) => u.clone(),
            None if upstreams.len() >= MAX_SOURCES => continue,
            None => {
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if u.connect(replica).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                answers.spawn(answer(u.clone(), front.clone(), src, replica, cuts.clone()));
                upstreams.insert(src, u.clone());
                u
            }
        };
        let _ = up.send(&buf[..n]).await;
    }
}

/// Sends the replica's answers to `src` back from the proxy's address.
async fn answer(
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    src: SocketAddr,
    replica: SocketAddr,
    cuts: Cuts,
) {
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let Ok(n) = up.recv(&mut buf).await else {
            continue;
        };
        if cuts.is_cut(&replica) || cuts.is_cut(&src) {
            continue;
        }
        let _ = front.send_to(&buf[..n], src).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    async fn echo() -> (SocketAddr, JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let t = tokio::spawn(async move {
            let mut b = [0u8; 64];
            while let Ok((n, from)) = s.recv_from(&mut b).await {
                let _ = s.send_to(&b[..n], from).await;
            }
        });
        (addr, t)
    }

    async fn roundtrip(from: &UdpSocket, to: SocketAddr) -> bool {
        from.send_to(b"ping", to).await.unwrap();
        let mut b = [0u8; 8];
        matches!(
            tokio::time::timeout(Duration::from_millis(300), from.recv_from(&mut b)).await,
            Ok(Ok((4, _)))
        )
    }

    #[tokio::test]
    async fn forwards_both_ways_and_drops_while_cut() {
        let (replica, _t) = echo().await;
        let mut px = PeerProxies::default();
        let i = px
            .add(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), replica)
            .unwrap();
        let front = px.proxies[i].front;
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert!(roundtrip(&peer, front).await);
        px.cut(replica, true);
        assert!(!roundtrip(&peer, front).await);
        // The cut peer's own datagrams are dropped too.
        px.heal_all();
        assert!(roundtrip(&peer, front).await);
        px.cut(peer.local_addr().unwrap(), true);
        assert!(!roundtrip(&peer, front).await);
        px.cut(peer.local_addr().unwrap(), false);
        assert!(roundtrip(&peer, front).await);
    }
}
