//! The service's flows on an in-memory ledger that applies commands with the
//! replicated state machine's own rules ([`crate::raft::apply`]), with
//! faults a real cluster shows: a commit that fails, and one that commits
//! but whose answer is lost (a timed-out write that a majority applied).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use protocol_spec::msg::{self, request::Kind as Req, response::Kind as Resp, ErrorCode};
use protocol_spec::opaque_profile::{self as op, Suite};
use rand::rngs::OsRng;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The write is not committed and the caller hears "unavailable".
    NotCommitted,
    /// The write commits, and the caller hears "unavailable" anyway.
    AnswerLost,
}

/// Shared between the vaults of a test (two "leaders" over one ledger):
/// the in-memory ledger with the faults of a real cluster.
#[derive(Default, Clone)]
struct MemoryLedger {
    inner: crate::memory_ledger::MemoryLedger,
    next_fault: Arc<Mutex<Option<Fault>>>,
}

impl MemoryLedger {
    fn fail_next_write(&self, f: Fault) {
        *self.next_fault.lock().unwrap() = Some(f);
    }

    fn row(&self, id: &str) -> Option<StoredAccount> {
        self.inner.row(id)
    }
}

impl AccountLedger for MemoryLedger {
    async fn write(&self, cmd: Command) -> Result<CommandResult, VaultError> {
        let fault = self.next_fault.lock().unwrap().take();
        if fault == Some(Fault::NotCommitted) {
            return Err(VaultError::Unavailable("no majority".into()));
        }
        let result = self.inner.apply(&cmd)?;
        match fault {
            Some(Fault::AnswerLost) => Err(VaultError::Unavailable("commit timed out".into())),
            _ => Ok(result),
        }
    }

    async fn read(&self, account_id: &str) -> Result<Option<StoredAccount>, VaultError> {
        Ok(self.row(account_id))
    }

    fn command_version(&self) -> u32 {
        self.inner.command_version()
    }

    async fn held_logins(&self) -> Result<Vec<(String, account::LastGuessHold)>, VaultError> {
        self.inner.held_logins().await
    }
}

const LIMIT: u32 = 3;

/// The test's clock, Unix ms.
#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_700_000_000_000)))
    }
    fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    fn clock(&self) -> Clock {
        let t = self.0.clone();
        Arc::new(move || t.load(Ordering::SeqCst))
    }
}

fn unpaced() -> Policy {
    Policy {
        pacing: Pacing::OFF,
        replacement_wait: Duration::from_secs(60),
        ..Policy::with_limit(LIMIT)
    }
}

fn vault() -> Vault<MemoryLedger> {
    vault_with(unpaced(), MemoryLedger::default(), &TestClock::new())
}

fn vault_with(policy: Policy, ledger: MemoryLedger, clock: &TestClock) -> Vault<MemoryLedger> {
    Vault::new(
        Arc::new(FleetSecrets::generate("test-fleet")),
        ledger,
        policy,
    )
    .with_clock(clock.clock())
}

/// Lets the resets spawned off the reply path run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// One request through the boundary check and the service, as the
/// replica's server runs them, from the owner's device.
async fn call(v: &Vault<MemoryLedger>, account: &str, kind: Req) -> Resp {
    call_from(v, account, &OWNER_DEVICE, kind).await
}

const OWNER_DEVICE: [u8; 32] = [1; 32];
const OTHER_DEVICE: [u8; 32] = [2; 32];

async fn call_from(v: &Vault<MemoryLedger>, account: &str, device: &[u8], kind: Req) -> Resp {
    let valid = match crate::request::validate(account, msg::Request { kind: Some(kind) })
        .and_then(|r| r.with_device(device))
    {
        Ok(valid) => valid,
        Err(e) => return Resp::Error(e.to_wire()),
    };
    match v.handle(valid).await {
        Outcome::Answer(msg::Response { kind: Some(k) }) => k,
        other => panic!("{other:?}"),
    }
}

fn code(r: &Resp) -> Option<ErrorCode> {
    match r {
        Resp::Error(e) => Some(e.code()),
        _ => None,
    }
}

async fn register(v: &Vault<MemoryLedger>, account: &str, pw: &[u8], key: &[u8; 32]) {
    let out = registration(v, account, &OWNER_DEVICE, pw, key, false).await;
    assert!(matches!(out, Resp::RegisterFinish(_)), "{out:?}");
}

/// A login start for `pw`; the answer and the client state to finish it.
async fn start(
    v: &Vault<MemoryLedger>,
    account: &str,
    pw: &[u8],
) -> (Resp, opaque_ke::ClientLoginStartResult<Suite>) {
    let start = ClientLogin::<Suite>::start(&mut OsRng, pw).unwrap();
    let r = call(
        v,
        account,
        Req::LoginStart(msg::LoginStartRequest {
            credential_request: start.message.serialize().to_vec(),
            purpose: msg::LoginPurpose::Recover as i32,
        }),
    )
    .await;
    (r, start)
}

/// A whole recover; `Ok(key)` or the error code of the step that failed.
async fn recover(v: &Vault<MemoryLedger>, account: &str, pw: &[u8]) -> Result<[u8; 32], ErrorCode> {
    let (r, start) = start(v, account, pw).await;
    let ls = match r {
        Resp::LoginStart(ls) => ls,
        other => return Err(code(&other).unwrap()),
    };
    let ksf = op::cheap_ksf_for_load_tests();
    let fleet = v.secrets().fleet_id.clone();
    let response = CredentialResponse::<Suite>::deserialize(&ls.credential_response).unwrap();
    let Ok(finish) = start.state.finish(
        &mut OsRng,
        pw,
        response,
        ClientLoginFinishParameters::new(None, op::identifiers(account, &fleet), Some(&ksf)),
    ) else {
        return Err(ErrorCode::WrongPassword);
    };
    let lf = match call(
        v,
        account,
        Req::LoginFinish(msg::LoginFinishRequest {
            login_session: ls.login_session.clone(),
            credential_finalization: finish.message.serialize().to_vec(),
        }),
    )
    .await
    {
        Resp::LoginFinish(lf) => lf,
        other => return Err(code(&other).unwrap()),
    };
    let wrapped = op::open_release(&finish.session_key, &ls.login_session, &lf.sealed_key).unwrap();
    let key = op::unwrap_backup_key(&finish.export_key, account, &fleet, &wrapped).unwrap();
    Ok(*key)
}

async fn attempts_left(v: &Vault<MemoryLedger>, account: &str) -> (i32, u32) {
    match call(v, account, Req::Status(msg::StatusRequest {})).await {
        Resp::Status(s) => (s.state, s.attempts_left),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn register_then_recover_returns_the_deposited_key() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    assert_eq!(recover(&v, "alice", b"pw").await, Ok([9; 32]));
    settle().await;
    assert_eq!(attempts_left(&v, "alice").await.1, LIMIT);
}

#[tokio::test]
async fn wrong_guesses_count_down_and_the_last_holds_the_record() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    for left in (0..LIMIT).rev() {
        let (r, _) = start(&v, "alice", b"wrong").await;
        match r {
            Resp::LoginStart(ls) => assert_eq!(ls.attempts_left, left),
            other => panic!("{other:?}"),
        }
    }
    let row = v.ledger().row("alice").unwrap();
    assert!(
        !row.sealed_record.is_empty() && row.hold.is_some(),
        "the record is held until the last guess's login is over"
    );
    // No further evaluation while it is held.
    let (r, _) = start(&v, "alice", b"pw").await;
    assert!(busy_wait(&r).is_some(), "{r:?}");
}

#[tokio::test]
async fn the_right_password_on_the_last_guess_recovers() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    for _ in 0..LIMIT - 1 {
        let _ = start(&v, "alice", b"wrong").await;
    }
    assert_eq!(recover(&v, "alice", b"pw").await, Ok([9; 32]));
    assert_eq!(attempts_left(&v, "alice").await.1, LIMIT);
}

#[tokio::test]
async fn no_evaluation_is_sent_for_a_guess_that_did_not_commit() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    v.ledger().fail_next_write(Fault::NotCommitted);
    let (r, _) = start(&v, "alice", b"pw").await;
    assert_eq!(code(&r), Some(ErrorCode::Unavailable), "{r:?}");
    assert_eq!(attempts_left(&v, "alice").await.1, LIMIT);
}

#[tokio::test]
async fn a_guess_whose_answer_was_lost_stays_counted() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    v.ledger().fail_next_write(Fault::AnswerLost);
    let (r, _) = start(&v, "alice", b"pw").await;
    assert_eq!(code(&r), Some(ErrorCode::Unavailable), "{r:?}");
    // No evaluation was sent, and the guess counts: the safe direction.
    assert_eq!(attempts_left(&v, "alice").await.1, LIMIT - 1);
}

#[tokio::test]
async fn another_account_can_neither_finish_nor_burn_a_pending_login() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    let (r, start_state) = start(&v, "alice", b"pw").await;
    let Resp::LoginStart(ls) = r else { panic!() };
    let fleet = v.secrets().fleet_id.clone();
    let ksf = op::cheap_ksf_for_load_tests();
    let response = CredentialResponse::<Suite>::deserialize(&ls.credential_response).unwrap();
    let finish = start_state
        .state
        .finish(
            &mut OsRng,
            b"pw",
            response,
            ClientLoginFinishParameters::new(None, op::identifiers("alice", &fleet), Some(&ksf)),
        )
        .unwrap();
    let finish_req = || {
        Req::LoginFinish(msg::LoginFinishRequest {
            login_session: ls.login_session.clone(),
            credential_finalization: finish.message.serialize().to_vec(),
        })
    };
    let stolen = call(&v, "mallory", finish_req()).await;
    assert_eq!(code(&stolen), Some(ErrorCode::SessionExpired), "{stolen:?}");
    let own = call(&v, "alice", finish_req()).await;
    assert!(matches!(own, Resp::LoginFinish(_)), "{own:?}");
    // And a session is used once.
    let again = call(&v, "alice", finish_req()).await;
    assert_eq!(code(&again), Some(ErrorCode::SessionExpired), "{again:?}");
}

#[tokio::test]
async fn malformed_requests_change_nothing() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    let r = call(
        &v,
        "alice",
        Req::LoginStart(msg::LoginStartRequest {
            credential_request: vec![0; 5],
            purpose: msg::LoginPurpose::Recover as i32,
        }),
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::ProtocolError), "{r:?}");
    assert_eq!(attempts_left(&v, "alice").await.1, LIMIT);
    assert!(crate::request::validate("alice", msg::Request { kind: None }).is_err());
    assert_eq!(attempts_left(&v, "alice").await.1, LIMIT);
}

fn busy_wait(r: &Resp) -> Option<u32> {
    match r {
        Resp::Error(e) if e.code() == ErrorCode::Busy => Some(e.retry_after_ms),
        _ => None,
    }
}

#[tokio::test]
async fn guesses_beyond_the_burst_wait_and_a_paced_guess_counts_nothing() {
    let clock = TestClock::new();
    let policy = Policy {
        max_attempts: 10,
        pacing: Pacing {
            free_guesses: 3,
            first_wait_ms: 60_000,
            growth: 4,
            max_wait_ms: 3_600_000,
        },
        ..unpaced()
    };
    let v = vault_with(policy, MemoryLedger::default(), &clock);
    register(&v, "alice", b"pw", &[9; 32]).await;
    for _ in 0..3 {
        let (r, _) = start(&v, "alice", b"wrong").await;
        assert!(matches!(r, Resp::LoginStart(_)), "{r:?}");
    }
    // The fourth, at once: refused with the wait, and nothing counted.
    let (r, _) = start(&v, "alice", b"wrong").await;
    assert_eq!(busy_wait(&r), Some(60_000), "{r:?}");
    assert_eq!(attempts_left(&v, "alice").await.1, 7);
    clock.advance(59_999);
    let (r, _) = start(&v, "alice", b"wrong").await;
    assert_eq!(busy_wait(&r), Some(1), "{r:?}");
    clock.advance(1);
    let (r, _) = start(&v, "alice", b"wrong").await;
    assert!(matches!(r, Resp::LoginStart(_)), "{r:?}");
    // The next waits four times as long.
    let (r, _) = start(&v, "alice", b"pw").await;
    assert_eq!(busy_wait(&r), Some(240_000), "{r:?}");
    clock.advance(240_000);
    // The owner's verified login forgives the guesses, and the waits go.
    assert_eq!(recover(&v, "alice", b"pw").await, Ok([9; 32]));
    settle().await;
    assert_eq!(attempts_left(&v, "alice").await.1, 10);
    for _ in 0..3 {
        let (r, _) = start(&v, "alice", b"wrong").await;
        assert!(matches!(r, Resp::LoginStart(_)), "{r:?}");
    }
}

#[tokio::test]
async fn a_lost_reset_leaves_the_count_one_higher_never_lower() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    let _ = start(&v, "alice", b"wrong").await;
    // The key is released before the reset commits; the reset is lost.
    let (r, st) = start(&v, "alice", b"pw").await;
    let Resp::LoginStart(ls) = r else {
        panic!("{r:?}")
    };
    v.ledger().fail_next_write(Fault::NotCommitted);
    let key = finish(&v, "alice", b"pw", &ls, st).await;
    assert_eq!(key, Ok([9; 32]));
    settle().await;
    assert_eq!(attempts_left(&v, "alice").await.1, LIMIT - 2);
    // A later verified login forgives both.
    assert_eq!(recover(&v, "alice", b"pw").await, Ok([9; 32]));
    settle().await;
    assert_eq!(attempts_left(&v, "alice").await.1, LIMIT);
}

/// Finishes a started login for `pw`.
async fn finish(
    v: &Vault<MemoryLedger>,
    account: &str,
    pw: &[u8],
    ls: &msg::LoginStartResponse,
    start: opaque_ke::ClientLoginStartResult<Suite>,
) -> Result<[u8; 32], ErrorCode> {
    let ksf = op::cheap_ksf_for_load_tests();
    let fleet = v.secrets().fleet_id.clone();
    let response = CredentialResponse::<Suite>::deserialize(&ls.credential_response).unwrap();
    let Ok(finish) = start.state.finish(
        &mut OsRng,
        pw,
        response,
        ClientLoginFinishParameters::new(None, op::identifiers(account, &fleet), Some(&ksf)),
    ) else {
        // The client knows its guess was wrong; it still tells the vault.
        let r = call(
            v,
            account,
            Req::LoginFinish(msg::LoginFinishRequest {
                login_session: ls.login_session.clone(),
                credential_finalization: vec![0; 64],
            }),
        )
        .await;
        return Err(code(&r).unwrap_or(ErrorCode::WrongPassword));
    };
    let lf = match call(
        v,
        account,
        Req::LoginFinish(msg::LoginFinishRequest {
            login_session: ls.login_session.clone(),
            credential_finalization: finish.message.serialize().to_vec(),
        }),
    )
    .await
    {
        Resp::LoginFinish(lf) => lf,
        other => return Err(code(&other).unwrap()),
    };
    let wrapped = op::open_release(&finish.session_key, &ls.login_session, &lf.sealed_key).unwrap();
    Ok(*op::unwrap_backup_key(&finish.export_key, account, &fleet, &wrapped).unwrap())
}

#[tokio::test]
async fn the_last_guess_survives_a_leader_change_between_start_and_finish() {
    let clock = TestClock::new();
    let ledger = MemoryLedger::default();
    let v = vault_with(unpaced(), ledger.clone(), &clock);
    register(&v, "alice", b"pw", &[9; 32]).await;
    for _ in 0..LIMIT - 1 {
        let _ = start(&v, "alice", b"wrong").await;
    }
    let (r, st) = start(&v, "alice", b"pw").await;
    let Resp::LoginStart(ls) = r else {
        panic!("{r:?}")
    };
    assert_eq!(ls.attempts_left, 0);
    // The record stays, serving no further evaluation.
    let row = ledger.row("alice").unwrap();
    assert!(!row.sealed_record.is_empty() && row.hold.is_some());
    let (again, _) = start(&v, "alice", b"pw").await;
    assert!(busy_wait(&again).is_some(), "{again:?}");
    // A new leader, which never saw the start, finishes it from the row.
    let mut other = vault_with(unpaced(), ledger.clone(), &clock);
    other.secrets = v.secrets.clone();
    assert_eq!(finish(&other, "alice", b"pw", &ls, st).await, Ok([9; 32]));
    assert_eq!(attempts_left(&other, "alice").await.1, LIMIT);
    assert!(ledger.row("alice").unwrap().hold.is_none());
}

#[tokio::test]
async fn a_wrong_last_guess_erases_and_an_unfinished_one_expires_into_erasure() {
    let clock = TestClock::new();
    let ledger = MemoryLedger::default();
    let v = vault_with(unpaced(), ledger.clone(), &clock);
    register(&v, "alice", b"pw", &[9; 32]).await;
    register(&v, "bob", b"pw", &[8; 32]).await;
    for _ in 0..LIMIT - 1 {
        let _ = start(&v, "alice", b"wrong").await;
        let _ = start(&v, "bob", b"wrong").await;
    }
    // Alice's last guess is wrong: erased at its finish.
    let (r, st) = start(&v, "alice", b"wrong").await;
    let Resp::LoginStart(ls) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        finish(&v, "alice", b"wrong", &ls, st).await,
        Err(ErrorCode::LockedOut)
    );
    assert!(ledger.row("alice").unwrap().sealed_record.is_empty());
    // Bob's last guess is never finished: erased once its session expires.
    let (r, _) = start(&v, "bob", b"pw").await;
    assert!(matches!(r, Resp::LoginStart(_)), "{r:?}");
    assert_eq!(v.erase_expired_holds().await.unwrap(), 0);
    clock.advance(ms(LOGIN_SESSION_TTL));
    assert_eq!(v.erase_expired_holds().await.unwrap(), 1);
    let row = ledger.row("bob").unwrap();
    assert_eq!(row.state, account::STATE_LOCKED_OUT);
    assert!(row.sealed_record.is_empty());
    assert_eq!(recover(&v, "bob", b"pw").await, Err(ErrorCode::LockedOut));
}

/// A registration of `pw` from `device` (a first deposit, or with
/// `replace` asking to replace whatever is deposited); the vault's answer
/// to its finish.
async fn registration(
    v: &Vault<MemoryLedger>,
    account: &str,
    device: &[u8],
    pw: &[u8],
    key: &[u8; 32],
    replace: bool,
) -> Resp {
    let finish = registration_finish(v, account, device, pw, key, replace).await;
    call_from(v, account, device, finish).await
}

/// A registration's start, sent; its finish, built and not sent.
async fn registration_finish(
    v: &Vault<MemoryLedger>,
    account: &str,
    device: &[u8],
    pw: &[u8],
    key: &[u8; 32],
    replace: bool,
) -> Req {
    let ksf = op::cheap_ksf_for_load_tests();
    let start = ClientRegistration::<Suite>::start(&mut OsRng, pw).unwrap();
    let Resp::RegisterStart(rs) = call_from(
        v,
        account,
        device,
        Req::RegisterStart(msg::RegisterStartRequest {
            registration_request: start.message.serialize().to_vec(),
        }),
    )
    .await
    else {
        panic!("register start")
    };
    let response = RegistrationResponse::<Suite>::deserialize(&rs.registration_response).unwrap();
    let fleet = &v.secrets().fleet_id;
    let finish = start
        .state
        .finish(
            &mut OsRng,
            pw,
            response,
            ClientRegistrationFinishParameters::new(op::identifiers(account, fleet), Some(&ksf)),
        )
        .unwrap();
    let wrapped = op::wrap_backup_key(&finish.export_key, account, fleet, key).unwrap();
    Req::RegisterFinish(msg::RegisterFinishRequest {
        registration_ticket: rs.registration_ticket,
        registration_upload: finish.message.serialize().to_vec(),
        wrapped_key: wrapped,
        authorization: Some(msg::register_finish_request::Authorization::ReplaceExisting(replace)),
    })
}

/// Uses up every guess of `account` with wrong passwords, each finished.
async fn lock_out(v: &Vault<MemoryLedger>, account: &str) {
    for _ in 0..LIMIT {
        let (r, st) = start(v, account, b"wrong").await;
        if let Resp::LoginStart(ls) = r {
            let _ = finish(v, account, b"wrong", &ls, st).await;
        }
    }
    assert_eq!(
        attempts_left(v, account).await.0,
        AccountState::LockedOut as i32
    );
}

/// A compromised gateway keeps the phone's registration finish, uses up
/// the guesses, and sends the finish again: the deposit must stay erased
/// (before this check it came back with every guess restored, and the
/// gateway could go on guessing the same password without end).
#[tokio::test]
async fn a_replayed_registration_finish_cannot_bring_back_an_erased_deposit() {
    let clock = TestClock::new();
    let v = vault_with(unpaced(), MemoryLedger::default(), &clock);
    let kept = registration_finish(&v, "alice", &OWNER_DEVICE, b"pw", &[9; 32], false).await;
    let first = call(&v, "alice", kept.clone()).await;
    assert!(matches!(first, Resp::RegisterFinish(_)), "{first:?}");
    lock_out(&v, "alice").await;
    let erased = v.ledger().row("alice").unwrap();
    for wait in [0, ms(REGISTRATION_TICKET_TTL) + 1] {
        clock.advance(wait);
        let again = call(&v, "alice", kept.clone()).await;
        assert_eq!(code(&again), Some(ErrorCode::PermissionDenied), "{again:?}");
        assert_eq!(v.ledger().row("alice").unwrap(), erased);
        assert_eq!(recover(&v, "alice", b"pw").await, Err(ErrorCode::LockedOut));
    }
}

#[tokio::test]
async fn a_registration_ticket_expires_and_a_finish_sent_twice_changes_nothing() {
    let clock = TestClock::new();
    let v = vault_with(unpaced(), MemoryLedger::default(), &clock);
    // Late: refused, nothing deposited.
    let late = registration_finish(&v, "alice", &OWNER_DEVICE, b"pw", &[9; 32], false).await;
    clock.advance(ms(REGISTRATION_TICKET_TTL) + 1);
    let r = call(&v, "alice", late).await;
    assert_eq!(code(&r), Some(ErrorCode::PermissionDenied), "{r:?}");
    assert!(v.ledger().row("alice").is_none());
    // In time, twice: both answered as done, one deposit, guesses untouched.
    let twice = registration_finish(&v, "alice", &OWNER_DEVICE, b"pw", &[9; 32], false).await;
    assert!(matches!(
        call(&v, "alice", twice.clone()).await,
        Resp::RegisterFinish(_)
    ));
    let _ = start(&v, "alice", b"wrong").await;
    let row = v.ledger().row("alice").unwrap();
    assert!(matches!(
        call(&v, "alice", twice).await,
        Resp::RegisterFinish(_)
    ));
    assert_eq!(v.ledger().row("alice").unwrap(), row);
    assert_eq!(attempts_left(&v, "alice").await.1, LIMIT - 1);
    assert_eq!(recover(&v, "alice", b"pw").await, Ok([9; 32]));
}

/// A registration asking to replace whatever is deposited.
async fn replace_from(
    v: &Vault<MemoryLedger>,
    account: &str,
    device: &[u8],
    pw: &[u8],
    key: &[u8; 32],
) -> Resp {
    registration(v, account, device, pw, key, true).await
}

async fn replacement(v: &Vault<MemoryLedger>, account: &str) -> Option<u64> {
    match call(v, account, Req::Status(msg::StatusRequest {})).await {
        Resp::Status(s) => s.replacement_pending.then_some(s.replacement_wait_ms),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_replacement_by_a_device_alone_waits_and_the_owner_cancels_it() {
    let clock = TestClock::new();
    let v = vault_with(unpaced(), MemoryLedger::default(), &clock);
    register(&v, "alice", b"pw", &[9; 32]).await;
    // A second device (a SIM swap) asks to replace the deposit.
    let r = replace_from(&v, "alice", &OTHER_DEVICE, b"thief", &[6; 32]).await;
    match &r {
        Resp::Error(e) => {
            assert_eq!(e.code(), ErrorCode::ReplacementPending);
            assert_eq!(e.retry_after_ms, 60_000);
        }
        other => panic!("{other:?}"),
    }
    // Every device sees it; the old deposit keeps working.
    assert_eq!(replacement(&v, "alice").await, Some(60_000));
    clock.advance(30_000);
    let again = replace_from(&v, "alice", &OTHER_DEVICE, b"thief", &[6; 32]).await;
    assert!(
        matches!(&again, Resp::Error(e) if e.retry_after_ms == 30_000),
        "asking again does not shorten the wait: {again:?}"
    );
    // The owner's verified login cancels it.
    assert_eq!(recover(&v, "alice", b"pw").await, Ok([9; 32]));
    settle().await;
    assert_eq!(replacement(&v, "alice").await, None);
    // Asked again, it waits its full period; then that device completes it.
    let _ = replace_from(&v, "alice", &OTHER_DEVICE, b"new", &[6; 32]).await;
    clock.advance(60_000);
    let done = replace_from(&v, "alice", &OTHER_DEVICE, b"new", &[6; 32]).await;
    assert!(matches!(done, Resp::RegisterFinish(_)), "{done:?}");
    assert_eq!(recover(&v, "alice", b"new").await, Ok([6; 32]));
    assert_eq!(
        recover(&v, "alice", b"pw").await,
        Err(ErrorCode::WrongPassword)
    );
}

#[tokio::test]
async fn a_device_the_gateway_does_not_name_cannot_start_a_replacement() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    let r = replace_from(&v, "alice", &[], b"thief", &[6; 32]).await;
    assert_eq!(code(&r), Some(ErrorCode::PermissionDenied), "{r:?}");
    assert_eq!(replacement(&v, "alice").await, None);
}

#[tokio::test]
async fn one_account_holds_at_most_its_budget_of_open_logins() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    register(&v, "bob", b"pw", &[8; 32]).await;
    let (r, bob_start) = start(&v, "bob", b"pw").await;
    let Resp::LoginStart(bob) = r else {
        panic!("{r:?}")
    };
    let (r, first_start) = start(&v, "alice", b"pw").await;
    let Resp::LoginStart(first) = r else {
        panic!("{r:?}")
    };
    for _ in 0..4 {
        let (r, _) = start(&v, "alice", b"pw").await;
        assert!(matches!(r, Resp::LoginStart(_)), "{r:?}");
        // Each start is a guess; the verified logins below forgive them.
        assert_eq!(recover(&v, "alice", b"pw").await, Ok([9; 32]));
        settle().await;
    }
    // Alice's oldest session was dropped; Bob's is untouched.
    assert_eq!(
        finish(&v, "alice", b"pw", &first, first_start).await,
        Err(ErrorCode::SessionExpired)
    );
    assert_eq!(finish(&v, "bob", b"pw", &bob, bob_start).await, Ok([8; 32]));
}

#[tokio::test]
async fn a_late_reset_arriving_after_a_newer_guess_does_not_forgive_it() {
    let v = vault();
    register(&v, "alice", b"pw", &[9; 32]).await;
    let (r, st) = start(&v, "alice", b"pw").await;
    let Resp::LoginStart(ls) = r else {
        panic!("{r:?}")
    };
    // The owner's finish answers at once; its reset is committed later...
    assert_eq!(finish(&v, "alice", b"pw", &ls, st).await, Ok([9; 32]));
    // ...here after an attacker's guess, counted in between.
    let (r, _) = start(&v, "alice", b"wrong").await;
    assert!(matches!(r, Resp::LoginStart(_)), "{r:?}");
    assert_eq!(
        v.ledger().row("alice").unwrap().guesses_used,
        2,
        "the reset has not been applied yet"
    );
    settle().await;
    assert_eq!(
        attempts_left(&v, "alice").await.1,
        LIMIT - 1,
        "the attacker's guess stays counted"
    );
}
