//! Turns a file or folder into one byte stream (a tar archive, via the `tar`
//! crate) for backup, and a restored stream back into a folder.
//!
//! Packing and unpacking run on blocking threads connected to the async
//! pipeline by an in-memory pipe, so memory stays bounded by the pipe.
//! Restores unpack into a hidden staging folder beside the destination and
//! move it into place only after the whole backup authenticated.
//!
//! Must never: let a packing error end the stream cleanly (that would upload
//! a silently truncated backup), or leave a partial restore at the
//! destination.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;
use tokio_util::io::SyncIoBridge;

use crate::ClientError;

const PIPE: usize = 256 * 1024;

/// An archive being produced on a blocking thread. Reading it yields the tar
/// bytes; if packing fails, the read fails instead of ending.
pub struct PackedReader {
    rd: DuplexStream,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for PackedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PackedReader")
    }
}

impl AsyncRead for PackedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.rd).poll_read(cx, buf))?;
        if buf.filled().len() == before {
            if let Some(task) = self.task.as_mut() {
                let res = ready!(Pin::new(task).poll(cx));
                self.task = None;
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Poll::Ready(Err(e)),
                    Err(e) => return Poll::Ready(Err(io::Error::other(e))),
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Estimated archive size of `source` (file sizes plus tar headers), for a
/// progress bar.
pub fn estimate_size(source: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if meta.is_dir() {
            let mut total = 512;
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    total += walk(&e.path());
                }
            }
            total
        } else {
            512 + meta.len().div_ceil(512) * 512
        }
    }
    walk(source) + 1024
}

/// Starts packing `source` (a file or a folder) into a tar stream.
pub fn pack(source: &Path) -> Result<PackedReader, ClientError> {
    let meta = std::fs::metadata(source).map_err(ClientError::io(format!(
        "cannot read {} (check the path to back up)",
        source.display()
    )))?;
    let (rd, wr) = tokio::io::duplex(PIPE);
    let bridge = SyncIoBridge::new(wr);
    let source: PathBuf = source.to_owned();
    let task = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut b = tar::Builder::new(bridge);
        b.follow_symlinks(false);
        if meta.is_dir() {
            b.append_dir_all(".", &source)?;
        } else {
            let name = source
                .file_name()
                .ok_or_else(|| io::Error::other("the path has no file name"))?;
            b.append_path_with_name(&source, name)?;
        }
        let mut bridge = b.into_inner()?;
        bridge.shutdown()
    });
    Ok(PackedReader {
        rd,
        task: Some(task),
    })
}

/// A restore in progress: write the decrypted archive into
/// [`Unpacker::writer`], then call [`Unpacker::commit`] (success) or
/// [`Unpacker::discard`].
pub struct Unpacker {
    writer: Option<DuplexStream>,
    task: JoinHandle<io::Result<()>>,
    staging: PathBuf,
    dest: PathBuf,
}

impl std::fmt::Debug for Unpacker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unpacker")
            .field("dest", &self.dest)
            .finish_non_exhaustive()
    }
}

impl Unpacker {
    /// Prepares to restore into `dest`, which must not exist yet or be an
    /// empty folder.
    pub fn start(dest: &Path) -> Result<Self, ClientError> {
        if let Ok(mut rd) = std::fs::read_dir(dest) {
            if rd.next().is_some() {
                return Err(ClientError::Local(format!(
                    "{} is not empty; restore into a new or empty folder",
                    dest.display()
                )));
            }
        } else if dest.exists() {
            return Err(ClientError::Local(format!(
                "{} exists and is not a folder; restore into a new or empty folder",
                dest.display()
            )));
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(ClientError::io(format!(
            "cannot create {}",
            parent.display()
        )))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "restore".into());
        let staging = parent.join(format!(".{name}.partial-{:08x}", rand::random::<u32>()));
        std::fs::create_dir(&staging).map_err(ClientError::io(format!(
            "cannot create {}",
            staging.display()
        )))?;
        let (rd, wr) = tokio::io::duplex(PIPE);
        let bridge = SyncIoBridge::new(rd);
        let target = staging.clone();
        let task = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut a = tar::Archive::new(bridge);
            a.set_overwrite(false);
            a.unpack(&target)?;
            // Drain anything after the end-of-archive marker so the writer
            // never blocks on a full pipe.
            io::copy(&mut a.into_inner(), &mut io::sink())?;
            Ok(())
        });
        Ok(Self {
            writer: Some(wr),
            task,
            staging,
            dest: dest.to_owned(),
        })
    }

    /// Where the decrypted archive goes.
    pub fn writer(&mut self) -> &mut DuplexStream {
        match &mut self.writer {
            Some(w) => w,
            None => unreachable!("writer is only taken by commit/discard, which consume self"),
        }
    }

    /// Finishes unpacking and moves the result to the destination.
    pub async fn commit(mut self) -> Result<PathBuf, ClientError> {
        drop(self.writer.take());
        let res = (&mut self.task).await;
        let res = match res {
            Ok(r) => r.map_err(ClientError::io("unpacking the backup")),
            Err(e) => Err(ClientError::io("unpacking the backup")(io::Error::other(e))),
        };
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&self.staging);
            return Err(e);
        }
        if self.dest.exists() {
            let _ = std::fs::remove_dir(&self.dest);
        }
        std::fs::rename(&self.staging, &self.dest).map_err(ClientError::io(format!(
            "moving the restored files to {}",
            self.dest.display()
        )))?;
        Ok(self.dest.clone())
    }

    /// Abandons the restore and removes the staging folder.
    pub async fn discard(mut self) {
        drop(self.writer.take());
        let _ = (&mut self.task).await;
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}
