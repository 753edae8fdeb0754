//! The per-account record and its state machine, as pure functions from the
//! current stored row to the row to write and what the caller may do next.
//!
//! Owns the guess-limit rules (DESIGN.md invariants 1–3, 7, 8). Must never do
//! I/O or cryptography: the store applies the returned [`Write`] atomically
//! and the service acts on the output only after that commit.

/// Stored row of one account (prost-encoded in the database).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredAccount {
    /// [`STATE_ACTIVE`] or [`STATE_LOCKED_OUT`].
    #[prost(uint32, tag = "1")]
    pub state: u32,
    /// Random id of the current registration (16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub registration_id: Vec<u8>,
    /// Guesses counted since the last verified login.
    #[prost(uint32, tag = "3")]
    pub guesses_used: u32,
    /// Sealed [`SealedRecord`]; empty once locked out.
    #[prost(bytes = "vec", tag = "4")]
    pub sealed_record: Vec<u8>,
    /// Guesses ever counted on this registration (never reset): each counted
    /// guess gets the next number, so a verified login can forgive exactly
    /// the guesses counted up to its own and no later one.
    #[prost(uint64, tag = "5")]
    pub guesses_counted: u64,
    /// Encoding version of the row (`raft::codec`): 0 (absent) for rows of
    /// release 0.1.0, 1 since. Set by the state machine when it writes the
    /// row; a row of a newer version is refused, not misread.
    #[prost(uint32, tag = "6")]
    pub version: u32,
}

/// The secret part of a deposit, sealed under the record-sealing key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SealedRecord {
    /// Serialized OPAQUE `ServerRegistration` (password file).
    #[prost(bytes = "vec", tag = "1")]
    pub password_file: Vec<u8>,
    /// Client-wrapped backup key.
    #[prost(bytes = "vec", tag = "2")]
    pub wrapped_key: Vec<u8>,
}

/// Row state: a live deposit.
pub const STATE_ACTIVE: u32 = 1;
/// Row state: tombstone of a deposit erased by the guess limit.
pub const STATE_LOCKED_OUT: u32 = 2;

/// What the store must write for a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Nothing changes.
    Keep,
    /// Replace the row.
    Put(StoredAccount),
    /// Remove the row.
    Delete,
}

/// Rule violations, mapped to wire errors by the service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Refusal {
    /// No row.
    NotRegistered,
    /// The row is a tombstone: the guess limit erased the deposit.
    LockedOut,
    /// Active deposit and no authorization to replace it.
    AlreadyRegistered,
    /// The deposit changed since the login that authorizes this request.
    Stale,
}

/// Public view for status answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No deposit.
    NotRegistered,
    /// Deposit with this many guesses left.
    Active {
        /// Guesses left.
        attempts_left: u32,
    },
    /// Erased by the guess limit.
    LockedOut,
}

/// Status of a row.
pub fn status(row: Option<&StoredAccount>, max_attempts: u32) -> Status {
    match row {
        None => Status::NotRegistered,
        Some(r) if r.state == STATE_ACTIVE => Status::Active {
            attempts_left: max_attempts.saturating_sub(r.guesses_used),
        },
        Some(_) => Status::LockedOut,
    }
}

/// A counted guess: the caller may now run one OPRF evaluation on `record`.
#[derive(Debug, Clone, PartialEq)]
pub struct Guess {
    /// The row as it was, holding the sealed record to evaluate with.
    pub record: StoredAccount,
    /// Guesses left after this one.
    pub attempts_left: u32,
    /// This was the last guess: the record has been erased from storage and
    /// lives only in the caller's memory until a verified finish restores it.
    pub last: bool,
    /// This guess's number on the registration (see
    /// [`StoredAccount::guesses_counted`]); a verified finish passes it back.
    pub seq: u64,
}

/// Login start: count the guess *before* anything is evaluated.
pub fn login_start(
    row: Option<StoredAccount>,
    max_attempts: u32,
) -> Result<(Write, Guess), Refusal> {
    let row = row.ok_or(Refusal::NotRegistered)?;
    if row.state != STATE_ACTIVE {
        return Err(Refusal::LockedOut);
    }
    if row.guesses_used >= max_attempts {
        // Cannot happen through this module (the last guess erases), but a row
        // written under a higher limit must not yield more evaluations.
        return Err(Refusal::LockedOut);
    }
    let used = row.guesses_used + 1;
    let attempts_left = max_attempts - used;
    let last = attempts_left == 0;
    // A row never has fewer guesses counted than outstanding.
    let seq = row.guesses_counted.max(u64::from(row.guesses_used)) + 1;
    let write = if last {
        Write::Put(tombstone(&row))
    } else {
        Write::Put(StoredAccount {
            guesses_used: used,
            guesses_counted: seq,
            ..row.clone()
        })
    };
    Ok((
        write,
        Guess {
            record: row,
            attempts_left,
            last,
            seq,
        },
    ))
}

fn tombstone(row: &StoredAccount) -> StoredAccount {
    StoredAccount {
        state: STATE_LOCKED_OUT,
        registration_id: row.registration_id.clone(),
        guesses_used: 0,
        sealed_record: Vec::new(),
        guesses_counted: 0,
        version: row.version,
    }
}

/// A verified login: forgive the guesses counted up to and including this
/// login's own (`seq`), never one counted after it. A guess an attacker got
/// counted while the owner's login was in flight stays counted, and a reset
/// applied late (after a newer verified login, or after more guesses) takes
/// nothing back that it should not. `held` is the record kept in memory when
/// the verified guess was the last one.
pub fn login_verified(
    row: Option<StoredAccount>,
    registration_id: &[u8],
    held: Option<&StoredAccount>,
    seq: u64,
) -> Result<Write, Refusal> {
    match (row, held) {
        (Some(r), None) if r.state == STATE_ACTIVE && r.registration_id == registration_id => {
            let counted_since = r.guesses_counted.saturating_sub(seq);
            let outstanding = r
                .guesses_used
                .min(u32::try_from(counted_since).unwrap_or(u32::MAX));
            if outstanding == r.guesses_used {
                return Ok(Write::Keep);
            }
            Ok(Write::Put(StoredAccount {
                guesses_used: outstanding,
                ..r
            }))
        }
        (Some(r), Some(h))
            if r.state == STATE_LOCKED_OUT && r.registration_id == registration_id =>
        {
            // The last guess erased the record, so none was counted after it.
            Ok(Write::Put(StoredAccount {
                guesses_used: 0,
                guesses_counted: seq,
                ..h.clone()
            }))
        }
        (None, _) => Err(Refusal::NotRegistered),
        _ => Err(Refusal::Stale),
    }
}

/// How a registration is authorized.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Authorization {
    /// No authorization: only valid when there is no active deposit.
    None,
    /// The user accepted destroying the current deposit.
    ReplaceExisting,
    /// A verified change-password login on this registration.
    VerifiedLogin {
        /// Registration the login verified.
        registration_id: Vec<u8>,
    },
}

/// Registration finish.
pub fn register(
    row: Option<StoredAccount>,
    auth: &Authorization,
    new_registration_id: Vec<u8>,
    sealed_record: Vec<u8>,
) -> Result<Write, Refusal> {
    let active = row.as_ref().filter(|r| r.state == STATE_ACTIVE);
    match (active, auth) {
        (None, _) | (Some(_), Authorization::ReplaceExisting) => {}
        (Some(r), Authorization::VerifiedLogin { registration_id }) => {
            if &r.registration_id != registration_id {
                return Err(Refusal::Stale);
            }
        }
        (Some(_), Authorization::None) => return Err(Refusal::AlreadyRegistered),
    }
    Ok(Write::Put(StoredAccount {
        state: STATE_ACTIVE,
        registration_id: new_registration_id,
        guesses_used: 0,
        sealed_record,
        guesses_counted: 0,
        version: 0,
    }))
}

/// Disable after a verified login: the deposit is removed.
pub fn disable(row: Option<StoredAccount>, registration_id: &[u8]) -> Result<Write, Refusal> {
    match row {
        None => Err(Refusal::NotRegistered),
        Some(r) if r.registration_id == registration_id => Ok(Write::Delete),
        Some(_) => Err(Refusal::Stale),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(used: u32) -> StoredAccount {
        StoredAccount {
            state: STATE_ACTIVE,
            registration_id: vec![7; 16],
            guesses_used: used,
            sealed_record: vec![1, 2, 3],
            guesses_counted: u64::from(used),
            version: 0,
        }
    }

    fn put(w: Write) -> StoredAccount {
        match w {
            Write::Put(r) => r,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn apply(row: &mut StoredAccount, w: Write) {
        if let Write::Put(r) = w {
            *row = r;
        }
    }

    #[test]
    fn a_verified_login_forgives_its_own_and_earlier_guesses() {
        let mut row = active(0);
        let (w, wrong) = login_start(Some(row.clone()), 10).unwrap();
        apply(&mut row, w);
        let (w, owner) = login_start(Some(row.clone()), 10).unwrap();
        apply(&mut row, w);
        assert_eq!((wrong.seq, owner.seq, row.guesses_used), (1, 2, 2));
        let w = login_verified(Some(row.clone()), &[7; 16], None, owner.seq).unwrap();
        apply(&mut row, w);
        assert_eq!(row.guesses_used, 0);
    }

    #[test]
    fn a_guess_counted_during_the_owners_login_is_not_forgiven() {
        let mut row = active(0);
        let (w, owner) = login_start(Some(row.clone()), 10).unwrap();
        apply(&mut row, w);
        // An attacker's guess is counted between the owner's start and finish.
        let (w, _attacker) = login_start(Some(row.clone()), 10).unwrap();
        apply(&mut row, w);
        let w = login_verified(Some(row.clone()), &[7; 16], None, owner.seq).unwrap();
        apply(&mut row, w);
        assert_eq!(row.guesses_used, 1, "the attacker's guess stays counted");
    }

    #[test]
    fn a_late_reset_takes_nothing_back() {
        let mut row = active(0);
        let (w, a) = login_start(Some(row.clone()), 10).unwrap();
        apply(&mut row, w);
        let (w, b) = login_start(Some(row.clone()), 10).unwrap();
        apply(&mut row, w);
        let w = login_verified(Some(row.clone()), &[7; 16], None, b.seq).unwrap();
        apply(&mut row, w);
        let (w, _attacker) = login_start(Some(row.clone()), 10).unwrap();
        apply(&mut row, w);
        // A's reset arrives after B's and after the attacker's guess.
        let w = login_verified(Some(row.clone()), &[7; 16], None, a.seq).unwrap();
        assert_eq!(w, Write::Keep);
        assert_eq!(row.guesses_used, 1);
    }

    #[test]
    fn rows_without_a_guess_number_count_on_from_their_outstanding_guesses() {
        let mut row = active(3);
        row.guesses_counted = 0;
        let (w, g) = login_start(Some(row.clone()), 10).unwrap();
        assert_eq!(g.seq, 4);
        let row = put(w);
        assert_eq!((row.guesses_used, row.guesses_counted), (4, 4));
        let row = put(login_verified(Some(row.clone()), &[7; 16], None, g.seq).unwrap());
        assert_eq!(row.guesses_used, 0);
    }

    #[test]
    fn guesses_count_down_and_last_one_erases() {
        let mut row = Some(active(0));
        for expected_left in (0..10).rev() {
            let (w, g) = login_start(row.clone(), 10).unwrap();
            assert_eq!(g.attempts_left, expected_left);
            row = match w {
                Write::Put(r) => Some(r),
                _ => unreachable!(),
            };
        }
        let r = row.clone().unwrap();
        assert_eq!(r.state, STATE_LOCKED_OUT);
        assert!(r.sealed_record.is_empty());
        assert_eq!(login_start(row, 10).unwrap_err(), Refusal::LockedOut);
    }

    #[test]
    fn verified_last_guess_restores_record() {
        let (w, g) = login_start(Some(active(9)), 10).unwrap();
        assert!(g.last);
        let Write::Put(tomb) = w else { unreachable!() };
        let Write::Put(restored) =
            login_verified(Some(tomb), &[7; 16], Some(&g.record), g.seq).unwrap()
        else {
            unreachable!()
        };
        assert_eq!(restored.guesses_used, 0);
        assert_eq!(restored.guesses_counted, 10);
        assert_eq!(restored.sealed_record, vec![1, 2, 3]);
    }

    #[test]
    fn register_over_active_needs_authorization() {
        let row = Some(active(3));
        assert_eq!(
            register(row.clone(), &Authorization::None, vec![1; 16], vec![]).unwrap_err(),
            Refusal::AlreadyRegistered
        );
        assert_eq!(
            register(
                row.clone(),
                &Authorization::VerifiedLogin {
                    registration_id: vec![0; 16]
                },
                vec![1; 16],
                vec![]
            )
            .unwrap_err(),
            Refusal::Stale
        );
        assert!(register(row, &Authorization::ReplaceExisting, vec![1; 16], vec![]).is_ok());
    }
}
