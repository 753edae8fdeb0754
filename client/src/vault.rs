//! Vault operations over an authenticated connection: register (deposit),
//! recover, status, change password, disable. OPAQUE runs end to end with the
//! vault; the gateway only relays.
//!
//! Must never: send a registration upload or accept a key before checking the
//! vault's OPAQUE public key against the pinned fleet key.

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use protocol_spec::msg::{
    self, request::Kind as Req, response::Kind as Resp, AccountState, LoginPurpose,
};
use protocol_spec::opaque_profile::{self as op, Suite};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::{BackupKey, ClientError, ClientProfile, GatewayConnection};

/// Deposit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Nothing deposited.
    NotRegistered,
    /// Deposited; guesses left.
    Active {
        /// Guesses left.
        attempts_left: u32,
        /// Guess limit.
        max_attempts: u32,
        /// A replacement without the password is pending, and may complete
        /// after this long.
        replacement_in: Option<std::time::Duration>,
    },
    /// Erased by the guess limit.
    LockedOut,
}

/// Size of an OPAQUE `CredentialFinalization` in this suite.
const FINALIZATION_LEN: usize = 64;
/// How long a login finish is retried while the vault is unavailable (well
/// inside `limits::LOGIN_SESSION_TTL`).
const FINISH_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);
/// Pause between those retries.
const FINISH_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`VaultClient`] needs of a connection: send one request, get its
/// answer, for the account the gateway authenticated. [`GatewayConnection`]
/// is the one phones use; a hostile gateway under test (the fuzz harness's
/// `client_responses` target) is another, which answers whatever it likes.
pub trait Exchange: Send + Sync {
    /// The account the gateway authenticated this connection as.
    fn account_id(&self) -> &str;

    /// One request and its answer.
    fn request(
        &self,
        req: &msg::Request,
    ) -> impl std::future::Future<Output = Result<msg::Response, ClientError>> + Send;
}

impl Exchange for GatewayConnection {
    fn account_id(&self) -> &str {
        GatewayConnection::account_id(self)
    }

    async fn request(&self, req: &msg::Request) -> Result<msg::Response, ClientError> {
        GatewayConnection::request(self, req).await
    }
}

/// Vault operations for the connection's account.
pub struct VaultClient<'c, C = GatewayConnection> {
    conn: &'c C,
    fleet_id: String,
    fleet_key: [u8; 32],
    ksf: opaque_ke::argon2::Argon2<'static>,
}

impl<C> std::fmt::Debug for VaultClient<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("fleet_id", &self.fleet_id)
            .finish_non_exhaustive()
    }
}

struct Verified {
    session: Vec<u8>,
    sealed_key: Vec<u8>,
    session_key: Zeroizing<Vec<u8>>,
    export_key: Zeroizing<Vec<u8>>,
}

/// How many times one request is sent again after a short `BUSY`.
pub const BUSY_RESENDS: u32 = 2;

impl<'c, C: Exchange> VaultClient<'c, C> {
    /// Uses the profile's fleet pin and the standard client KSF.
    pub fn new(conn: &'c C, profile: &ClientProfile) -> Result<Self, ClientError> {
        Ok(Self {
            conn,
            fleet_id: profile.fleet_id.clone(),
            fleet_key: profile.fleet_key()?,
            ksf: op::client_ksf(),
        })
    }

    /// Replaces the client KSF (load tests only: see
    /// `opaque_profile::cheap_ksf_for_load_tests`). The KSF must be the same
    /// at registration and login.
    pub fn with_ksf(mut self, ksf: opaque_ke::argon2::Argon2<'static>) -> Self {
        self.ksf = ksf;
        self
    }

    fn account(&self) -> &str {
        self.conn.account_id()
    }

    /// One request; a short `BUSY` (a budget or load shedding: nothing was
    /// counted or changed) is waited out as the answer says and the request
    /// sent again, at most [`BUSY_RESENDS`] times. A longer one (pacing of
    /// guesses) is the caller's to show.
    async fn call(&self, kind: Req) -> Result<Resp, ClientError> {
        let req = msg::Request { kind: Some(kind) };
        let mut resends = 0;
        loop {
            let resp = self.conn.request(&req).await?;
            match resp.kind {
                Some(Resp::Error(e)) => match ClientError::from_wire(&e) {
                    ClientError::Busy { retry_after, .. }
                        if retry_after <= crate::error::PACED_ABOVE && resends < BUSY_RESENDS =>
                    {
                        resends += 1;
                        tokio::time::sleep(retry_after).await;
                    }
                    err => return Err(err),
                },
                Some(k) => return Ok(k),
                None => return Err(ClientError::Protocol("empty response".into())),
            }
        }
    }

    fn check_pin(&self, presented: &[u8]) -> Result<(), ClientError> {
        if presented != self.fleet_key.as_slice() {
            return Err(ClientError::VaultKeyMismatch {
                got: hex::encode(presented),
                pinned: hex::encode(self.fleet_key),
            });
        }
        Ok(())
    }

    /// Deposit status.
    pub async fn status(&self) -> Result<Status, ClientError> {
        match self.call(Req::Status(msg::StatusRequest {})).await? {
            Resp::Status(s) => Ok(match s.state() {
                AccountState::Active => Status::Active {
                    attempts_left: s.attempts_left,
                    max_attempts: s.max_attempts,
                    replacement_in: s
                        .replacement_pending
                        .then(|| std::time::Duration::from_millis(s.replacement_wait_ms)),
                },
                AccountState::LockedOut => Status::LockedOut,
                _ => Status::NotRegistered,
            }),
            _ => Err(ClientError::Protocol(
                "unexpected response to status".into(),
            )),
        }
    }

    /// Deposits `key` protected by `password`. With `replace_existing`, an
    /// existing deposit is destroyed (warn the user first).
    pub async fn register(
        &self,
        password: &[u8],
        key: &BackupKey,
        replace_existing: bool,
    ) -> Result<(), ClientError> {
        use msg::register_finish_request::Authorization;
        self.register_with(
            password,
            key,
            Some(Authorization::ReplaceExisting(replace_existing)),
        )
        .await
    }

    async fn register_with(
        &self,
        password: &[u8],
        key: &BackupKey,
        authorization: Option<msg::register_finish_request::Authorization>,
    ) -> Result<(), ClientError> {
        let start = ClientRegistration::<Suite>::start(&mut OsRng, password)
            .map_err(|e| ClientError::Protocol(format!("{e:?}")))?;
        let Resp::RegisterStart(rs) = self
            .call(Req::RegisterStart(msg::RegisterStartRequest {
                registration_request: start.message.serialize().to_vec(),
            }))
            .await?
        else {
            return Err(ClientError::Protocol(
                "unexpected response to register start".into(),
            ));
        };
        let response = RegistrationResponse::<Suite>::deserialize(&rs.registration_response)
            .map_err(|e| ClientError::Protocol(format!("registration response: {e:?}")))?;
        let finish = start
            .state
            .finish(
                &mut OsRng,
                password,
                response,
                ClientRegistrationFinishParameters::new(
                    op::identifiers(self.account(), &self.fleet_id),
                    Some(&self.ksf),
                ),
            )
            .map_err(|e| ClientError::Protocol(format!("registration finish: {e:?}")))?;
        // The pin check happens before anything derived from the password leaves.
        self.check_pin(&finish.server_s_pk.serialize())?;
        let wrapped = op::wrap_backup_key(
            &finish.export_key,
            self.account(),
            &self.fleet_id,
            key.as_bytes(),
        )
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        match self
            .call(Req::RegisterFinish(msg::RegisterFinishRequest {
                registration_ticket: rs.registration_ticket,
                registration_upload: finish.message.serialize().to_vec(),
                wrapped_key: wrapped,
                authorization,
            }))
            .await?
        {
            Resp::RegisterFinish(_) => Ok(()),
            _ => Err(ClientError::Protocol(
                "unexpected response to register finish".into(),
            )),
        }
    }

    async fn login(&self, password: &[u8], purpose: LoginPurpose) -> Result<Verified, ClientError> {
        let start = ClientLogin::<Suite>::start(&mut OsRng, password)
            .map_err(|e| ClientError::Protocol(format!("{e:?}")))?;
        let Resp::LoginStart(ls) = self
            .call(Req::LoginStart(msg::LoginStartRequest {
                credential_request: start.message.serialize().to_vec(),
                purpose: purpose as i32,
            }))
            .await
            .map_err(|e| match e {
                // A long wait before a guess is the vault's pacing.
                ClientError::Busy { retry_after, .. }
                    if retry_after > crate::error::PACED_ABOVE =>
                {
                    ClientError::Paced { retry_after }
                }
                e => e,
            })?
        else {
            return Err(ClientError::Protocol(
                "unexpected response to login start".into(),
            ));
        };
        let response = CredentialResponse::<Suite>::deserialize(&ls.credential_response)
            .map_err(|e| ClientError::Protocol(format!("credential response: {e:?}")))?;
        let finish = match start.state.finish(
            &mut OsRng,
            password,
            response,
            ClientLoginFinishParameters::new(
                None,
                op::identifiers(self.account(), &self.fleet_id),
                Some(&self.ksf),
            ),
        ) {
            Ok(f) => f,
            Err(opaque_ke::errors::ProtocolError::InvalidLoginError) => {
                // Tell the vault, with a finalization that cannot verify: the
                // session ends now, and a wrong last guess is erased now
                // rather than when its session would expire.
                let told = self
                    .finish_login(&ls.login_session, vec![0; FINALIZATION_LEN])
                    .await;
                return Err(match told {
                    Err(e @ (ClientError::WrongPassword { .. } | ClientError::LockedOut)) => e,
                    _ if ls.attempts_left == 0 => ClientError::LockedOut,
                    _ => ClientError::WrongPassword {
                        attempts_left: ls.attempts_left,
                    },
                });
            }
            Err(e) => return Err(ClientError::Protocol(format!("login finish: {e:?}"))),
        };
        self.check_pin(&finish.server_s_pk.serialize())?;
        let lf = self
            .finish_login(&ls.login_session, finish.message.serialize().to_vec())
            .await?;
        Ok(Verified {
            session: ls.login_session,
            sealed_key: lf.sealed_key,
            session_key: Zeroizing::new(finish.session_key.to_vec()),
            export_key: Zeroizing::new(finish.export_key.to_vec()),
        })
    }

    /// Sends a login finish. If the vault is unavailable (its leader
    /// changed), the finish is sent again a few times within the session's
    /// lifetime: the last guess's session is committed, so the new leader
    /// can finish it (and any other gets "session expired", as before).
    async fn finish_login(
        &self,
        session: &[u8],
        finalization: Vec<u8>,
    ) -> Result<msg::LoginFinishResponse, ClientError> {
        let deadline = tokio::time::Instant::now() + FINISH_RETRY_BUDGET;
        let req = msg::Request {
            kind: Some(Req::LoginFinish(msg::LoginFinishRequest {
                login_session: session.to_vec(),
                credential_finalization: finalization,
            })),
        };
        loop {
            // Only the vault's UNAVAILABLE is retried here: a session the
            // new leader does not know (SESSION_EXPIRED) ends the login.
            let again = tokio::time::Instant::now() < deadline;
            match self.conn.request(&req).await?.kind {
                Some(Resp::LoginFinish(lf)) => return Ok(lf),
                Some(Resp::Error(e)) if e.code() == msg::ErrorCode::Unavailable && again => {
                    tokio::time::sleep(FINISH_RETRY_PAUSE).await;
                }
                Some(Resp::Error(e)) => return Err(ClientError::from_wire(&e)),
                _ => {
                    return Err(ClientError::Protocol(
                        "unexpected response to login finish".into(),
                    ))
                }
            }
        }
    }

    fn open_key(&self, v: &Verified) -> Result<BackupKey, ClientError> {
        let wrapped = op::open_release(&v.session_key, &v.session, &v.sealed_key)
            .map_err(|e| ClientError::Protocol(format!("released key: {e}")))?;
        let k = op::unwrap_backup_key(&v.export_key, self.account(), &self.fleet_id, &wrapped)
            .map_err(|e| ClientError::Protocol(format!("released key: {e}")))?;
        Ok(BackupKey::from_bytes(*k))
    }

    /// Recovers the backup key with the password. Each call uses one guess.
    pub async fn recover(&self, password: &[u8]) -> Result<BackupKey, ClientError> {
        let v = self.login(password, LoginPurpose::Recover).await?;
        self.open_key(&v)
    }

    /// Changes the password, proving the old one in the same exchange.
    pub async fn change_password(&self, old: &[u8], new: &[u8]) -> Result<(), ClientError> {
        let v = self.login(old, LoginPurpose::ChangePassword).await?;
        let key = self.open_key(&v)?;
        use msg::register_finish_request::Authorization;
        self.register_with(
            new,
            &key,
            Some(Authorization::LoginSession(v.session.clone())),
        )
        .await
    }

    /// Removes the deposit after proving the password.
    pub async fn disable(&self, password: &[u8]) -> Result<(), ClientError> {
        self.login(password, LoginPurpose::Disable)
            .await
            .map(|_| ())
    }
}
