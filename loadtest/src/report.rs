//! What a run records and reports: an HDR histogram per phase (connect,
//! auth, each request kind, the whole session), error counts by code, the
//! peak number of open connections, and the JSON report whose fields are
//! fixed by the issue that asked for them (`scenario`, `duration_s`,
//! `completed`, `failed`, `throughput_per_s`, `latency_us`, `errors`,
//! `peak_connections`).
//!
//! Must never: drop a sample silently (values beyond the histogram's range
//! are clamped to its top, and counted), or report latency measured from
//! anything but the intended start in open-loop mode.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram tracks exactly (60 s, in µs).
const MAX_US: u64 = 60_000_000;

/// One phase's latency summary, in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseStats {
    /// 50th percentile (median).
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Number of samples.
    pub count: u64,
}

/// The `--report-json` document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Measured duration.
    pub duration_s: f64,
    /// Sessions that completed.
    pub completed: u64,
    /// Sessions that failed.
    pub failed: u64,
    /// Completed sessions per second.
    pub throughput_per_s: f64,
    /// Latency by phase.
    pub latency_us: BTreeMap<String, PhaseStats>,
    /// Failures by error code: the client library's stable codes
    /// (`ClientErrorCode`: `wrong_password`, `busy`, ...), or a code of the
    /// generator's own for what is not a client error.
    pub errors: BTreeMap<String, u64>,
    /// Most connections open at once.
    pub peak_connections: u64,
    /// How the run was made (set by the command before it writes the
    /// report): enough to run it again and to tell two reports apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<RunParams>,
}

/// The parameters of a run, recorded in its JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct RunParams {
    /// The load generator's version.
    pub version: String,
    /// When the run started, RFC 3339 (UTC).
    pub started_at: String,
    /// The command line, as given.
    pub command: Vec<String>,
    /// `open` (a fixed rate of new sessions) or `closed` (a fixed number
    /// in flight).
    pub loop_kind: String,
    /// Open loop: sessions started per second.
    pub rate_per_s: Option<f64>,
    /// Closed loop: sessions in flight.
    pub concurrency: Option<usize>,
    /// Seconds of load asked for.
    pub duration_s: f64,
    /// Simulated phones.
    pub phones: usize,
    /// UDP sockets the phones share.
    pub sockets: usize,
    /// Idle: connections asked for.
    pub connections: usize,
    /// `embedded` (the whole stack in this process) or `remote`.
    pub target: String,
    /// Embedded: replicas of the vault cluster.
    pub replicas: Option<u64>,
}

/// Longest run the timeline keeps apart second by second; later samples
/// go to its last second.
const MAX_TIMELINE_S: usize = 24 * 3600;

/// One second of the run: latency per phase and sessions ended in it.
#[derive(Debug, Default)]
struct Second {
    phases: BTreeMap<&'static str, Histogram<u64>>,
    completed: u64,
    failed: u64,
}

/// One second of the run, summarized (for `--plot`).
#[derive(Debug, Clone, PartialEq)]
pub struct SecondStats {
    /// Seconds since the first sample.
    pub second: u64,
    /// Median of the phase in this second, µs (`None`: no sample).
    pub p50_us: Option<u64>,
    /// 99th percentile of the phase in this second, µs.
    pub p99_us: Option<u64>,
    /// Sessions completed in this second.
    pub completed: u64,
    /// Sessions failed in this second.
    pub failed: u64,
}

/// Thread-safe recorder shared by every simulated phone.
#[derive(Debug)]
pub struct Recorder {
    phases: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    completed: AtomicU64,
    failed: AtomicU64,
    open: AtomicU64,
    peak: AtomicU64,
    /// The timeline's second 0: the first sample (set-up before the load
    /// records nothing).
    origin: OnceLock<Instant>,
    timeline: Mutex<Vec<Second>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            phases: Mutex::default(),
            errors: Mutex::default(),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            open: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            origin: OnceLock::new(),
            timeline: Mutex::default(),
        }
    }
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, sigfig)
        .unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

impl Recorder {
    /// Records one sample of `phase`.
    pub fn record(&self, phase: &'static str, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_US);
        if let Ok(mut m) = self.phases.lock() {
            let _ = m.entry(phase).or_insert_with(|| histogram(3)).record(us);
        }
        // Two significant digits are enough for a plot and keep a second small.
        self.in_this_second(|s| {
            let _ = s
                .phases
                .entry(phase)
                .or_insert_with(|| histogram(2))
                .record(us);
        });
    }

    fn in_this_second(&self, f: impl FnOnce(&mut Second)) {
        let origin = *self.origin.get_or_init(Instant::now);
        let i = (origin.elapsed().as_secs() as usize).min(MAX_TIMELINE_S - 1);
        if let Ok(mut t) = self.timeline.lock() {
            if t.len() <= i {
                t.resize_with(i + 1, Second::default);
            }
            f(&mut t[i]);
        }
    }

    /// A session completed.
    pub fn ok(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.in_this_second(|s| s.completed += 1);
    }

    /// A session failed with `code`.
    pub fn fail(&self, code: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(code.to_owned()).or_default() += 1;
        }
        self.in_this_second(|s| s.failed += 1);
    }

    /// `phase` second by second since the first sample.
    pub fn timeline(&self, phase: &str) -> Vec<SecondStats> {
        let Ok(t) = self.timeline.lock() else {
            return Vec::new();
        };
        t.iter()
            .enumerate()
            .map(|(i, s)| {
                let h = s.phases.get(phase).filter(|h| !h.is_empty());
                SecondStats {
                    second: i as u64,
                    p50_us: h.map(|h| h.value_at_quantile(0.5)),
                    p99_us: h.map(|h| h.value_at_quantile(0.99)),
                    completed: s.completed,
                    failed: s.failed,
                }
            })
            .collect()
    }

    /// A copy of `phase`'s whole-run histogram.
    pub fn histogram(&self, phase: &str) -> Option<Histogram<u64>> {
        self.phases.lock().ok()?.get(phase).cloned()
    }

    /// A connection opened.
    pub fn opened(&self) {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open_now(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Sessions completed so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Sessions failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The current p99 of `phase`, in ms.
    pub fn p99_ms(&self, phase: &str) -> Option<f64> {
        let m = self.phases.lock().ok()?;
        let h = m.get(phase)?;
        Some(h.value_at_quantile(0.99) as f64 / 1000.0)
    }

    /// The report for a run of `scenario` that lasted `elapsed`.
    pub fn report(&self, scenario: &str, elapsed: Duration) -> Report {
        let latency_us = self
            .phases
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, h)| {
                        (
                            (*k).to_owned(),
                            PhaseStats {
                                p50: h.value_at_quantile(0.5),
                                p90: h.value_at_quantile(0.9),
                                p99: h.value_at_quantile(0.99),
                                p999: h.value_at_quantile(0.999),
                                max: h.max(),
                                count: h.len(),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let completed = self.completed();
        Report {
            scenario: scenario.to_owned(),
            duration_s: secs,
            completed,
            failed: self.failed(),
            throughput_per_s: completed as f64 / secs,
            latency_us,
            errors: self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
            peak_connections: self.peak.load(Ordering::Relaxed),
            params: None,
        }
    }
}

impl Report {
    /// The final table, for a terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {}: {} completed, {} failed in {:.1} s = {:.1}/s; peak connections {}\n",
            self.scenario,
            self.completed,
            self.failed,
            self.duration_s,
            self.throughput_per_s,
            self.peak_connections
        );
        out.push_str(&format!(
            "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "phase (ms)", "p50", "p90", "p99", "p99.9", "max", "count"
        ));
        let ms = |us: u64| us as f64 / 1000.0;
        for (k, s) in &self.latency_us {
            out.push_str(&format!(
                "{:<16} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9}\n",
                k,
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.p999),
                ms(s.max),
                s.count
            ));
        }
        for (code, n) in &self.errors {
            out.push_str(&format!("error {code}: {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_exactly_the_agreed_fields() {
        let r = Recorder::default();
        r.record("session", Duration::from_millis(3));
        r.ok();
        r.fail("unavailable");
        r.opened();
        let json =
            serde_json::to_value(r.report("recover", Duration::from_secs(2))).unwrap_or_default();
        let keys: Vec<&str> = json
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut want = vec![
            "completed",
            "duration_s",
            "errors",
            "failed",
            "latency_us",
            "peak_connections",
            "scenario",
            "throughput_per_s",
        ];
        want.sort();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(got, want);
        let phase = &json["latency_us"]["session"];
        for k in ["p50", "p90", "p99", "p999", "max", "count"] {
            assert!(phase.get(k).is_some(), "{k}");
        }
        assert_eq!(json["errors"]["unavailable"], 1);
        assert_eq!(json["peak_connections"], 1);
    }

    #[test]
    fn the_timeline_keeps_each_second_apart() {
        let r = Recorder::default();
        r.record("session", Duration::from_millis(3));
        r.record("session", Duration::from_millis(5));
        r.ok();
        r.fail("unavailable");
        let t = r.timeline("session");
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].completed, t[0].failed), (1, 1));
        let p99 = t[0].p99_us.unwrap_or_default();
        assert!((4_900..=5_100).contains(&p99), "{p99}");
        assert_eq!(r.timeline("connect")[0].p50_us, None);
    }
}
