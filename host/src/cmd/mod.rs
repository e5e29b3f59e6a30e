//! The subcommands' work, one file per family; `main` parses and
//! dispatches, and maps failures to exit codes in one place.

pub(crate) mod daemon;
pub(crate) mod hook;
pub(crate) mod plugin;
pub(crate) mod pull;
pub(crate) mod state;
