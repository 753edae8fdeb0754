//! Replica configuration: a serde struct with documented defaults, loaded from
//! TOML and overridden by command-line flags in `main`.
//!
//! A replica belongs to one cluster, whose full member table (id, peer
//! address, gateway-facing address) every member's config repeats, as
//! written by `vault-backend init-cluster`. With no member table the replica
//! is a cluster of one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::keyprotect::KeyProtection;
use crate::raft::node::RaftTuning;
use crate::raft::NodeId;

/// Configuration of one vault replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// This replica's id in its cluster. Default 1.
    pub node_id: NodeId,
    /// UDP address for gateway connections (QUIC, mutual TLS).
    /// Default `127.0.0.1:7801`.
    pub listen: SocketAddr,
    /// UDP address for the other replicas (Raft over QUIC, mutual TLS).
    /// Default `127.0.0.1:7901`.
    pub peer_listen: SocketAddr,
    /// Folder with the fleet secrets, certificates and database, as written
    /// by `vault-backend init-cluster`; relative to the config file's folder.
    /// Default `vault-state`.
    pub state_dir: PathBuf,
    /// The data folder (the database: Raft log, state machine, accounts),
    /// relative to `state_dir`. Keep it on its own volume, apart from the
    /// state folder's keys: the freshness anchor (software key protection)
    /// lives beside the key, and only protects against a rolled-back data
    /// folder if restoring one does not restore the other. Default `data`.
    pub data_dir: PathBuf,
    /// Password guesses a deposit allows. A server policy, not a client
    /// choice; every replica of a cluster must agree. Default 10.
    pub max_attempts: u32,
    /// Pacing of guesses per deposit (DESIGN.md invariant 9): `free_guesses`
    /// at once, then waits from `first_wait_ms` growing by `growth` up to
    /// `max_wait_ms`. Defaults 3, 60000, 4, 86400000: all 10 guesses take
    /// 46.75 hours. Every replica of a cluster should agree (the leader's
    /// policy goes into each command).
    pub pacing: crate::account::Pacing,
    /// Waiting period of a replacement of a deposit proved only by a
    /// device credential (invariant 10). Default 604800000 (7 days).
    pub replacement_wait_ms: u64,
    /// Open login sessions one account may hold on a replica; a new one
    /// drops the account's oldest. Default 4.
    pub max_logins_per_account: usize,
    /// Admin HTTP listener serving `/metrics`, `/health`, `/ready` and
    /// `/status`. Default none.
    pub admin_listen: Option<SocketAddr>,
    /// The replicas the cluster was created with, this one included (what
    /// `init-cluster` writes), or for a replica that joins later, the
    /// members to ask. Once the cluster exists its Raft membership is the
    /// member list, changed with `add-learner`, `promote` and
    /// `remove-member`. Empty (the default) means a cluster of this replica
    /// alone.
    pub members: Vec<Member>,
    /// A random id of the cluster, written by `init-cluster` into every
    /// member's config: it names the freshness anchor (with the replica id),
    /// so that two clusters whose replicas share a token never mistake each
    /// other's anchors. Absent in configs of release 0.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// This replica joins an existing cluster (as written by
    /// `vault-backend new-replica`): it never creates one, and serves once a
    /// member has added it. Default false.
    pub join: bool,
    /// Raft timing and compaction.
    pub raft: RaftSettings,
    /// What seals the fleet secrets at rest. Default: a software key file
    /// `master.key` in the state folder.
    pub key_protection: KeyProtection,
}

/// One replica of a cluster as its peers and gateways reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Replica id (unique in the cluster, never reused).
    pub id: NodeId,
    /// Its peer (Raft) address.
    pub peer: SocketAddr,
    /// Its gateway-facing address, told to gateways that ask a follower.
    pub serve: SocketAddr,
    /// Its admin HTTP address, if it has one (`vault-backend status` asks
    /// every member listed with one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
}

/// Raft settings (milliseconds in TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    /// Leader heartbeat. Default 100 ms.
    pub heartbeat_ms: u64,
    /// Followers start an election after 1–2× this without a leader.
    /// Default 400 ms.
    pub election_timeout_ms: u64,
    /// Snapshot (and purge the log before it) every this many entries.
    /// Default 5000.
    pub snapshot_every: u64,
    /// How long one snapshot chunk (1 MiB) may take to reach a follower
    /// and, for the last one, to be installed there before the leader sends
    /// it again. Default 10000 ms; raise it for clusters whose snapshot
    /// takes longer than that to install.
    pub snapshot_timeout_ms: u64,
    /// How long a request waits for its change to commit before answering
    /// "unavailable" (no majority reachable). Default 3000 ms; at most
    /// `limits::MAX_COMMIT_TIMEOUT` (7 s), so that two commits fit inside
    /// the replica's per-request budget and the typed answer reaches the
    /// gateway before its deadline.
    pub commit_timeout_ms: u64,
    /// Lockouts and deletes arriving within this share one scrub pass
    /// (snapshot, log purge, free-page overwrite); an erased record is gone
    /// from the replica's file within about this plus the pass. Each pass
    /// costs a snapshot and a rewrite of the file's free pages, so keep it
    /// long where lockouts are frequent. Default 30000 ms.
    pub erasure_delay_ms: u64,
    /// The newest command version (see SPEC.md §8.3) this replica tells
    /// its leader it reads; the cluster switches to a version only when
    /// every member reads it. Set it to the old version on the replicas of
    /// a canary upgrade to keep the cluster on the old encodings (and a
    /// downgrade possible) until you lift it. Default: the newest this
    /// release reads.
    pub max_command_version: u32,
    /// The database's page cache in MiB: the most memory the replica keeps
    /// of its database file beyond the transactions in flight. Default
    /// 1024 (redb's own default); a replica whose accounts fit in less can
    /// be given less.
    pub cache_mib: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        let t = RaftTuning::default();
        Self {
            heartbeat_ms: t.heartbeat.as_millis() as u64,
            election_timeout_ms: t.election_timeout.as_millis() as u64,
            snapshot_every: t.snapshot_every,
            snapshot_timeout_ms: t.snapshot_timeout.as_millis() as u64,
            commit_timeout_ms: 3000,
            erasure_delay_ms: t.erasure_delay.as_millis() as u64,
            max_command_version: t.max_command_version,
            cache_mib: (t.cache_bytes / (1024 * 1024)) as u64,
        }
    }
}

impl RaftSettings {
    /// The node tuning these settings describe.
    pub fn tuning(&self) -> RaftTuning {
        RaftTuning {
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            election_timeout: Duration::from_millis(self.election_timeout_ms),
            snapshot_every: self.snapshot_every,
            snapshot_timeout: Duration::from_millis(self.snapshot_timeout_ms),
            async_flush: false,
            erasure_delay: Duration::from_millis(self.erasure_delay_ms),
            max_command_version: self.max_command_version,
            cache_bytes: usize::try_from(self.cache_mib.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
        }
    }

    /// The commit timeout.
    pub fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.commit_timeout_ms)
    }

    /// Refuses settings that break the nesting of timeouts.
    pub fn validate(&self) -> anyhow::Result<()> {
        let max = protocol_spec::limits::MAX_COMMIT_TIMEOUT;
        anyhow::ensure!(
            self.commit_timeout_ms > 0 && self.commit_timeout() <= max,
            "raft.commit_timeout_ms = {} is outside 1..={}: a commit must fit twice in the \
             replica's {} s request budget; lower it",
            self.commit_timeout_ms,
            max.as_millis(),
            protocol_spec::limits::VAULT_REQUEST_TIMEOUT.as_secs()
        );
        anyhow::ensure!(
            self.snapshot_timeout_ms >= 1000,
            "raft.snapshot_timeout_ms = {} is below 1000: followers could never finish \
             installing a snapshot; raise it",
            self.snapshot_timeout_ms
        );
        Ok(())
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7801)),
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 7901)),
            state_dir: PathBuf::from("vault-state"),
            data_dir: PathBuf::from(files::DATA_DIR),
            max_attempts: protocol_spec::limits::DEFAULT_MAX_ATTEMPTS,
            pacing: crate::account::Pacing::default(),
            replacement_wait_ms: 7 * 24 * 3600 * 1000,
            max_logins_per_account: 4,
            admin_listen: None,
            members: Vec::new(),
            cluster_id: None,
            join: false,
            raft: RaftSettings::default(),
            key_protection: KeyProtection::default(),
        }
    }
}

impl VaultConfig {
    /// Reads a TOML file; missing keys take their defaults. A relative
    /// `state_dir` is relative to the config file's folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let mut cfg: Self = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
        if cfg.state_dir.is_relative() {
            if let Some(parent) = path.parent() {
                cfg.state_dir = parent.join(&cfg.state_dir);
            }
        }
        cfg.raft
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Writes the config into its state folder as `replica.toml`, with the
    /// state folder recorded as `.` (the config's own folder) so the folder
    /// can be moved or copied to the replica's host.
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path = self.state_dir.join(files::CONFIG);
        let on_disk = Self {
            state_dir: PathBuf::from("."),
            ..self.clone()
        };
        service_kit::files::write_private(
            &path,
            toml::to_string(&on_disk)?.as_bytes(),
            service_kit::files::Existing::Replace,
        )?;
        Ok(path)
    }

    /// The name of this replica's freshness anchor.
    pub fn anchor_name(&self) -> String {
        match &self.cluster_id {
            Some(c) => format!("bkv-freshness-{c}-{}", self.node_id),
            None => format!("bkv-freshness-{}", self.node_id),
        }
    }

    /// The database file, in the data folder.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join(&self.data_dir).join(files::DATABASE)
    }

    /// The member table, with this replica alone when none is configured.
    /// Checks that ids are unique and that this replica is listed.
    pub fn cluster(&self) -> anyhow::Result<BTreeMap<NodeId, Member>> {
        if self.members.is_empty() {
            return Ok(BTreeMap::from([(
                self.node_id,
                Member {
                    id: self.node_id,
                    peer: self.peer_listen,
                    serve: self.listen,
                    admin: self.admin_listen,
                },
            )]));
        }
        let mut out = BTreeMap::new();
        for m in &self.members {
            if out.insert(m.id, m.clone()).is_some() {
                anyhow::bail!("replica id {} appears twice in `members`", m.id);
            }
        }
        if !out.contains_key(&self.node_id) {
            anyhow::bail!(
                "node_id {} is not in `members`; add it or fix node_id",
                self.node_id
            );
        }
        if !self.join && !matches!(out.len(), 1 | 3 | 5 | 7) {
            tracing::warn!(
                replicas = out.len(),
                "an even-sized cluster tolerates no more failures than one replica fewer"
            );
        }
        Ok(out)
    }
}

/// Fixed file names inside a replica's state folder.
pub mod files {
    /// Fleet secrets (0600).
    pub const SECRETS: &str = crate::secrets::SECRETS_FILE;
    /// Cluster CA certificate/key stem.
    pub const CLUSTER_CA: &str = "cluster-ca";
    /// Replica server certificate/key stem.
    pub const REPLICA_CERT: &str = "replica";
    /// Database (Raft log, state machine, accounts), in the data folder.
    pub const DATABASE: &str = "vault.redb";
    /// The data folder's default name.
    pub const DATA_DIR: &str = "data";
    /// Public facts clients pin (fleet id, public key).
    pub const FLEET_PUBLIC: &str = "fleet-public.toml";
    /// A replica's config inside its folder, as `init-cluster` writes it.
    pub const CONFIG: &str = "replica.toml";
}

#[cfg(test)]
mod tests {
    use super::RaftSettings;

    #[test]
    fn a_commit_timeout_that_breaks_the_nesting_is_refused() {
        let ok = RaftSettings::default();
        assert!(ok.validate().is_ok());
        let max = protocol_spec::limits::MAX_COMMIT_TIMEOUT.as_millis() as u64;
        for bad in [0, max + 1, 30_000] {
            let s = RaftSettings {
                commit_timeout_ms: bad,
                ..Default::default()
            };
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains("raft.commit_timeout_ms"), "{err}");
        }
        let edge = RaftSettings {
            commit_timeout_ms: max,
            ..Default::default()
        };
        assert!(edge.validate().is_ok());
    }

    #[test]
    fn the_snapshot_timeout_survives_the_config_file_and_a_short_one_is_refused() {
        let s = RaftSettings {
            snapshot_timeout_ms: 45_000,
            ..Default::default()
        };
        let back: RaftSettings = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.tuning().snapshot_timeout.as_millis(), 45_000);
        let short = RaftSettings {
            snapshot_timeout_ms: 999,
            ..Default::default()
        };
        let err = short.validate().unwrap_err().to_string();
        assert!(err.contains("raft.snapshot_timeout_ms"), "{err}");
    }
}
