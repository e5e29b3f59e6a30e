//! gitpulse keeps git checkouts up to date.
//!
//! The library does all the work; the `gitpulse` binary only parses the
//! command line and prints. Data flows one way:
//!
//! ```text
//! cli ─► pull (attempt loop) ─► git::sync (one attempt) ─► outcome
//!              ▲        │ failure class
//!              └─ policy (retry? after how long?)
//! ```
//!
//! - [`git`] makes one attempt and classifies its failure; it knows nothing
//!   of retries.
//! - [`policy`] decides from a failure class and clamps to the user's limits;
//!   it never touches git. [`policy::wasm`] hosts WebAssembly policy plugins
//!   behind the same trait; [`policy::tools`] serves plugin authors.
//! - [`pull`] runs attempts until success or a stop, reporting to an
//!   [`pull::Observer`].
//! - [`redact`] keeps credentials out of every message.
//!
//! ```no_run
//! use std::sync::Arc;
//! use clap::Parser;
//! use gitpulse::{cli::{Cli, Command}, pull};
//!
//! let Command::Pull(args) = Cli::parse_from(["gitpulse", "pull", "https://example.com/r.git", "r"]).command else {
//!     unreachable!()
//! };
//! let (options, mut policy) = args.options().unwrap();
//! let report = pull::pull(&options, &mut policy, &mut pull::Quiet, Arc::default()).unwrap();
//! println!("{:?}", report.outcome);
//! ```

pub mod cli;
pub mod config;
pub mod daemon;
pub mod events;
pub mod git;
pub mod job;
pub mod model;
pub mod notify;
pub mod outcome;
pub mod policy;
pub mod pull;
pub mod redact;
pub mod schedule;
pub mod server;
pub mod store;
pub mod ui;
pub mod validate;

pub use git::FailureClass;
