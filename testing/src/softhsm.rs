//! SoftHSM2 tokens in a temporary folder, for the PKCS#11 tests: the
//! configuration file the library reads (`SOFTHSM2_CONF`) and tokens made
//! with `softhsm2-util`, as each replica host would have its own HSM.
//!
//! Must never: touch the system's token folder.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's `softhsm2` package puts the PKCS#11 module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A token folder and its configuration, removed on drop.
#[derive(Debug)]
pub struct SoftHsm {
    _dir: tempfile::TempDir,
    /// The configuration file (`SOFTHSM2_CONF`).
    pub conf: PathBuf,
}

impl SoftHsm {
    /// An empty token folder.
    ///
    /// # Panics
    ///
    /// If SoftHSM2 is not installed or the folder cannot be made.
    pub fn new() -> Self {
        assert!(
            Path::new(MODULE).exists(),
            "SoftHSM2 is missing: apt-get install softhsm2"
        );
        let dir = tempfile::tempdir().expect("a temporary folder");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("the token folder");
        let conf = dir.path().join("softhsm2.conf");
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        );
        service_kit::files::write_public(&conf, text.as_bytes()).expect("the SoftHSM2 config");
        Self { _dir: dir, conf }
    }

    /// Makes a token `label` with user PIN `pin`.
    ///
    /// # Panics
    ///
    /// If `softhsm2-util` fails.
    pub fn init_token(&self, label: &str, pin: &str) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label, "--pin", pin])
            .args(["--so-pin", "87654321"])
            .output()
            .expect("softhsm2-util is installed (apt-get install softhsm2)");
        assert!(out.status.success(), "{out:?}");
    }
}

impl Default for SoftHsm {
    fn default() -> Self {
        Self::new()
    }
}
