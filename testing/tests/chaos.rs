#![allow(clippy::unwrap_used)]
//! The chaos run (`testing::chaos`): 5 replica processes and 2 gateway
//! processes under mixed load while replicas are killed (SIGKILL, SIGTERM,
//! the leader, two at once), cut off from their peers, rolled back and
//! replaced, and gateways restarted; the recorded history is then checked
//! (no acknowledged registration lost, OPRF evaluations ≤ the limit per
//! deposit, only typed errors, every replica serving, rows agreeing).
//!
//! In CI: 90 s of faults. A long run: `CHAOS_SECONDS=1200 cargo test
//! --release -p testing --test chaos -- --nocapture`; `CHAOS_SEED=<n>`
//! repeats a run's fault schedule.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_a_history_check_finds_no_violation() {
    let opts = testing::chaos::ChaosOptions::from_env(90);
    eprintln!(
        "chaos: {:?} with seed {} (CHAOS_SEED={} repeats it)",
        opts.duration, opts.seed, opts.seed
    );
    let report = testing::chaos::run(opts).await.unwrap();
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.restarts.0 > 0 && report.restarts.0 == report.restarts.1);
    assert_eq!(report.rollbacks, (1, 1), "{report}");
    assert_eq!(report.extra_guesses, 0);
    assert!(
        report.rollback_checked > 0,
        "a deposit used up since the copy was checked: {report}"
    );
    assert!(report.attacked.0 > 0, "some deposit was attacked");
}
