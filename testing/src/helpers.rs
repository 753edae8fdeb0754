//! What the whole-system tests share: connecting a phone, the vault client
//! with the cheap test KSF, and retry loops for while a cluster elects.
//!
//! Must never: hide a failure the test is about: every loop retries only
//! the typed "unavailable, retry" answer, is bounded, and panics on any
//! other error.

use std::time::Duration;

use client::{BackupKey, ClientError, GatewayConnection, VaultClient};
use opaque_ke::ClientLogin;
use protocol_spec::msg::{self, request::Kind as Req};
use protocol_spec::opaque_profile::{cheap_ksf_for_load_tests, Suite};
use rand::rngs::OsRng;

use crate::local_stack::LocalStack;

/// A phone of `account`: a freshly enrolled device, connected and
/// authenticated (QUIC + Noise) to the stack's gateway.
///
/// # Panics
///
/// If enrolment or the connection fails.
pub async fn connect(stack: &LocalStack, account: &str) -> GatewayConnection {
    let dev = stack.enroll_device(account).expect("enroll a device");
    GatewayConnection::connect(&stack.profile, &dev)
        .await
        .expect("connect to the gateway")
}

/// The vault client of `conn` with the cheap KSF of the load tests (the
/// vault's work is unchanged; Argon2id would cost each call ~21 ms).
///
/// # Panics
///
/// If the stack's profile is unusable.
pub fn vault<'c>(conn: &'c GatewayConnection, stack: &LocalStack) -> VaultClient<'c> {
    VaultClient::new(conn, &stack.profile)
        .expect("a vault client from the stack's profile")
        .with_ksf(cheap_ksf_for_load_tests())
}

/// A raw OPAQUE `LoginStart` request (purpose recover) for `password`: one
/// guess when the vault counts it.
///
/// # Panics
///
/// Never in practice (OPAQUE's client start only fails on RNG failure).
pub fn login_start(password: &[u8]) -> msg::Request {
    let start = ClientLogin::<Suite>::start(&mut OsRng, password).expect("OPAQUE login start");
    msg::Request {
        kind: Some(Req::LoginStart(msg::LoginStartRequest {
            credential_request: start.message.serialize().to_vec(),
            purpose: msg::LoginPurpose::Recover as i32,
        })),
    }
}

/// Registers once on a new connection; whether it was acknowledged
/// (`false`: the cluster answered "unavailable").
///
/// # Panics
///
/// On any other error.
pub async fn register(stack: &LocalStack, account: &str, pw: &[u8], key: &BackupKey) -> bool {
    let conn = connect(stack, account).await;
    let out = vault(&conn, stack).register(pw, key, false).await;
    conn.close().await;
    match out {
        Ok(_) => true,
        Err(ClientError::Unavailable(_)) => false,
        Err(e) => panic!("registration failed with {e:?}"),
    }
}

/// Registers, retrying (bounded: 10 s) while the cluster is unavailable.
/// An "unavailable" registration may still have landed (its answer was
/// lost with a leader that died): then the retry finds the account
/// registered, and the deposit is checked to be this one (the password
/// recovers `key`).
///
/// # Panics
///
/// If it is not acknowledged within the bound, or fails otherwise.
pub async fn register_eventually(stack: &LocalStack, account: &str, pw: &[u8], key: &BackupKey) {
    let mut unanswered = false;
    for _ in 0..50 {
        let conn = connect(stack, account).await;
        let out = vault(&conn, stack).register(pw, key, false).await;
        match out {
            Ok(_) => {
                conn.close().await;
                return;
            }
            Err(ClientError::Unavailable(_)) => unanswered = true,
            Err(ClientError::AlreadyRegistered) if unanswered => {
                let got = recover_eventually(&conn, stack, pw).await;
                conn.close().await;
                assert_eq!(
                    got.as_ref(),
                    Some(key),
                    "{account}: the deposit that landed is not this one"
                );
                return;
            }
            Err(e) => panic!("registration failed with {e:?}"),
        }
        conn.close().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("registering {account} stayed unavailable for 10 s");
}

/// Recovers with the right password, retrying (bounded: 25 tries, 200 ms
/// apart) while the cluster answers the typed "unavailable, retry".
///
/// # Panics
///
/// On any other error.
pub async fn recover_eventually(
    conn: &GatewayConnection,
    stack: &LocalStack,
    pw: &[u8],
) -> Option<BackupKey> {
    for _ in 0..25 {
        match vault(conn, stack).recover(pw).await {
            Ok(k) => return Some(k),
            Err(ClientError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    None
}

/// The deposit's status once it is `want` (bounded: 10 s). A verified
/// login's reset commits after its answer (DESIGN.md invariant 2), so a
/// status read right after a recover may still count that login's guess.
///
/// # Panics
///
/// If the status is not `want` within the bound, or cannot be read.
pub async fn status_eventually(v: &VaultClient<'_>, want: client::Status) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = v.status().await.expect("a status read");
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "status stayed {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies the files of folder `from` into `to` (made if missing), as a
/// host backup of a data folder would (no subfolders: a replica's data
/// folder has none).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// The sum of the series of metric `name` on the `/metrics` page of the
/// admin port `admin` whose labels include every one of `labels` (as
/// rendered: `reason="per_source"`); 0 if there is none.
///
/// # Panics
///
/// If the page cannot be fetched.
pub async fn metric_sum(admin: std::net::SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("fetch /metrics")
        .text()
        .await
        .expect("read /metrics");
    sum_of(&text, name, labels)
}

/// Resident memory of process `pid` in KiB (`VmRSS` of
/// `/proc/<pid>/status`), or `None` if it is gone or the line is missing.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status(pid, "VmRSS")
}

/// The number in field `name` of `/proc/<pid>/status` (`VmRSS` in KiB,
/// `Threads`, ...), or `None` if the process is gone or has no such field.
pub fn proc_status(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// [`metric_sum`], or `None` when `/metrics` does not answer within 2 s
/// (a process being restarted, or partitioned).
pub async fn try_metric_sum(
    admin: std::net::SocketAddr,
    name: &str,
    labels: &[&str],
) -> Option<f64> {
    let fetch = async {
        let resp = reqwest::get(format!("http://{admin}/metrics")).await.ok()?;
        resp.text().await.ok()
    };
    let text = tokio::time::timeout(std::time::Duration::from_secs(2), fetch)
        .await
        .ok()??;
    Some(sum_of(&text, name, labels))
}

fn sum_of(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            let matches = (series.is_empty() || series.starts_with('{'))
                && labels.iter().all(|want| series.contains(want));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
