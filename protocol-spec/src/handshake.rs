//! The device-authentication step as two sans-IO state machines: the client's
//! [`Initiator`] and the gateway's [`Responder`]. Each takes received frame
//! bodies and returns frame bodies to send plus, at the end, the outcome.
//!
//! Owns: Noise message order, the credential payload, the final `AuthResult`.
//! Must never: touch sockets, read clocks other than through the credential
//! verifier, or report success before the Noise handshake is complete and the
//! credential is bound to the static key the handshake proved.

use prost::Message;

use crate::credential::{CredentialError, CredentialVerifier, VerifiedCredential};
use crate::framing::{self, FrameError};
use crate::limits::MAX_FRAME_LEN;
use crate::limits::{MAX_CLIENT_VERSION_LEN, MAX_CREDENTIAL_LEN};
use crate::msg::{self, ErrorCode, NoisePattern};
use crate::noise::{self, EXPORTER_LEN, KEY_LEN};
use crate::noise_resolver::DhBackend;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Bytes that do not follow the handshake protocol.
    #[error("handshake protocol error: {0}")]
    Protocol(String),
    /// Frame-level problem.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Noise rejected a message (wrong key, wrong prologue, tampering).
    #[error("noise handshake failed: {0}")]
    Noise(#[from] snow::Error),
    /// The gateway's static key differs from the pinned one (XX).
    #[error("the gateway's static key {got} does not match the pinned key {want}")]
    GatewayKeyMismatch {
        /// Key presented.
        got: String,
        /// Key pinned.
        want: String,
    },
    /// The gateway refused the device.
    #[error("gateway refused authentication ({code:?}): {message}")]
    Refused {
        /// Error code from the gateway.
        code: ErrorCode,
        /// Explanation from the gateway.
        message: String,
    },
}

impl HandshakeError {
    /// Whether the peer's Noise message could not be decrypted: with IK, the
    /// client's pinned gateway key is none the gateway holds (out of date
    /// after a rotation), or the channel binding differs; with XX, the
    /// binding differs. The gateway closes with `HANDSHAKE_UNREADABLE`.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, Self::Noise(snow::Error::Decrypt))
    }
}

fn noise_frame(pattern: NoisePattern, noise: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    framing::encode(&msg::HandshakeMessage {
        pattern: pattern as i32,
        noise,
    })
}

fn parse_noise_frame(body: &[u8]) -> Result<msg::HandshakeMessage, HandshakeError> {
    // The frame limit (16 KiB) already bounds the Noise message.
    Ok(framing::decode(body)?)
}

fn build(
    pattern: NoisePattern,
    local_private: &[u8; KEY_LEN],
    remote_public: Option<&[u8; KEY_LEN]>,
    exporter: &[u8; EXPORTER_LEN],
    initiator: bool,
    backend: DhBackend,
) -> Result<snow::HandshakeState, HandshakeError> {
    let name = noise::params_for(pattern)
        .ok_or_else(|| HandshakeError::Protocol("unknown noise pattern".into()))?;
    let params: snow::params::NoiseParams = name.parse()?;
    let prologue = noise::prologue(pattern, exporter);
    let mut b = snow::Builder::with_resolver(params, crate::noise_resolver::resolver(backend))
        .local_private_key(local_private)?
        .prologue(&prologue)?;
    if let Some(r) = remote_public {
        b = b.remote_public_key(r)?;
    }
    Ok(if initiator {
        b.build_initiator()?
    } else {
        b.build_responder()?
    })
}

/// What the client does next.
#[derive(Debug)]
pub enum InitiatorStep {
    /// Send this frame and wait for the next one.
    Send(Vec<u8>),
    /// Wait for the next frame.
    Wait,
    /// Authenticated as this account.
    Done {
        /// Account id confirmed by the gateway.
        account_id: String,
        /// The gateway's static key to pin from now on, when it is not the
        /// pinned one: the gateway said so in its `AuthResult` (this
        /// handshake reached it through its previous key, during a
        /// rotation's overlap), or XX revealed the next key the profile
        /// carried ahead of time.
        gateway_key: Option<[u8; KEY_LEN]>,
    },
}

enum IState {
    Start,
    Handshaking(Box<snow::HandshakeState>),
    AwaitResult(Box<snow::TransportState>),
    Finished,
}

/// Client side of the device authentication.
pub struct Initiator {
    pattern: NoisePattern,
    state: IState,
    static_private: [u8; KEY_LEN],
    gateway_pin: Option<[u8; KEY_LEN]>,
    /// The gateway's next key, known ahead of a rotation: XX accepts it
    /// besides the pin.
    next_pin: Option<[u8; KEY_LEN]>,
    /// A key to pin from now on, learned in this handshake.
    learned: Option<[u8; KEY_LEN]>,
    exporter: [u8; EXPORTER_LEN],
    payload: Vec<u8>,
    backend: DhBackend,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// `gateway_key`: `Some` → IK (and the key is pinned), `None` → XX.
    /// With XX and `pin_in_xx`, the presented key is still checked against it.
    pub fn new(
        device_private: [u8; KEY_LEN],
        gateway_key: Option<[u8; KEY_LEN]>,
        force_xx: bool,
        exporter: [u8; EXPORTER_LEN],
        credential: &str,
        client_version: &str,
    ) -> Self {
        let pattern = if gateway_key.is_some() && !force_xx {
            NoisePattern::Ik
        } else {
            NoisePattern::Xx
        };
        let payload = msg::ClientAuthPayload {
            credential: credential.to_owned(),
            client_version: client_version
                .chars()
                .take(MAX_CLIENT_VERSION_LEN)
                .collect(),
        }
        .encode_to_vec();
        Self {
            pattern,
            state: IState::Start,
            static_private: device_private,
            gateway_pin: gateway_key,
            next_pin: None,
            learned: None,
            exporter,
            payload,
            backend: DhBackend::default(),
        }
    }

    /// Also accepts `next` as the gateway's key in XX (the key a profile
    /// carries ahead of a rotation, SPEC §4.6).
    pub fn with_next_key(mut self, next: Option<[u8; KEY_LEN]>) -> Self {
        self.next_pin = next;
        self
    }

    /// Uses `backend` for X25519 (default: aws-lc-rs).
    pub fn with_dh_backend(mut self, backend: DhBackend) -> Self {
        self.backend = backend;
        self
    }

    /// The pattern this initiator runs.
    pub fn pattern(&self) -> NoisePattern {
        self.pattern
    }

    /// Produces the first frame.
    pub fn start(&mut self) -> Result<Vec<u8>, HandshakeError> {
        if !matches!(self.state, IState::Start) {
            return Err(HandshakeError::Protocol("start called twice".into()));
        }
        let mut hs = build(
            self.pattern,
            &self.static_private,
            self.gateway_pin
                .as_ref()
                .filter(|_| self.pattern == NoisePattern::Ik),
            &self.exporter,
            true,
            self.backend,
        )?;
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let payload: &[u8] = if self.pattern == NoisePattern::Ik {
            &self.payload
        } else {
            &[]
        };
        let n = hs.write_message(payload, &mut buf)?;
        buf.truncate(n);
        self.state = IState::Handshaking(Box::new(hs));
        Ok(noise_frame(self.pattern, buf)?)
    }

    /// Feeds one received frame body.
    pub fn on_frame(&mut self, body: &[u8]) -> Result<InitiatorStep, HandshakeError> {
        let m = parse_noise_frame(body)?;
        match std::mem::replace(&mut self.state, IState::Finished) {
            IState::Handshaking(mut hs) => {
                let mut scratch = vec![0u8; MAX_FRAME_LEN];
                hs.read_message(&m.noise, &mut scratch)?;
                let mut out = None;
                if self.pattern == NoisePattern::Xx {
                    // Message 2 revealed the gateway key; check the pin if
                    // any (or the next key the profile carries), before the
                    // credential goes out.
                    if let Some(pin) = self.gateway_pin {
                        let got: [u8; KEY_LEN] = hs
                            .get_remote_static()
                            .and_then(|k| k.try_into().ok())
                            .unwrap_or_default();
                        if got != pin {
                            if self.next_pin != Some(got) {
                                return Err(HandshakeError::GatewayKeyMismatch {
                                    got: hex::encode(got),
                                    want: hex::encode(pin),
                                });
                            }
                            self.gateway_pin = Some(got);
                            self.next_pin = None;
                            self.learned = Some(got);
                        }
                    }
                    let n = hs.write_message(&self.payload, &mut scratch)?;
                    out = Some(noise_frame(
                        NoisePattern::Unspecified,
                        scratch[..n].to_vec(),
                    )?);
                }
                if !hs.is_handshake_finished() {
                    return Err(HandshakeError::Protocol("handshake not finished".into()));
                }
                let t = hs.into_transport_mode()?;
                self.state = IState::AwaitResult(Box::new(t));
                Ok(match out {
                    Some(f) => InitiatorStep::Send(f),
                    None => InitiatorStep::Wait,
                })
            }
            IState::AwaitResult(mut t) => {
                let mut plain = vec![0u8; m.noise.len()];
                let n = t.read_message(&m.noise, &mut plain)?;
                let r: msg::AuthResult = framing::decode(&plain[..n])?;
                if let Some(e) = r.error {
                    return Err(HandshakeError::Refused {
                        code: e.code(),
                        message: e.message,
                    });
                }
                if !r.gateway_key.is_empty() {
                    let k: [u8; KEY_LEN] = r.gateway_key.as_slice().try_into().map_err(|_| {
                        HandshakeError::Protocol("AuthResult.gateway_key is not 32 bytes".into())
                    })?;
                    if Some(k) != self.gateway_pin {
                        self.learned = Some(k);
                    }
                }
                Ok(InitiatorStep::Done {
                    account_id: r.account_id,
                    gateway_key: self.learned,
                })
            }
            IState::Start | IState::Finished => Err(HandshakeError::Protocol(
                "frame received in the wrong state".into(),
            )),
        }
    }
}

/// A device the gateway has authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedDevice {
    /// Account from the credential.
    pub account_id: String,
    /// The device's static Noise key, proven in the handshake.
    pub device_key: [u8; KEY_LEN],
    /// Pattern used.
    pub pattern: NoisePattern,
}

/// What the gateway does next.
#[derive(Debug)]
pub enum ResponderStep {
    /// Send this frame and wait for the next.
    Send(Vec<u8>),
    /// Send these frames; the handshake is over with this outcome. On
    /// `Err`, the frames carry the refusal and the caller closes with
    /// `CloseCode::Unauthenticated`.
    Finished(Vec<Vec<u8>>, Result<AuthenticatedDevice, CredentialError>),
}

enum RState {
    Start,
    XxAwaitThird(Box<snow::HandshakeState>),
    Done,
}

/// Gateway side of the device authentication.
pub struct Responder<'v> {
    static_private: [u8; KEY_LEN],
    /// During a rotation's overlap: the key being retired, and the current
    /// public key that a client using it is told.
    previous: Option<([u8; KEY_LEN], [u8; KEY_LEN])>,
    exporter: [u8; EXPORTER_LEN],
    verifier: &'v CredentialVerifier,
    state: RState,
    backend: DhBackend,
}

impl std::fmt::Debug for Responder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl<'v> Responder<'v> {
    /// A responder for one connection.
    pub fn new(
        gateway_private: [u8; KEY_LEN],
        exporter: [u8; EXPORTER_LEN],
        verifier: &'v CredentialVerifier,
    ) -> Self {
        Self {
            static_private: gateway_private,
            previous: None,
            exporter,
            verifier,
            state: RState::Start,
            backend: DhBackend::default(),
        }
    }

    /// Uses `backend` for X25519 (default: aws-lc-rs).
    pub fn with_dh_backend(mut self, backend: DhBackend) -> Self {
        self.backend = backend;
        self
    }

    /// Also accepts IK handshakes addressed to `previous_private`, the static
    /// key being retired during a rotation's overlap (SPEC §4.6); a client
    /// that used it is told `current_public` in its `AuthResult`. An IK
    /// message that neither key can read costs two attempts.
    pub fn with_previous_key(
        mut self,
        previous_private: [u8; KEY_LEN],
        current_public: [u8; KEY_LEN],
    ) -> Self {
        self.previous = Some((previous_private, current_public));
        self
    }

    /// Feeds one received frame body.
    pub fn on_frame(&mut self, body: &[u8]) -> Result<ResponderStep, HandshakeError> {
        let m = parse_noise_frame(body)?;
        let mut scratch = vec![0u8; MAX_FRAME_LEN];
        match std::mem::replace(&mut self.state, RState::Done) {
            RState::Start => {
                let pattern = NoisePattern::try_from(m.pattern)
                    .ok()
                    .filter(|p| *p != NoisePattern::Unspecified)
                    .ok_or_else(|| HandshakeError::Protocol("unknown noise pattern".into()))?;
                let mut hs = build(
                    pattern,
                    &self.static_private,
                    None,
                    &self.exporter,
                    false,
                    self.backend,
                )?;
                let (mut hs, n, tell) = match hs.read_message(&m.noise, &mut scratch) {
                    Ok(n) => (hs, n, None),
                    // IK to a key being retired: the client is told the
                    // current one. (XX's first message is not encrypted.)
                    Err(snow::Error::Decrypt) if pattern == NoisePattern::Ik => {
                        let Some((previous, current_public)) = self.previous else {
                            return Err(snow::Error::Decrypt.into());
                        };
                        let mut hs = build(
                            pattern,
                            &previous,
                            None,
                            &self.exporter,
                            false,
                            self.backend,
                        )?;
                        let n = hs.read_message(&m.noise, &mut scratch)?;
                        (hs, n, Some(current_public))
                    }
                    Err(e) => return Err(e.into()),
                };
                match pattern {
                    NoisePattern::Ik => {
                        let payload = scratch[..n].to_vec();
                        let reply_n = hs.write_message(&[], &mut scratch)?;
                        let reply =
                            noise_frame(NoisePattern::Unspecified, scratch[..reply_n].to_vec())?;
                        self.finish(hs, &payload, pattern, reply, tell)
                    }
                    _ => {
                        if n != 0 {
                            return Err(HandshakeError::Protocol(
                                "XX message 1 must have an empty payload".into(),
                            ));
                        }
                        let reply_n = hs.write_message(&[], &mut scratch)?;
                        let reply =
                            noise_frame(NoisePattern::Unspecified, scratch[..reply_n].to_vec())?;
                        self.state = RState::XxAwaitThird(Box::new(hs));
                        Ok(ResponderStep::Send(reply))
                    }
                }
            }
            RState::XxAwaitThird(mut hs) => {
                let n = hs.read_message(&m.noise, &mut scratch)?;
                let payload = scratch[..n].to_vec();
                self.finish(*hs, &payload, NoisePattern::Xx, Vec::new(), None)
            }
            RState::Done => Err(HandshakeError::Protocol(
                "frame after the handshake finished".into(),
            )),
        }
    }

    fn finish(
        &mut self,
        hs: snow::HandshakeState,
        payload: &[u8],
        pattern: NoisePattern,
        first_reply: Vec<u8>,
        tell: Option<[u8; KEY_LEN]>,
    ) -> Result<ResponderStep, HandshakeError> {
        if !hs.is_handshake_finished() {
            return Err(HandshakeError::Protocol("handshake not finished".into()));
        }
        let device_key: [u8; KEY_LEN] = hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| HandshakeError::Protocol("no client static key".into()))?;
        let auth: msg::ClientAuthPayload = framing::decode(payload)?;
        let outcome = if auth.credential.len() > MAX_CREDENTIAL_LEN {
            Err(CredentialError::TooLong)
        } else {
            self.verifier.verify(&auth.credential, &device_key).map(
                |VerifiedCredential { account_id, .. }| AuthenticatedDevice {
                    account_id,
                    device_key,
                    pattern,
                },
            )
        };
        let result = match &outcome {
            Ok(d) => msg::AuthResult {
                error: None,
                account_id: d.account_id.clone(),
                gateway_key: tell.map(|k| k.to_vec()).unwrap_or_default(),
            },
            Err(e) => msg::AuthResult {
                error: Some(msg::Error::new(ErrorCode::Unauthenticated, e.to_string())),
                account_id: String::new(),
                gateway_key: Vec::new(),
            },
        };
        let mut t = hs.into_transport_mode()?;
        let plain = result.encode_to_vec();
        let mut cipher = vec![0u8; plain.len() + 16];
        let n = t.write_message(&plain, &mut cipher)?;
        cipher.truncate(n);
        let mut frames = Vec::with_capacity(2);
        if !first_reply.is_empty() {
            frames.push(first_reply);
        }
        frames.push(noise_frame(NoisePattern::Unspecified, cipher)?);
        self.state = RState::Done;
        Ok(ResponderStep::Finished(frames, outcome))
    }
}
