//! Whole-backup operations an app calls: back up a file or folder to the
//! cloud store, restore the newest backup into a folder.
//!
//! Must never: leave a partially restored folder at the destination, or
//! report a restore as done before the backup's final chunk authenticated.

use std::path::{Path, PathBuf};

use crate::archive::{self, Unpacker};
use crate::cloud::{BackupStore, BackupVersion};
use crate::{BackupKey, ClientError};

/// Result of a restore.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Which backup was restored.
    pub version: BackupVersion,
    /// Where the files are now.
    pub path: PathBuf,
    /// Bytes of archive restored.
    pub bytes: u64,
}

/// Backs up `source` (a file or a folder) as a new version. `progress` gets
/// the bytes packed so far (compare with [`archive::estimate_size`]).
pub async fn backup_path(
    store: &BackupStore,
    key: &BackupKey,
    source: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<BackupVersion, ClientError> {
    let reader = archive::pack(source)?;
    store.upload(key, reader, progress).await
}

/// Restores the newest backup into `dest` (new or empty folder). `progress`
/// gets the encrypted bytes downloaded so far (compare with the version's
/// `size`).
pub async fn restore_latest(
    store: &BackupStore,
    key: &BackupKey,
    dest: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Restored, ClientError> {
    let version = store
        .latest()
        .await?
        .ok_or_else(|| ClientError::NoBackup(store.location().to_owned()))?;
    restore_version(store, key, &version, dest, progress).await
}

/// Restores one given version into `dest`.
pub async fn restore_version(
    store: &BackupStore,
    key: &BackupKey,
    version: &BackupVersion,
    dest: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Restored, ClientError> {
    let mut unpacker = Unpacker::start(dest)?;
    match store
        .download(version, key, unpacker.writer(), progress)
        .await
    {
        Ok(bytes) => {
            let path = unpacker.commit().await?;
            Ok(Restored {
                version: version.clone(),
                path,
                bytes,
            })
        }
        Err(e) => {
            unpacker.discard().await;
            Err(e)
        }
    }
}
