//! A restore's unpacking of a decrypted backup stream
//! (`client::archive::Unpacker`, the `tar` crate behind it): the fuzzer's
//! bytes are the archive, written in pieces as the decryptor would. A
//! backup authenticates under the user's key, so its bytes are the user's
//! own; still, a corrupted or hand-made one must fail typed.
//!
//! Checked beyond "no panic": nothing is written outside the destination
//! (no `..`, absolute path or symlink escape reaches the folder around
//! it), and a failed restore leaves neither the destination nor its
//! staging folder behind.
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bkv_fuzz::runtime;
use client::archive::Unpacker;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

/// One folder per process, on tmpfs when there is one.
fn root() -> &'static Path {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let r = base.join(format!("bkv-fuzz-restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        std::fs::create_dir_all(&r).expect("a scratch folder");
        r
    })
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Removes `dir`, first giving its owner back every folder an archive's
/// modes took away (a `000` folder cannot be emptied but by root).
fn scrub(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                scrub(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    } else {
        let _ = std::fs::remove_file(dir);
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut a = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("chat.db", &b"messages"[..]),
        ("media/photo.jpg", &[0xff; 700][..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        let _ = a.append_data(&mut h, name, data);
    }
    if let Ok(bytes) = a.into_inner() {
        out.push(bytes);
    }
    // A folder, a symlink and a file reached through it.
    let mut a = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    let _ = h.set_link_name("../../outside");
    h.set_cksum();
    let _ = a.append_data(&mut h, "link", &[][..]);
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_cksum();
    let _ = a.append_data(&mut h, "link/file", &b"evil"[..]);
    if let Ok(bytes) = a.into_inner() {
        out.push(bytes);
    }
    out
}

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("archive_restore", seeds);
    },
    |data: &[u8]| {
    let root = root();
    let around = root.join("around");
    let dest = around.join("restored");
    scrub(&around);
    std::fs::create_dir_all(&around).expect("the folder around the destination");
    let piece = 1 + data.first().map_or(0, |&b| usize::from(b) * 4);
    let ok = runtime().block_on(async {
        let Ok(mut u) = Unpacker::start(&dest) else {
            return false;
        };
        for chunk in data.chunks(piece) {
            if u.writer().write_all(chunk).await.is_err() {
                break;
            }
        }
        u.commit().await.is_ok()
    });
    assert!(entries(root) == ["around"], "a restore wrote beside the folder around it: {:?}", entries(root));
    let left = entries(&around);
    if ok {
        assert!(left == ["restored"], "after a restore: {left:?}");
    } else {
        assert!(left.is_empty(), "a failed restore left {left:?}");
    }
});
