//! The vault's trust boundary with the gateway: a [`VaultRequest`]'s inner
//! request becomes a [`Valid`] one here, or is refused with a typed
//! protocol error, before anything reads state. The gateway validates what
//! phones send at its own boundary; a replica does not trust the gateway
//! (it may be compromised), so it checks again here, once: the service
//! ([`crate::service`]) takes only [`Valid`] requests and re-checks nothing.
//!
//! Must never: allocate from a length the peer announced (prost has already
//! decoded within the frame limit; this only checks sizes and parses the
//! fixed-size OPAQUE messages), or touch the ledger.
//!
//! [`VaultRequest`]: protocol_spec::internal::VaultRequest

use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
};
use protocol_spec::msg::{self, request::Kind, LoginPurpose};
use protocol_spec::opaque_profile::{self as op, Suite};

use crate::pending::SessionId;
use crate::VaultError;

/// A request that passed every check that needs no state.
#[derive(Debug)]
pub struct Valid {
    /// The account, as the gateway authenticated it (well-formed).
    pub account_id: String,
    /// The request kind's metric label (`msg::Request::kind_label`).
    pub label: &'static str,
    /// What is asked.
    pub op: Op,
    /// The asking device's Noise static key, when the gateway says it.
    pub device_key: Option<[u8; 32]>,
}

impl Valid {
    /// Adds the device key the gateway forwarded (empty: none; otherwise
    /// exactly 32 bytes).
    pub fn with_device(mut self, key: &[u8]) -> Result<Self, VaultError> {
        self.device_key = match key.len() {
            0 => None,
            _ => Some(exact(key, "device_key")?),
        };
        Ok(self)
    }
}

/// The operations, with their OPAQUE messages parsed.
#[derive(Debug)]
pub enum Op {
    /// Account status.
    Status,
    /// OPAQUE registration, first message.
    RegisterStart(Box<RegistrationRequest<Suite>>),
    /// OPAQUE registration upload with the wrapped key.
    RegisterFinish(Box<RegisterFinish>),
    /// OPAQUE login start: counts a guess.
    LoginStart {
        /// The credential request.
        request: Box<CredentialRequest<Suite>>,
        /// Recover, change password or disable (never unspecified).
        purpose: LoginPurpose,
    },
    /// OPAQUE login finish.
    LoginFinish {
        /// The session the login start handed out.
        session: SessionId,
        /// The client's finalization.
        finalization: Box<CredentialFinalization<Suite>>,
    },
}

/// A parsed `RegisterFinish`.
#[derive(Debug)]
pub struct RegisterFinish {
    /// The registration id the vault issued in `RegisterStart`.
    pub registration_id: [u8; 16],
    /// Its MAC tag (truncated), checked by the service with the ticket key.
    pub tag: [u8; 16],
    /// The client's upload.
    pub upload: RegistrationUpload<Suite>,
    /// The backup key wrapped under the export key.
    pub wrapped_key: Vec<u8>,
    /// Why a replacement of an existing deposit is allowed, if it is.
    pub authorization: Authorization,
}

/// How a `RegisterFinish` is authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// A first deposit only.
    None,
    /// Replace whatever is deposited (the phone's explicit choice).
    ReplaceExisting,
    /// Replace after a verified change-password login in this session.
    LoginSession(SessionId),
}

fn proto<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> VaultError {
    move |e| VaultError::Protocol(format!("{what}: {e:?}"))
}

fn exact<const N: usize>(b: &[u8], what: &'static str) -> Result<[u8; N], VaultError> {
    b.try_into()
        .map_err(|_| VaultError::Protocol(format!("{what} has the wrong size")))
}

/// Checks and parses one request of `account_id`.
pub fn validate(account_id: &str, req: msg::Request) -> Result<Valid, VaultError> {
    if !protocol_spec::credential::valid_account_id(account_id) {
        return Err(VaultError::Protocol("invalid account id".into()));
    }
    protocol_spec::framing::validate_request(&req)
        .map_err(|e| VaultError::Protocol(e.to_string()))?;
    let label = req.kind_label();
    let op = match req.kind {
        None => return Err(VaultError::Protocol("request has no kind".into())),
        Some(Kind::Status(_)) => Op::Status,
        Some(Kind::RegisterStart(r)) => Op::RegisterStart(Box::new(
            RegistrationRequest::<Suite>::deserialize(&r.registration_request)
                .map_err(proto("registration_request"))?,
        )),
        Some(Kind::RegisterFinish(r)) => {
            let ticket: [u8; op::REGISTRATION_TICKET_LEN] =
                exact(&r.registration_ticket, "registration_ticket")?;
            let (id, tag) = ticket.split_at(16);
            if r.wrapped_key.len() != op::WRAPPED_KEY_LEN {
                return Err(VaultError::Protocol(
                    "wrapped_key has the wrong size".into(),
                ));
            }
            use msg::register_finish_request::Authorization as A;
            let authorization = match r.authorization {
                None | Some(A::ReplaceExisting(false)) => Authorization::None,
                Some(A::ReplaceExisting(true)) => Authorization::ReplaceExisting,
                Some(A::LoginSession(s)) => {
                    Authorization::LoginSession(exact(&s, "login_session")?)
                }
            };
            Op::RegisterFinish(Box::new(RegisterFinish {
                registration_id: exact(id, "registration id")?,
                tag: exact(tag, "registration tag")?,
                upload: RegistrationUpload::<Suite>::deserialize(&r.registration_upload)
                    .map_err(proto("registration_upload"))?,
                wrapped_key: r.wrapped_key,
                authorization,
            }))
        }
        Some(Kind::LoginStart(r)) => Op::LoginStart {
            request: Box::new(
                CredentialRequest::<Suite>::deserialize(&r.credential_request)
                    .map_err(proto("credential_request"))?,
            ),
            purpose: match LoginPurpose::try_from(r.purpose) {
                Ok(p) if p != LoginPurpose::Unspecified => p,
                _ => {
                    return Err(VaultError::Protocol(
                        "login purpose missing or unknown".into(),
                    ))
                }
            },
        },
        Some(Kind::LoginFinish(r)) => Op::LoginFinish {
            session: exact(&r.login_session, "login_session")?,
            finalization: Box::new(
                CredentialFinalization::<Suite>::deserialize(&r.credential_finalization)
                    .map_err(proto("credential_finalization"))?,
            ),
        },
    };
    Ok(Valid {
        account_id: account_id.to_owned(),
        label,
        op,
        device_key: None,
    })
}

/// Decodes a frame body as a gateway's `VaultRequest` and validates its
/// request, as a replica's server does; for fuzzing.
pub fn fuzz_validate(body: &[u8]) -> bool {
    match protocol_spec::framing::decode::<protocol_spec::internal::VaultRequest>(body) {
        Ok(req) => match req.request {
            Some(inner) => validate(&req.account_id, inner)
                .and_then(|v| v.with_device(&req.device_key))
                .is_ok(),
            None => false,
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(account: &str, kind: Option<Kind>) -> String {
        match validate(account, msg::Request { kind }) {
            Err(VaultError::Protocol(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_requests_are_refused_before_any_state_is_read() {
        assert!(refused("", Some(Kind::Status(msg::StatusRequest {}))).contains("account id"));
        assert!(
            refused(&"a".repeat(200), Some(Kind::Status(msg::StatusRequest {})))
                .contains("account id")
        );
        assert!(refused("alice", None).contains("kind"));
        let m = refused(
            "alice",
            Some(Kind::LoginStart(msg::LoginStartRequest {
                credential_request: vec![0; 3],
                purpose: LoginPurpose::Recover as i32,
            })),
        );
        assert!(m.contains("credential_request"), "{m}");
        let m = refused(
            "alice",
            Some(Kind::LoginFinish(msg::LoginFinishRequest {
                login_session: vec![0; 15],
                credential_finalization: vec![0; 64],
            })),
        );
        assert!(m.contains("size") || m.contains("login_session"), "{m}");
        assert!(matches!(
            validate(
                "alice",
                msg::Request {
                    kind: Some(Kind::Status(msg::StatusRequest {}))
                }
            ),
            Ok(Valid { op: Op::Status, .. })
        ));
    }
}
