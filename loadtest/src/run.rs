//! Driving a gateway with simulated phones: the scenarios, the open- and
//! closed-loop schedulers, and the live progress line.
//!
//! Every phone is a real client: its own X25519 device key and credential,
//! a real QUIC connection (from one of a few shared UDP sockets) and a real
//! Noise handshake, then real OPAQUE. Phones use the cheap client KSF
//! (`opaque_profile::cheap_ksf_for_load_tests`): the KSF runs only on the
//! phone, so this changes nothing the gateway or vault computes, and lets one
//! machine play thousands of phones.
//!
//! Open loop: sessions start at `--rate` per second whatever happens, and
//! latency counts from each session's *intended* start, so a stalled server
//! cannot hide its queue (no coordinated omission). Closed loop: `--concurrency`
//! workers each run one session after another.
//!
//! Must never: reuse one phone's credential for another account, or retry a
//! failed session (a failure is counted, not hidden).

use std::sync::Arc;
use std::time::{Duration, Instant};

use client::connection::{ConnectOptions, RequestObserver};
use client::{
    BackupKey, ClientError, ClientProfile, DeviceIdentity, GatewayConnection, VaultClient,
};
use protocol_spec::opaque_profile::cheap_ksf_for_load_tests;
use rand::Rng;

use crate::report::Recorder;
use crate::target::Target;

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// New QUIC connection + Noise authentication, then close.
    Connect,
    /// A new account's phone: connect, deposit a key, close. Each session
    /// is a fresh account with a freshly minted credential (a replacement
    /// of an existing deposit by a device alone waits 7 days, SPEC.md 5.4,
    /// so repeated deposits of one account are not a workload).
    Register,
    /// Connect, recover the key with the right password (OPAQUE login), close.
    Recover,
    /// Connect, then one of: recover (60%), wrong password (10%), status
    /// (20%), change password (10%, to the same one); close.
    Mixed,
    /// Open N authenticated connections and hold them (keep-alives), then
    /// report how many stayed up and the gateway's memory.
    Idle,
}

impl Scenario {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Register => "register",
            Scenario::Recover => "recover",
            Scenario::Mixed => "mixed",
            Scenario::Idle => "idle",
        }
    }
}

/// A simulated phone.
pub struct Phone {
    account: String,
    device: DeviceIdentity,
    password: Vec<u8>,
}

/// Run parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The workload to run.
    pub scenario: Scenario,
    /// Open loop: sessions per second.
    pub rate: Option<f64>,
    /// Closed loop: sessions in flight.
    pub concurrency: usize,
    /// How long to generate load (idle: how long to hold).
    pub duration: Duration,
    /// Distinct phones (accounts).
    pub phones: usize,
    /// Client UDP sockets shared by all phones.
    pub sockets: usize,
    /// Idle: connections to open.
    pub connections: usize,
    /// Show the live progress line.
    pub progress: bool,
}

/// Error code of a failed session, for the report: the client library's
/// stable code (`ClientErrorCode`, the names apps see).
pub fn code(e: &ClientError) -> &'static str {
    e.code().as_str()
}

/// Shared client endpoints (few UDP sockets for many connections), with
/// large socket buffers so bursts of handshakes are not dropped.
pub fn endpoints(profile: &ClientProfile, n: usize) -> anyhow::Result<Vec<quinn::Endpoint>> {
    let mut tls = client::connection::rustls_config(profile)?;
    // Each simulated phone is a new phone: no session to resume.
    tls.resumption = rustls::client::Resumption::disabled();
    let cfg = client::connection::quinn_config(tls)?;
    (0..n.max(1))
        .map(|_| {
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(profile.gateway_addr),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            let _ = sock.set_recv_buffer_size(8 << 20);
            let _ = sock.set_send_buffer_size(8 << 20);
            let bind: std::net::SocketAddr = if profile.gateway_addr.is_ipv6() {
                "[::]:0".parse()?
            } else {
                "0.0.0.0:0".parse()?
            };
            sock.bind(&bind.into())?;
            let mut ep = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                sock.into(),
                Arc::new(quinn::TokioRuntime),
            )?;
            ep.set_default_client_config(cfg.clone());
            Ok(ep)
        })
        .collect()
}

/// Everything a session needs.
pub struct World {
    /// The target.
    pub target: Arc<Target>,
    /// The simulated phones (credentials and accounts).
    pub phones: Arc<Vec<Phone>>,
    /// Shared endpoints.
    pub endpoints: Vec<quinn::Endpoint>,
    /// Where every latency and error is recorded.
    pub rec: Arc<Recorder>,
    /// New accounts made by `register` sessions so far.
    fresh: Arc<std::sync::atomic::AtomicU64>,
}

impl World {
    /// Enrolls `plan.phones` phones; for scenarios that log in, registers
    /// each first (not measured).
    pub async fn prepare(target: Target, plan: &Plan) -> anyhow::Result<Arc<Self>> {
        // A label that keeps runs' accounts apart, not a secret.
        #[allow(clippy::disallowed_methods)]
        let run_id: u32 = rand::thread_rng().gen();
        let phones = (0..plan.phones)
            .map(|i| {
                let account = format!("load-{run_id:08x}-{i}");
                Ok(Phone {
                    device: target.enroll(&account)?,
                    account,
                    password: format!("password-{i}").into_bytes(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let endpoints = endpoints(&target.profile, plan.sockets)?;
        let world = Arc::new(Self {
            target: Arc::new(target),
            phones: Arc::new(phones),
            endpoints,
            rec: Arc::new(Recorder::default()),
            fresh: Default::default(),
        });
        if matches!(plan.scenario, Scenario::Recover | Scenario::Mixed) {
            let mut tasks = tokio::task::JoinSet::new();
            let step = 32.min(world.phones.len().max(1));
            for w in 0..step {
                let world = world.clone();
                tasks.spawn(async move {
                    let mut i = w;
                    while i < world.phones.len() {
                        world.register_unmeasured(i).await?;
                        i += step;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(r) = tasks.join_next().await {
                r??;
            }
        }
        Ok(world)
    }

    /// Phone `i`'s device (modulo the number of phones).
    pub fn device(&self, i: usize) -> &DeviceIdentity {
        &self.phones[i % self.phones.len()].device
    }

    /// Phone `i`'s account (modulo the number of phones).
    pub fn account(&self, i: usize) -> String {
        self.phones[i % self.phones.len()].account.clone()
    }

    /// The same target, phones and sockets with a new, empty recorder (to
    /// run several measurements on one prepared world).
    pub fn fresh_recorder(other: &World) -> World {
        World {
            target: other.target.clone(),
            phones: other.phones.clone(),
            endpoints: other.endpoints.clone(),
            rec: Arc::new(Recorder::default()),
            fresh: other.fresh.clone(),
        }
    }

    async fn register_unmeasured(&self, i: usize) -> anyhow::Result<()> {
        let p = &self.phones[i];
        let opts = ConnectOptions {
            endpoint: Some(self.endpoints[i % self.endpoints.len()].clone()),
            ..Default::default()
        };
        let conn = GatewayConnection::connect_with(&self.target.profile, &p.device, &opts).await?;
        VaultClient::new(&conn, &self.target.profile)?
            .with_ksf(cheap_ksf_for_load_tests())
            .register(&p.password, &BackupKey::generate(), true)
            .await?;
        conn.close().await;
        Ok(())
    }

    /// Connects phone `i`, recording the connect and auth phases and every
    /// later request's latency.
    async fn connect(&self, i: usize) -> Result<GatewayConnection, ClientError> {
        self.connect_device(i, &self.phones[i].device).await
    }

    /// Connects `device` on phone `i`'s socket, recording as [`connect`](Self::connect).
    async fn connect_device(
        &self,
        i: usize,
        device: &DeviceIdentity,
    ) -> Result<GatewayConnection, ClientError> {
        let rec = self.rec.clone();
        let observer: RequestObserver = Arc::new(move |kind, d| rec.record(kind, d));
        let opts = ConnectOptions {
            endpoint: Some(self.endpoints[i % self.endpoints.len()].clone()),
            observer: Some(observer),
            ..Default::default()
        };
        let conn = GatewayConnection::connect_with(&self.target.profile, device, &opts).await?;
        let t = conn.handshake_timing();
        self.rec.record("connect", t.quic);
        self.rec.record("auth", t.auth);
        self.rec.opened();
        Ok(conn)
    }

    /// One session of `scenario` by phone `i`, timed from `intended`.
    pub async fn session(&self, scenario: Scenario, i: usize, intended: Instant) {
        let out = self.session_inner(scenario, i).await;
        match out {
            Ok(()) => {
                self.rec.record("session", intended.elapsed());
                self.rec.ok();
            }
            Err(e) => self.rec.fail(code(&e)),
        }
    }

    async fn session_inner(&self, scenario: Scenario, i: usize) -> Result<(), ClientError> {
        if scenario == Scenario::Register {
            return self.first_deposit(i).await;
        }
        let conn = self.connect(i).await?;
        let p = &self.phones[i];
        let v = VaultClient::new(&conn, &self.target.profile)?.with_ksf(cheap_ksf_for_load_tests());
        let result = match scenario {
            Scenario::Connect | Scenario::Idle => Ok(()),
            Scenario::Register => unreachable!("handled above"),
            Scenario::Recover => v.recover(&p.password).await.map(|_| ()),
            Scenario::Mixed => {
                // The workload mix, not a secret.
                #[allow(clippy::disallowed_methods)]
                let roll: u32 = rand::thread_rng().gen_range(0..100);
                match roll {
                    // The vault paces guesses (DESIGN.md invariant 9): a
                    // phone that drew several wrong guesses in a row is
                    // told to wait, which is the product working.
                    0..=59 => match v.recover(&p.password).await {
                        Err(ClientError::Paced { .. }) => Ok(()),
                        other => other.map(|_| ()),
                    },
                    60..=69 => match v.recover(b"a wrong guess").await {
                        // The expected answers to a wrong guess.
                        Err(ClientError::WrongPassword { .. } | ClientError::Paced { .. }) => {
                            Ok(())
                        }
                        Ok(_) => Err(ClientError::Protocol("a wrong password worked".into())),
                        Err(e) => Err(e),
                    },
                    70..=89 => v.status().await.map(|_| ()),
                    _ => v.change_password(&p.password, &p.password).await,
                }
            }
        };
        conn.close().await;
        self.rec.closed();
        result
    }

    /// A first deposit by a new account's phone (its credential minted
    /// here, as the account service would, before the session's clock).
    async fn first_deposit(&self, i: usize) -> Result<(), ClientError> {
        let n = self
            .fresh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let account = format!("{}-new-{n}", self.phones[i % self.phones.len()].account);
        let device = self
            .target
            .enroll(&account)
            .map_err(|e| ClientError::Config(format!("minting a credential: {e}")))?;
        let conn = self.connect_device(i, &device).await?;
        let result = VaultClient::new(&conn, &self.target.profile)?
            .with_ksf(cheap_ksf_for_load_tests())
            .register(b"a new password", &BackupKey::generate(), false)
            .await;
        conn.close().await;
        self.rec.closed();
        result
    }

    /// Idle: opens `n` connections (`in_flight` handshakes at once), holds
    /// them for `hold`, returns how many were still up at the end.
    pub async fn idle(
        self: &Arc<Self>,
        n: usize,
        in_flight: usize,
        hold: Duration,
    ) -> (Vec<GatewayConnection>, usize) {
        let sem = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..n {
            let (world, sem) = (self.clone(), sem.clone());
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await.ok()?;
                match world.connect(c % world.phones.len()).await {
                    Ok(conn) => Some(conn),
                    Err(e) => {
                        world.rec.fail(code(&e));
                        None
                    }
                }
            });
        }
        let mut conns = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(c)) = r {
                conns.push(c);
            }
        }
        tokio::time::sleep(hold).await;
        let up = conns
            .iter()
            .filter(|c| c.quic().close_reason().is_none())
            .count();
        (conns, up)
    }
}

/// Runs the plan's load (not `idle`) and returns the measured duration.
pub async fn drive(world: &Arc<World>, plan: &Plan) -> Duration {
    let started = Instant::now();
    let until = started + plan.duration;
    let bar = progress(plan.progress, world.rec.clone(), started);
    let mut tasks = tokio::task::JoinSet::new();
    let n = world.phones.len().max(1);
    match plan.rate {
        Some(rate) => {
            let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut next = started;
            let mut i = 0usize;
            while next < until {
                tokio::time::sleep_until(next.into()).await;
                let (world, intended, scenario) = (world.clone(), next, plan.scenario);
                tasks.spawn(async move { world.session(scenario, i % n, intended).await });
                // Reap finished sessions so the set does not grow.
                while tasks.try_join_next().is_some() {}
                i += 1;
                next += gap;
            }
        }
        None => {
            for w in 0..plan.concurrency.max(1) {
                let (world, scenario, step) = (world.clone(), plan.scenario, plan.concurrency);
                tasks.spawn(async move {
                    let mut i = w;
                    while Instant::now() < until {
                        world.session(scenario, i % n, Instant::now()).await;
                        i += step;
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Some(b) = bar {
        b.abort();
    }
    started.elapsed()
}

/// The live progress line: rate, errors, session p99.
fn progress(on: bool, rec: Arc<Recorder>, started: Instant) -> Option<tokio::task::JoinHandle<()>> {
    if !on {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            pb.set_message(format!(
                "{:>6.0} s  {:>8.1}/s  done {:>8}  errors {:>6}  open {:>6}  p99 {}",
                secs,
                rec.completed() as f64 / secs,
                rec.completed(),
                rec.failed(),
                rec.open_now(),
                rec.p99_ms("session")
                    .map(|v| format!("{v:.1} ms"))
                    .unwrap_or_else(|| "-".into())
            ));
            pb.tick();
        }
    }))
}
