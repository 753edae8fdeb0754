//! What the CLI tells its user about a failure: the library reports a
//! stable code with data (`ClientError::code`), and the words, including
//! the `backup-client` commands that help, are the CLI's. An app does the
//! same in its own language.
//!
//! Must never: print a secret, or an address inside the service (the
//! library's errors carry none).

use client::{ClientError, ClientErrorCode as C};

/// The sentence for `e`: what went wrong, once, and what to do.
pub(crate) fn explain(e: &ClientError) -> String {
    let plain = || service_kit::report::one_line(e);
    match e.code() {
        C::NoDevice => "this device folder has no device key yet: create one with \
             `backup-client device new` (or pass the folder with --device)"
            .into(),
        C::NoCredential => "this device has no credential yet: have the account service mint one \
             for its key, then run `backup-client device set-credential TOKEN`"
            .into(),
        C::LockedOut => "too many wrong passwords: the vault erased the backup key for good, and \
             backups protected by it cannot be restored through the vault. A phone that still \
             has backup turned on keeps the key: run `backup-client enable` there to protect it \
             with a new password"
            .into(),
        C::ReplacementPending => format!(
            "a backup key is already deposited for this account, and replacing it without its \
             password takes a waiting period: this phone can complete the replacement in {} by \
             running `backup-client enable --replace` again. Until then the old key stays in the \
             vault, and a login with the old password on any phone cancels the replacement. To \
             back up now, use a 64-digit key instead: `backup-client enable --key-only`",
            client::wait_in_words(e.retry_after().unwrap_or_default())
        ),
        C::AlreadyRegistered => "a backup key is already deposited for this account: change its \
             password with `backup-client change-password`, or replace it with `backup-client \
             enable --replace` (backups protected by the old one become unrecoverable through \
             the vault)"
            .into(),
        C::Connect => format!(
            "{}. A 64-digit key works without the gateway: `backup-client restore --with-key`",
            plain()
        ),
        C::GatewayKeyOutdated => "the gateway's key was changed and this app's copy is out of \
             date: get a new client profile from your operator (or update the app)"
            .into(),
        _ => plain(),
    }
}

/// The line `main` prints for any failure.
pub(crate) fn report(e: &anyhow::Error) -> String {
    match e.downcast_ref::<ClientError>() {
        Some(c) => explain(c),
        None => service_kit::report::one_line(e.as_ref()),
    }
}
