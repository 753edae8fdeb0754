//! The untrusted cloud drive holding encrypted backups, behind `object_store`:
//! a local folder (the embedded default, standing in for Drive or iCloud) or
//! an S3-compatible bucket by URL.
//!
//! Layout: `<root>/<account>/backups/<version>.bkv`, where `<version>` is
//! `<unix-millis, 16 digits>-<16 random hex digits>`, so names sort by time.
//! A new version's stamp is strictly later than every stored one (the clock,
//! or the newest stamp plus one millisecond if the clock is behind or two
//! uploads share a millisecond), so the newest upload always sorts last.
//! Every upload creates a new object; object stores publish an object only
//! when it is complete (a staged file renamed into place, an S3 single or
//! multipart PUT completed), so a half-written backup never replaces a good
//! one. Older versions are pruned only after the new one is published.
//!
//! Must never: upload plaintext (everything goes through `backup_stream`),
//! overwrite an existing version, or delete the newest complete version.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::buffered::{BufReader, BufWriter};
use object_store::local::LocalFileSystem;
use object_store::path::{Path, PathPart};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use protocol_spec::backup_format::Params;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::{backup_stream, BackupKey, ClientError};

/// Backup versions kept by default.
pub const DEFAULT_KEEP: usize = 3;
const SUFFIX: &str = ".bkv";
const UPLOAD_PART: usize = 5 * 1024 * 1024;

/// One stored backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupVersion {
    /// Version name (sorts by creation time).
    pub id: String,
    /// When the upload started.
    pub created: SystemTime,
    /// Encrypted size in bytes.
    pub size: u64,
}

/// A cloud folder of one account's backups.
#[derive(Debug, Clone)]
pub struct BackupStore {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    location: String,
    keep: usize,
}

fn store_err<'a>(
    what: &'a str,
    location: &'a str,
) -> impl Fn(object_store::Error) -> ClientError + 'a {
    move |source| ClientError::Store {
        what: format!("{what} at {location}"),
        source: Box::new(source),
    }
}

impl BackupStore {
    /// Opens the backups of `account_id` at `location`: a folder path,
    /// `file:///abs/path`, or `s3://bucket/prefix` (endpoint and credentials
    /// from the usual `AWS_*` environment variables, e.g. `AWS_ENDPOINT`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP`). Keeps the newest `keep` versions (at least 1).
    pub fn open(location: &str, account_id: &str, keep: usize) -> Result<Self, ClientError> {
        let (store, root): (Arc<dyn ObjectStore>, Path) = if location.contains("://") {
            let url = url::Url::parse(location).map_err(|e| {
                ClientError::Config(format!("backup location {location:?} is not a URL: {e}"))
            })?;
            if url.scheme() == "file" {
                let dir = url.to_file_path().map_err(|_| {
                    ClientError::Config(format!("{location:?} is not a local folder URL"))
                })?;
                (local(&dir)?, Path::default())
            } else {
                let opts = std::env::vars()
                    .filter(|(k, _)| k.starts_with("AWS_"))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v));
                let (s, p) = object_store::parse_url_opts(&url, opts).map_err(|e| {
                    ClientError::Config(format!(
                        "cannot use backup location {location}: {e}; supported: a folder, file:///..., s3://bucket/prefix"
                    ))
                })?;
                (Arc::from(s), p)
            }
        } else {
            (local(std::path::Path::new(location))?, Path::default())
        };
        let dir = root
            .parts()
            .chain([PathPart::from(account_id), PathPart::from("backups")])
            .collect();
        Ok(Self {
            store,
            dir,
            location: location.to_owned(),
            keep: keep.max(1),
        })
    }

    /// Where this store points (for messages).
    pub fn location(&self) -> &str {
        &self.location
    }

    fn path_of(&self, id: &str) -> Path {
        self.dir.clone().join(format!("{id}{SUFFIX}"))
    }

    /// All complete versions, oldest first.
    pub async fn list(&self) -> Result<Vec<BackupVersion>, ClientError> {
        let metas: Vec<ObjectMeta> = self
            .store
            .list(Some(&self.dir))
            .try_collect()
            .await
            .map_err(store_err("cannot list backups", &self.location))?;
        let mut v: Vec<BackupVersion> = metas.iter().filter_map(parse_version).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    /// The newest complete version.
    pub async fn latest(&self) -> Result<Option<BackupVersion>, ClientError> {
        Ok(self.list().await?.pop())
    }

    /// Encrypts `reader` under `key` and uploads it as a new version, then
    /// prunes old versions. `progress` gets plaintext bytes read so far.
    pub async fn upload<R: AsyncRead + Unpin>(
        &self,
        key: &BackupKey,
        reader: R,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<BackupVersion, ClientError> {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // Ordering by random suffix within one millisecond, or by a clock
        // that runs behind the last phone's, would make `latest` pick an
        // older backup.
        let newest = self.latest().await?.map(|v| stamp_millis(&v.id));
        let millis = match newest {
            Some(Some(n)) if n >= clock => n + 1,
            _ => clock,
        };
        let now = UNIX_EPOCH + Duration::from_millis(millis as u64);
        let mut rnd = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut rnd);
        let id = format!("{millis:016}-{}", hex::encode(rnd));
        let path = self.path_of(&id);
        // 5 MiB parts (the S3 minimum), two in flight: bounds upload memory
        // to about 15 MiB whatever the backup size.
        let mut w = BufWriter::with_capacity(self.store.clone(), path.clone(), UPLOAD_PART)
            .with_max_concurrency(2);
        let res = backup_stream::encrypt(key, Params::default(), reader, &mut w, progress).await;
        if let Err(e) = res {
            // Discard the partial upload; nothing was published.
            let _ = w.abort().await;
            return Err(e);
        }
        w.shutdown().await.map_err(|source| ClientError::Store {
            what: format!("uploading the backup to {}", self.location),
            source: Box::new(source),
        })?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(store_err("the uploaded backup is missing", &self.location))?;
        self.prune().await?;
        Ok(BackupVersion {
            id,
            created: now,
            size: meta.size,
        })
    }

    /// Deletes all but the newest `keep` versions; returns what it deleted.
    pub async fn prune(&self) -> Result<Vec<BackupVersion>, ClientError> {
        let all = self.list().await?;
        let excess = all.len().saturating_sub(self.keep);
        let old: Vec<BackupVersion> = all.into_iter().take(excess).collect();
        for v in &old {
            self.store
                .delete(&self.path_of(&v.id))
                .await
                .map_err(store_err("cannot delete an old backup", &self.location))?;
        }
        Ok(old)
    }

    /// Downloads and decrypts `version` into `writer`. `progress` gets
    /// encrypted bytes read so far. Only a successful return means the data
    /// written is complete and authentic.
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        version: &BackupVersion,
        key: &BackupKey,
        writer: W,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, ClientError> {
        let meta = self
            .store
            .head(&self.path_of(&version.id))
            .await
            .map_err(store_err("cannot find the backup", &self.location))?;
        let reader = BufReader::with_capacity(self.store.clone(), &meta, 1024 * 1024);
        backup_stream::decrypt(key, reader, writer, progress).await
    }
}

fn local(dir: &std::path::Path) -> Result<Arc<dyn ObjectStore>, ClientError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        ClientError::Config(format!(
            "cannot create the backup folder {}: {e}",
            dir.display()
        ))
    })?;
    let fs = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| ClientError::Config(format!("backup folder {}: {e}", dir.display())))?
        .with_fsync(true)
        .with_automatic_cleanup(true);
    Ok(Arc::new(fs))
}

/// The millisecond stamp of a version name.
fn stamp_millis(id: &str) -> Option<u128> {
    id.split_once('-')?.0.parse().ok()
}

fn parse_version(m: &ObjectMeta) -> Option<BackupVersion> {
    let id = m.location.filename()?.strip_suffix(SUFFIX)?;
    let (millis, rnd) = id.split_once('-')?;
    if millis.len() != 16
        || !millis.bytes().all(|b| b.is_ascii_digit())
        || rnd.len() != 16
        || !rnd.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let ms = stamp_millis(id)?;
    Some(BackupVersion {
        id: id.to_owned(),
        created: UNIX_EPOCH + Duration::from_millis(ms as u64),
        size: m.size,
    })
}
