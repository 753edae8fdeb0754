//! What several commands share: connecting with the profile and device, the backup settings, progress bars, times.

use client::{BackupSettings, ClientProfile, DeviceIdentity, GatewayConnection};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Cli;

pub(crate) async fn connect(cli: &Cli) -> anyhow::Result<(ClientProfile, GatewayConnection)> {
    let mut profile = client::profile::load(&cli.profile)?;
    let device = DeviceIdentity::load(&cli.device)?;
    // Not silent while a gateway that is down runs out the connect budget.
    let addr = profile.gateway_addr;
    let notice = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        eprintln!(
            "connecting to the gateway at {addr}... (giving up after {} s)",
            client::connection::CONNECT_TIMEOUT.as_secs()
        );
    });
    let conn = GatewayConnection::connect(&profile, &device).await;
    notice.abort();
    let conn = conn?;
    // The gateway rotated its Noise key and told this phone the new one
    // (authenticated by the old pin): keep it, so the next start pins it.
    if let Some(k) = conn.gateway_key_update() {
        let k = hex::encode(k);
        if profile.gateway_noise_next_key.as_deref() == Some(k.as_str()) {
            profile.gateway_noise_next_key = None;
        }
        profile.gateway_noise_key = Some(k);
        client::profile::save(&profile, &cli.profile)?;
        eprintln!(
            "the gateway's key changed; the new one is saved in {}",
            cli.profile.display()
        );
    }
    Ok((profile, conn))
}

/// The vault's view of this account, asked over a new connection within
/// `within`; `None` when no answer came in time.
pub(crate) async fn vault_status(
    cli: &Cli,
    within: std::time::Duration,
) -> Option<anyhow::Result<client::Status>> {
    tokio::time::timeout(within, async {
        let (profile, conn) = connect(cli).await?;
        let st = client::VaultClient::new(&conn, &profile)?.status().await;
        conn.close().await;
        anyhow::Ok(st?)
    })
    .await
    .ok()
}

pub(crate) fn settings(cli: &Cli) -> anyhow::Result<BackupSettings> {
    let s = BackupSettings::load(&cli.device)?.ok_or_else(|| {
        anyhow::anyhow!(
            "encrypted backup is off on this device; turn it on with `backup-client enable`, or restore with `backup-client restore`"
        )
    })?;
    check_location(cli, &s)?;
    Ok(s)
}

/// A `--location` that names another place than the stored one is an
/// error, not silently ignored: backups of one device go to one place.
pub(crate) fn check_location(cli: &Cli, s: &BackupSettings) -> anyhow::Result<()> {
    if cli.location.is_some() {
        let given = cli.location()?;
        anyhow::ensure!(
            given == s.location,
            "backups of this device go to {}, set when backup was turned on; --location {given} is not used. To move them, run `backup-client disable`, then `backup-client enable --location {given}`",
            s.location
        );
    }
    Ok(())
}

pub(crate) fn progress_bar(total: u64, verb: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
    )) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// A moment as the user reads it: UTC date and time, and how long ago.
pub(crate) fn human_time(t: std::time::SystemTime) -> String {
    let at = time::OffsetDateTime::from(t);
    let when = time::format_description::parse_borrowed::<2>(
        "[year]-[month]-[day] [hour]:[minute]:[second] UTC",
    )
    .ok()
    .and_then(|f| at.format(&f).ok())
    .unwrap_or_else(|| at.to_string());
    let ago = std::time::SystemTime::now()
        .duration_since(t)
        .unwrap_or_default();
    // Whole seconds: "3m 12s ago", not nanoseconds.
    let ago = std::time::Duration::from_secs(ago.as_secs());
    format!("{when} ({} ago)", client::wait_in_words(ago))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_time_reads_as_a_date_not_unix_seconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_979_200);
        let s = human_time(t);
        assert!(s.starts_with("2025-12-06 00:00:00 UTC ("), "{s}");
        assert!(s.ends_with(" ago)"), "{s}");
    }
}
