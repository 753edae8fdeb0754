//! What the generator drives: the whole local stack started in this process
//! (`--embedded`, on loopback in a temporary folder), or a stack started
//! elsewhere (`--profile` for the gateway address and pins, `--credential-key`
//! for the account-service key that mints the phones' credentials,
//! optionally `--metrics` for the gateway's `/metrics` to cross-check).
//!
//! Must never: send traffic anywhere but the configured gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use client::{ClientProfile, DeviceIdentity};
use testing::local_stack::{LocalStack, StackOptions};

/// A gateway to drive and the means to enroll phones for it.
pub struct Target {
    /// What phones need to reach and trust the gateway.
    pub profile: ClientProfile,
    mint_secret: Vec<u8>,
    /// Where to read the gateway's counters, if anywhere.
    pub metrics: Option<MetricsSource>,
    /// The embedded stack, kept alive for the run.
    pub stack: Option<LocalStack>,
}

/// Where the gateway's Prometheus counters come from.
pub enum MetricsSource {
    /// This process's recorder (embedded stack).
    InProcess(metrics_exporter_prometheus::PrometheusHandle),
    /// A remote `/metrics` URL.
    Url(String),
}

impl Target {
    /// Starts the whole stack in this process: a `replicas`-replica cluster
    /// and a gateway on loopback, state in a temporary folder.
    pub async fn embedded(replicas: u64, max_attempts: u32) -> anyhow::Result<Self> {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .ok();
        gateway::telemetry::describe();
        vault_backend::telemetry::describe();
        let stack = LocalStack::start(StackOptions {
            replicas,
            max_attempts,
            // The generator measures capacity, not the per-device policy.
            gateway_budgets: gateway::budget::BudgetConfig::unlimited(),
            gateway_connections: gateway::connections::ConnectionCaps::unlimited(),
            // Every simulated phone comes from 127.0.0.1.
            gateway_admission: gateway::admission::AdmissionConfig {
                max_handshakes_per_source: usize::MAX,
                ..Default::default()
            },
            ..Default::default()
        })
        .await?;
        let mint_secret = gateway::keys::account_service_secret(&stack.gateway_dir())?.to_vec();
        Ok(Self {
            profile: stack.profile.clone(),
            mint_secret,
            metrics: handle.map(MetricsSource::InProcess),
            stack: Some(stack),
        })
    }

    /// A stack started elsewhere.
    pub fn remote(
        profile: PathBuf,
        credential_key: PathBuf,
        gateway: Option<SocketAddr>,
        metrics: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut profile = client::profile::load(&profile)?;
        if let Some(g) = gateway {
            profile.gateway_addr = g;
        }
        let secret = std::fs::read_to_string(&credential_key).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the account-service key {}: {e} (it is `account-service.key` in the gateway's state folder)",
                credential_key.display()
            )
        })?;
        let mint_secret = hex::decode(secret.trim())
            .map_err(|e| anyhow::anyhow!("{}: not hex: {e}", credential_key.display()))?;
        Ok(Self {
            profile,
            mint_secret,
            metrics: metrics.map(MetricsSource::Url),
            stack: None,
        })
    }

    /// A new simulated phone of `account`: fresh device key and credential.
    pub fn enroll(&self, account: &str) -> anyhow::Result<DeviceIdentity> {
        let mut d = DeviceIdentity::generate()?;
        d.credential = Some(protocol_spec::credential::mint(
            &self.mint_secret,
            account,
            &d.static_public,
            Duration::from_secs(24 * 3600),
        )?);
        Ok(d)
    }

    /// The gateway's Prometheus text, if a source is configured.
    pub async fn scrape(&self) -> Option<String> {
        match self.metrics.as_ref()? {
            MetricsSource::InProcess(h) => Some(h.render()),
            MetricsSource::Url(u) => {
                let resp = reqwest::get(u).await.ok()?;
                let body = vault_backend::admin::read_body(resp, MAX_METRICS_BODY)
                    .await
                    .ok()?;
                String::from_utf8(body).ok()
            }
        }
    }

    /// The process's heap (`process_heap_allocated_bytes`) at the metrics
    /// source, if there is one and it exports the gauge.
    pub async fn heap_bytes(&self) -> Option<f64> {
        let text = self.scrape().await?;
        let name = service_kit::heap::GAUGE;
        text.lines()
            .any(|l| l.starts_with(name))
            .then(|| counter_sum(&text, name))
    }

    /// Stops the embedded stack.
    pub async fn shutdown(self) {
        if let Some(s) = self.stack {
            s.shutdown().await;
        }
    }
}

/// Largest `/metrics` page read; a gateway's is tens of KiB.
const MAX_METRICS_BODY: usize = 16 << 20;

/// Sum of a counter's samples (all label sets) in Prometheus text.
pub fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Resident memory of process `pid` (`self` for this one), bytes.
pub fn rss_bytes(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counter_sum_adds_label_sets_and_ignores_look_alikes() {
        let text = "# TYPE a_total counter\na_total{x=\"1\"} 3\na_total{x=\"2\"} 4\na_total_other 9\na_total 1\n";
        assert_eq!(super::counter_sum(text, "a_total"), 8.0);
    }
}
