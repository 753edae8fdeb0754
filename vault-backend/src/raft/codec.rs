//! Versioned encodings of what the replicas of a cluster replicate and
//! store: commands (inside log entries and AppendEntries), snapshot bodies,
//! and account rows; plus the storage format of the database file.
//!
//! Version 0 is release 0.1.0's layout, frozen here: commands without a
//! tag, snapshot bodies without a header, rows without a version field.
//! Version 1 (release 0.2.0) tags each one: a command is written as
//! `Versioned { version, body }` (wire variant 4, which release 0.1.0 cannot
//! decode and therefore cannot misapply), a snapshot body starts with the
//! header `B7 56 <version>`, and a row carries `version` (protobuf field 6).
//!
//! A cluster writes in its *active* version, which is itself replicated
//! (`Command::UseVersion`) and raised by the leader only once every member
//! says it reads the new one (`node::spawn_version_upgrader`). So during a
//! rolling upgrade, replicas of the old and the new release run side by
//! side and understand each other; after the last one is upgraded, the
//! cluster switches. Reading accepts every version up to [`MAX_VERSION`];
//! a newer command decodes to [`Body::Unsupported`] and stops the replica
//! when it would be applied, with a message saying so, before any state
//! changes; a newer snapshot or row is a storage error, equally loud.
//!
//! Must never: change the layout of a released version (the fixtures under
//! `tests/fixtures/` fail CI if it does), or apply what it cannot decode.

use std::fmt;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use prost::Message;

use super::Command;
use crate::account::{Authorization, StoredAccount};

/// Release 0.1.0's layout (no tags).
pub const LEGACY_VERSION: u32 = 0;
/// The newest layout this release reads and writes: version 2 (release
/// 0.3.0) adds the commands of pacing, the last guess's hold and the
/// waiting period of a replacement; rows gain their fields.
pub const MAX_VERSION: u32 = 2;
/// Format of the database file (table layout and the encoding of the Raft
/// metadata it holds); release 0.1.0 wrote no format key, and its files are
/// format 1 as they are.
pub const STORAGE_FORMAT: u32 = 1;

/// What a log entry carries: a command and the version it is encoded in.
#[derive(Clone, PartialEq)]
pub struct Proposal {
    /// The encoding version (the cluster's active version when proposed).
    pub version: u32,
    /// The command, or the bytes of one this release cannot read.
    pub body: Body,
}

/// The content of a [`Proposal`].
#[derive(Clone, PartialEq)]
pub enum Body {
    /// A command this release understands.
    Known(Command),
    /// A command in a version newer than [`MAX_VERSION`], kept as written
    /// (so it is stored and forwarded unchanged) but never applied.
    Unsupported(Vec<u8>),
}

impl Proposal {
    /// `command` encoded in `version`.
    pub fn new(version: u32, command: Command) -> Self {
        Self {
            version,
            body: Body::Known(command),
        }
    }

    /// `command` in this release's newest version (tests, new clusters).
    pub fn current(command: Command) -> Self {
        Self::new(MAX_VERSION, command)
    }

    /// The command, if this release can apply it.
    pub fn command(&self) -> Option<&Command> {
        match &self.body {
            Body::Known(c) => Some(c),
            Body::Unsupported(_) => None,
        }
    }
}

// No account ids or record bytes in logs.
impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.body {
            Body::Known(c) => write!(f, "{c:?}@v{}", self.version),
            Body::Unsupported(_) => write!(f, "unsupported command version {}", self.version),
        }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The serialized form. Variants 0–3 are release 0.1.0's commands exactly
/// as it wrote them (frozen: field order and types never change); variant 4
/// wraps every later version.
#[derive(Serialize, Deserialize)]
enum Wire {
    LoginStart {
        account_id: String,
        max_attempts: u32,
    },
    LoginVerified {
        account_id: String,
        registration_id: Vec<u8>,
        held: Option<Vec<u8>>,
        seq: u64,
    },
    Register {
        account_id: String,
        authorization: Authorization,
        registration_id: Vec<u8>,
        sealed_record: Vec<u8>,
    },
    Disable {
        account_id: String,
        registration_id: Vec<u8>,
    },
    Versioned {
        version: u32,
        body: Vec<u8>,
    },
}

impl Wire {
    fn legacy(c: &Command) -> Option<Self> {
        Some(match c.clone() {
            Command::LoginStart {
                account_id,
                max_attempts,
            } => Wire::LoginStart {
                account_id,
                max_attempts,
            },
            Command::LoginVerified {
                account_id,
                registration_id,
                held,
                seq,
            } => Wire::LoginVerified {
                account_id,
                registration_id,
                held,
                seq,
            },
            Command::Register {
                account_id,
                authorization,
                registration_id,
                sealed_record,
            } => Wire::Register {
                account_id,
                authorization,
                registration_id,
                sealed_record,
            },
            Command::Disable {
                account_id,
                registration_id,
            } => Wire::Disable {
                account_id,
                registration_id,
            },
            _ => return None,
        })
    }
}

impl Serialize for Proposal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let wire = match (&self.body, self.version) {
            (Body::Known(c), LEGACY_VERSION) => Wire::legacy(c).ok_or_else(|| {
                S::Error::custom(format!("{c:?} has no encoding in version {LEGACY_VERSION}"))
            })?,
            // Versions 1 and 2 are `Command`'s own serde layout; version 1
            // carries only the commands that existed in it.
            (Body::Known(c), v @ 1..=MAX_VERSION) if c.min_version() <= v => Wire::Versioned {
                version: v,
                body: postcard::to_allocvec(c).map_err(S::Error::custom)?,
            },
            (Body::Known(c), v) => {
                return Err(S::Error::custom(format!(
                    "{c:?} has no encoding in command version {v} (this release writes up to {MAX_VERSION})"
                )))
            }
            (Body::Unsupported(b), v) => Wire::Versioned {
                version: v,
                body: b.clone(),
            },
        };
        wire.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Proposal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let command = match Wire::deserialize(d)? {
            Wire::LoginStart {
                account_id,
                max_attempts,
            } => Command::LoginStart {
                account_id,
                max_attempts,
            },
            Wire::LoginVerified {
                account_id,
                registration_id,
                held,
                seq,
            } => Command::LoginVerified {
                account_id,
                registration_id,
                held,
                seq,
            },
            Wire::Register {
                account_id,
                authorization,
                registration_id,
                sealed_record,
            } => Command::Register {
                account_id,
                authorization,
                registration_id,
                sealed_record,
            },
            Wire::Disable {
                account_id,
                registration_id,
            } => Command::Disable {
                account_id,
                registration_id,
            },
            Wire::Versioned {
                version: version @ 1..=MAX_VERSION,
                body,
            } => {
                let c = postcard::from_bytes::<Command>(&body).map_err(D::Error::custom)?;
                if c.min_version() > version {
                    return Err(D::Error::custom(format!(
                        "{c:?} cannot be in command version {version}"
                    )));
                }
                return Ok(Proposal::new(version, c));
            }
            Wire::Versioned { version, body } if version > MAX_VERSION => {
                return Ok(Proposal {
                    version,
                    body: Body::Unsupported(body),
                })
            }
            Wire::Versioned { version, .. } => {
                return Err(D::Error::custom(format!(
                    "command version {version} is never written tagged"
                )))
            }
        };
        Ok(Proposal::new(LEGACY_VERSION, command))
    }
}

/// First bytes of a tagged snapshot body. A version-0 body starts with the
/// postcard tag of an `Option` (0 or 1), never with this.
const SNAPSHOT_MAGIC: [u8; 2] = [0xB7, 0x56];

/// Encodes a snapshot body in `version`: version 0 is the body alone; later
/// versions put the header and the version in front.
pub fn encode_snapshot<T: Serialize>(version: u32, body: &T) -> Result<Vec<u8>, String> {
    let out = snapshot_header(version)?;
    postcard::to_extend(body, out).map_err(|e| e.to_string())
}

/// The bytes a snapshot body in `version` starts with (none in version 0),
/// for a writer that streams the body after them.
pub fn snapshot_header(version: u32) -> Result<Vec<u8>, String> {
    if version == LEGACY_VERSION {
        return Ok(Vec::new());
    }
    let out = SNAPSHOT_MAGIC.to_vec();
    postcard::to_extend(&version, out).map_err(|e| e.to_string())
}

/// Splits a snapshot into its version and body bytes; a version newer than
/// [`MAX_VERSION`] is an error naming it.
pub fn snapshot_version(data: &[u8]) -> Result<(u32, &[u8]), String> {
    let Some(rest) = data.strip_prefix(&SNAPSHOT_MAGIC) else {
        return Ok((LEGACY_VERSION, data));
    };
    let (version, body) = postcard::take_from_bytes::<u32>(rest).map_err(|e| e.to_string())?;
    if version > MAX_VERSION {
        return Err(newer("snapshot", version));
    }
    Ok((version, body))
}

/// Decodes an account row, refusing one of a newer version.
pub fn decode_row(bytes: &[u8]) -> Result<StoredAccount, String> {
    let row = StoredAccount::decode(bytes).map_err(|e| format!("corrupt row: {e}"))?;
    if row.version > MAX_VERSION {
        return Err(newer("account row", row.version));
    }
    Ok(row)
}

/// The row version the state machine writes while the cluster's command
/// version is `active`: rows follow the commands, so a replica of the older
/// release never receives (in a snapshot) a row it cannot read.
pub fn row_version(active: u32) -> u32 {
    active.min(MAX_VERSION)
}

/// The message for anything written by a newer release.
pub fn newer(what: &str, version: u32) -> String {
    format!(
        "this {what} was written by a newer release (version {version}; this release reads \
         up to {MAX_VERSION}): upgrade this replica to the cluster's release"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn commands() -> Vec<Command> {
        vec![
            Command::LoginStart {
                account_id: "a".into(),
                max_attempts: 10,
            },
            Command::LoginVerified {
                account_id: "a".into(),
                registration_id: vec![1; 16],
                held: Some(vec![2; 5]),
                seq: 7,
            },
            Command::Register {
                account_id: "a".into(),
                authorization: Authorization::VerifiedLogin {
                    registration_id: vec![3; 16],
                },
                registration_id: vec![4; 16],
                sealed_record: vec![5; 9],
            },
            Command::Disable {
                account_id: "a".into(),
                registration_id: vec![6; 16],
            },
        ]
    }

    #[test]
    fn every_command_round_trips_in_every_version() {
        for c in commands() {
            for v in [LEGACY_VERSION, MAX_VERSION] {
                let p = Proposal::new(v, c.clone());
                let bytes = postcard::to_allocvec(&p).unwrap();
                assert_eq!(postcard::from_bytes::<Proposal>(&bytes).unwrap(), p);
            }
        }
        let up = Proposal::current(Command::UseVersion { version: 1 });
        let bytes = postcard::to_allocvec(&up).unwrap();
        assert_eq!(postcard::from_bytes::<Proposal>(&bytes).unwrap(), up);
        // A command that did not exist in 0.1.0 has no untagged form.
        assert!(
            postcard::to_allocvec(&Proposal::new(0, Command::UseVersion { version: 1 })).is_err()
        );
    }

    fn version_2_commands() -> Vec<Command> {
        use crate::account::{GuessRules, Pacing, ReplaceRequest};
        vec![
            Command::LoginStartAt {
                account_id: "a".into(),
                rules: GuessRules {
                    max_attempts: 10,
                    pacing: Pacing::default(),
                    now_ms: 1_700_000_000_000,
                    session_ttl_ms: 120_000,
                },
            },
            Command::HoldSession {
                account_id: "a".into(),
                seq: 10,
                session_id: vec![1; 16],
                sealed_state: vec![2; 40],
            },
            Command::EraseLastGuess {
                account_id: "a".into(),
                seq: 10,
                failed: true,
                now_ms: 5,
            },
            Command::RegisterAt {
                account_id: "a".into(),
                authorization: Authorization::ReplaceExisting,
                registration_id: vec![4; 16],
                sealed_record: vec![5; 9],
                replace: ReplaceRequest {
                    device_key: vec![7; 32],
                    now_ms: 6,
                    wait_ms: 7,
                },
            },
        ]
    }

    #[test]
    fn version_2_commands_round_trip_and_have_no_older_encoding() {
        for c in version_2_commands() {
            let p = Proposal::new(2, c.clone());
            let bytes = postcard::to_allocvec(&p).unwrap();
            assert_eq!(postcard::from_bytes::<Proposal>(&bytes).unwrap(), p);
            for v in [LEGACY_VERSION, 1] {
                assert!(postcard::to_allocvec(&Proposal::new(v, c.clone())).is_err());
            }
            // Nor is one accepted under the tag of version 1 (what a
            // replica of release 0.2.0 would refuse as well).
            let forged = Wire::Versioned {
                version: 1,
                body: postcard::to_allocvec(&c).unwrap(),
            };
            let bytes = postcard::to_allocvec(&forged).unwrap();
            assert!(postcard::from_bytes::<Proposal>(&bytes).is_err());
        }
        // Version 1's commands keep their bytes under version 2's layout.
        for c in commands() {
            let v1 = postcard::to_allocvec(&Proposal::new(1, c.clone())).unwrap();
            let v2 = postcard::to_allocvec(&Proposal::new(2, c)).unwrap();
            assert_eq!(v1[2..], v2[2..], "only the version tag differs");
        }
    }

    #[test]
    fn the_legacy_layout_is_what_release_0_1_0_wrote() {
        // From tests/fixtures/release-0.1.0: entry 17's payload.
        let p = Proposal::new(
            LEGACY_VERSION,
            Command::LoginStart {
                account_id: "erin".into(),
                max_attempts: 3,
            },
        );
        assert_eq!(
            hex::encode(postcard::to_allocvec(&p).unwrap()),
            "00046572696e03"
        );
    }

    #[test]
    fn a_newer_version_is_kept_but_not_understood() {
        let wire = Wire::Versioned {
            version: 9,
            body: vec![1, 2, 3],
        };
        let bytes = postcard::to_allocvec(&wire).unwrap();
        let p = postcard::from_bytes::<Proposal>(&bytes).unwrap();
        assert_eq!(p.version, 9);
        assert!(p.command().is_none());
        // Forwarded byte for byte.
        assert_eq!(postcard::to_allocvec(&p).unwrap(), bytes);
    }

    #[test]
    fn a_malformed_version_1_body_is_an_error() {
        let wire = Wire::Versioned {
            version: 1,
            body: vec![200, 1],
        };
        let bytes = postcard::to_allocvec(&wire).unwrap();
        assert!(postcard::from_bytes::<Proposal>(&bytes).is_err());
        let zero = postcard::to_allocvec(&Wire::Versioned {
            version: 0,
            body: vec![],
        })
        .unwrap();
        assert!(postcard::from_bytes::<Proposal>(&zero).is_err());
    }

    #[test]
    fn snapshot_headers() {
        let body = (Some(5u64), vec![1u8, 2]);
        let v0 = encode_snapshot(0, &body).unwrap();
        assert_eq!(snapshot_version(&v0).unwrap(), (0, &v0[..]));
        let v1 = encode_snapshot(1, &body).unwrap();
        let (v, rest) = snapshot_version(&v1).unwrap();
        assert_eq!((v, rest), (1, &v0[..]));
        let mut v9 = SNAPSHOT_MAGIC.to_vec();
        v9.push(9);
        assert!(snapshot_version(&v9).unwrap_err().contains("newer release"));
    }

    mod properties {
        use super::*;
        use crate::account::{GuessRules, Pacing, ReplaceRequest};
        use proptest::prelude::*;

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..64)
        }

        fn authorization() -> impl Strategy<Value = Authorization> {
            prop_oneof![
                Just(Authorization::None),
                Just(Authorization::ReplaceExisting),
                bytes()
                    .prop_map(|registration_id| Authorization::VerifiedLogin { registration_id }),
            ]
        }

        /// Every command, with arbitrary fields.
        fn command() -> impl Strategy<Value = Command> {
            let id = "[a-z0-9.+-]{0,40}";
            prop_oneof![
                (id, any::<u32>()).prop_map(|(account_id, max_attempts)| Command::LoginStart {
                    account_id,
                    max_attempts
                }),
                (id, bytes(), proptest::option::of(bytes()), any::<u64>()).prop_map(
                    |(account_id, registration_id, held, seq)| Command::LoginVerified {
                        account_id,
                        registration_id,
                        held,
                        seq
                    }
                ),
                (id, authorization(), bytes(), bytes()).prop_map(
                    |(account_id, authorization, registration_id, sealed_record)| {
                        Command::Register {
                            account_id,
                            authorization,
                            registration_id,
                            sealed_record,
                        }
                    }
                ),
                (id, bytes()).prop_map(|(account_id, registration_id)| Command::Disable {
                    account_id,
                    registration_id
                }),
                any::<u32>().prop_map(|version| Command::UseVersion { version }),
                (id, any::<(u32, u32, u64, u32, u64, u64, u64)>()).prop_map(
                    |(account_id, (max, free, first, growth, max_wait, now, ttl))| {
                        Command::LoginStartAt {
                            account_id,
                            rules: GuessRules {
                                max_attempts: max,
                                pacing: Pacing {
                                    free_guesses: free,
                                    first_wait_ms: first,
                                    growth,
                                    max_wait_ms: max_wait,
                                },
                                now_ms: now,
                                session_ttl_ms: ttl,
                            },
                        }
                    }
                ),
                (id, any::<u64>(), bytes(), bytes()).prop_map(
                    |(account_id, seq, session_id, sealed_state)| Command::HoldSession {
                        account_id,
                        seq,
                        session_id,
                        sealed_state
                    }
                ),
                (id, any::<u64>(), any::<bool>(), any::<u64>()).prop_map(
                    |(account_id, seq, failed, now_ms)| Command::EraseLastGuess {
                        account_id,
                        seq,
                        failed,
                        now_ms
                    }
                ),
                (
                    id,
                    authorization(),
                    bytes(),
                    bytes(),
                    bytes(),
                    any::<(u64, u64)>()
                )
                    .prop_map(
                        |(
                            account_id,
                            authorization,
                            registration_id,
                            sealed_record,
                            device_key,
                            (now_ms, wait_ms),
                        )| {
                            Command::RegisterAt {
                                account_id,
                                authorization,
                                registration_id,
                                sealed_record,
                                replace: ReplaceRequest {
                                    device_key,
                                    now_ms,
                                    wait_ms,
                                },
                            }
                        }
                    ),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// decode(encode(c)) = c in every version that can carry c; a
            /// version that cannot is a typed error, never a wrong entry.
            #[test]
            fn decode_after_encode_is_the_identity(c in command(), v in 0..=MAX_VERSION) {
                let p = Proposal::new(v, c.clone());
                match postcard::to_allocvec(&p) {
                    Ok(bytes) => {
                        prop_assert!(c.min_version() <= v);
                        let back = postcard::from_bytes::<Proposal>(&bytes);
                        prop_assert_eq!(back.ok(), Some(p));
                    }
                    Err(_) => prop_assert!(c.min_version() > v, "{c:?} refused in {v}"),
                }
            }

            /// Any bytes decode to an entry, or to a typed error: never a
            /// panic. (A log entry, a snapshot and a row are read from disk,
            /// which a rollback or a bit flip may have changed.)
            #[test]
            fn any_bytes_decode_or_fail_typed(data in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = postcard::from_bytes::<Proposal>(&data);
                let _ = snapshot_version(&data);
                let _ = decode_row(&data);
            }

            /// An entry of a newer release is kept as written, not misread.
            #[test]
            fn a_newer_version_is_kept_unread(c in command(), extra in 1u32..1000) {
                let p = Proposal::new(MAX_VERSION, c);
                let mut bytes = postcard::to_allocvec(&p).unwrap();
                // Re-tag it as a newer version: the Versioned wire variant
                // with the same body.
                let Ok(Wire::Versioned { body, .. }) = postcard::from_bytes::<Wire>(&bytes) else {
                    return Ok(());
                };
                bytes = postcard::to_allocvec(&Wire::Versioned { version: MAX_VERSION + extra, body }).unwrap();
                let back = postcard::from_bytes::<Proposal>(&bytes).unwrap();
                prop_assert!(back.command().is_none());
            }
        }
    }
}
