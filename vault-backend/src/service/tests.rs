//! The service's flows on an in-memory ledger that applies commands with the
//! replicated state machine's own rules ([`crate::raft::apply`]), with
//! faults a real cluster shows: a commit that fails, and one that commits
//! but whose answer is lost (a timed-out write that a majority applied).

use std::collections::HashMap;
use std::sync::Mutex;

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use protocol_spec::msg::{self, request::Kind as Req, response::Kind as Resp, ErrorCode};
use protocol_spec::opaque_profile::{self as op, Suite};
use rand::rngs::OsRng;

use super::*;
use crate::account::Write;
use crate::raft::apply;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The write is not committed and the caller hears "unavailable".
    NotCommitted,
    /// The write commits, and the caller hears "unavailable" anyway.
    AnswerLost,
}

#[derive(Default)]
struct MemoryLedger {
    rows: Mutex<HashMap<String, StoredAccount>>,
    next_fault: Mutex<Option<Fault>>,
}

impl MemoryLedger {
    fn fail_next_write(&self, f: Fault) {
        *self.next_fault.lock().unwrap() = Some(f);
    }

    fn row(&self, id: &str) -> Option<StoredAccount> {
        self.rows.lock().unwrap().get(id).cloned()
    }
}

impl AccountLedger for MemoryLedger {
    async fn write(&self, cmd: Command) -> Result<CommandResult, VaultError> {
        let fault = self.next_fault.lock().unwrap().take();
        if fault == Some(Fault::NotCommitted) {
            return Err(VaultError::Unavailable("no majority".into()));
        }
        let id = cmd.account_id().unwrap_or_default().to_owned();
        let mut rows = self.rows.lock().unwrap();
        let applied = apply::to_row(rows.get(&id).cloned(), &cmd)
            .map_err(VaultError::internal_from("reading the account row"))?;
        match applied.write {
            Write::Keep => {}
            Write::Put(row) => {
                rows.insert(id, row);
            }
            Write::Delete => {
                rows.remove(&id);
            }
        }
        match fault {
            Some(Fault::AnswerLost) => Err(VaultError::Unavailable("commit timed out".into())),
            _ => Ok(applied.result),
        }
    }

    async fn read(&self, account_id: &str) -> Result<Option<StoredAccount>, VaultError> {
        Ok(self.row(account_id))
    }
}

const LIMIT: u32 = 3;

fn vault() -> Vault<MemoryLedger> {
    Vault::new(
        Arc::new(FleetSecrets::generate("test-fleet")),
        MemoryLedger::default(),
        Policy {
            max_attempts: LIMIT,
        },
    )
}

/// One request through the boundary check and the service, as the
/// replica's server runs them.
async fn call(v: &Vault<MemoryLedger>, account: &str, kind: Req) -> Resp {
    let valid = match crate::request::validate(account, msg::Request { kind: Some(kind) }) {
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
    let ksf = op::cheap_ksf_for_load_tests();
    let start = ClientRegistration::<Suite>::start(&mut OsRng, pw).unwrap();
    let Resp::RegisterStart(rs) = call(
        v,
        account,
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
    let out = call(
        v,
        account,
        Req::RegisterFinish(msg::RegisterFinishRequest {
            registration_ticket: rs.registration_ticket,
            registration_upload: finish.message.serialize().to_vec(),
            wrapped_key: wrapped,
            authorization: Some(
                msg::register_finish_request::Authorization::ReplaceExisting(false),
            ),
        }),
    )
    .await;
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
    assert_eq!(attempts_left(&v, "alice").await.1, LIMIT);
}

#[tokio::test]
async fn wrong_guesses_count_down_and_the_last_erases_the_record() {
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
        row.sealed_record.is_empty(),
        "the record is erased at the limit"
    );
    assert_eq!(recover(&v, "alice", b"pw").await, Err(ErrorCode::LockedOut));
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
