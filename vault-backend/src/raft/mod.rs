//! Replication of account state across the replicas of one vault cluster
//! with openraft: the replicated commands ([`Command`]), the durable log and
//! state machine in redb ([`storage`]), and the replica-to-replica RPC
//! transport over mutually authenticated QUIC ([`network`]).
//!
//! Every account state change is a log entry; a change is done only when
//! openraft reports it committed on a majority and applied. Must never:
//! apply a transition outside the log, or put account ids or record bytes in
//! log messages (the `Debug`/`Display` of commands omit them).

pub mod apply;
pub mod codec;
pub mod erasure;
pub mod freshness;
pub mod member;
pub mod network;
pub mod node;
pub mod storage;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::account::{Authorization, GuessRules, Refusal, ReplaceRequest};

/// Replica id inside a cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Type configuration of the vault's Raft group.
    pub TypeConfig:
        D = codec::Proposal,
        R = CommandResult,
        NodeId = NodeId,
        Node = member::ReplicaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of a replica.
pub type Raft = openraft::Raft<TypeConfig>;

pub use codec::Proposal;

/// A replicated state change. Each account variant is one of the pure
/// transitions of [`crate::account`], evaluated against the committed row
/// when the entry is applied, identically on every replica.
///
/// This type's serde layout is command versions 1 and 2 ([`codec`]):
/// version 1 is its first five variants, version 2 all of them. Add
/// variants only at the end (with a new command version that writes them),
/// and change an existing one only by adding a new command version (and a
/// frozen copy of this layout in `codec`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Count one guess (login start); the OPRF answer may be sent only after
    /// this is committed.
    LoginStart {
        /// The account the command applies to.
        account_id: String,
        /// Guess limit in force.
        max_attempts: u32,
    },
    /// A login finished verified: forgive the guesses counted up to its own
    /// (and restore a record held after the last guess).
    LoginVerified {
        /// The account the command applies to.
        account_id: String,
        /// Registration the login was for.
        registration_id: Vec<u8>,
        /// prost-encoded `StoredAccount` held in memory since the last guess.
        held: Option<Vec<u8>>,
        /// The verified login's guess number (`CommandResult::Guess::seq`).
        seq: u64,
    },
    /// Deposit (or replace) a record.
    Register {
        /// The account the command applies to.
        account_id: String,
        /// Why a replacement is allowed.
        authorization: Authorization,
        /// New registration id.
        registration_id: Vec<u8>,
        /// Sealed record.
        sealed_record: Vec<u8>,
    },
    /// Delete the deposit after a verified login.
    Disable {
        /// The account the command applies to.
        account_id: String,
        /// Registration the login was for.
        registration_id: Vec<u8>,
    },
    /// From this entry on, the cluster writes command version `version`
    /// (proposed by the leader once every member reads it).
    UseVersion {
        /// The new active version.
        version: u32,
    },
    /// Count one guess under pacing (version 2): the limit, the pacing
    /// policy and the leader's time are in the command, so that every
    /// replica decides the same; the last guess puts the record on hold.
    LoginStartAt {
        /// The account the command applies to.
        account_id: String,
        /// Limit, pacing, leader time, session lifetime.
        rules: GuessRules,
    },
    /// The last guess's login session, committed after its OPRF
    /// evaluation and before the answer (version 2).
    HoldSession {
        /// The account the command applies to.
        account_id: String,
        /// The last guess's number.
        seq: u64,
        /// The session id the phone echoes.
        session_id: Vec<u8>,
        /// The sealed OPAQUE server login state.
        sealed_state: Vec<u8>,
    },
    /// The last guess's login did not verify (`failed`) or expired at the
    /// leader time `now_ms`: erase the record (version 2).
    EraseLastGuess {
        /// The account the command applies to.
        account_id: String,
        /// The last guess's number.
        seq: u64,
        /// The finish did not verify.
        failed: bool,
        /// Leader time, Unix ms.
        now_ms: u64,
    },
    /// Deposit or replace a record, a replacement without proof waiting out
    /// its period (version 2).
    RegisterAt {
        /// The account the command applies to.
        account_id: String,
        /// Why a replacement is allowed.
        authorization: Authorization,
        /// New registration id.
        registration_id: Vec<u8>,
        /// Sealed record.
        sealed_record: Vec<u8>,
        /// The asking device, the leader time and the waiting period.
        replace: ReplaceRequest,
    },
}

impl Command {
    fn kind(&self) -> &'static str {
        match self {
            Command::LoginStart { .. } => "login_start",
            Command::LoginVerified { .. } => "login_verified",
            Command::Register { .. } => "register",
            Command::Disable { .. } => "disable",
            Command::UseVersion { .. } => "use_version",
            Command::LoginStartAt { .. } => "login_start_at",
            Command::HoldSession { .. } => "hold_session",
            Command::EraseLastGuess { .. } => "erase_last_guess",
            Command::RegisterAt { .. } => "register_at",
        }
    }

    /// The oldest command version that can carry this command.
    pub fn min_version(&self) -> u32 {
        match self {
            Command::LoginStart { .. }
            | Command::LoginVerified { .. }
            | Command::Register { .. }
            | Command::Disable { .. } => codec::LEGACY_VERSION,
            Command::UseVersion { .. } => 1,
            Command::LoginStartAt { .. }
            | Command::HoldSession { .. }
            | Command::EraseLastGuess { .. }
            | Command::RegisterAt { .. } => 2,
        }
    }

    /// The account the command touches, if it touches one.
    pub fn account_id(&self) -> Option<&str> {
        match self {
            Command::LoginStart { account_id, .. }
            | Command::LoginVerified { account_id, .. }
            | Command::Register { account_id, .. }
            | Command::Disable { account_id, .. }
            | Command::LoginStartAt { account_id, .. }
            | Command::HoldSession { account_id, .. }
            | Command::EraseLastGuess { account_id, .. }
            | Command::RegisterAt { account_id, .. } => Some(account_id),
            Command::UseVersion { .. } => None,
        }
    }
}

// No account ids or record bytes in logs.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command::{}", self.kind())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// What applying a command produced (returned to the leader's caller).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Entries without an application command (membership, blank).
    #[default]
    Nothing,
    /// A guess was counted.
    Guess {
        /// prost-encoded `StoredAccount` as it was before the guess.
        record: Vec<u8>,
        /// Guesses left after this one.
        attempts_left: u32,
        /// This was the last guess: the record is erased.
        last: bool,
        /// This guess's number on the registration.
        seq: u64,
    },
    /// The transition was applied.
    Done,
    /// A replacement without proof is pending (written), completing in
    /// this many ms.
    ReplacementPending {
        /// Until the asking device may complete it.
        wait_ms: u64,
    },
    /// The rules refused it; nothing changed.
    Refused(Refusal),
}

impl fmt::Debug for CommandResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandResult::Nothing => f.write_str("Nothing"),
            CommandResult::Guess {
                attempts_left,
                last,
                ..
            } => write!(
                f,
                "Guess {{ attempts_left: {attempts_left}, last: {last} }}"
            ),
            CommandResult::Done => f.write_str("Done"),
            CommandResult::ReplacementPending { wait_ms } => {
                write!(f, "ReplacementPending {{ wait_ms: {wait_ms} }}")
            }
            CommandResult::Refused(r) => write!(f, "Refused({r:?})"),
        }
    }
}
