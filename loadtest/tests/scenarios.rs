#![allow(clippy::unwrap_used)]
//! Every scenario against the embedded stack, briefly: sessions complete,
//! nothing fails, the report has the agreed shape, and the gateway's own
//! counters agree with the generator's.

use std::sync::Arc;
use std::time::Duration;

use loadtest::run::{drive, Plan, Scenario, World};
use loadtest::target::{counter_sum, Target};

fn plan(scenario: Scenario, rate: Option<f64>) -> Plan {
    Plan {
        scenario,
        rate,
        concurrency: 4,
        duration: Duration::from_millis(1500),
        phones: 8,
        sockets: 2,
        connections: 40,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_the_embedded_stack() {
    let target = Target::embedded(3, 10).await.unwrap();
    // One world per scenario would restart the stack; phones are
    // registered once, which every scenario accepts.
    let world = World::prepare(target, &plan(Scenario::Mixed, None))
        .await
        .unwrap();
    let before = world.target.scrape().await.unwrap();
    for (scenario, rate) in [
        (Scenario::Connect, None),
        (Scenario::Register, Some(20.0)),
        (Scenario::Recover, None),
        (Scenario::Mixed, Some(20.0)),
    ] {
        let w = Arc::new(World::fresh_recorder(&world));
        let elapsed = drive(&w, &plan(scenario, rate)).await;
        let r = w.rec.report(scenario.name(), elapsed);
        assert!(r.completed > 0, "{}: nothing completed", scenario.name());
        assert_eq!(r.failed, 0, "{}: {:?}", scenario.name(), r.errors);
        for phase in ["connect", "auth", "session"] {
            assert!(r.latency_us.contains_key(phase), "{phase}");
        }
        if scenario == Scenario::Recover {
            assert!(r.latency_us.contains_key("login_start"));
            assert!(r.latency_us.contains_key("login_finish"));
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["scenario"], scenario.name());
    }
    // Idle: connections stay up while held.
    let w = Arc::new(World::fresh_recorder(&world));
    let (conns, up) = w.idle(40, 16, Duration::from_millis(500)).await;
    assert_eq!(conns.len(), 40);
    assert_eq!(up, 40);
    assert_eq!(
        w.rec
            .report("idle", Duration::from_secs(1))
            .peak_connections,
        40
    );
    for c in conns {
        c.close().await;
    }
    // The gateway counted at least every authentication the generator made.
    let after = world.target.scrape().await.unwrap();
    let counted = counter_sum(&after, "gateway_authenticated_total")
        - counter_sum(&before, "gateway_authenticated_total");
    assert!(counted >= 40.0, "{counted}");
}

/// The command's JSON report records how the run was made, and a run
/// without --rate or --concurrency says what it does instead of silently
/// choosing.
#[test]
fn the_json_report_records_its_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "connect",
            "--embedded",
            "--replicas",
            "1",
            "--duration",
            "1",
            "--phones",
            "4",
            "--quiet",
            "--report-json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("closed loop of 16"), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let p = &r["params"];
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(p["loop_kind"], "closed");
    assert_eq!(p["concurrency"], 16);
    assert_eq!(p["phones"], 4);
    assert_eq!(p["target"], "embedded");
    assert_eq!(p["replicas"], 1);
    assert!(p["started_at"].as_str().unwrap().ends_with('Z'), "{p}");
    assert!(p["command"][1] == "connect", "{p}");
}
