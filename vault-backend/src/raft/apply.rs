//! What a committed [`Command`] does to one account's row: the glue between
//! the replicated commands and the pure rules of [`crate::account`], shared
//! by the state machine (which reads and writes the row in redb) and the
//! in-memory ledger the service's unit tests run on.
//!
//! Must never: read anything but the row and the command (every replica
//! must reach the same result from the same log), or touch storage.

use prost::Message;

use super::{codec, Command, CommandResult};
use crate::account::{self, StoredAccount, Write};

/// What applying a command came to.
#[derive(Debug)]
pub struct Applied {
    /// The result the proposer gets.
    pub result: CommandResult,
    /// The row's new state.
    pub write: Write,
    /// Whether a sealed record was erased (a lockout or a delete; the
    /// erasure scrubber then removes its bytes from the files).
    pub erased: bool,
}

/// A command carried a held row that does not decode: the log is corrupt
/// or of a newer release (the replica must stop, not guess).
#[derive(Debug, thiserror::Error)]
#[error("a held account row in a command does not decode: {0}")]
pub struct BadHeldRow(String);

/// A counted guess's write and result, or the refusal (nothing written).
fn counted(r: Result<(Write, account::Guess), account::Refusal>) -> (Write, CommandResult) {
    match r {
        Ok((write, g)) => (
            write,
            CommandResult::Guess {
                record: g.record.encode_to_vec(),
                attempts_left: g.attempts_left,
                last: g.last,
                seq: g.seq,
            },
        ),
        Err(e) => (Write::Keep, CommandResult::Refused(e)),
    }
}

/// A transition's write, or the refusal (nothing written).
fn done(r: Result<Write, account::Refusal>) -> (Write, CommandResult) {
    match r {
        Ok(write) => (write, CommandResult::Done),
        Err(e) => (Write::Keep, CommandResult::Refused(e)),
    }
}

/// Applies `cmd` to `row` (the committed row of the command's account).
pub fn to_row(row: Option<StoredAccount>, cmd: &Command) -> Result<Applied, BadHeldRow> {
    let had_record = row.as_ref().is_some_and(|r| !r.sealed_record.is_empty());
    let (write, result) = match cmd {
        Command::LoginStart { max_attempts, .. } => {
            counted(account::login_start(row, *max_attempts))
        }
        Command::LoginVerified {
            registration_id,
            held,
            seq,
            ..
        } => {
            let held = held
                .as_deref()
                .map(codec::decode_row)
                .transpose()
                .map_err(|e| BadHeldRow(e.to_string()))?;
            done(account::login_verified(
                row,
                registration_id,
                held.as_ref(),
                *seq,
            ))
        }
        Command::Register {
            authorization,
            registration_id,
            sealed_record,
            ..
        } => done(account::register(
            row,
            authorization,
            registration_id.clone(),
            sealed_record.clone(),
        )),
        Command::Disable {
            registration_id, ..
        } => done(account::disable(row, registration_id)),
        Command::LoginStartAt { rules, .. } => {
            if let Some(tomb) = row
                .as_ref()
                .and_then(|r| account::expired_hold(r, rules.now_ms))
            {
                // The last guess's login never verified in time.
                (
                    Write::Put(tomb),
                    CommandResult::Refused(account::Refusal::LockedOut),
                )
            } else {
                counted(account::login_start_at(row, rules))
            }
        }
        Command::HoldSession {
            seq,
            session_id,
            sealed_state,
            ..
        } => done(account::hold_session(
            row,
            *seq,
            session_id.clone(),
            sealed_state.clone(),
        )),
        Command::EraseLastGuess {
            seq,
            failed,
            now_ms,
            ..
        } => done(account::erase_last_guess(row, *seq, *failed, *now_ms)),
        Command::RegisterAt {
            authorization,
            registration_id,
            sealed_record,
            replace,
            ..
        } => match account::register_at(
            row,
            authorization,
            registration_id.clone(),
            sealed_record.clone(),
            replace,
        ) {
            Ok((write, account::Registered::Done)) => (write, CommandResult::Done),
            Ok((write, account::Registered::Pending { wait_ms })) => {
                (write, CommandResult::ReplacementPending { wait_ms })
            }
            Err(e) => (Write::Keep, CommandResult::Refused(e)),
        },
        // Not an account command; the state machine handles it.
        Command::UseVersion { .. } => (Write::Keep, CommandResult::Nothing),
    };
    // Lockouts and deletes; a replaced deposit's old record goes with the
    // next snapshot and log purge, but does not trigger a scrub pass (a
    // password change is the user's own act, and re-registration is common
    // enough that a pass for each would cost too much).
    let erased = had_record
        && match &write {
            Write::Keep => false,
            Write::Put(new) => new.sealed_record.is_empty(),
            Write::Delete => true,
        };
    Ok(Applied {
        result,
        write,
        erased,
    })
}
