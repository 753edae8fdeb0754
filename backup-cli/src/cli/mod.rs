//! The subcommands of `backup-client`, one module each, and what they
//! share (`common`, `prompt`). `main.rs` parses the command line and
//! dispatches here.

pub(crate) mod backup;
pub(crate) mod common;
pub(crate) mod disable;
pub(crate) mod enable;
pub(crate) mod messages;
pub(crate) mod prompt;
pub(crate) mod restore;
pub(crate) mod status;
