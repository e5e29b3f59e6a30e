//! gitpulse end to end: the real `gitpulse` binary against real servers
//! started by the tests (git http-backend, git daemon, sshd, SMTP, HTTP
//! receivers, an Actions runner), one module per area.
//!
//! One test binary, not one per area: each binary links the whole crate
//! and the shared helpers again.

// Test code: a panic is how it fails, and its helpers need no API docs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

mod action;
mod crash;
mod daemon;
mod faults;
mod fleet;
mod follow;
mod githooks;
mod notify;
mod one_job;
mod operator;
mod plugins;
mod publish;
mod pull;
mod ssh;
mod steps;
mod store;
mod validate;
