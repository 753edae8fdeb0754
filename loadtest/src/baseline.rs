//! Baselines measured in the same run as the system, so the figures can be
//! quoted as ratios on a noisy machine:
//!
//! - a bare quinn accept loop with the gateway's own QUIC/TLS configuration
//!   (handshake, then nothing), against which the gateway's connect + Noise
//!   rate is compared;
//! - the vault asked directly over the gateway's own vault link (the
//!   gateway's certificate, leader discovery and all), against which a
//!   request relayed through the gateway is compared;
//! - the vault's leader asked over one bare mutual-TLS QUIC connection (a
//!   stream per request, no relay stack, no retry, no health), against
//!   which the vault link's tower stack is compared.
//!
//! Embedded stacks only: both need the gateway's keys.
//!
//! Must never: share state with the system under test beyond its keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::keys::GatewayKeys;
use gateway::vault_client::{ClusterConfig, VaultClusters};
use protocol_spec::internal::{vault_response, VaultRequest, VaultResponse};
use protocol_spec::msg::{self, request::Kind as Req};
use protocol_spec::stream_io::{read_message, write_message};

use crate::report::Recorder;
use crate::run::{self, World};

/// Connections per second a bare quinn server (the gateway's TLS and QUIC
/// settings, no Noise, no vault) accepts from `concurrency` closed-loop
/// clients on `world`'s sockets for `duration`.
pub async fn bare_quinn(
    world: &World,
    keys: &GatewayKeys,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Recorder)> {
    let server = quinn::Endpoint::server(
        gateway::server::server_config(keys)?,
        "127.0.0.1:0".parse()?,
    )?;
    let addr = server.local_addr()?;
    let acceptor = {
        let server = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        conn.closed().await;
                    }
                });
            }
        })
    };
    let mut profile = world.target.profile.clone();
    profile.gateway_addr = addr;
    let endpoints = run::endpoints(&profile, world.endpoints.len())?;
    let rec = Arc::new(Recorder::default());
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let (ep, rec, name) = (
            endpoints[w % endpoints.len()].clone(),
            rec.clone(),
            profile.gateway_server_name.clone(),
        );
        tasks.spawn(async move {
            while Instant::now() < until {
                let t = Instant::now();
                let conn = match ep.connect(addr, &name) {
                    Ok(c) => c.await,
                    Err(_) => {
                        rec.fail("connect");
                        continue;
                    }
                };
                match conn {
                    Ok(c) => {
                        rec.record("connect", t.elapsed());
                        rec.ok();
                        c.close(0u32.into(), b"bye");
                    }
                    Err(_) => rec.fail("connect"),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let rate = rec.completed() as f64 / started.elapsed().as_secs_f64();
    acceptor.abort();
    server.close(0u32.into(), b"done");
    let rec = Arc::try_unwrap(rec).unwrap_or_default();
    Ok((rate, rec))
}

/// `status` requests: relayed through the gateway on each phone's
/// connection, then sent straight to the vault cluster over a vault link
/// like the gateway's; `concurrency` in flight each way for `duration`.
/// Returns (through the gateway, direct over the vault link, bare).
pub async fn relay(
    world: &Arc<World>,
    keys: &GatewayKeys,
    clusters: Vec<ClusterConfig>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Recorder, Recorder, Recorder)> {
    let via = Arc::new(Recorder::default());
    let status = msg::Request {
        kind: Some(Req::Status(msg::StatusRequest {})),
    };
    // Through the gateway: persistent authenticated connections.
    let mut conns = Vec::new();
    for i in 0..concurrency.max(1) {
        let opts = client::connection::ConnectOptions {
            endpoint: Some(world.endpoints[i % world.endpoints.len()].clone()),
            ..Default::default()
        };
        conns.push(Arc::new(
            client::GatewayConnection::connect_with(&world.target.profile, world.device(i), &opts)
                .await?,
        ));
    }
    let until = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in &conns {
        let (c, rec, req) = (c.clone(), via.clone(), status.clone());
        tasks.spawn(async move {
            while Instant::now() < until {
                let t = Instant::now();
                match c.request(&req).await {
                    Ok(_) => {
                        rec.record("status", t.elapsed());
                        rec.ok();
                    }
                    Err(_) => rec.fail("status"),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    for c in conns {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    // Direct: the gateway's own vault link code and certificate.
    let direct = Arc::new(Recorder::default());
    let link = Arc::new(VaultClusters::new(
        &clusters,
        &keys.vault_client,
        &keys.vault_ca_pem,
        gateway::relay::RelayConfig::default(),
    )?);
    let until = Instant::now() + duration;
    for i in 0..concurrency.max(1) {
        let (link, rec, req) = (link.clone(), direct.clone(), status.clone());
        let account = world.account(i);
        tasks.spawn(async move {
            while Instant::now() < until {
                let t = Instant::now();
                let r = link.call(&account, &[], req.clone()).await;
                match r.kind {
                    Some(msg::response::Kind::Status(_)) => {
                        rec.record("status", t.elapsed());
                        rec.ok();
                    }
                    Some(msg::response::Kind::Error(e)) => rec.fail(&format!("{:?}", e.code())),
                    _ => rec.fail("unexpected"),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // Bare: the leader the link found, one mutual-TLS connection, a stream
    // per request and nothing else.
    let first = world.account(0);
    let leader = link
        .cluster_for(&first)
        .cached_leader()
        .ok_or_else(|| anyhow::anyhow!("the vault link found no leader"))?;
    let server_name = clusters
        .iter()
        .find(|c| c.replicas.contains(&leader))
        .map_or_else(
            || service_kit::pki::REPLICA_ROLE_NAME.to_owned(),
            |c| c.server_name.clone(),
        );
    link.close();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(gateway::vault_client::client_config(
        &keys.vault_client,
        &keys.vault_ca_pem,
    )?);
    let conn = ep.connect(leader, &server_name)?.await?;
    let bare = Arc::new(Recorder::default());
    let until = Instant::now() + duration;
    for i in 0..concurrency.max(1) {
        let (conn, rec) = (conn.clone(), bare.clone());
        let req = VaultRequest {
            account_id: world.account(i),
            request: Some(status.clone()),
            ..Default::default()
        };
        tasks.spawn(async move {
            while Instant::now() < until {
                let t = Instant::now();
                let out = async {
                    let (mut send, mut recv) = conn.open_bi().await.ok()?;
                    write_message(&mut send, &req).await.ok()?;
                    let _ = send.finish();
                    read_message::<VaultResponse, _>(&mut recv).await.ok()
                }
                .await;
                match out.and_then(|r| r.kind) {
                    Some(vault_response::Kind::Response(msg::Response {
                        kind: Some(msg::response::Kind::Status(_)),
                    })) => {
                        rec.record("status", t.elapsed());
                        rec.ok();
                    }
                    _ => rec.fail("bare"),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    Ok((
        Arc::try_unwrap(via).unwrap_or_default(),
        Arc::try_unwrap(direct).unwrap_or_default(),
        Arc::try_unwrap(bare).unwrap_or_default(),
    ))
}
