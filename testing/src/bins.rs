//! Finding the other packages' binaries (`vault-backend`, `gateway`, `backup-client`)
//! for the multi-process tests, as multi-process test crates do: cargo puts
//! every binary of the workspace in the target folder of the profile, next
//! to the `deps/` folder that holds this test executable.
//!
//! Each binary is brought up to date once per test process (`cargo build
//! -p <package> --bin <name>` with the same profile, a no-op when it is
//! current) before the first test uses it: `cargo test --workspace` does
//! not rebuild the binary of a package without integration tests (the
//! gateway's), so a binary left by an earlier build was run stale — a
//! gateway without this change's migration counter failed
//! `gateway_migration` on a machine that had built the old tree.
//!
//! Must never: pick a binary from another profile or another target folder
//! (a stale build would test code that is not in the tree).

use std::path::PathBuf;
use std::sync::Mutex;

/// The `vault-backend` binary (a vault replica, `vault-backend run`).
pub fn vault_backend() -> PathBuf {
    binary("vault-backend", "vault-backend")
}

/// The gateway (`gateway run`).
pub fn gateway() -> PathBuf {
    binary("gateway", "gateway")
}

/// The phone's command-line client, `backup-client`.
pub fn backup_client() -> PathBuf {
    binary("backup-cli", "backup-client")
}

/// The binaries this process brought up to date already.
static BUILT: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// The binary `name` of workspace package `package`, built (once per
/// process) so that it is current.
///
/// # Panics
///
/// If the binary cannot be built: a test cannot run without it, and the
/// message says what to run.
pub fn binary(package: &str, name: &'static str) -> PathBuf {
    let path = profile_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    build(name, &["-p", package, "--bin", name], &path);
    path
}

/// The bindings generator (`uniffi-bindgen` of `client-ffi`, feature
/// `bindgen`) and the library it reads (`libbkv_client.so`), built together
/// with the same features so that the library is the one the generated
/// sources load.
pub fn bindings_generator() -> (PathBuf, PathBuf) {
    let dir = profile_dir();
    let gen = dir.join(format!("uniffi-bindgen{}", std::env::consts::EXE_SUFFIX));
    let lib = dir.join(format!(
        "{}bkv_client{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    build(
        "uniffi-bindgen",
        &[
            "-p",
            "client-ffi",
            "--features",
            "bindgen",
            "--lib",
            "--bin",
            "uniffi-bindgen",
        ],
        &gen,
    );
    assert!(lib.exists(), "{} was not built", lib.display());
    (gen, lib)
}

/// `cargo build <args>` in this test's profile, once per process per `key`.
fn build(key: &'static str, args: &[&str], made: &std::path::Path) {
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if built.contains(&key) {
        return;
    }
    let release = profile_dir().file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--quiet"]).args(args);
    if release {
        cmd.arg("--release");
    }
    let ok = cmd.status().is_ok_and(|s| s.success());
    assert!(
        ok && made.exists(),
        "`cargo build {}` did not make {}; build it and run the test again",
        args.join(" "),
        made.display()
    );
    built.push(key);
}

/// `target/<profile>/`: the folder above this executable's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let mut dir = exe.parent().expect("in a folder").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}
