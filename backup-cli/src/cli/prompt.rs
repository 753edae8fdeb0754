//! Reading secrets from the terminal (no echo) or, for scripts, from the environment; the password rules.

use anyhow::Context;
use client::BackupKey;
use zeroize::Zeroizing;

pub(crate) const MIN_PASSWORD_CHARS: usize = 6;

pub(crate) fn env_secret(var: &str) -> Option<Zeroizing<String>> {
    std::env::var(var).ok().map(Zeroizing::new)
}

pub(crate) fn scripted() -> bool {
    std::env::var_os("BKV_PASSWORD").is_some()
}

pub(crate) fn prompt_secret(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    Ok(Zeroizing::new(rpassword::prompt_password(prompt).context(
        "cannot read from the terminal; set BKV_PASSWORD to run without one",
    )?))
}

pub(crate) fn password(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    match env_secret("BKV_PASSWORD") {
        Some(p) => Ok(p),
        None => prompt_secret(prompt),
    }
}

/// A new password, typed twice unless scripted.
pub(crate) fn new_password(env: &str) -> anyhow::Result<Zeroizing<String>> {
    if let Some(p) = env_secret(env) {
        check_new_password(&p)?;
        return Ok(p);
    }
    loop {
        let p = prompt_secret("choose a backup password: ")?;
        if let Err(e) = check_new_password(&p) {
            eprintln!("{e}");
            continue;
        }
        let again = prompt_secret("type it again: ")?;
        if *again == *p {
            return Ok(p);
        }
        eprintln!("the two passwords differ; try again");
    }
}

pub(crate) fn check_new_password(p: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        p.chars().count() >= MIN_PASSWORD_CHARS,
        "the password needs at least {MIN_PASSWORD_CHARS} characters"
    );
    Ok(())
}

pub(crate) fn read_key() -> anyhow::Result<BackupKey> {
    if let Some(k) = env_secret("BKV_BACKUP_KEY") {
        return Ok(BackupKey::parse(&k)?);
    }
    loop {
        let k = prompt_secret("your 64-digit backup key: ")?;
        match BackupKey::parse(&k) {
            Ok(k) => return Ok(k),
            Err(e) => eprintln!("{e}"),
        }
    }
}
