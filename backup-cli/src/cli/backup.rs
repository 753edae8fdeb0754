//! `backup-client backup`: archive, encrypt and upload a folder.

use std::path::Path;
use std::time::Instant;

use client::backups;
use client::BackupStore;

use crate::cli::common::*;
use crate::Cli;

pub(crate) async fn backup(cli: &Cli, path: &Path) -> anyhow::Result<()> {
    let s = settings(cli)?;
    let store = BackupStore::open(&s.location, &s.account_id, s.keep)?;
    let pb = progress_bar(client::archive::estimate_size(path), "encrypting");
    let p2 = pb.clone();
    let t = Instant::now();
    let res = backups::backup_path(&store, &s.key, path, &move |n| p2.set_position(n)).await;
    pb.finish_and_clear();
    let v = res?;
    println!(
        "backed up {} as version {} ({} bytes encrypted, {:.1?}); keeping the newest {}",
        path.display(),
        v.id,
        v.size,
        t.elapsed(),
        s.keep
    );
    Ok(())
}
