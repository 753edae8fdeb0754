//! Provisioning replicas, before any of them runs: `init_cluster` (fleet
//! secrets, cluster CA, one certificate and config per replica, a gateway
//! certificate), `new_replica` (a member to add to a running cluster),
//! `issue_gateway_cert`, and the public facts a fleet hands to clients.
//!
//! Must never: overwrite an existing fleet's secrets, or give a replica the
//! cluster CA's private key (only the folder `init-cluster` keeps for
//! issuing certificates holds it).

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{files, Member, VaultConfig};
use crate::keyprotect::KeyProtection;
use crate::secrets::FleetSecrets;
use service_kit::pki::{self, CertAndKey, Usage};

/// Public facts about a fleet that clients pin and gateways need (the
/// format is the protocol's: `protocol_spec::profile`).
pub use protocol_spec::profile::FleetPublic;

/// Reads `fleet-public.toml` from a state folder.
pub fn read_fleet_public(state_dir: &Path) -> anyhow::Result<FleetPublic> {
    let p = state_dir.join(files::FLEET_PUBLIC);
    let t = std::fs::read_to_string(&p).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e}; run `vault-backend init-cluster` first",
            p.display()
        )
    })?;
    Ok(FleetPublic::from_toml(&t)?)
}

fn write_fleet_public(f: &FleetPublic, dir: &Path) -> anyhow::Result<()> {
    service_kit::files::write_public(&dir.join(files::FLEET_PUBLIC), f.to_toml()?.as_bytes())?;
    Ok(())
}

/// Folder names inside an `init-cluster` output folder.
pub mod layout {
    /// The fleet material: cluster CA (certificate and private key) and a
    /// copy of the fleet secrets, for issuing certificates and creating more
    /// clusters of the same fleet. Keep it offline.
    pub const CA_DIR: &str = "fleet";
    /// What a gateway needs to reach the cluster.
    pub const GATEWAY_DIR: &str = "gateway";
    /// Stem of the gateway's client certificate.
    pub const GATEWAY_CERT: &str = "vault-client";
    /// The cluster CA certificate as gateways store it.
    pub const GATEWAY_CA_FILE: &str = "vault-cluster-ca.pem";

    /// Folder of replica `id`.
    pub fn replica_dir(id: u64) -> String {
        format!("replica-{id}")
    }
}

/// What `init_cluster` wrote.
#[derive(Debug, Clone)]
pub struct ClusterInit {
    /// Public facts clients pin.
    pub public: FleetPublic,
    /// Each replica's config (also written as `replica-N/replica.toml`).
    pub replicas: Vec<VaultConfig>,
}

/// The secrets and CA of an existing fleet, to create another cluster of it
/// (clients pin one fleet key, so every cluster of a fleet shares them).
pub struct FleetMaterial {
    secrets: FleetSecrets,
    ca: CertAndKey,
}

impl std::fmt::Debug for FleetMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetMaterial").finish_non_exhaustive()
    }
}

impl FleetMaterial {
    /// Reads the `fleet/` folder of a cluster made by [`init_cluster`].
    pub fn from_cluster(cluster_dir: &Path) -> anyhow::Result<Self> {
        let dir = cluster_dir.join(layout::CA_DIR);
        Ok(Self {
            secrets: FleetSecrets::load(
                &dir.join(files::SECRETS),
                KeyProtection::default().open(&dir, false)?.as_ref(),
            )?,
            ca: pki::read(&dir, files::CLUSTER_CA)?,
        })
    }
}

/// Creates a new cluster in `out`: fleet secrets and a cluster CA (new, or
/// those of `fleet`), and for each member a folder `replica-<id>` with the
/// secrets (0600), the CA certificate, its own certificate (valid for
/// `names` and the replica role name) and its config; plus `gateway/` with a
/// gateway client certificate and `fleet/` with the CA key. Refuses to touch
/// a folder that already holds a cluster.
pub fn init_cluster(
    out: &Path,
    fleet_id: &str,
    members: &[Member],
    names: &[&str],
    max_attempts: u32,
    fleet: Option<FleetMaterial>,
    key_protection: &KeyProtection,
) -> anyhow::Result<ClusterInit> {
    anyhow::ensure!(!members.is_empty(), "a cluster needs at least one replica");
    if out.join(files::FLEET_PUBLIC).exists() {
        anyhow::bail!(
            "{} already holds a cluster; refusing to overwrite its secrets",
            out.display()
        );
    }
    std::fs::create_dir_all(out)?;
    let (secrets, ca) = match fleet {
        Some(f) => (f.secrets, f.ca),
        None => (
            FleetSecrets::generate(fleet_id),
            pki::new_ca(&format!("bkv vault cluster CA {fleet_id}"))?,
        ),
    };
    let ca_dir = out.join(layout::CA_DIR);
    service_kit::files::create_private_dir(&ca_dir)?;
    pki::write(&ca_dir, files::CLUSTER_CA, &ca)?;
    // The fleet folder's copy is sealed by a software key of its own.
    secrets.save(
        &ca_dir.join(files::SECRETS),
        KeyProtection::default().open(&ca_dir, true)?.as_ref(),
    )?;
    let public = FleetPublic {
        fleet_id: secrets.fleet_id.clone(),
        fleet_public_key: hex::encode(secrets.public_key()),
    };
    let mut cert_names: Vec<&str> = names.to_vec();
    cert_names.push(pki::REPLICA_ROLE_NAME);
    let cluster_id = hex::encode(rand::random::<[u8; 8]>());
    let mut replicas = Vec::new();
    for m in members {
        let dir = out.join(layout::replica_dir(m.id));
        service_kit::files::create_private_dir(&dir)?;
        let key_protection = &key_protection.for_replica(m.id);
        secrets.save(
            &dir.join(files::SECRETS),
            key_protection.open(&dir, true)?.as_ref(),
        )?;
        service_kit::files::write_public(
            &dir.join(format!("{}.pem", files::CLUSTER_CA)),
            ca.cert_pem.as_bytes(),
        )?;
        let cert = pki::issue(
            &ca,
            &format!("bkv vault replica {}", m.id),
            &cert_names,
            Usage::Peer,
        )?;
        pki::write(&dir, files::REPLICA_CERT, &cert)?;
        write_fleet_public(&public, &dir)?;
        let cfg = VaultConfig {
            node_id: m.id,
            listen: m.serve,
            peer_listen: m.peer,
            state_dir: dir.clone(),
            data_dir: files::DATA_DIR.into(),
            max_attempts,
            admin_listen: m.admin,
            members: members.to_vec(),
            cluster_id: Some(cluster_id.clone()),
            join: false,
            raft: Default::default(),
            key_protection: key_protection.clone(),
            ..Default::default()
        };
        cfg.save()?;
        replicas.push(cfg);
    }
    issue_gateway_cert(
        &ca_dir,
        &out.join(layout::GATEWAY_DIR),
        layout::GATEWAY_CERT,
    )?;
    write_fleet_public(&public, out)?;
    Ok(ClusterInit { public, replicas })
}

/// Creates the folder of a replica that will join the existing cluster in
/// `cluster_dir` (made by [`init_cluster`], whose `fleet/` folder issues
/// its certificate and holds the fleet secrets): `replica-<id>/` with the
/// secrets sealed under `key_protection`, a certificate, and a config that
/// copies `like` (an existing member's config: settings and the members to
/// ask) with `join = true`. The replica serves once a member has added it
/// (`vault-backend add-learner`, then `promote`). Refuses an existing
/// folder, and an id already in `like`'s member table.
pub fn new_replica(
    cluster_dir: &Path,
    like: &VaultConfig,
    member: Member,
    names: &[&str],
    key_protection: &KeyProtection,
) -> anyhow::Result<VaultConfig> {
    let dir = cluster_dir.join(layout::replica_dir(member.id));
    anyhow::ensure!(
        !dir.exists(),
        "{} exists; a new replica gets a new id",
        dir.display()
    );
    anyhow::ensure!(
        like.members.iter().all(|m| m.id != member.id),
        "replica id {} is in the cluster's member table already; ids are never reused",
        member.id
    );
    let fleet = FleetMaterial::from_cluster(cluster_dir)?;
    service_kit::files::create_private_dir(&dir)?;
    let key_protection = &key_protection.for_replica(member.id);
    fleet.secrets.save(
        &dir.join(files::SECRETS),
        key_protection.open(&dir, true)?.as_ref(),
    )?;
    service_kit::files::write_public(
        &dir.join(format!("{}.pem", files::CLUSTER_CA)),
        fleet.ca.cert_pem.as_bytes(),
    )?;
    let mut cert_names: Vec<&str> = names.to_vec();
    cert_names.push(pki::REPLICA_ROLE_NAME);
    let cert = pki::issue(
        &fleet.ca,
        &format!("bkv vault replica {}", member.id),
        &cert_names,
        Usage::Peer,
    )?;
    pki::write(&dir, files::REPLICA_CERT, &cert)?;
    write_fleet_public(
        &FleetPublic {
            fleet_id: fleet.secrets.fleet_id.clone(),
            fleet_public_key: hex::encode(fleet.secrets.public_key()),
        },
        &dir,
    )?;
    let mut members = like.members.clone();
    members.push(member.clone());
    let cfg = VaultConfig {
        node_id: member.id,
        listen: member.serve,
        peer_listen: member.peer,
        state_dir: dir,
        admin_listen: member.admin,
        members,
        join: true,
        key_protection: key_protection.clone(),
        ..like.clone()
    };
    cfg.save()?;
    Ok(cfg)
}

/// A client endpoint for operator requests on the peer link, with the
/// identity (replica certificate) of the replica whose config is `cfg`.
pub fn operator_endpoint(cfg: &VaultConfig) -> anyhow::Result<quinn::Endpoint> {
    let dir = &cfg.state_dir;
    let ca_path = dir.join(format!("{}.pem", files::CLUSTER_CA));
    let ca_pem = std::fs::read_to_string(&ca_path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca_path.display()))?;
    let identity: CertAndKey = pki::read(dir, files::REPLICA_CERT)?;
    let bind: SocketAddr = if cfg.peer_listen.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()?;
    let mut ep = quinn::Endpoint::client(bind)?;
    ep.set_default_client_config(crate::raft::network::client_config(&identity, &ca_pem)?);
    Ok(ep)
}

/// Issues a gateway client certificate from the cluster CA in `ca_dir`,
/// written to `out_dir/<stem>.pem|.key` together with the CA certificate.
pub fn issue_gateway_cert(ca_dir: &Path, out_dir: &Path, stem: &str) -> anyhow::Result<()> {
    let ca = pki::read(ca_dir, files::CLUSTER_CA)?;
    std::fs::create_dir_all(out_dir)?;
    let cert = pki::issue(&ca, "bkv gateway", &["gateway.bkv.internal"], Usage::Client)?;
    pki::write(out_dir, stem, &cert)?;
    service_kit::files::write_public(
        &out_dir.join(layout::GATEWAY_CA_FILE),
        ca.cert_pem.as_bytes(),
    )?;
    Ok(())
}
