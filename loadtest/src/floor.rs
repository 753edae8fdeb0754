//! The crypto floor: CPU time of the cryptography one session cannot avoid,
//! measured on this machine with the same libraries and parameters the
//! system uses, each side timed separately and in one thread (in memory, no
//! I/O, so wall time is CPU time).
//!
//! Per recover session the server side does: a TLS 1.3 full handshake
//! (aws-lc-rs, ECDSA P-256 certificate, X25519MLKEM768 key exchange; also
//! timed with X25519 alone, to give the hybrid's cost), the Noise IK responder (snow) with the device
//! credential's Ed25519 signature check, and the OPAQUE server login (start
//! and finish). The simulated client does the other halves, with the cheap
//! load-test KSF. Noise is measured with both X25519 backends (aws-lc-rs,
//! the default, and snow's curve25519-dalek). Must never: include I/O, scheduling or our own code paths
//! beyond what the libraries need, or the floor would flatter the system.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, RegistrationRequest, RegistrationResponse, RegistrationUpload, ServerLogin,
    ServerLoginParameters, ServerRegistration, ServerSetup,
};
use protocol_spec::credential::{self, CredentialVerifier};
use protocol_spec::handshake::{Initiator, InitiatorStep, Responder, ResponderStep};
use protocol_spec::noise_resolver::DhBackend;
use protocol_spec::opaque_profile::{self as op, Suite};
use rand::rngs::OsRng;
use serde::Serialize;

/// One operation's cost on each side, in microseconds per run (median of
/// batches).
#[derive(Debug, Clone, Serialize)]
pub struct OpCost {
    /// Server side.
    pub server_us: f64,
    /// Client side.
    pub client_us: f64,
}

/// The floor report (`loadtest floor --report-json`).
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Server CPU per full recover session (TLS + Noise IK + OPAQUE login).
    pub server_us_per_session: f64,
    /// Simulated-client CPU per full recover session.
    pub client_us_per_session: f64,
    /// The same session with snow's default X25519 (curve25519-dalek)
    /// instead of aws-lc-rs.
    pub session_with_snow_default_dh: OpCost,
    /// Per-operation figures.
    pub operations: std::collections::BTreeMap<String, OpCost>,
    /// Cores on this machine.
    pub cores: usize,
}

/// Times `f` `n` times per batch over 5 batches; returns the median of the
/// per-run means of (server, client).
fn measure(n: u32, mut f: impl FnMut() -> (Duration, Duration)) -> OpCost {
    // Warm-up.
    for _ in 0..n.min(20) {
        f();
    }
    let mut s = Vec::new();
    let mut c = Vec::new();
    for _ in 0..5 {
        let (mut ss, mut cc) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..n {
            let (a, b) = f();
            ss += a;
            cc += b;
        }
        s.push(ss.as_secs_f64() * 1e6 / f64::from(n));
        c.push(cc.as_secs_f64() * 1e6 / f64::from(n));
    }
    s.sort_by(f64::total_cmp);
    c.sort_by(f64::total_cmp);
    OpCost {
        server_us: s[2],
        client_us: c[2],
    }
}

/// Moves what `from` has to send into `to`, charging each side's CPU time
/// to its own clock.
fn flight<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    from_time: &mut Duration,
    to: &mut rustls::ConnectionCommon<B>,
    to_time: &mut Duration,
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    buf.clear();
    timed(from_time, || from.write_tls(buf))?;
    if !buf.is_empty() {
        timed(to_time, || -> anyhow::Result<()> {
            to.read_tls(&mut buf.as_slice())?;
            to.process_new_packets()?;
            Ok(())
        })?;
    }
    Ok(())
}

fn timed<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    *acc += t.elapsed();
    out
}

/// TLS 1.3 full handshake, in memory, as quinn configures it (aws-lc-rs,
/// P-256 certificate), both sides on `provider`; fails unless the key
/// exchange agreed is `group`, so the figure is the group's.
fn tls_handshake(
    provider: Arc<rustls::crypto::CryptoProvider>,
    group: rustls::NamedGroup,
) -> anyhow::Result<OpCost> {
    let ca = service_kit::pki::new_ca("floor CA")?;
    let leaf = service_kit::pki::issue(
        &ca,
        "floor",
        &["localhost"],
        service_kit::pki::Usage::Server,
    )?;
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                service_kit::pki::certs(&leaf.cert_pem)?,
                service_kit::pki::key(&leaf.key_pem)?,
            )?,
    );
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(service_kit::pki::root_store(&ca.cert_pem)?)
        .with_no_client_auth();
    // A new phone has no session to resume; neither do the load generator's.
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);
    let name: rustls_pki_types::ServerName<'static> = "localhost".try_into()?;
    let mut failure = None;
    let cost = measure(200, || {
        let (mut st, mut ct) = (Duration::ZERO, Duration::ZERO);
        let mut run = || -> anyhow::Result<(Duration, Duration)> {
            let mut c = timed(&mut ct, || {
                rustls::ClientConnection::new(client.clone(), name.clone())
            })?;
            let mut s = timed(&mut st, || rustls::ServerConnection::new(server.clone()))?;
            let mut buf = Vec::new();
            while c.is_handshaking() || s.is_handshaking() {
                flight(&mut c, &mut ct, &mut s, &mut st, &mut buf)?;
                flight(&mut s, &mut st, &mut c, &mut ct, &mut buf)?;
            }
            let agreed = c.negotiated_key_exchange_group().map(|g| g.name());
            anyhow::ensure!(
                agreed == Some(group),
                "the TLS handshake agreed on {agreed:?}, not {group:?}"
            );
            Ok((st, ct))
        };
        match run() {
            Ok(x) => x,
            Err(e) => {
                failure = Some(e);
                (Duration::ZERO, Duration::ZERO)
            }
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(cost),
    }
}

/// The Noise device handshake (IK or XX) including the credential check,
/// with X25519 from `backend`.
fn noise(force_xx: bool, backend: DhBackend) -> anyhow::Result<OpCost> {
    let (sk, pk) = credential::generate_signing_key()?;
    let verifier = CredentialVerifier::new(&pk)?;
    let (gw_private, gw_public) = protocol_spec::noise::generate_static_keypair()?;
    let device = client::DeviceIdentity::generate()?;
    let token = credential::mint(
        &sk,
        "floor-account",
        &device.static_public,
        Duration::from_secs(3600),
    )?;
    let mut failure = None;
    let cost = measure(200, || {
        let (mut st, mut ct) = (Duration::ZERO, Duration::ZERO);
        let mut run = || -> anyhow::Result<()> {
            let exporter = [7u8; protocol_spec::noise::EXPORTER_LEN];
            let mut i = Initiator::new(
                *device.static_private,
                Some(gw_public),
                force_xx,
                exporter,
                &token,
                "floor",
            )
            .with_dh_backend(backend);
            let mut r = Responder::new(gw_private, exporter, &verifier).with_dh_backend(backend);
            // Frames come with their length header; handlers take bodies.
            let body = |f: Vec<u8>| f[protocol_spec::framing::HEADER_LEN..].to_vec();
            let mut to_server = vec![body(timed(&mut ct, || i.start())?)];
            loop {
                let mut to_client = Vec::new();
                let mut done = false;
                for f in to_server.drain(..) {
                    match timed(&mut st, || r.on_frame(&f))? {
                        ResponderStep::Send(x) => to_client.push(body(x)),
                        ResponderStep::Finished(xs, outcome) => {
                            outcome?;
                            to_client.extend(xs.into_iter().map(body));
                            done = true;
                        }
                    }
                }
                for f in to_client {
                    match timed(&mut ct, || i.on_frame(&f))? {
                        InitiatorStep::Send(x) => to_server.push(body(x)),
                        InitiatorStep::Wait => {}
                        InitiatorStep::Done { .. } => return Ok(()),
                    }
                }
                anyhow::ensure!(!(done && to_server.is_empty()), "handshake stalled");
            }
        };
        if let Err(e) = run() {
            failure = Some(e);
        }
        (st, ct)
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(cost),
    }
}

/// OPAQUE registration and login, with the load generator's cheap KSF.
fn opaque() -> anyhow::Result<(OpCost, OpCost)> {
    let setup = ServerSetup::<Suite>::new(&mut OsRng);
    let ksf = op::cheap_ksf_for_load_tests();
    let (account, fleet) = ("floor-account", "floor-fleet");
    let cred_id = op::credential_identifier(fleet, account, &[1; 16]);
    let pw = b"correct horse battery staple";
    let mut file = None;
    let mut failure: Option<anyhow::Error> = None;
    let register = measure(50, || {
        let (mut st, mut ct) = (Duration::ZERO, Duration::ZERO);
        let mut run = || -> anyhow::Result<()> {
            let start = timed(&mut ct, || {
                ClientRegistration::<Suite>::start(&mut OsRng, pw)
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let req = RegistrationRequest::<Suite>::deserialize(&start.message.serialize())
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let resp = timed(&mut st, || {
                ServerRegistration::<Suite>::start(&setup, req, &cred_id)
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let resp = RegistrationResponse::<Suite>::deserialize(&resp.message.serialize())
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let fin = timed(&mut ct, || {
                start.state.finish(
                    &mut OsRng,
                    pw,
                    resp,
                    ClientRegistrationFinishParameters::new(
                        op::identifiers(account, fleet),
                        Some(&ksf),
                    ),
                )
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let upload = RegistrationUpload::<Suite>::deserialize(&fin.message.serialize())
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            file = Some(timed(&mut st, || {
                ServerRegistration::<Suite>::finish(upload)
            }));
            Ok(())
        };
        if let Err(e) = run() {
            failure = Some(e);
        }
        (st, ct)
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let file = file.ok_or_else(|| anyhow::anyhow!("no registration"))?;
    let mut failure: Option<anyhow::Error> = None;
    let login = measure(50, || {
        let (mut st, mut ct) = (Duration::ZERO, Duration::ZERO);
        let mut run = || -> anyhow::Result<()> {
            let start = timed(&mut ct, || ClientLogin::<Suite>::start(&mut OsRng, pw))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let req = CredentialRequest::<Suite>::deserialize(&start.message.serialize())
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let sl = timed(&mut st, || {
                ServerLogin::start(
                    &mut OsRng,
                    &setup,
                    Some(file.clone()),
                    req,
                    &cred_id,
                    ServerLoginParameters {
                        context: None,
                        identifiers: op::identifiers(account, fleet),
                    },
                )
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let resp = CredentialResponse::<Suite>::deserialize(&sl.message.serialize())
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let fin = timed(&mut ct, || {
                start.state.finish(
                    &mut OsRng,
                    pw,
                    resp,
                    ClientLoginFinishParameters::new(
                        None,
                        op::identifiers(account, fleet),
                        Some(&ksf),
                    ),
                )
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let finalization =
                CredentialFinalization::<Suite>::deserialize(&fin.message.serialize())
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            timed(&mut st, || {
                sl.state.finish(
                    finalization,
                    ServerLoginParameters {
                        context: None,
                        identifiers: op::identifiers(account, fleet),
                    },
                )
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(())
        };
        if let Err(e) = run() {
            failure = Some(e);
        }
        (st, ct)
    });
    match failure {
        Some(e) => Err(e),
        None => Ok((register, login)),
    }
}

/// Measures every operation and sums a recover session.
pub fn measure_floor() -> anyhow::Result<Floor> {
    let tls = tls_handshake(
        service_kit::tls::crypto_provider(),
        rustls::NamedGroup::X25519MLKEM768,
    )?;
    let tls_x25519 = tls_handshake(
        service_kit::tls::classical_provider(),
        rustls::NamedGroup::X25519,
    )?;
    let ik = noise(false, DhBackend::AwsLc)?;
    let xx = noise(true, DhBackend::AwsLc)?;
    let ik_snow = noise(false, DhBackend::SnowDefault)?;
    let xx_snow = noise(true, DhBackend::SnowDefault)?;
    let (register, login) = opaque()?;
    let server = tls.server_us + ik.server_us + login.server_us;
    let client = tls.client_us + ik.client_us + login.client_us;
    let with_snow_default_dh = OpCost {
        server_us: tls.server_us + ik_snow.server_us + login.server_us,
        client_us: tls.client_us + ik_snow.client_us + login.client_us,
    };
    let mut operations = std::collections::BTreeMap::new();
    operations.insert("tls13_handshake".into(), tls);
    operations.insert("tls13_handshake_x25519_only".into(), tls_x25519);
    operations.insert("noise_ik".into(), ik);
    operations.insert("noise_xx".into(), xx);
    operations.insert("noise_ik_snow_default_dh".into(), ik_snow);
    operations.insert("noise_xx_snow_default_dh".into(), xx_snow);
    operations.insert("opaque_register".into(), register);
    operations.insert("opaque_login".into(), login);
    Ok(Floor {
        server_us_per_session: server,
        client_us_per_session: client,
        session_with_snow_default_dh: with_snow_default_dh,
        operations,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}
