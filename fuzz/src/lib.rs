//! What the fuzz targets share: a deposit registered with real OPAQUE on a
//! real vault request handler (over the in-memory ledger, which applies
//! commands with the replicated state machine's own rules), a gateway
//! under test that relays a phone's requests to that handler and may
//! tamper with the answers, a runtime whose clock runs only when every task
//! waits (so a hostile `BUSY 60 s` costs no wall time), and the seed
//! corpora, built from SPEC.md's vectors and from real sessions.
//!
//! Must never: be linked into anything but the fuzz targets (it enables
//! tokio's test clock).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use client::{BackupKey, ClientError, ClientProfile, Exchange, VaultClient};
use prost::Message;
use protocol_spec::internal::{vault_response, VaultRequest, VaultResponse};
use protocol_spec::msg;
use protocol_spec::opaque_profile as op;
use vault_backend::account::{Pacing, StoredAccount};
use vault_backend::memory_ledger::MemoryLedger;
use vault_backend::secrets::FleetSecrets;
use vault_backend::service::{Policy, Vault};

/// The account of the deposit.
pub const ACCOUNT: &str = "fuzz-account";
/// Its password.
pub const PASSWORD: &[u8] = b"correct horse battery staple";
/// The owner device's Noise static key.
pub const DEVICE_KEY: [u8; 32] = [0x0d; 32];
/// Guesses per deposit: small, so that a few frames reach the lockout.
pub const LIMIT: u32 = 5;
/// The vault's clock (Unix ms); fixed, so no session expires mid-input.
pub const NOW_MS: u64 = 1_800_000_000_000;

/// A current-thread runtime with tokio's paused clock: sleeps end as soon
/// as nothing else can run.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime")
    })
}

/// The vault policy of the fixture: the production rules with `LIMIT`
/// guesses and pacing off (pacing would answer every later guess `BUSY`
/// and hide the rest of the rules from the fuzzer).
pub fn policy() -> Policy {
    Policy {
        pacing: Pacing::OFF,
        ..Policy::with_limit(LIMIT)
    }
}

/// The deposit every input starts from.
pub struct Deposit {
    /// The fleet's secrets (OPAQUE server setup, ticket and sealing keys).
    pub secrets: Arc<FleetSecrets>,
    /// The ledger's rows right after the registration.
    pub rows: BTreeMap<String, StoredAccount>,
    /// The backup key deposited.
    pub key: [u8; 32],
    /// The phone's profile for this fleet (only the fleet pin matters).
    pub profile: ClientProfile,
}

/// A fresh vault over a copy of the deposit's rows.
pub fn vault(d: &Deposit) -> Vault<MemoryLedger> {
    let ledger = MemoryLedger::from_rows(d.rows.clone());
    Vault::new(d.secrets.clone(), ledger, policy()).with_clock(Arc::new(|| NOW_MS))
}

/// The deposit, registered once per process by a real client through an
/// honest [`Relay`].
pub fn deposit() -> &'static Deposit {
    static D: OnceLock<Deposit> = OnceLock::new();
    D.get_or_init(|| {
        let secrets = Arc::new(FleetSecrets::generate("fuzz-fleet"));
        let profile = ClientProfile {
            gateway_addr: ([127, 0, 0, 1], 9).into(),
            other_gateways: Vec::new(),
            gateway_server_name: "localhost".into(),
            gateway_ca_pem: String::new(),
            gateway_noise_key: None,
            gateway_noise_next_key: None,
            fleet_id: secrets.fleet_id.clone(),
            fleet_public_key: hex::encode(secrets.public_key()),
        };
        let key = [0x42; 32];
        let mut d = Deposit {
            secrets,
            rows: BTreeMap::new(),
            key,
            profile,
        };
        let vault = vault(&d);
        let relay = Relay::honest(&vault);
        runtime().block_on(async {
            let c = phone(&relay, &d.profile);
            c.register(PASSWORD, &BackupKey::from_bytes(key), false)
                .await
                .expect("the fixture's registration");
        });
        d.rows = vault.ledger().snapshot();
        assert!(d.rows.contains_key(ACCOUNT), "the deposit is in the ledger");
        d
    })
}

/// A phone's vault client on `relay`, with the cheap KSF (the fixture's
/// registration used it too; the real one costs 0.1 s per guess).
pub fn phone<'r, 'v>(relay: &'r Relay<'v>, profile: &ClientProfile) -> VaultClient<'r, Relay<'v>> {
    VaultClient::new(relay, profile)
        .expect("the fixture's profile")
        .with_ksf(op::cheap_ksf_for_load_tests())
}

/// Encodes a request as the gateway forwards it for the deposit's account
/// and owner device.
pub fn vault_request(kind: msg::request::Kind) -> VaultRequest {
    VaultRequest {
        account_id: ACCOUNT.into(),
        request: Some(msg::Request { kind: Some(kind) }),
        members: None,
        device_key: DEVICE_KEY.to_vec(),
    }
}

/// What the gateway under test does with one answer.
#[derive(Debug, Clone)]
pub enum Tamper {
    /// Relay it as the vault gave it.
    Honest,
    /// Answer these bytes as the frame body instead (the vault still got
    /// the request).
    Replace(Vec<u8>),
    /// XOR these bytes into the encoded answer at these offsets.
    Flip(Vec<(usize, u8)>),
    /// The connection is lost after the vault got the request.
    Lose,
}

/// A gateway under test: relays the phone's requests to a real vault
/// request handler ([`vault_backend::server::answer_request`]) as the
/// deposit's owner device, and answers the phone according to a script.
/// Records what it relayed, for the targets' checks.
pub struct Relay<'v> {
    vault: &'v Vault<MemoryLedger>,
    script: Mutex<std::vec::IntoIter<Tamper>>,
    /// Requests relayed, with the frame body the phone was given (`None`:
    /// the connection was lost).
    pub log: Mutex<Vec<(msg::Request, Option<Vec<u8>>)>>,
}

impl<'v> Relay<'v> {
    /// Relays every answer untouched.
    pub fn honest(vault: &'v Vault<MemoryLedger>) -> Self {
        Self::scripted(vault, Vec::new())
    }

    /// Follows `script`, one step per request, then relays honestly.
    pub fn scripted(vault: &'v Vault<MemoryLedger>, script: Vec<Tamper>) -> Self {
        Self {
            vault,
            script: Mutex::new(script.into_iter()),
            log: Mutex::new(Vec::new()),
        }
    }

    fn next_step(&self) -> Tamper {
        self.script
            .lock()
            .ok()
            .and_then(|mut s| s.next())
            .unwrap_or(Tamper::Honest)
    }
}

impl Exchange for Relay<'_> {
    fn account_id(&self) -> &str {
        ACCOUNT
    }

    async fn request(&self, req: &msg::Request) -> Result<msg::Response, ClientError> {
        let forwarded = VaultRequest {
            request: Some(req.clone()),
            ..vault_request(msg::request::Kind::Status(msg::StatusRequest {}))
        };
        let answer = vault_backend::server::answer_request(self.vault, forwarded).await;
        let inner = match answer.kind {
            Some(vault_response::Kind::Response(r)) => r,
            _ => msg::Response::error(msg::ErrorCode::Unavailable, "no answer"),
        };
        let mut body = inner.encode_to_vec();
        match self.next_step() {
            Tamper::Honest => {}
            Tamper::Replace(b) => body = b,
            Tamper::Flip(flips) => {
                let n = body.len();
                for (at, x) in flips {
                    if n > 0 {
                        body[at % n] ^= x;
                    }
                }
            }
            Tamper::Lose => {
                if let Ok(mut log) = self.log.lock() {
                    log.push((req.clone(), None));
                }
                return Err(ClientError::Unavailable("connection lost".into()));
            }
        }
        if let Ok(mut log) = self.log.lock() {
            log.push((req.clone(), Some(body.clone())));
        }
        // What the phone's connection does with a frame body.
        protocol_spec::framing::decode::<msg::Response>(&body)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// The answer of a vault to one frame body, as its server gives it.
pub async fn answer_frame(vault: &Vault<MemoryLedger>, body: &[u8]) -> Option<VaultResponse> {
    let req = protocol_spec::framing::decode::<VaultRequest>(body).ok()?;
    Some(vault_backend::server::answer_request(vault, req).await)
}

/// Reads a `<!-- vector:NAME -->` hex block of SPEC.md or BACKUP-FORMAT.md.
pub fn spec_vector(name: &str) -> Option<Vec<u8>> {
    for doc in [
        include_str!("../../protocol-spec/SPEC.md"),
        include_str!("../../protocol-spec/BACKUP-FORMAT.md"),
    ] {
        let Some(start) = doc.find(&format!("<!-- vector:{name} -->")) else {
            continue;
        };
        let block = &doc[start..];
        let open = block.find("```")? + 3;
        let body = &block[open..];
        let body = &body[body.find('\n')? + 1..];
        let close = body.find("```")?;
        let hex: String = body[..close].split_whitespace().collect();
        return hex::decode(hex).ok();
    }
    None
}

/// Writes `seeds` into `$BKV_FUZZ_SEEDS/<target>/` when that variable is
/// set (`.ci/fuzz` sets it; the targets call this from their `init`, which
/// runs before libFuzzer reads its corpus folders).
pub fn write_seeds(target: &str, seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("BKV_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::Path::new(&dir).join(target);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for (i, s) in seeds().into_iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("seed-{i:02}")), s);
    }
}

/// Frames (length prefix included) of `msgs`, concatenated.
pub fn frames<M: Message>(msgs: &[M]) -> Vec<u8> {
    msgs.iter()
        .filter_map(|m| protocol_spec::framing::encode(m).ok())
        .flatten()
        .collect()
}

/// A real phone's sessions on the deposit, as the honest relay saw them:
/// each request with the frame body it answered. A status, a recover with
/// the right password, one with a wrong password, a registration attempt
/// and a change of password (so the fuzzer starts from well-formed OPAQUE
/// messages and answers).
pub fn recorded_session() -> Vec<(msg::Request, Option<Vec<u8>>)> {
    let d = deposit();
    let vault = vault(d);
    let relay = Relay::honest(&vault);
    runtime().block_on(async {
        let c = phone(&relay, &d.profile);
        let _ = c.status().await;
        let _ = c.recover(PASSWORD).await;
        let _ = c.recover(b"wrong").await;
        let _ = c
            .register(b"another", &BackupKey::from_bytes([7; 32]), false)
            .await;
        let _ = c.change_password(PASSWORD, b"new password").await;
    });
    relay.log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// The requests of [`recorded_session`].
pub fn recorded_requests() -> Vec<msg::Request> {
    recorded_session().into_iter().map(|(r, _)| r).collect()
}

/// The answers of [`recorded_session`].
pub fn recorded_answers() -> Vec<Vec<u8>> {
    recorded_session()
        .into_iter()
        .filter_map(|(_, b)| b)
        .collect()
}
