//! Owner-only files and folders for secrets and state: keys, sealed
//! secrets, device credentials, data folders.
//!
//! Must never: write a secret through a path that leaves it readable by
//! others, even for a moment (the mode is set when the file is created, not
//! after), or half-replace one (a replacement is a rename of a complete,
//! synced file).

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file operation that failed, with the file it was about.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done ("create", "write", "replace", ...).
    pub op: &'static str,
    /// The file or folder.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    fn new(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What [`write_private`] does when the file already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Fail with `AlreadyExists`: for secrets that are made once (a fleet
    /// key, a CA key) and must never be overwritten by a second `init`.
    Refuse,
    /// Replace it atomically: the new bytes go to a temporary owner-only
    /// file in the same folder, synced, then renamed over the old one, so a
    /// crash leaves either the old or the new file, never a torn one.
    Replace,
}

/// Writes `bytes` to `path` as an owner-only file (0600), synced to disk.
/// Missing parent folders are created owner-only (0700).
pub fn write_private(path: &Path, bytes: &[u8], existing: Existing) -> Result<(), FileError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            create_private_dir(parent)?;
        }
    }
    match existing {
        Existing::Refuse => create_and_write(path, bytes, "create", 0o600),
        Existing::Replace => replace_atomically(path, bytes, 0o600),
    }
}

fn create_and_write(
    path: &Path,
    bytes: &[u8],
    op: &'static str,
    mode: u32,
) -> Result<(), FileError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(|e| FileError::new(op, path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| FileError::new("write", path, e))
}

/// Makes a rename in `path`'s folder durable.
fn sync_parent(path: &Path) -> Result<(), FileError> {
    #[cfg(unix)]
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| FileError::new("sync", parent, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes a file that holds nothing secret (a certificate, a public key, a
/// config without secrets, a report) readable by others, replacing any
/// earlier version atomically. Secrets go through [`write_private`].
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    replace_atomically(path, bytes, 0o644)
}

/// Writes `bytes` to a temporary file of `mode` beside `path`, syncs it,
/// renames it over `path` and syncs the folder: a crash leaves the old or
/// the new file, never a torn one.
fn replace_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    create_and_write(&tmp, bytes, "write", mode)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        FileError::new("replace", path, e)
    })?;
    sync_parent(path)
}

/// Creates `path` (and missing parents) as an owner-only folder (0700), or
/// makes an existing one owner-only.
pub fn create_private_dir(path: &Path) -> Result<(), FileError> {
    std::fs::create_dir_all(path).map_err(|e| FileError::new("create", path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| FileError::new("protect", path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn refuse_creates_once_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new/key");
        write_private(&p, b"first", Existing::Refuse).unwrap();
        let err = write_private(&p, b"second", Existing::Refuse).unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(err.to_string().starts_with("cannot create "), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        #[cfg(unix)]
        {
            assert_eq!(mode(&p), 0o600);
            assert_eq!(mode(p.parent().unwrap()), 0o700);
        }
    }

    #[test]
    fn replace_swaps_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("device.toml");
        write_private(&p, b"a much longer first version", Existing::Replace).unwrap();
        write_private(&p, b"short", Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"short");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("device.toml")]);
        #[cfg(unix)]
        assert_eq!(mode(&p), 0o600);
    }

    #[test]
    fn a_public_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        write_public(&p, b"first, longer").unwrap();
        write_public(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        #[cfg(unix)]
        assert_eq!(mode(&p), 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_private_dir_is_made_owner_only_even_if_it_existed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
    }
}
