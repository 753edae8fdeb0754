#![allow(clippy::unwrap_used)]
// The test writes its scratch files directly.
#![allow(clippy::disallowed_methods)]
//! The bindings as an app uses them: the Kotlin, Swift and Python sources
//! are generated from the built library, and the Python ones run the whole
//! phone flow (`tests/python/flow.py`: enable with a password, back up,
//! recover on a second device after a wrong password, disable, key-only)
//! against a local stack on loopback, with the app's store written in
//! Python.
//!
//! Needs python3 (3.8+), which the CI machine has.

use std::process::Command;

use testing::local_stack::{LocalStack, StackOptions, PROFILE_FILE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_bindings_run_the_whole_flow_and_kotlin_and_swift_generate() {
    let (gen, lib) = testing::bins::bindings_generator();
    let out = tempfile::tempdir().unwrap();
    for lang in ["python", "kotlin", "swift"] {
        let dir = out.path().join(lang);
        let st = Command::new(&gen)
            .args(["generate", "--library"])
            .arg(&lib)
            .args(["--language", lang, "--no-format", "--out-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{lang}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let expected = match lang {
            "python" => "bkv_client.py",
            "kotlin" => "uniffi",
            _ => "bkv_client.swift",
        };
        assert!(files.iter().any(|f| f == expected), "{lang}: {files:?}");
    }
    let kotlin =
        std::fs::read_to_string(out.path().join("kotlin/uniffi/bkv_client/bkv_client.kt")).unwrap();
    assert!(
        kotlin.contains("suspend fun `enableWithPassword`"),
        "async in Kotlin"
    );
    let swift = std::fs::read_to_string(out.path().join("swift/bkv_client.swift")).unwrap();
    assert!(swift.contains("func enableWithPassword("), "Swift API");

    // The module loads the library from its own folder.
    let py = out.path().join("python");
    std::fs::copy(&lib, py.join(lib.file_name().unwrap())).unwrap();

    let stack = LocalStack::start(StackOptions::default()).await.unwrap();
    let device = |account: &str| {
        let d = stack.enroll_device(account).unwrap();
        let mut k = d.static_private.to_vec();
        k.extend_from_slice(&d.static_public);
        format!("{} {}", hex::encode(k), d.credential.unwrap())
    };
    let (a, b) = (device("py-alice"), device("py-alice"));
    let work = out.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/flow.py");
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .env("PYTHONPATH", &py)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("BKV_PROFILE", stack.dir.join(PROFILE_FILE))
        .env("BKV_DRIVE", out.path().join("drive"))
        .env("BKV_WORK", &work)
        .env(
            "BKV_MAX_ATTEMPTS",
            StackOptions::default().max_attempts.to_string(),
        )
        .env("BKV_DEVICE_A", a)
        .env("BKV_DEVICE_B", b)
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("the Python flow ended within 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.contains("flow ok"),
        "python flow failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    stack.shutdown().await;
}
