//! The per-account record and its state machine, as pure functions from the
//! current stored row to the row to write and what the caller may do next.
//!
//! Owns the guess-limit rules (DESIGN.md invariants 1–3, 7–10): counting,
//! pacing, the hold of a last guess, the waiting period of a replacement.
//! Must never do I/O or cryptography, or read a clock: the time is the
//! leader's, carried in the command, so every replica reaches the same row.
//! The store applies the returned [`Write`] atomically and the service acts
//! on the output only after that commit.

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
    /// Leader time (Unix ms) at which the last guess was counted; pacing
    /// measures the wait for the next one from here. 0: never.
    #[prost(uint64, tag = "7")]
    pub last_guess_ms: u64,
    /// A replacement asked for with a device credential only, waiting
    /// out its period (invariant 10).
    #[prost(message, optional, tag = "8")]
    pub replacement: Option<PendingReplacement>,
    /// The last guess, counted and not yet decided: the record stays
    /// (serving no further OPRF) until that login verifies or expires.
    #[prost(message, optional, tag = "9")]
    pub hold: Option<LastGuessHold>,
}

/// A replacement of the deposit that completes after a waiting period.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PendingReplacement {
    /// The device that asked (its Noise static key); only it completes it.
    #[prost(bytes = "vec", tag = "1")]
    pub device_key: Vec<u8>,
    /// Leader time of the request (Unix ms).
    #[prost(uint64, tag = "2")]
    pub requested_ms: u64,
    /// Leader time from which it may complete (Unix ms).
    #[prost(uint64, tag = "3")]
    pub completes_ms: u64,
}

/// The last guess's login, kept durable so a leader change between its
/// start and its finish does not lose the owner's right password.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LastGuessHold {
    /// The guess number of the last guess.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Leader time after which the login is over and the record is erased.
    #[prost(uint64, tag = "2")]
    pub deadline_ms: u64,
    /// The login session id the phone echoes (empty until the session is
    /// committed, after the OPRF evaluation).
    #[prost(bytes = "vec", tag = "3")]
    pub session_id: Vec<u8>,
    /// The OPAQUE server login state, sealed under the record-sealing key.
    #[prost(bytes = "vec", tag = "4")]
    pub sealed_state: Vec<u8>,
}

/// Pacing of guesses (invariant 9): the first `free_guesses` outstanding
/// guesses may follow each other at once; each later one waits, after the
/// guess before it, `first_wait_ms × growth^k` (k = 0, 1, …), at most
/// `max_wait_ms`. With the defaults and 10 guesses, the last 7 wait 1, 4,
/// 16, 64, 256, 1024 and 1440 minutes: all 10 take 46.75 hours. A verified
/// login forgives guesses, and with them the waits. Carried in each login
/// start command, so that every replica applies the same policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pacing {
    /// Outstanding guesses allowed without a wait.
    pub free_guesses: u32,
    /// Wait before the first paced guess, ms.
    pub first_wait_ms: u64,
    /// Factor between successive waits.
    pub growth: u32,
    /// Longest single wait, ms.
    pub max_wait_ms: u64,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            free_guesses: 3,
            first_wait_ms: 60_000,
            growth: 4,
            max_wait_ms: 24 * 3600 * 1000,
        }
    }
}

impl Pacing {
    /// No pacing at all (tests of other rules, load tests of the floor).
    pub const OFF: Pacing = Pacing {
        free_guesses: u32::MAX,
        first_wait_ms: 0,
        growth: 1,
        max_wait_ms: 0,
    };

    /// The wait, after the previous counted guess, before the guess that
    /// would be outstanding guess number `n` (1-based).
    pub fn wait_before(&self, n: u32) -> u64 {
        if n <= self.free_guesses {
            return 0;
        }
        let k = n - self.free_guesses - 1;
        self.first_wait_ms
            .saturating_mul(u64::from(self.growth).saturating_pow(k))
            .min(self.max_wait_ms)
    }

    /// The shortest time in which `limit` guesses can all be made, ms.
    pub fn time_to_use_up(&self, limit: u32) -> u64 {
        (1..=limit).map(|n| self.wait_before(n)).sum()
    }
}

/// Leader time a login start is applied with, and how long a last guess's
/// login may stay open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuessRules {
    /// Guess limit.
    pub max_attempts: u32,
    /// Pacing of guesses.
    pub pacing: Pacing,
    /// Leader time of the command, Unix ms.
    pub now_ms: u64,
    /// Lifetime of a login session, ms (the hold of a last guess lasts it).
    pub session_ttl_ms: u64,
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
    /// Too soon after the previous guess (pacing): nothing was counted.
    Paced {
        /// How long until the next guess may be counted, ms.
        wait_ms: u64,
    },
    /// The last guess's login is still open: no further evaluation until
    /// it verifies or expires.
    LastGuessOpen {
        /// Until it expires, ms.
        wait_ms: u64,
    },
    /// A replacement this device asked for is waiting out its period.
    ReplacementPending {
        /// Until it may complete, ms.
        wait_ms: u64,
    },
    /// A replacement without proof needs an identified device (one that
    /// can later complete it), and the request carried none.
    UnknownDevice,
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
        /// A replacement is pending; it may complete in this many ms (0:
        /// now, by the device that asked).
        replacement_in_ms: Option<u64>,
    },
    /// Erased by the guess limit.
    LockedOut,
}

/// Status of a row at time `now_ms`.
pub fn status(row: Option<&StoredAccount>, max_attempts: u32, now_ms: u64) -> Status {
    match row {
        None => Status::NotRegistered,
        Some(r) if r.state == STATE_ACTIVE => Status::Active {
            attempts_left: max_attempts.saturating_sub(r.guesses_used),
            replacement_in_ms: r
                .replacement
                .as_ref()
                .map(|p| p.completes_ms.saturating_sub(now_ms)),
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

/// Login start under pacing (command version 2): count the guess before
/// anything is evaluated, unless it comes too soon after the previous one
/// ([`Refusal::Paced`], nothing counted) or the last guess's login is still
/// open. The last guess does not erase the record: it puts it on hold until
/// that login verifies ([`login_verified`]) or its deadline passes
/// ([`erase_last_guess`]); a start after the deadline erases it.
pub fn login_start_at(
    row: Option<StoredAccount>,
    rules: &GuessRules,
) -> Result<(Write, Guess), Refusal> {
    let row = row.ok_or(Refusal::NotRegistered)?;
    if row.state != STATE_ACTIVE {
        return Err(Refusal::LockedOut);
    }
    if let Some(h) = &row.hold {
        if rules.now_ms < h.deadline_ms {
            return Err(Refusal::LastGuessOpen {
                wait_ms: h.deadline_ms - rules.now_ms,
            });
        }
        // Only reached through a start; the caller writes the tombstone
        // (see `expired_hold`).
        return Err(Refusal::LockedOut);
    }
    if row.guesses_used >= rules.max_attempts {
        return Err(Refusal::LockedOut);
    }
    let n = row.guesses_used + 1;
    let wait = rules.pacing.wait_before(n);
    let since = rules.now_ms.saturating_sub(row.last_guess_ms);
    if since < wait {
        return Err(Refusal::Paced {
            wait_ms: wait - since,
        });
    }
    let attempts_left = rules.max_attempts - n;
    let last = attempts_left == 0;
    let seq = row.guesses_counted.max(u64::from(row.guesses_used)) + 1;
    let hold = last.then(|| LastGuessHold {
        seq,
        deadline_ms: rules.now_ms.saturating_add(rules.session_ttl_ms),
        session_id: Vec::new(),
        sealed_state: Vec::new(),
    });
    let write = Write::Put(StoredAccount {
        guesses_used: n,
        guesses_counted: seq,
        last_guess_ms: rules.now_ms.max(row.last_guess_ms),
        hold,
        ..row.clone()
    });
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

/// The tombstone a start after a hold's deadline writes, if `row` has one
/// whose deadline has passed at `now_ms` (the login of the last guess never
/// verified in time).
pub fn expired_hold(row: &StoredAccount, now_ms: u64) -> Option<StoredAccount> {
    let h = row.hold.as_ref()?;
    (row.state == STATE_ACTIVE && now_ms >= h.deadline_ms).then(|| tombstone(row))
}

/// Commits the last guess's login session into its hold, so that any
/// leader can finish it. Only for the hold of guess `seq`, once.
pub fn hold_session(
    row: Option<StoredAccount>,
    seq: u64,
    session_id: Vec<u8>,
    sealed_state: Vec<u8>,
) -> Result<Write, Refusal> {
    let row = row.ok_or(Refusal::NotRegistered)?;
    match &row.hold {
        Some(h) if h.seq == seq && h.session_id.is_empty() && row.state == STATE_ACTIVE => {
            Ok(Write::Put(StoredAccount {
                hold: Some(LastGuessHold {
                    session_id,
                    sealed_state,
                    ..h.clone()
                }),
                ..row.clone()
            }))
        }
        _ => Err(Refusal::Stale),
    }
}

/// The last guess's login is over without verifying: it failed (`failed`,
/// the finish did not verify) or its deadline passed at `now_ms`. Erases
/// the record (a tombstone); anything else is left as it is.
pub fn erase_last_guess(
    row: Option<StoredAccount>,
    seq: u64,
    failed: bool,
    now_ms: u64,
) -> Result<Write, Refusal> {
    let row = row.ok_or(Refusal::NotRegistered)?;
    match &row.hold {
        Some(h)
            if h.seq == seq && row.state == STATE_ACTIVE && (failed || now_ms >= h.deadline_ms) =>
        {
            Ok(Write::Put(tombstone(&row)))
        }
        _ => Ok(Write::Keep),
    }
}

fn tombstone(row: &StoredAccount) -> StoredAccount {
    StoredAccount {
        state: STATE_LOCKED_OUT,
        registration_id: row.registration_id.clone(),
        guesses_used: 0,
        sealed_record: Vec::new(),
        guesses_counted: 0,
        version: row.version,
        ..Default::default()
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
            // The hold ends when its own login verified, or when a late
            // reset forgives enough that the held guess was not the last.
            let hold = r
                .hold
                .clone()
                .filter(|h| h.seq > seq && outstanding >= r.guesses_used);
            // Any verified login of the owner cancels a pending replacement.
            if outstanding == r.guesses_used && r.replacement.is_none() && hold == r.hold {
                return Ok(Write::Keep);
            }
            Ok(Write::Put(StoredAccount {
                guesses_used: outstanding,
                replacement: None,
                hold,
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
                replacement: None,
                hold: None,
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
    Ok(Write::Put(fresh(new_registration_id, sealed_record)))
}

fn fresh(registration_id: Vec<u8>, sealed_record: Vec<u8>) -> StoredAccount {
    StoredAccount {
        state: STATE_ACTIVE,
        registration_id,
        sealed_record,
        ..Default::default()
    }
}

/// Who asks for a replacement without proof, and when (command version 2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplaceRequest {
    /// The asking device's Noise static key (empty: unknown).
    pub device_key: Vec<u8>,
    /// Leader time, Unix ms.
    pub now_ms: u64,
    /// The waiting period in force, ms.
    pub wait_ms: u64,
}

/// What a registration under the waiting-period rules came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The new deposit is in place.
    Done,
    /// A replacement is pending; it may complete in this many ms.
    Pending {
        /// Until the asking device may complete it.
        wait_ms: u64,
    },
}

/// Registration finish under invariant 10: a replacement of an active
/// deposit proved only by a device credential ([`Authorization::ReplaceExisting`])
/// first becomes a pending replacement; the same device completes it once
/// the waiting period is over, by registering again. Another device asking
/// starts its own period. A first deposit, a deposit over a tombstone and a
/// change of password (a verified login) take effect at once.
pub fn register_at(
    row: Option<StoredAccount>,
    auth: &Authorization,
    new_registration_id: Vec<u8>,
    sealed_record: Vec<u8>,
    req: &ReplaceRequest,
) -> Result<(Write, Registered), Refusal> {
    let active = row.as_ref().filter(|r| r.state == STATE_ACTIVE);
    let (Some(r), Authorization::ReplaceExisting) = (active, auth) else {
        let w = register(row, auth, new_registration_id, sealed_record)?;
        return Ok((w, Registered::Done));
    };
    if req.device_key.is_empty() {
        return Err(Refusal::UnknownDevice);
    }
    match &r.replacement {
        Some(p) if p.device_key == req.device_key => {
            if req.now_ms >= p.completes_ms {
                Ok((
                    Write::Put(fresh(new_registration_id, sealed_record)),
                    Registered::Done,
                ))
            } else {
                Err(Refusal::ReplacementPending {
                    wait_ms: p.completes_ms - req.now_ms,
                })
            }
        }
        _ => Ok((
            Write::Put(StoredAccount {
                replacement: Some(PendingReplacement {
                    device_key: req.device_key.clone(),
                    requested_ms: req.now_ms,
                    completes_ms: req.now_ms.saturating_add(req.wait_ms),
                }),
                ..r.clone()
            }),
            Registered::Pending {
                wait_ms: req.wait_ms,
            },
        )),
    }
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
            ..Default::default()
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

    /// The attack figures of SPEC.md 5.5: a device that tries again as
    /// soon as it may (every 100 ms) under the default policy.
    #[test]
    fn the_default_pacing_allows_3_guesses_in_a_second_6_in_an_hour_10_in_46_75_hours() {
        let p = Pacing::default();
        assert_eq!(p.time_to_use_up(10), 2_805 * 60_000);
        let mut row = Some(active(0));
        let mut counted_at = Vec::new();
        let mut now = 0u64;
        while counted_at.len() < 10 {
            let rules = GuessRules {
                max_attempts: 10,
                pacing: p,
                now_ms: now,
                session_ttl_ms: 120_000,
            };
            if let Ok((w, _)) = login_start_at(row.clone(), &rules) {
                counted_at.push(now);
                apply_opt(&mut row, w);
            }
            now += 100;
        }
        let within = |ms: u64| counted_at.iter().filter(|t| **t < ms).count();
        assert_eq!(within(1_000), 3);
        assert_eq!(within(3_600_000), 6);
        assert_eq!(
            counted_at[9],
            200 + 2_805 * 60_000,
            "the first three at 0, 100, 200 ms"
        );
    }

    fn apply_opt(row: &mut Option<StoredAccount>, w: Write) {
        if let Write::Put(r) = w {
            *row = Some(r);
        }
    }

    mod model {
        //! A property test of the rules against a model that counts guesses
        //! by their numbers: over random starts, finishes (right or wrong),
        //! waits, crashes that lose in-flight logins and resets, late
        //! resets, expiries and replacement requests, the implementation's
        //! count equals the model's, never exceeds the limit, and pacing
        //! holds between every two counted guesses.

        use super::super::*;
        use proptest::prelude::*;

        const LIMIT: u32 = 10;
        const TTL: u64 = 120_000;

        #[derive(Debug, Clone)]
        enum Step {
            Start { right: bool },
            Finish(usize),
            ApplyReset(usize),
            DropReset(usize),
            Crash,
            Wait(u64),
            Expire,
            Replace { device: u8 },
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => any::<bool>().prop_map(|right| Step::Start { right }),
                3 => (0usize..4).prop_map(Step::Finish),
                2 => (0usize..4).prop_map(Step::ApplyReset),
                1 => (0usize..4).prop_map(Step::DropReset),
                1 => Just(Step::Crash),
                3 => prop_oneof![0u64..1000, 50_000u64..300_000, 3_000_000u64..90_000_000]
                    .prop_map(Step::Wait),
                1 => Just(Step::Expire),
                1 => (1u8..3).prop_map(|device| Step::Replace { device }),
            ]
        }

        struct Login {
            seq: u64,
            right: bool,
            last: bool,
        }

        fn pacing() -> Pacing {
            Pacing {
                free_guesses: 3,
                first_wait_ms: 60_000,
                growth: 4,
                max_wait_ms: 24 * 3_600_000,
            }
        }

        fn apply(row: &mut Option<StoredAccount>, w: Write) {
            match w {
                Write::Keep => {}
                Write::Put(r) => *row = Some(r),
                Write::Delete => *row = None,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
            #[test]
            fn the_count_matches_the_model_and_never_passes_the_limit(
                steps in proptest::collection::vec(step(), 1..80)
            ) {
                let reg = vec![7u8; 16];
                let mut row = Some(fresh(reg.clone(), vec![1, 2, 3]));
                let mut now: u64 = 1_000_000;
                let mut in_flight: Vec<Login> = Vec::new();
                let mut resets: Vec<u64> = Vec::new();
                // The model: guesses counted (by number), forgiven up to.
                let mut counted: Vec<(u64, u64)> = Vec::new(); // (seq, time)
                let mut forgiven_upto = 0u64;
                let mut erased = false;
                let mut evaluations_after_erasure = 0;
                for st in steps {
                    let active = row.as_ref().is_some_and(|r| r.state == STATE_ACTIVE);
                    let reg_now = row.as_ref().map(|r| r.registration_id.clone());
                    if reg_now.as_ref() != Some(&reg) {
                        // Replaced: the model follows this registration only.
                        break;
                    }
                    match st {
                        Step::Start { right } => {
                            let rules = GuessRules {
                                max_attempts: LIMIT,
                                pacing: pacing(),
                                now_ms: now,
                                session_ttl_ms: TTL,
                            };
                            if let Some(t) = row.as_ref().and_then(|r| expired_hold(r, now)) {
                                row = Some(t);
                                erased = true;
                                continue;
                            }
                            match login_start_at(row.clone(), &rules) {
                                Ok((w, g)) => {
                                    prop_assert!(!erased);
                                    if erased { evaluations_after_erasure += 1; }
                                    let outstanding: Vec<_> =
                                        counted.iter().filter(|(s, _)| *s > forgiven_upto).collect();
                                    let n = outstanding.len() as u32 + 1;
                                    if let Some((_, t)) = counted.last() {
                                        prop_assert!(
                                            now - t >= pacing().wait_before(n),
                                            "guess {n} came {} ms after the one before", now - t
                                        );
                                    }
                                    counted.push((g.seq, now));
                                    apply(&mut row, w);
                                    in_flight.push(Login { seq: g.seq, right, last: g.last });
                                }
                                Err(Refusal::Paced { wait_ms }) => prop_assert!(wait_ms > 0),
                                Err(Refusal::LastGuessOpen { .. }) => {
                                    prop_assert!(row.as_ref().unwrap().hold.is_some())
                                }
                                Err(Refusal::LockedOut) => prop_assert!(!active || erased),
                                Err(other) => prop_assert!(false, "{other:?}"),
                            }
                        }
                        Step::Finish(i) if i < in_flight.len() => {
                            let l = in_flight.remove(i);
                            if l.right {
                                if l.last {
                                    // Restoration commits before the answer.
                                    if let Ok(w) = login_verified(row.clone(), &reg, None, l.seq) {
                                        if row.as_ref().and_then(|r| r.hold.as_ref()).is_some() {
                                            forgiven_upto = forgiven_upto.max(l.seq);
                                        }
                                        apply(&mut row, w);
                                    }
                                } else {
                                    resets.push(l.seq);
                                }
                            } else if l.last {
                                let w = erase_last_guess(row.clone(), l.seq, true, now).unwrap();
                                if w != Write::Keep { erased = true; }
                                apply(&mut row, w);
                            }
                        }
                        Step::ApplyReset(i) if i < resets.len() => {
                            let seq = resets.remove(i);
                            if let Ok(w) = login_verified(row.clone(), &reg, None, seq) {
                                if active { forgiven_upto = forgiven_upto.max(seq); }
                                apply(&mut row, w);
                                prop_assert!(row.as_ref().unwrap().replacement.is_none());
                            }
                        }
                        Step::DropReset(i) if i < resets.len() => {
                            resets.remove(i);
                        }
                        Step::Crash => {
                            // In-memory sessions go; a last guess's is in the row.
                            in_flight.retain(|l| l.last);
                            resets.clear();
                        }
                        Step::Wait(ms) => now += ms,
                        Step::Expire => {
                            if let Some(h) = row.as_ref().and_then(|r| r.hold.clone()) {
                                let w = erase_last_guess(row.clone(), h.seq, false, now).unwrap();
                                if w != Write::Keep { erased = true; }
                                apply(&mut row, w);
                            }
                        }
                        Step::Replace { device } => {
                            let req = ReplaceRequest {
                                device_key: vec![device; 32],
                                now_ms: now,
                                wait_ms: 7 * 86_400_000,
                            };
                            let auth = Authorization::ReplaceExisting;
                            if let Ok((w, _)) = register_at(row.clone(), &auth, vec![9; 16], vec![4], &req) {
                                apply(&mut row, w);
                            }
                        }
                        _ => {}
                    }
                    let r = row.as_ref().unwrap();
                    if erased {
                        prop_assert_eq!(r.state, STATE_LOCKED_OUT);
                        prop_assert!(r.sealed_record.is_empty());
                        continue;
                    }
                    if r.registration_id != reg { break; }
                    let model = counted.iter().filter(|(s, _)| *s > forgiven_upto).count() as u32;
                    prop_assert_eq!(r.guesses_used, model, "the model's count");
                    prop_assert!(r.guesses_used <= LIMIT);
                    prop_assert_eq!(r.hold.is_some(), r.guesses_used == LIMIT);
                }
                prop_assert_eq!(evaluations_after_erasure, 0);
            }
        }
    }
}
