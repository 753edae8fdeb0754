//! The chaos run and the soak: a 5-replica vault cluster and two gateways,
//! all separate processes, under mixed load from phones (registrations,
//! recovers with the right password, attackers using up deposits from two
//! devices at once), while faults are injected at random (seeded, so a run
//! can be repeated): replicas killed with SIGKILL and SIGTERM (the leader
//! included, two at once), a replica or the leader cut off from its peers
//! ([`crate::netsplit`]), a gateway restarted (SIGTERM or SIGKILL), and one
//! replica's data folder rolled back (it must refuse to start; it is then
//! replaced by a new member as README.md says). Every client operation is
//! recorded with its outcome, and the history is checked afterwards:
//!
//! - no acknowledged registration is lost (its password recovers its key);
//! - per deposit, OPRF evaluations received ≤ the guess limit;
//! - every error a phone saw is a typed, retryable one (or the expected
//!   answer to a wrong guess) and names no internal address;
//! - every replica serves again at the end, and the replicas' rows, read
//!   from their databases after they stopped, agree;
//! - no process panicked.
//!
//! The soak is the same load without faults, longer, with every process's
//! RSS and open files sampled ([`Samples`]).
//!
//! Must never: hide a violation (each is recorded with what happened and
//! fails the run), or wait without bound (every wait has a deadline).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use client::{
    BackupKey, ClientError, ClientProfile, DeviceIdentity, GatewayConnection, VaultClient,
};
use protocol_spec::msg::{self, response::Kind as Resp, ErrorCode};
use protocol_spec::opaque_profile::cheap_ksf_for_load_tests;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vault_backend::account::Pacing;
use vault_backend::config::RaftSettings;
use zeroize::Zeroizing;

use crate::gateway_process::GatewayProcess;
use crate::helpers::{copy_dir, login_start};
use crate::local_stack::{LocalStack, StackOptions};

const CLUSTER: usize = 0;
const RIGHT: &[u8] = b"the right password";
const WRONG: &[u8] = b"an attacker's guess";

/// How to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// How long load runs (faults are injected during all of it but the
    /// last seconds).
    pub duration: Duration,
    /// Inject faults (`false`: the soak).
    pub faults: bool,
    /// Seed of the fault schedule.
    pub seed: u64,
    /// Guess limit of the deposits.
    pub limit: u32,
    /// Sample every process's RSS and open files this often.
    pub sample_every: Duration,
    /// Concurrent attack campaigns (each uses up one deposit at a time
    /// from two devices, three requests in flight each).
    pub campaigns: usize,
    /// Phones recovering with the right password, back to back.
    pub honest: usize,
    /// The replicas' database page cache, MiB (`RaftSettings::cache_mib`;
    /// `None`: the default).
    pub cache_mib: Option<u64>,
}

impl ChaosOptions {
    /// The chaos run: `CHAOS_SECONDS` (default `secs`) and `CHAOS_SEED`
    /// (default: from the clock, printed) from the environment.
    pub fn from_env(secs: u64) -> Self {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Self {
            duration: Duration::from_secs(env("CHAOS_SECONDS").unwrap_or(secs)),
            faults: true,
            seed: env("CHAOS_SEED").unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(1)
            }),
            limit: 10,
            sample_every: Duration::from_secs(10),
            campaigns: 2,
            honest: 3,
            cache_mib: None,
        }
    }
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// Seed of the fault schedule.
    pub seed: u64,
    /// Client operations by (operation, outcome).
    pub ops: BTreeMap<(&'static str, String), u64>,
    /// Faults injected by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Replica and gateway restarts tried / that came back serving.
    pub restarts: (u64, u64),
    /// Rollbacks tried / refused by the replica.
    pub rollbacks: (u64, u64),
    /// Deposits used up after the rolled-back copy was taken that were
    /// usable again after the rollback (must be 0).
    pub extra_guesses: u64,
    /// Registrations acknowledged / unanswered (may or may not have landed).
    pub registrations: (usize, usize),
    /// Acknowledged deposits not attacked that their password recovered
    /// after the run (all of them, or a violation each).
    pub recovered: usize,
    /// Deposits used up after the rolled-back copy, checked still erased.
    pub rollback_checked: usize,
    /// At the end: the term (elections), and the highest snapshot and
    /// purge index of a replica (restarts came after compaction).
    pub term_snapshot_purged: (u64, u64, u64),
    /// Deposits attacked, and the most OPRF evaluations one of them gave.
    pub attacked: (usize, u32),
    /// Accounts whose rows were compared across the replicas' databases.
    pub rows_compared: usize,
    /// Every invariant violation, with what happened.
    pub violations: Vec<String>,
    /// RSS and open files of every process over the run.
    pub samples: Samples,
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {}", self.seed)?;
        let total: u64 = self.faults.values().sum();
        writeln!(f, "faults injected: {total} {:?}", self.faults)?;
        writeln!(
            f,
            "restarts tried / serving again: {} / {}",
            self.restarts.0, self.restarts.1
        )?;
        writeln!(
            f,
            "rollbacks tried / refused: {} / {}; deposits used up since the copy, checked: {}; \
             extra guesses granted: {}",
            self.rollbacks.0, self.rollbacks.1, self.rollback_checked, self.extra_guesses
        )?;
        let (term, snap, purged) = self.term_snapshot_purged;
        writeln!(
            f,
            "at the end: term {term}; snapshot at log index {snap}, log purged to {purged}"
        )?;
        let done: u64 = self
            .ops
            .iter()
            .filter(|((_, o), _)| o == "ok")
            .map(|(_, n)| n)
            .sum();
        let all: u64 = self.ops.values().sum();
        writeln!(f, "operations: {all} ({done} ok)")?;
        for ((op, outcome), n) in &self.ops {
            writeln!(f, "  {op:<14} {outcome:<22} {n}")?;
        }
        writeln!(
            f,
            "registrations acknowledged {} (not attacked: {}, recovered after the run: {}), unanswered {}",
            self.registrations.0,
            self.registrations.0 - self.attacked.0.min(self.registrations.0),
            self.recovered,
            self.registrations.1
        )?;
        writeln!(
            f,
            "deposits attacked {}; most OPRF evaluations of one: {}",
            self.attacked.0, self.attacked.1
        )?;
        writeln!(f, "rows compared across replicas: {}", self.rows_compared)?;
        writeln!(f, "invariant violations: {}", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  VIOLATION {v}")?;
        }
        write!(f, "{}", self.samples)
    }
}

/// RSS, heap and open files of each process, and the size of a replica's
/// database file, sampled over the run.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Per process name, in time order.
    pub series: BTreeMap<String, Vec<Sample>>,
}

/// One process at one time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sample {
    /// Seconds since the run started.
    pub at: u64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// What its allocator has handed out and not had back, KiB
    /// (`process_heap_allocated_bytes`; 0 for the driver, which does not
    /// export it, or when `/metrics` did not answer).
    pub heap_kib: u64,
    /// Open file descriptors.
    pub open_files: u64,
    /// Its database file, KiB (replicas; 0 otherwise).
    pub database_kib: u64,
}

/// What is sampled of one process: its pid, its database file if it has
/// one, and its admin address (for `/metrics`) if it has one.
#[derive(Debug, Clone)]
struct Sampled {
    pid: u32,
    database: Option<std::path::PathBuf>,
    admin: Option<std::net::SocketAddr>,
}

impl Samples {
    /// Reads `/proc/<pid>` of each process, its heap gauge, and the size of
    /// its database.
    async fn take(at: u64, pids: &BTreeMap<String, Sampled>) -> Vec<(String, Sample)> {
        let mut out = Vec::new();
        for (name, p) in pids {
            let Some(rss_kib) = crate::helpers::rss_kib(p.pid) else {
                continue;
            };
            let open_files = std::fs::read_dir(format!("/proc/{}/fd", p.pid))
                .map(|d| d.count() as u64)
                .unwrap_or(0);
            let database_kib = p
                .database
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len() / 1024);
            let heap_kib = match p.admin {
                Some(a) => crate::helpers::try_metric_sum(a, service_kit::heap::GAUGE, &[])
                    .await
                    .map_or(0, |b| b as u64 / 1024),
                None => 0,
            };
            out.push((
                name.clone(),
                Sample {
                    at,
                    rss_kib,
                    heap_kib,
                    open_files,
                    database_kib,
                },
            ));
        }
        out
    }

    fn add(&mut self, taken: Vec<(String, Sample)>) {
        for (name, s) in taken {
            self.series.entry(name).or_default().push(s);
        }
    }

    /// Per process: each figure after the first fifth of the run (the
    /// warm-up) and at the end, as medians of the samples of the second and
    /// the last fifth.
    pub fn growth(&self) -> BTreeMap<String, Growth> {
        let median = |v: &[Sample], f: fn(&Sample) -> u64| -> u64 {
            let mut v: Vec<u64> = v.iter().map(f).collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        self.series
            .iter()
            .filter(|(_, s)| s.len() >= 5)
            .map(|(name, s)| {
                let fifth = s.len() / 5;
                let (early, late) = (&s[fifth..2 * fifth], &s[s.len() - fifth..]);
                let both = |f: fn(&Sample) -> u64| (median(early, f), median(late, f));
                let g = Growth {
                    rss_kib: both(|x| x.rss_kib),
                    heap_kib: both(|x| x.heap_kib),
                    open_files: both(|x| x.open_files),
                    database_kib: both(|x| x.database_kib),
                };
                (name.clone(), g)
            })
            .collect()
    }

    /// The samples as CSV
    /// (`process,seconds,rss_kib,open_files,database_kib,heap_kib`).
    pub fn csv(&self) -> String {
        let mut out = String::from("process,seconds,rss_kib,open_files,database_kib,heap_kib\n");
        for (name, series) in &self.series {
            for s in series {
                let _ = writeln!(
                    out,
                    "{name},{},{},{},{},{}",
                    s.at, s.rss_kib, s.open_files, s.database_kib, s.heap_kib
                );
            }
        }
        out
    }
}

impl std::fmt::Display for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.growth();
        if g.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "process RSS, heap and open files (median after warm-up -> median of the last fifth; max):"
        )?;
        let mib = |k: u64| k as f64 / 1024.0;
        for (name, g) in &g {
            let s = &self.series[name];
            let max = s.iter().map(|x| x.rss_kib).max().unwrap_or(0);
            let (r0, r1) = g.rss_kib;
            let (f0, f1) = g.open_files;
            let heap = match g.heap_kib {
                (0, 0) => String::new(),
                (h0, h1) => format!("; heap {:.1} -> {:.1} MiB", mib(h0), mib(h1)),
            };
            let db = match g.database_kib {
                (_, 0) => String::new(),
                (d0, d1) => format!("; database {:.1} -> {:.1} MiB", mib(d0), mib(d1)),
            };
            writeln!(
                f,
                "  {name:<12} RSS {:>6.1} -> {:>6.1} MiB (max {:>6.1}){heap}; open files {f0} -> {f1}{db}; {} samples",
                mib(r0),
                mib(r1),
                mib(max),
                s.len()
            )?;
        }
        Ok(())
    }
}

/// One process's RSS and open files after the warm-up and at the end
/// ([`Samples::growth`]).
#[derive(Debug, Clone, Copy)]
pub struct Growth {
    /// RSS in KiB: after the warm-up, at the end.
    pub rss_kib: (u64, u64),
    /// Heap in KiB (0 where not exported): after the warm-up, at the end.
    pub heap_kib: (u64, u64),
    /// Open files: after the warm-up, at the end.
    pub open_files: (u64, u64),
    /// The process's database file in KiB (replicas; 0 otherwise): after
    /// the warm-up, at the end.
    pub database_kib: (u64, u64),
}

/// The recorded history, shared by every phone.
#[derive(Default)]
struct History {
    ops: Mutex<BTreeMap<(&'static str, String), u64>>,
    violations: Mutex<Vec<String>>,
    acked: Mutex<Vec<(String, BackupKey)>>,
    unanswered: Mutex<Vec<(String, BackupKey)>>,
    /// Per attacked deposit: OPRF evaluations received.
    evaluations: Mutex<BTreeMap<String, u32>>,
    /// Deposits an attack used up, in order.
    locked: Mutex<Vec<String>>,
    /// Addresses no phone may ever see (replicas' serve, peer, admin and
    /// proxy ports).
    internal: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl History {
    fn op(&self, op: &'static str, outcome: impl Into<String>) {
        *lock(&self.ops).entry((op, outcome.into())).or_default() += 1;
    }

    fn violation(&self, what: String) {
        tracing::error!("chaos violation: {what}");
        lock(&self.violations).push(what);
    }

    /// Records a phone's error: a typed retryable one is counted by kind;
    /// anything else, or a message naming an internal address, is a
    /// violation.
    fn error(&self, op: &'static str, e: &ClientError) {
        let text = e.to_string();
        if let Some(a) = self.internal.iter().find(|a| text.contains(a.as_str())) {
            self.violation(format!(
                "{op}: an error names the internal address {a}: {text}"
            ));
        }
        let kind = match e {
            ClientError::Unavailable(_) => "unavailable",
            ClientError::Busy { .. } => "busy",
            ClientError::Connect { .. } => "connect",
            other => {
                self.violation(format!("{op}: untyped or unexpected error: {other:?}"));
                "unexpected"
            }
        };
        self.op(op, kind);
    }
}

/// Mints devices with the stack's account-service key.
#[derive(Clone)]
struct Enroller(Arc<Zeroizing<Vec<u8>>>);

impl Enroller {
    fn device(&self, account: &str) -> DeviceIdentity {
        let mut d = DeviceIdentity::generate().unwrap_or_else(|e| panic!("a device key: {e}"));
        d.credential = Some(
            protocol_spec::credential::mint(
                &self.0,
                account,
                &d.static_public,
                Duration::from_secs(24 * 3600),
            )
            .unwrap_or_else(|e| panic!("a credential: {e}")),
        );
        d
    }
}

/// A phone of one account: one device, a connection (re)made on demand to
/// one of the two gateways (the profile lists the other, so the client
/// library moves by itself when a gateway goes away).
struct Phone {
    account: String,
    device: DeviceIdentity,
    profiles: Arc<[ClientProfile; 2]>,
    pick: usize,
    conn: Option<Arc<GatewayConnection>>,
}

impl Phone {
    fn new(
        account: &str,
        enroll: &Enroller,
        profiles: &Arc<[ClientProfile; 2]>,
        pick: usize,
    ) -> Self {
        Self {
            account: account.into(),
            device: enroll.device(account),
            profiles: profiles.clone(),
            pick: pick % 2,
            conn: None,
        }
    }

    fn profile(&self) -> &ClientProfile {
        &self.profiles[self.pick]
    }

    /// The connection, connecting first if there is none; `None` (the
    /// failure recorded) if the gateway cannot be reached now.
    async fn conn(&mut self, h: &History) -> Option<Arc<GatewayConnection>> {
        if let Some(c) = &self.conn {
            if c.quic().close_reason().is_none() {
                return Some(c.clone());
            }
            self.conn = None;
        }
        match GatewayConnection::connect(self.profile(), &self.device).await {
            Ok(c) => {
                let c = Arc::new(c);
                self.conn = Some(c.clone());
                h.op("connect", "ok");
                Some(c)
            }
            Err(e) => {
                h.error("connect", &e);
                // The other gateway next time.
                self.pick = 1 - self.pick;
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        }
    }

    /// Forgets the connection after an error that may have ended it.
    fn failed(&mut self) {
        if let Some(c) = &self.conn {
            if c.quic().close_reason().is_some() {
                self.conn = None;
            }
        }
    }

    async fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            }
        }
    }
}

fn vault<'c>(c: &'c GatewayConnection, p: &ClientProfile) -> VaultClient<'c> {
    VaultClient::new(c, p)
        .unwrap_or_else(|e| panic!("a vault client: {e}"))
        .with_ksf(cheap_ksf_for_load_tests())
}

/// Registers `account` with `key`, as a phone does (retrying an
/// unanswered attempt a few times). Whether it was acknowledged.
async fn register(phone: &mut Phone, key: &BackupKey, h: &History, stop: &AtomicBool) -> bool {
    let mut unanswered = false;
    for _ in 0..5 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(c) = phone.conn(h).await else {
            continue;
        };
        match vault(&c, phone.profile()).register(RIGHT, key, false).await {
            Ok(_) => {
                h.op("register", "ok");
                return true;
            }
            // The unanswered attempt landed: it is this one if the
            // password recovers this key.
            Err(ClientError::AlreadyRegistered) if unanswered => {
                h.op("register", "landed_unanswered");
                match vault(&c, phone.profile()).recover(RIGHT).await {
                    Ok(got) if got == *key => return true,
                    Ok(_) => h.violation(format!("{}: another key was deposited", phone.account)),
                    Err(e) => {
                        h.error("register", &e);
                        phone.failed();
                    }
                }
                return false;
            }
            Err(e) => {
                unanswered = true;
                h.error("register", &e);
                phone.failed();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    false
}

/// New accounts, one after another.
async fn registrar(
    n: usize,
    enroll: Enroller,
    profiles: Arc<[ClientProfile; 2]>,
    h: Arc<History>,
    stop: Arc<AtomicBool>,
    pause: Duration,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let account = format!("reg-{n}-{i}");
        let key = BackupKey::generate();
        let mut phone = Phone::new(&account, &enroll, &profiles, i as usize);
        if register(&mut phone, &key, &h, &stop).await {
            lock(&h.acked).push((account, key));
        } else {
            lock(&h.unanswered).push((account, key));
        }
        phone.close().await;
        tokio::time::sleep(pause).await;
    }
}

/// A phone that recovers its deposit with the right password, back to
/// back, and reads its status now and then.
async fn honest(phone: Phone, key: BackupKey, h: Arc<History>, stop: Arc<AtomicBool>) {
    let mut phone = phone;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let Some(c) = phone.conn(&h).await else {
            continue;
        };
        let v = vault(&c, phone.profile());
        if n % 5 == 0 {
            match v.status().await {
                Ok(client::Status::Active { .. }) => h.op("status", "ok"),
                Ok(other) => h.violation(format!("{}: status {other:?}", phone.account)),
                Err(e) => {
                    h.error("status", &e);
                    phone.failed();
                }
            }
            continue;
        }
        match v.recover(RIGHT).await {
            Ok(got) if got == key => h.op("recover", "ok"),
            Ok(_) => h.violation(format!("{}: recovered another key", phone.account)),
            Err(
                e @ (ClientError::WrongPassword { .. }
                | ClientError::LockedOut
                | ClientError::NotRegistered),
            ) => h.violation(format!("{}: the right password got {e:?}", phone.account)),
            Err(e) => {
                h.error("recover", &e);
                phone.failed();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    phone.close().await;
}

/// A wrong guess's finish, as a client sends after a wrong guess (ends the
/// login session).
fn wrong_finish(session: &[u8]) -> msg::Request {
    msg::Request {
        kind: Some(msg::request::Kind::LoginFinish(msg::LoginFinishRequest {
            login_session: session.to_vec(),
            credential_finalization: vec![0; 64],
        })),
    }
}

/// One attacker loop on one device: wrong guesses back to back until the
/// deposit is erased. Counts the OPRF evaluations received; whether it
/// was told the deposit is erased.
async fn guesser(mut phone: Phone, h: Arc<History>, stop: Arc<AtomicBool>, until: Instant) -> bool {
    let mut erased = false;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        let Some(c) = phone.conn(&h).await else {
            continue;
        };
        match c.request(&login_start(WRONG)).await {
            Ok(msg::Response {
                kind: Some(Resp::LoginStart(s)),
            }) => {
                *lock(&h.evaluations)
                    .entry(phone.account.clone())
                    .or_default() += 1;
                h.op("guess", "evaluated");
                let _ = c.request(&wrong_finish(&s.login_session)).await;
            }
            Ok(msg::Response {
                kind: Some(Resp::Error(e)),
            }) => match e.code() {
                ErrorCode::LockedOut => {
                    h.op("guess", "locked_out");
                    erased = true;
                    break;
                }
                ErrorCode::Unavailable | ErrorCode::Busy => {
                    h.op(
                        "guess",
                        if e.code() == ErrorCode::Busy {
                            "busy"
                        } else {
                            "unavailable"
                        },
                    );
                    if let Some(a) = h.internal.iter().find(|a| e.message.contains(a.as_str())) {
                        h.violation(format!("a guess's error names the internal address {a}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => h.violation(format!("a guess got {other:?}: {}", e.message)),
            },
            Ok(other) => h.violation(format!("a guess got {other:?}")),
            Err(e) => {
                h.error("guess", &e);
                phone.failed();
            }
        }
    }
    phone.close().await;
    erased
}

/// Attack campaigns: register a deposit, use it up from two devices (three
/// loops each), then the next.
async fn campaign(
    n: usize,
    enroll: Enroller,
    profiles: Arc<[ClientProfile; 2]>,
    h: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let account = format!("target-{n}-{i}");
        let mut owner = Phone::new(&account, &enroll, &profiles, i as usize);
        let key = BackupKey::generate();
        let acked = register(&mut owner, &key, &h, &stop).await;
        owner.close().await;
        if !acked {
            lock(&h.unanswered).push((account, key));
            continue;
        }
        lock(&h.acked).push((account.clone(), key));
        lock(&h.evaluations).insert(account.clone(), 0);
        let until = Instant::now() + Duration::from_secs(30);
        let mut loops = Vec::new();
        for device in 0..2 {
            for _ in 0..3 {
                let phone = Phone::new(&account, &enroll, &profiles, device);
                loops.push(tokio::spawn(guesser(phone, h.clone(), stop.clone(), until)));
            }
        }
        let mut erased = false;
        for l in loops {
            erased |= l.await.unwrap_or(false);
        }
        if erased {
            lock(&h.locked).push(account);
        }
    }
}

/// What the fault injector needs to track.
struct Faults {
    rng: StdRng,
    report_faults: BTreeMap<&'static str, u64>,
    restarts: (u64, u64),
    /// Member indexes (a replaced replica leaves).
    members: Vec<usize>,
    h: Arc<History>,
    pids: Arc<Mutex<BTreeMap<String, Sampled>>>,
}

impl Faults {
    fn count(&mut self, kind: &'static str) {
        *self.report_faults.entry(kind).or_default() += 1;
    }

    fn note_pids(&self, stack: &LocalStack, gateways: &[GatewayProcess]) {
        let mut p = lock(&self.pids);
        p.retain(|k, _| k == "driver");
        for &i in &self.members {
            if let Some(pid) = stack.replica_pid(CLUSTER, i) {
                let cfg = &stack.clusters[CLUSTER].configs[i];
                let sampled = Sampled {
                    pid,
                    database: Some(cfg.database_path()),
                    admin: cfg.admin_listen,
                };
                p.insert(format!("replica-{}", i + 1), sampled);
            }
        }
        for (j, g) in gateways.iter().enumerate() {
            if let Some(pid) = g.pid() {
                let sampled = Sampled {
                    pid,
                    database: None,
                    admin: Some(g.admin),
                };
                p.insert(format!("gateway-{}", ["a", "b"][j]), sampled);
            }
        }
    }

    fn any_member(&mut self) -> usize {
        self.members[self.rng.gen_range(0..self.members.len())]
    }

    async fn leader_or_any(&mut self, stack: &LocalStack) -> usize {
        match stack.leader(CLUSTER).await {
            Some(l) if self.members.contains(&l) => l,
            _ => self.any_member(),
        }
    }

    /// Starts replica `i` again and waits (bounded) until it answers its
    /// status knowing a leader.
    async fn restart(&mut self, stack: &mut LocalStack, i: usize) {
        self.restarts.0 += 1;
        if let Err(e) = stack.start_replica(CLUSTER, i).await {
            self.h
                .violation(format!("replica {} did not start again: {e}", i + 1));
            return;
        }
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let st = stack.statuses(CLUSTER).await;
            if st[i].as_ref().is_some_and(|s| s.leader.is_some()) {
                self.restarts.1 += 1;
                return;
            }
            if Instant::now() > until {
                self.h.violation(format!(
                    "replica {} did not serve within 30 s of its restart:\n{}",
                    i + 1,
                    tail(&stack.replica_log(CLUSTER, i), 8)
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn down_for(&mut self, lo: u64, hi: u64) {
        tokio::time::sleep(Duration::from_millis(self.rng.gen_range(lo..hi))).await;
    }

    /// One random fault, held for a while, then repaired.
    async fn one(&mut self, stack: &mut LocalStack, gateways: &mut [GatewayProcess]) {
        match self.rng.gen_range(0..100) {
            0..=17 => {
                self.count("sigkill_replica");
                let i = self.any_member();
                stack.stop_replica(CLUSTER, i).await;
                self.down_for(300, 2000).await;
                self.restart(stack, i).await;
            }
            18..=29 => {
                self.count("sigkill_leader");
                let i = self.leader_or_any(stack).await;
                stack.stop_replica(CLUSTER, i).await;
                self.down_for(300, 2000).await;
                self.restart(stack, i).await;
            }
            30..=44 => {
                let leader = self.rng.gen_bool(0.5);
                self.count(if leader {
                    "sigterm_leader"
                } else {
                    "sigterm_replica"
                });
                let i = match leader {
                    true => self.leader_or_any(stack).await,
                    false => self.any_member(),
                };
                match stack
                    .terminate_replica(CLUSTER, i, Duration::from_secs(15))
                    .await
                {
                    Ok(Some(exit)) if exit.success() => {}
                    other => self.h.violation(format!(
                        "replica {} did not exit cleanly on SIGTERM: {other:?}",
                        i + 1
                    )),
                }
                self.down_for(300, 2000).await;
                self.restart(stack, i).await;
            }
            45..=54 => {
                self.count("sigkill_two");
                let a = self.leader_or_any(stack).await;
                let b = loop {
                    let b = self.any_member();
                    if b != a {
                        break b;
                    }
                };
                stack.stop_replica(CLUSTER, a).await;
                stack.stop_replica(CLUSTER, b).await;
                self.down_for(500, 2500).await;
                self.restart(stack, a).await;
                self.restart(stack, b).await;
            }
            55..=79 => {
                let leader = self.rng.gen_bool(0.5);
                let i = match leader {
                    true => self.leader_or_any(stack).await,
                    false => self.any_member(),
                };
                if !stack.partitionable(CLUSTER, i) {
                    return;
                }
                self.count(if leader {
                    "partition_leader"
                } else {
                    "partition_replica"
                });
                let _ = stack.partition(CLUSTER, i, true);
                self.down_for(1000, 4000).await;
                let _ = stack.partition(CLUSTER, i, false);
            }
            _ => {
                let g = self.rng.gen_range(0..gateways.len());
                if self.rng.gen_bool(0.7) {
                    self.count("sigterm_gateway");
                    if let Err(e) = gateways[g].terminate(Duration::from_secs(15)).await {
                        self.h.violation(format!("a gateway did not drain: {e}"));
                    }
                } else {
                    self.count("sigkill_gateway");
                    gateways[g].kill().await;
                }
                self.down_for(200, 1500).await;
                self.restarts.0 += 1;
                match gateways[g].spawn().await {
                    Ok(()) => self.restarts.1 += 1,
                    Err(e) => self
                        .h
                        .violation(format!("a gateway did not start again: {e}")),
                }
            }
        }
        self.note_pids(stack, gateways);
    }
}

fn tail(log: &str, n: usize) -> String {
    let t: Vec<&str> = log.lines().rev().take(n).collect();
    t.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The rollback: replica `i`'s data folder, copied earlier, put back. It
/// must refuse to start; it is then replaced by a new member (README.md
/// "Replacing a replica"), as an operator would.
async fn roll_back(
    stack: &mut LocalStack,
    f: &mut Faults,
    i: usize,
    copy: &std::path::Path,
    report: &mut ChaosReport,
) -> anyhow::Result<()> {
    f.count("rollback");
    report.rollbacks.0 += 1;
    let data = {
        let cfg = &stack.clusters[CLUSTER].configs[i];
        cfg.state_dir.join(&cfg.data_dir)
    };
    stack.stop_replica(CLUSTER, i).await;
    std::fs::remove_dir_all(&data)?;
    copy_dir(copy, &data)?;
    stack.start_replica(CLUSTER, i).await?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = stack.replica_exit(CLUSTER, i) {
            let log = stack.replica_log(CLUSTER, i);
            if !exit.success() && log.contains("older than its freshness anchor") {
                report.rollbacks.1 += 1;
            } else {
                f.h.violation(format!(
                    "the rolled-back replica exited {exit} without saying why"
                ));
            }
            break;
        }
        if Instant::now() > until {
            f.h.violation("a rolled-back replica started and kept running".into());
            stack.stop_replica(CLUSTER, i).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.stop_replica(CLUSTER, i).await;
    // Replace it: a new member, caught up, promoted; the old one removed.
    let new = stack.add_replica(CLUSTER).await?;
    let config = stack.replica_config(CLUSTER, new);
    let config = config.to_string_lossy().to_string();
    let gone = stack.clusters[CLUSTER].configs[i].node_id.to_string();
    let id = stack.clusters[CLUSTER].configs[new].node_id.to_string();
    stack
        .operator(CLUSTER, &["add-learner", "--config", &config])
        .await?;
    stack
        .operator(CLUSTER, &["promote", "--config", &config, "--id", &id])
        .await?;
    stack
        .operator(
            CLUSTER,
            &["remove-member", "--config", &config, "--id", &gone],
        )
        .await?;
    f.members.retain(|&m| m != i);
    f.members.push(new);
    f.count("replace_member");
    Ok(())
}

/// Runs the load and the faults, then checks the history.
pub async fn run(opts: ChaosOptions) -> anyhow::Result<ChaosReport> {
    let mut report = ChaosReport {
        seed: opts.seed,
        ..Default::default()
    };
    let mut stack = LocalStack::start(StackOptions {
        replicas: 5,
        max_attempts: opts.limit,
        // The attackers must be able to reach the limit within the run.
        pacing: Pacing::OFF,
        replica_binary: Some(crate::bins::vault_backend()),
        peer_proxies: true,
        // Snapshots and log purges happen during the run, so restarts
        // come after compaction.
        raft: RaftSettings {
            snapshot_every: 200,
            cache_mib: opts
                .cache_mib
                .unwrap_or_else(|| RaftSettings::default().cache_mib),
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;
    // Phones use only the two gateway processes.
    if let Some(g) = stack.gateway.take() {
        g.shutdown().await;
    }
    let tune = |c: &mut gateway::config::GatewayConfig| {
        c.budgets = gateway::budget::BudgetConfig::unlimited();
        c.drain_deadline_ms = 5_000;
    };
    let mut gateways = vec![
        GatewayProcess::start(&stack, "gateway-a", tune).await?,
        GatewayProcess::start(&stack, "gateway-b", tune).await?,
    ];
    let mut pa = stack.profile.clone();
    pa.gateway_addr = gateways[0].addr;
    pa.other_gateways = vec![gateways[1].addr];
    let mut pb = pa.clone();
    pb.gateway_addr = gateways[1].addr;
    pb.other_gateways = vec![gateways[0].addr];
    let profiles = Arc::new([pa, pb]);

    let mut internal = Vec::new();
    for c in &stack.clusters[CLUSTER].configs {
        internal.push(c.listen.to_string());
        internal.push(c.peer_listen.to_string());
        if let Some(a) = c.admin_listen {
            internal.push(a.to_string());
        }
        for m in &c.members {
            internal.push(m.peer.to_string());
        }
    }
    internal.sort();
    internal.dedup();
    let h = Arc::new(History {
        internal,
        ..Default::default()
    });
    let enroll = Enroller(Arc::new(gateway::keys::account_service_secret(
        &stack.gateway_dir(),
    )?));
    let stop = Arc::new(AtomicBool::new(false));

    // The honest phones' deposits, made before the faults.
    let mut tasks = Vec::new();
    for n in 0..opts.honest {
        let account = format!("honest-{n}");
        let key = BackupKey::generate();
        let mut phone = Phone::new(&account, &enroll, &profiles, n);
        anyhow::ensure!(
            register(&mut phone, &key, &h, &stop).await,
            "the honest phones' deposits were not made on a healthy stack"
        );
        lock(&h.acked).push((account, key.clone()));
        tasks.push(tokio::spawn(honest(phone, key, h.clone(), stop.clone())));
    }
    for n in 0..opts.campaigns {
        tasks.push(tokio::spawn(campaign(
            n,
            enroll.clone(),
            profiles.clone(),
            h.clone(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(registrar(
        0,
        enroll.clone(),
        profiles.clone(),
        h.clone(),
        stop.clone(),
        Duration::from_millis(100),
    )));

    // The sampler.
    let driver = Sampled {
        pid: std::process::id(),
        database: None,
        admin: None,
    };
    let pids = Arc::new(Mutex::new(BTreeMap::from([("driver".to_string(), driver)])));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let started = Instant::now();
    let sampler = {
        let (pids, samples, every) = (pids.clone(), samples.clone(), opts.sample_every);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let p = lock(&pids).clone();
                let taken = Samples::take(started.elapsed().as_secs(), &p).await;
                lock(&samples).add(taken);
            }
        })
    };
    let mut f = Faults {
        rng: StdRng::seed_from_u64(opts.seed),
        report_faults: BTreeMap::new(),
        restarts: (0, 0),
        members: (0..5).collect(),
        h: h.clone(),
        pids,
    };
    f.note_pids(&stack, &gateways);

    // Faults (or, for the soak, none) until the last tenth of the run.
    let end = started + opts.duration;
    let calm = end - opts.duration / 10;
    let backups = tempfile::tempdir()?;
    let mut rollback: Option<(usize, std::path::PathBuf, usize)> = None;
    let mut rolled = false;
    while Instant::now() < calm {
        if !opts.faults {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let t = started.elapsed();
        if rollback.is_none() && t > opts.duration / 5 {
            // A copy of a follower's data folder, taken as a host backup
            // would be (the replica stopped for it).
            let leader = stack.leader(CLUSTER).await;
            let i = f
                .members
                .iter()
                .copied()
                .find(|&m| Some(m) != leader)
                .unwrap_or(1);
            let _ = stack
                .terminate_replica(CLUSTER, i, Duration::from_secs(15))
                .await;
            let cfg = &stack.clusters[CLUSTER].configs[i];
            let copy = backups.path().join("copy");
            copy_dir(&cfg.state_dir.join(&cfg.data_dir), &copy)?;
            f.count("sigterm_for_copy");
            f.restart(&mut stack, i).await;
            let locked_before = lock(&h.locked).len();
            rollback = Some((i, copy, locked_before));
        } else if !rolled && t > opts.duration / 2 {
            if let Some((i, copy, before)) = &rollback {
                // The check below needs a deposit used up since the copy
                // (the copy still had guesses for it): wait for one
                // (bounded), so it never passes with nothing to check.
                let until = Instant::now() + Duration::from_secs(30);
                while lock(&h.locked).len() == *before && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let after: Vec<String> = lock(&h.locked)[*before..].to_vec();
                roll_back(&mut stack, &mut f, *i, copy, &mut report).await?;
                // Deposits used up since the copy: the copy still had
                // guesses for them, and none may come back.
                for a in after {
                    report.rollback_checked += 1;
                    if let Some(s) = status_of(&a, &enroll, &profiles).await {
                        // Erased, or its last guess held until that
                        // login's session ends (DESIGN.md invariant 3):
                        // either way no guess left.
                        let none_left = matches!(
                            s,
                            client::Status::LockedOut
                                | client::Status::Active {
                                    attempts_left: 0,
                                    ..
                                }
                        );
                        if !none_left {
                            report.extra_guesses += 1;
                            h.violation(format!("{a} is {s:?} again after the rollback"));
                        }
                    }
                }
                f.note_pids(&stack, &gateways);
            }
            rolled = true;
        } else {
            f.one(&mut stack, &mut gateways).await;
        }
        tokio::time::sleep(Duration::from_millis(f.rng.gen_range(300..1200))).await;
    }

    // Repair: everything joins and runs again; load carries on to the end.
    for px in stack.clusters[CLUSTER].proxies.iter() {
        px.heal_all();
    }
    for &i in &f.members.clone() {
        if !stack.clusters[CLUSTER].replicas[i].is_running() {
            f.restart(&mut stack, i).await;
        }
    }
    for g in gateways.iter_mut() {
        g.spawn().await?;
    }
    f.note_pids(&stack, &gateways);
    tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .is_err()
        {
            h.violation("a phone did not stop within 60 s".into());
        }
    }
    sampler.abort();
    report.samples = lock(&samples).clone();

    // Every member serves again and agrees.
    if let Err(e) = stack.wait_caught_up(CLUSTER, Duration::from_secs(60)).await {
        h.violation(format!("the replicas did not all catch up: {e}"));
    }
    let st = stack.statuses(CLUSTER).await;
    for s in st.iter().flatten() {
        let t = &mut report.term_snapshot_purged;
        t.0 = t.0.max(s.term);
        t.1 = t.1.max(s.snapshot_index.unwrap_or(0));
        t.2 = t.2.max(s.purged_index.unwrap_or(0));
    }
    for &i in &f.members {
        match &st[i] {
            Some(s) if s.leader.is_some() => {}
            other => h.violation(format!(
                "replica {} does not serve at the end: {other:?}",
                i + 1
            )),
        }
    }

    // No acknowledged registration lost; unanswered ones are either there
    // with their key or absent.
    let acked = lock(&h.acked).clone();
    let unanswered = lock(&h.unanswered).clone();
    let evaluations = lock(&h.evaluations).clone();
    report.registrations = (acked.len(), unanswered.len());
    for (account, key) in &acked {
        if evaluations.contains_key(account) {
            continue; // attacked: used up (or partly) by design
        }
        match recover(account, &enroll, &profiles).await {
            Ok(got) if got == *key => report.recovered += 1,
            other => h.violation(format!(
                "acknowledged registration {account} lost: {other:?}"
            )),
        }
    }
    for (account, key) in &unanswered {
        match recover(account, &enroll, &profiles).await {
            Ok(got) if got == *key => {}
            Err(ClientError::NotRegistered) => {}
            other => h.violation(format!("unanswered registration {account}: {other:?}")),
        }
    }
    // Per deposit, OPRF evaluations ≤ the limit.
    report.attacked = (
        evaluations.len(),
        evaluations.values().copied().max().unwrap_or(0),
    );
    for (account, n) in &evaluations {
        if *n > opts.limit {
            h.violation(format!(
                "{account} gave {n} OPRF evaluations, limit {}",
                opts.limit
            ));
        }
    }

    // The replicas' rows agree, read from their databases once stopped:
    // once the cluster is quiet (the checks' own logins commit their resets
    // after answering), followers first and the leader last, so that no
    // election appends anything while they stop.
    let quiet = stack
        .wait_quiet(CLUSTER, Duration::from_secs(1), Duration::from_secs(30))
        .await;
    let leader = stack.leader(CLUSTER).await;
    let mut order: Vec<usize> = f
        .members
        .iter()
        .copied()
        .filter(|i| Some(*i) != leader)
        .collect();
    order.extend(leader.filter(|l| f.members.contains(l)));
    for &i in &order {
        let _ = stack
            .terminate_replica(CLUSTER, i, Duration::from_secs(15))
            .await;
    }
    let quiet = match quiet {
        Ok(index) => format!("all at log index {index} when stopped"),
        Err(e) => format!("not quiet when stopped: {e}"),
    };
    let mut accounts: Vec<String> = acked
        .iter()
        .chain(&unanswered)
        .map(|(a, _)| a.clone())
        .collect();
    accounts.sort();
    report.rows_compared = accounts.len();
    let mut first: Option<(usize, Vec<Option<vault_backend::account::StoredAccount>>)> = None;
    for &i in &f.members {
        let path = stack.clusters[CLUSTER].configs[i].database_path();
        let db = redb::Database::open(&path)?;
        let store = vault_backend::store::Store::from_db(Arc::new(
            vault_backend::raft::storage::Db::new(db),
        ));
        let rows: Vec<_> = accounts
            .iter()
            .map(|a| store.get(a).ok().flatten())
            .collect();
        match &first {
            None => first = Some((i, rows)),
            Some((j, want)) => {
                for (a, (x, y)) in accounts.iter().zip(want.iter().zip(&rows)) {
                    if x != y {
                        let brief = |r: &Option<vault_backend::account::StoredAccount>| {
                            r.as_ref().map(|r| {
                                format!(
                                    "state {}, guesses used {} of {} counted, registration {}",
                                    r.state,
                                    r.guesses_used,
                                    r.guesses_counted,
                                    hex::encode(&r.registration_id)
                                )
                            })
                        };
                        h.violation(format!(
                            "replicas {} and {} disagree on {a} ({quiet}): {:?} / {:?}",
                            j + 1,
                            i + 1,
                            brief(x),
                            brief(y)
                        ));
                    }
                }
            }
        }
    }
    for (i, _) in stack.clusters[CLUSTER].configs.iter().enumerate() {
        if let Some(panic) = panic_excerpt(&stack.replica_log(CLUSTER, i)) {
            h.violation(format!("replica {} panicked: {panic}", i + 1));
        }
    }
    for g in gateways.iter_mut() {
        if let Some(panic) = panic_excerpt(&g.log()) {
            h.violation(format!("a gateway panicked: {panic}"));
        }
        let _ = g.terminate(Duration::from_secs(10)).await;
    }
    report.faults = f.report_faults;
    report.restarts = f.restarts;
    report.ops = lock(&h.ops).clone();
    report.violations = lock(&h.violations).clone();
    stack.shutdown().await;
    Ok(report)
}

/// The first panic in a process's log, with the lines after it (the message
/// and the start of a backtrace), so that a failed run says what panicked
/// without its state folders, which are gone by the time it is read.
fn panic_excerpt(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().position(|l| l.contains("panicked"))?;
    let mut excerpt = lines[at..lines.len().min(at + 6)].join("\n");
    if excerpt.len() > 1500 {
        let mut cut = 1500;
        while !excerpt.is_char_boundary(cut) {
            cut -= 1;
        }
        excerpt.truncate(cut);
    }
    Some(excerpt)
}

/// A fresh device of `account` recovers (bounded: 30 s of retrying while
/// unavailable).
async fn recover(
    account: &str,
    enroll: &Enroller,
    profiles: &Arc<[ClientProfile; 2]>,
) -> Result<BackupKey, ClientError> {
    let dev = enroll.device(account);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let out = match GatewayConnection::connect(&profiles[0], &dev).await {
            Ok(c) => {
                let out = vault(&c, &profiles[0]).recover(RIGHT).await;
                c.close().await;
                out
            }
            Err(e) => Err(e),
        };
        match out {
            Err(
                ClientError::Unavailable(_)
                | ClientError::Busy { .. }
                | ClientError::Connect { .. },
            ) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(200)).await,
            other => return other,
        }
    }
}

/// `account`'s status, read by a fresh device (`None` if unreachable for
/// 30 s).
async fn status_of(
    account: &str,
    enroll: &Enroller,
    profiles: &Arc<[ClientProfile; 2]>,
) -> Option<client::Status> {
    let dev = enroll.device(account);
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if let Ok(c) = GatewayConnection::connect(&profiles[0], &dev).await {
            let out = vault(&c, &profiles[0]).status().await;
            c.close().await;
            if let Ok(s) = out {
                return Some(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
