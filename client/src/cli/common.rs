//! What several commands share: connecting with the profile and device, the backup settings, progress bars, times.

use client::{BackupSettings, ClientProfile, DeviceIdentity, GatewayConnection};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Cli;

pub(crate) async fn connect(cli: &Cli) -> anyhow::Result<(ClientProfile, GatewayConnection)> {
    let mut profile = ClientProfile::load(&cli.profile)?;
    let device = DeviceIdentity::load(&cli.device)?;
    let conn = GatewayConnection::connect(&profile, &device).await?;
    // The gateway rotated its Noise key and told this phone the new one
    // (authenticated by the old pin): keep it, so the next start pins it.
    if let Some(k) = conn.gateway_key_update() {
        let k = hex::encode(k);
        if profile.gateway_noise_next_key.as_deref() == Some(k.as_str()) {
            profile.gateway_noise_next_key = None;
        }
        profile.gateway_noise_key = Some(k);
        profile.save(&cli.profile)?;
        eprintln!(
            "the gateway's key changed; the new one is saved in {}",
            cli.profile.display()
        );
    }
    Ok((profile, conn))
}

pub(crate) fn settings(cli: &Cli) -> anyhow::Result<BackupSettings> {
    BackupSettings::load(&cli.device)?.ok_or_else(|| {
        anyhow::anyhow!(
            "encrypted backup is off on this device; turn it on with `backup-client enable`, or restore with `backup-client restore`"
        )
    })
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

pub(crate) fn human_time(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ago = std::time::SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    format!("{secs} (unix), {ago} s ago")
}
