//! The vault's request handling: OPAQUE around the account state machine.
//!
//! Order is the security property here. A login start parses the request,
//! then commits the guess through the replicated [`Ledger`] (on a majority
//! of replicas, each fsync'd; pacing decided when it is applied) and only
//! then evaluates the OPRF and answers. Bad input is rejected before any
//! state changes. Pending logins live in the memory of the replica that
//! counted the guess ([`crate::pending`] owns that table and its rules); if
//! leadership moves before the finish, the finish gets "session expired"
//! and the client starts again (counting another guess, the safe
//! direction) — except for the last guess, whose session is committed into
//! the row before the answer (one more commit, on that guess only), so any
//! leader can finish it.
//!
//! A verified recover answers at once and commits its reset afterwards
//! (one commit on the reply path: the guess); a lost reset leaves the count
//! one higher. After a last guess, the restoration commits first.
//!
//! Must never: send an OPRF evaluation whose guess is not committed, release
//! a key without a verified `CredentialFinalization`, release a last
//! guess's key before its restoration commits, read its own clock inside
//! the rules (the time goes into the command), or log account ids.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, ServerLogin,
    ServerLoginParameters, ServerRegistration,
};
use prost::Message;
use protocol_spec::limits::{LOGIN_SESSION_TTL, REGISTRATION_TICKET_TTL};
use protocol_spec::msg::{self, response, AccountState, LoginPurpose};
use protocol_spec::opaque_profile::{self as op, Suite};
use rand::{rngs::OsRng, RngCore};
use sha2::Sha256;

use crate::account::{
    self, Authorization, GuessRules, Pacing, Refusal, ReplaceRequest, SealedRecord, Status,
    StoredAccount,
};
use crate::ledger::{AccountLedger, Ledger};
use crate::pending::{Pending, PendingLogins, Reserved, SessionId};
use crate::raft::{Command, CommandResult};
use crate::request::{self, Op, RegisterFinish, Valid};
use crate::secrets::FleetSecrets;
use crate::VaultError;

/// Most logins that may be pending at once (memory bound).
pub const MAX_PENDING_LOGINS: usize = 100_000;

/// Command version from which the pacing, last-guess hold and waiting-period
/// commands exist (`raft::codec`).
const V2: u32 = 2;

enum PendingState {
    /// Between LoginStart and LoginFinish.
    AwaitFinish {
        server_login: Box<ServerLogin<Suite>>,
        /// Record erased from disk by the last guess, restored on success
        /// (command version 1 only; version 2 keeps it on hold in the row).
        held: Option<Box<StoredAccount>>,
        /// This login's guess was the last one.
        last: bool,
        wrapped_key: Vec<u8>,
        /// Guesses left when this login's guess was counted.
        attempts_left: u32,
        /// This login's guess number: a verified finish forgives up to it.
        seq: u64,
    },
    /// A verified change-password login, waiting for its RegisterFinish.
    ChangeAuthorized,
}

/// What the vault has to say to a request.
#[derive(Debug)]
pub enum Outcome {
    /// The answer for the client.
    Answer(msg::Response),
    /// This replica does not lead; nothing was done.
    NotLeader {
        /// Leader id, if known.
        leader_id: Option<u64>,
        /// Leader's gateway-facing address, if known.
        leader_addr: Option<std::net::SocketAddr>,
    },
}

/// Vault policy knobs.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Guesses per deposit.
    pub max_attempts: u32,
    /// Pacing of guesses (invariant 9).
    pub pacing: Pacing,
    /// Waiting period of a replacement proved only by a device (invariant 10).
    pub replacement_wait: Duration,
    /// Open login sessions one account may hold on a replica.
    pub max_logins_per_account: usize,
}

impl Policy {
    /// The production defaults with `max_attempts` guesses: pacing on, a
    /// 7-day replacement wait, 4 open logins per account.
    pub fn with_limit(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            pacing: Pacing::default(),
            replacement_wait: Duration::from_secs(7 * 24 * 3600),
            max_logins_per_account: 4,
        }
    }
}

/// The leader's clock, Unix ms (replaceable in tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One replica's request handler, over the replicated [`Ledger`] (or, in
/// unit tests, any [`AccountLedger`]).
pub struct Vault<L = Ledger> {
    secrets: Arc<FleetSecrets>,
    ledger: Arc<L>,
    policy: Policy,
    sessions: Mutex<PendingLogins<PendingState>>,
    clock: Clock,
}

impl<L> std::fmt::Debug for Vault<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn refusal(r: Refusal) -> VaultError {
    match r {
        Refusal::NotRegistered => VaultError::NotRegistered,
        Refusal::LockedOut => VaultError::LockedOut,
        Refusal::AlreadyRegistered => VaultError::AlreadyRegistered,
        Refusal::Stale => VaultError::SessionExpired,
        Refusal::Paced { wait_ms } => VaultError::Paced { wait_ms },
        Refusal::LastGuessOpen { wait_ms } => VaultError::LastGuessOpen { wait_ms },
        Refusal::ReplacementPending { wait_ms } => VaultError::ReplacementPending { wait_ms },
        Refusal::UnknownDevice => VaultError::PermissionDenied(
            "replacing a deposit without its password needs the device's identity, which this \
             gateway does not forward; upgrade the gateway",
        ),
    }
}

/// The AAD label of a last guess's sealed login state (apart from records).
fn hold_aad(registration_id: &[u8]) -> Vec<u8> {
    [registration_id, b"/last-guess-login"].concat()
}

/// A last guess's login state as sealed into its hold.
#[derive(Clone, PartialEq, prost::Message)]
struct HeldLogin {
    #[prost(bytes = "vec", tag = "1")]
    server_login: Vec<u8>,
    #[prost(int32, tag = "2")]
    purpose: i32,
}

fn proto<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> VaultError {
    move |e| VaultError::Protocol(format!("{what}: {e:?}"))
}

impl<L: AccountLedger> Vault<L> {
    /// A vault over a replica's ledger.
    pub fn new(secrets: Arc<FleetSecrets>, ledger: L, policy: Policy) -> Self {
        let per_account = policy.max_logins_per_account;
        Self {
            secrets,
            ledger: Arc::new(ledger),
            policy,
            sessions: Mutex::new(PendingLogins::new(
                MAX_PENDING_LOGINS,
                per_account,
                LOGIN_SESSION_TTL,
            )),
            clock: Arc::new(system_clock),
        }
    }

    /// Uses `clock` as the leader's time (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Whether the cluster writes the commands of pacing, the last guess's
    /// hold and the replacement wait (every member runs release 0.3.0+).
    fn v2(&self) -> bool {
        self.ledger.command_version() >= V2
    }

    /// Erases the records of last guesses whose login expired without
    /// verifying (invariant 3), as committed commands; on the leader, run
    /// periodically, so that a leader that takes over finishes what its
    /// predecessor left. Returns how many it erased.
    pub async fn erase_expired_holds(&self) -> Result<usize, VaultError> {
        if !self.v2() {
            return Ok(0);
        }
        let now = self.now_ms();
        let mut erased = 0;
        for (account_id, hold) in self.ledger.held_logins().await? {
            if now < hold.deadline_ms {
                continue;
            }
            self.commit(Command::EraseLastGuess {
                account_id,
                seq: hold.seq,
                failed: false,
                now_ms: now,
            })
            .await?;
            metrics::counter!("vault_lockouts_total").increment(1);
            erased += 1;
        }
        Ok(erased)
    }

    /// The pending-login table (a poisoned lock means a handler panicked
    /// while holding it: refuse rather than trust its contents).
    fn sessions(&self) -> Result<MutexGuard<'_, PendingLogins<PendingState>>, VaultError> {
        self.sessions
            .lock()
            .map_err(|_| VaultError::internal("the pending-login table is poisoned"))
    }

    /// The ledger.
    pub fn ledger(&self) -> &L {
        &self.ledger
    }

    /// Fleet secrets.
    pub fn secrets(&self) -> &FleetSecrets {
        &self.secrets
    }

    /// Handles one validated request ([`crate::request`]) of an
    /// authenticated account.
    pub async fn handle(&self, req: Valid) -> Outcome {
        let Valid {
            account_id,
            label,
            op,
            device_key,
        } = req;
        let account_id = account_id.as_str();
        let result = match op {
            Op::Status => self.status(account_id).await,
            Op::RegisterStart(r) => self.register_start(account_id, *r),
            Op::RegisterFinish(r) => self.register_finish(account_id, *r, device_key).await,
            Op::LoginStart { request, purpose } => {
                self.login_start(account_id, *request, purpose).await
            }
            Op::LoginFinish {
                session,
                finalization,
            } => self.login_finish(account_id, session, *finalization).await,
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => error_label(e),
        };
        metrics::counter!("vault_requests_total", "request" => label, "outcome" => outcome)
            .increment(1);
        match result {
            Ok(kind) => Outcome::Answer(msg::Response { kind: Some(kind) }),
            Err(VaultError::NotLeader {
                leader_id,
                leader_addr,
            }) => Outcome::NotLeader {
                leader_id,
                leader_addr,
            },
            Err(e) => Outcome::Answer(err(e)),
        }
    }

    /// Commits `cmd`; a refusal by the account rules comes back as its error.
    async fn commit(&self, cmd: Command) -> Result<CommandResult, VaultError> {
        match self.ledger.write(cmd).await? {
            CommandResult::Refused(r) => Err(refusal(r)),
            other => Ok(other),
        }
    }

    async fn status(&self, account_id: &str) -> Result<response::Kind, VaultError> {
        let row = self.ledger.read(account_id).await?;
        let max = self.policy.max_attempts;
        let (state, left, replacement) = match account::status(row.as_ref(), max, self.now_ms()) {
            Status::NotRegistered => (AccountState::NotRegistered, 0, None),
            Status::Active {
                attempts_left,
                replacement_in_ms,
            } => (AccountState::Active, attempts_left, replacement_in_ms),
            Status::LockedOut => (AccountState::LockedOut, 0, None),
        };
        Ok(response::Kind::Status(msg::StatusResponse {
            state: state as i32,
            attempts_left: left,
            max_attempts: max,
            replacement_pending: replacement.is_some(),
            replacement_wait_ms: replacement.unwrap_or(0),
        }))
    }

    fn ticket_mac(&self, account_id: &str, registration_id: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secrets.ticket_key())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(&(account_id.len() as u16).to_be_bytes());
        mac.update(account_id.as_bytes());
        mac.update(registration_id);
        mac
    }

    fn register_start(
        &self,
        account_id: &str,
        request: RegistrationRequest<Suite>,
    ) -> Result<response::Kind, VaultError> {
        // A fresh registration id gives this registration its own OPRF key, so
        // registration starts are no oracle for an existing deposit. It
        // starts with the issue time, which the ticket's MAC covers: the
        // finish checks the ticket's age (`REGISTRATION_TICKET_TTL`).
        let mut registration_id = [0u8; 16];
        registration_id[..8].copy_from_slice(&self.now_ms().to_be_bytes());
        OsRng.fill_bytes(&mut registration_id[8..]);
        let cred_id =
            op::credential_identifier(&self.secrets.fleet_id, account_id, &registration_id);
        let start =
            ServerRegistration::<Suite>::start(&self.secrets.server_setup, request, &cred_id)
                .map_err(proto("registration start"))?;
        let tag = self
            .ticket_mac(account_id, &registration_id)
            .finalize()
            .into_bytes();
        let mut ticket = registration_id.to_vec();
        ticket.extend_from_slice(&tag[..16]);
        Ok(response::Kind::RegisterStart(msg::RegisterStartResponse {
            registration_response: start.message.serialize().to_vec(),
            registration_ticket: ticket,
        }))
    }

    async fn register_finish(
        &self,
        account_id: &str,
        r: RegisterFinish,
        device_key: Option<[u8; 32]>,
    ) -> Result<response::Kind, VaultError> {
        let registration_id = &r.registration_id[..];
        self.ticket_mac(account_id, registration_id)
            .verify_truncated_left(&r.tag)
            .map_err(|_| {
                VaultError::PermissionDenied("registration ticket was not issued to this account")
            })?;
        // A ticket is good for one registration, soon after it was issued.
        // Without this, a gateway that kept a phone's finish could send it
        // again once the guesses were used up and the deposit erased, and
        // bring the deposit back with its guesses restored (found while
        // writing the `vault_handler` fuzz target).
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&r.registration_id[..8]);
        let issued = u64::from_be_bytes(issued);
        let (now, ttl) = (self.now_ms(), ms(REGISTRATION_TICKET_TTL));
        if now.saturating_sub(issued) > ttl || issued.saturating_sub(now) > ttl {
            return Err(VaultError::PermissionDenied(
                "the registration ticket has expired; start the registration again",
            ));
        }
        if let Some(row) = self.ledger.read(account_id).await? {
            if row.registration_id == registration_id {
                if row.state == account::STATE_ACTIVE {
                    // This very registration is in place: the phone sent its
                    // finish again (its answer was lost). Nothing to change.
                    return Ok(response::Kind::RegisterFinish(
                        msg::RegisterFinishResponse {
                            max_attempts: self.policy.max_attempts,
                        },
                    ));
                }
                return Err(VaultError::PermissionDenied(
                    "this registration was already used; start the registration again",
                ));
            }
        }
        let password_file = ServerRegistration::<Suite>::finish(r.upload)
            .serialize()
            .to_vec();
        let auth = match r.authorization {
            request::Authorization::None => Authorization::None,
            request::Authorization::ReplaceExisting => Authorization::ReplaceExisting,
            request::Authorization::LoginSession(s) => {
                let reg = self.take_change_authorization(account_id, &s)?;
                Authorization::VerifiedLogin {
                    registration_id: reg,
                }
            }
        };
        let sealed = self.secrets.seal(
            account_id,
            registration_id,
            &SealedRecord {
                password_file,
                wrapped_key: r.wrapped_key,
            }
            .encode_to_vec(),
        )?;
        let cmd = if self.v2() {
            Command::RegisterAt {
                account_id: account_id.to_owned(),
                authorization: auth,
                registration_id: registration_id.to_vec(),
                sealed_record: sealed,
                replace: ReplaceRequest {
                    device_key: device_key.map(|k| k.to_vec()).unwrap_or_default(),
                    now_ms: self.now_ms(),
                    wait_ms: ms(self.policy.replacement_wait),
                },
            }
        } else {
            if auth == Authorization::ReplaceExisting {
                // Version 1's replacement is immediate: while a rolling
                // upgrade holds the cluster there, none without proof.
                return Err(VaultError::Unavailable(
                    "the vault cluster is being upgraded; replacing a deposit without its \
                     password is possible again when the upgrade is done"
                        .into(),
                ));
            }
            Command::Register {
                account_id: account_id.to_owned(),
                authorization: auth,
                registration_id: registration_id.to_vec(),
                sealed_record: sealed,
            }
        };
        if let CommandResult::ReplacementPending { wait_ms } = self.commit(cmd).await? {
            metrics::counter!("vault_replacements_pending_total").increment(1);
            return Err(VaultError::ReplacementPending { wait_ms });
        }
        metrics::counter!("vault_registrations_total").increment(1);
        Ok(response::Kind::RegisterFinish(
            msg::RegisterFinishResponse {
                max_attempts: self.policy.max_attempts,
            },
        ))
    }

    fn take_change_authorization(
        &self,
        account_id: &str,
        session: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let taken = self
            .sessions()?
            .take(session, account_id, Instant::now(), |p| {
                p.purpose == LoginPurpose::ChangePassword
                    && matches!(p.state, PendingState::ChangeAuthorized)
            });
        match taken {
            Some(p) => Ok(p.registration_id),
            None => Err(VaultError::PermissionDenied(
                "changing the password needs a verified change-password login in this session",
            )),
        }
    }

    async fn login_start(
        &self,
        account_id: &str,
        request: CredentialRequest<Suite>,
        purpose: LoginPurpose,
    ) -> Result<response::Kind, VaultError> {
        // Everything that can be checked without state was checked at the
        // boundary (`request::validate`); a full table refuses before the
        // guess is counted.
        self.reserve_session_slot(account_id)?;

        // Count before answer: this commit (on a majority) happens before any
        // OPRF work; pacing is decided when it is applied, at the leader's
        // time carried in the command.
        let v2 = self.v2();
        let cmd = if v2 {
            Command::LoginStartAt {
                account_id: account_id.to_owned(),
                rules: GuessRules {
                    max_attempts: self.policy.max_attempts,
                    pacing: self.policy.pacing,
                    now_ms: self.now_ms(),
                    session_ttl_ms: ms(LOGIN_SESSION_TTL),
                },
            }
        } else {
            Command::LoginStart {
                account_id: account_id.to_owned(),
                max_attempts: self.policy.max_attempts,
            }
        };
        let committed = match self.commit(cmd).await {
            Err(e @ VaultError::Paced { .. }) => {
                metrics::counter!("vault_guesses_paced_total").increment(1);
                return Err(e);
            }
            other => other?,
        };
        let guess = match committed {
            CommandResult::Guess {
                record,
                attempts_left,
                last,
                seq,
            } => account::Guess {
                record: StoredAccount::decode(record.as_slice())
                    .map_err(VaultError::internal_from("decoding the counted row"))?,
                attempts_left,
                last,
                seq,
            },
            other => {
                return Err(VaultError::internal(format!(
                    "login start committed as {other:?}"
                )))
            }
        };
        metrics::counter!("vault_guesses_counted_total").increment(1);
        if guess.last {
            metrics::counter!("vault_last_guess_erasures_total").increment(1);
        }

        let record = SealedRecord::decode(
            self.secrets
                .open(
                    account_id,
                    &guess.record.registration_id,
                    &guess.record.sealed_record,
                )?
                .as_slice(),
        )
        .map_err(VaultError::internal_from("decoding the sealed record"))?;
        let password_file = ServerRegistration::<Suite>::deserialize(&record.password_file)
            .map_err(VaultError::internal_from("decoding the password file"))?;
        let cred_id = op::credential_identifier(
            &self.secrets.fleet_id,
            account_id,
            &guess.record.registration_id,
        );
        let start = ServerLogin::start(
            &mut OsRng,
            &self.secrets.server_setup,
            Some(password_file),
            request,
            &cred_id,
            ServerLoginParameters {
                context: None,
                identifiers: op::identifiers(account_id, &self.secrets.fleet_id),
            },
        )
        .map_err(proto("login start"))?;

        let mut session = [0u8; 16];
        OsRng.fill_bytes(&mut session);
        if guess.last && v2 {
            // The owner's right password on the last guess must survive a
            // leader change: the session goes into the row before the answer.
            let held = HeldLogin {
                server_login: start.state.serialize().to_vec(),
                purpose: purpose as i32,
            };
            let sealed_state = self.secrets.seal(
                account_id,
                &hold_aad(&guess.record.registration_id),
                &held.encode_to_vec(),
            )?;
            self.commit(Command::HoldSession {
                account_id: account_id.to_owned(),
                seq: guess.seq,
                session_id: session.to_vec(),
                sealed_state,
            })
            .await?;
        }
        let pending = Pending {
            account_id: account_id.to_owned(),
            registration_id: guess.record.registration_id.clone(),
            purpose,
            created: Instant::now(),
            state: PendingState::AwaitFinish {
                server_login: Box::new(start.state),
                held: (guess.last && !v2).then(|| Box::new(guess.record.clone())),
                last: guess.last,
                wrapped_key: record.wrapped_key,
                attempts_left: guess.attempts_left,
                seq: guess.seq,
            },
        };
        self.sessions()?.insert(session, pending);
        metrics::counter!("vault_oprf_evaluations_total").increment(1);
        Ok(response::Kind::LoginStart(msg::LoginStartResponse {
            credential_response: start.message.serialize().to_vec(),
            login_session: session.to_vec(),
            attempts_left: guess.attempts_left,
        }))
    }

    fn reserve_session_slot(&self, account_id: &str) -> Result<(), VaultError> {
        match self.sessions()?.reserve(account_id, Instant::now()) {
            Ok(Reserved::Room) => Ok(()),
            Ok(Reserved::EvictedOldest(_)) => {
                metrics::counter!("vault_login_sessions_evicted_total").increment(1);
                Ok(())
            }
            Err(_) => Err(VaultError::Busy),
        }
    }

    /// A last guess's login this replica does not remember (another leader
    /// counted it, or this one restarted): its committed hold, if `key` is
    /// its session and it has not expired.
    async fn held_login(
        &self,
        account_id: &str,
        key: &SessionId,
    ) -> Result<Pending<PendingState>, VaultError> {
        let row = self
            .ledger
            .read(account_id)
            .await?
            .ok_or(VaultError::SessionExpired)?;
        let hold = row
            .hold
            .clone()
            .filter(|h| h.session_id == key && self.now_ms() < h.deadline_ms)
            .ok_or(VaultError::SessionExpired)?;
        let held = HeldLogin::decode(
            self.secrets
                .open(
                    account_id,
                    &hold_aad(&row.registration_id),
                    &hold.sealed_state,
                )?
                .as_slice(),
        )
        .map_err(VaultError::internal_from("decoding a held login"))?;
        let server_login = ServerLogin::<Suite>::deserialize(&held.server_login)
            .map_err(VaultError::internal_from("decoding a held login state"))?;
        let record = SealedRecord::decode(
            self.secrets
                .open(account_id, &row.registration_id, &row.sealed_record)?
                .as_slice(),
        )
        .map_err(VaultError::internal_from("decoding the sealed record"))?;
        Ok(Pending {
            account_id: account_id.to_owned(),
            registration_id: row.registration_id.clone(),
            purpose: LoginPurpose::try_from(held.purpose).unwrap_or(LoginPurpose::Unspecified),
            created: Instant::now(),
            state: PendingState::AwaitFinish {
                server_login: Box::new(server_login),
                held: None,
                last: true,
                wrapped_key: record.wrapped_key,
                attempts_left: 0,
                seq: hold.seq,
            },
        })
    }

    async fn login_finish(
        &self,
        account_id: &str,
        key: SessionId,
        finalization: CredentialFinalization<Suite>,
    ) -> Result<response::Kind, VaultError> {
        // Only the account that started a login can finish it.
        let remembered = self
            .sessions()?
            .take(&key, account_id, Instant::now(), |p| {
                matches!(p.state, PendingState::AwaitFinish { .. })
            });
        let pending = match remembered {
            Some(p) => p,
            None if self.v2() => self.held_login(account_id, &key).await?,
            None => return Err(VaultError::SessionExpired),
        };
        let PendingState::AwaitFinish {
            server_login,
            held,
            last,
            wrapped_key,
            attempts_left: attempts_at_start,
            seq,
        } = pending.state
        else {
            return Err(VaultError::SessionExpired);
        };
        let finished = server_login.finish(
            finalization,
            ServerLoginParameters {
                context: None,
                identifiers: op::identifiers(account_id, &self.secrets.fleet_id),
            },
        );
        let session_key = match finished {
            Ok(f) => f.session_key,
            Err(_) => {
                if held.is_some() {
                    metrics::counter!("vault_lockouts_total").increment(1);
                    return Err(VaultError::LockedOut);
                }
                if last {
                    // The last guess did not verify: erase now (should this
                    // commit fail, the hold's expiry erases it).
                    self.commit(Command::EraseLastGuess {
                        account_id: account_id.to_owned(),
                        seq,
                        failed: true,
                        now_ms: self.now_ms(),
                    })
                    .await?;
                    metrics::counter!("vault_lockouts_total").increment(1);
                    return Err(VaultError::LockedOut);
                }
                // The live count (other logins may have guessed since);
                // the count at this login's start if the read fails.
                let attempts_left = match self.ledger.read(account_id).await {
                    Ok(row) => {
                        match account::status(row.as_ref(), self.policy.max_attempts, self.now_ms())
                        {
                            Status::Active { attempts_left, .. } => attempts_left,
                            _ => 0,
                        }
                    }
                    Err(_) => attempts_at_start,
                };
                return Err(VaultError::WrongPassword { attempts_left });
            }
        };

        match pending.purpose {
            LoginPurpose::Disable => {
                self.commit(Command::Disable {
                    account_id: account_id.to_owned(),
                    registration_id: pending.registration_id.clone(),
                })
                .await?;
                metrics::counter!("vault_disables_total").increment(1);
                Ok(response::Kind::LoginFinish(msg::LoginFinishResponse {
                    sealed_key: Vec::new(),
                }))
            }
            LoginPurpose::Recover | LoginPurpose::ChangePassword => {
                let reset = Command::LoginVerified {
                    account_id: account_id.to_owned(),
                    registration_id: pending.registration_id.clone(),
                    held: held.as_ref().map(|h| h.encode_to_vec()),
                    seq,
                };
                if last || held.is_some() {
                    // The record's restoration commits before the key goes.
                    self.commit(reset).await?;
                } else {
                    // Off the reply path (invariant 2): the reset forgives
                    // only guesses numbered up to this one, so committing it
                    // late, or losing it, never forgives too much; concurrent
                    // resets share openraft's log batches.
                    let ledger = self.ledger.clone();
                    tokio::spawn(async move {
                        if ledger.write(reset).await.is_err() {
                            metrics::counter!("vault_resets_lost_total").increment(1);
                        }
                    });
                }
                let sealed_key = op::seal_release(&session_key, &key, &wrapped_key)
                    .map_err(VaultError::internal_from("sealing the released key"))?;
                if pending.purpose == LoginPurpose::ChangePassword {
                    self.sessions()?.insert(
                        key,
                        Pending {
                            account_id: account_id.to_owned(),
                            registration_id: pending.registration_id,
                            purpose: LoginPurpose::ChangePassword,
                            created: Instant::now(),
                            state: PendingState::ChangeAuthorized,
                        },
                    );
                }
                metrics::counter!("vault_keys_released_total").increment(1);
                Ok(response::Kind::LoginFinish(msg::LoginFinishResponse {
                    sealed_key,
                }))
            }
            LoginPurpose::Unspecified => Err(VaultError::Protocol("login purpose".into())),
        }
    }
}

/// The wire answer for an error.
pub fn err(e: VaultError) -> msg::Response {
    msg::Response {
        kind: Some(response::Kind::Error(e.to_wire())),
    }
}

fn error_label(e: &VaultError) -> &'static str {
    match e {
        VaultError::Protocol(_) => "protocol_error",
        VaultError::NotRegistered => "not_registered",
        VaultError::LockedOut => "locked_out",
        VaultError::WrongPassword { .. } => "wrong_password",
        VaultError::AlreadyRegistered => "already_registered",
        VaultError::SessionExpired => "session_expired",
        VaultError::PermissionDenied(_) => "permission_denied",
        VaultError::Busy => "busy",
        VaultError::Paced { .. } => "paced",
        VaultError::LastGuessOpen { .. } => "last_guess_open",
        VaultError::ReplacementPending { .. } => "replacement_pending",
        VaultError::Storage(_) | VaultError::Unavailable(_) => "unavailable",
        VaultError::NotLeader { .. } => "not_leader",
        VaultError::Internal { .. } | VaultError::File(_) | VaultError::Pki(_) => "internal",
    }
}

#[cfg(test)]
mod tests;
