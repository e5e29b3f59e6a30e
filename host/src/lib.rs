//! gitpulse keeps git checkouts up to date.
//!
//! The library does all the work; the `gitpulse` binary only parses the
//! command line, calls in, prints and maps failures to exit codes. Every
//! entry point — `gitpulse pull`, the daemon's scheduler, a trigger or a
//! push webhook, a git hook — runs the same pull job, and data flows one
//! way through it:
//!
//! ```text
//! entry:  cli pull │ daemon timetable (breaker, admission) │ trigger, push (server ─► Control)
//!         │ git hook (githook: the change git made; recorded, not pulled)
//!                  ▼
//! job:    policy for the repo (plugin registry, one plugin per role)
//!         ─► pull (attempt loop) ─► git (one attempt, classified) ─► outcome
//!                  ▲ decision
//!                  └─ policy (built-in or plugins, clamped to the limits)
//!         ─► events (what the pull means) ─► notify::Router (filters, plugin
//!            notify role, templates; no lock held)
//!         ─► store (one transaction: result + events + outbox rows)
//! deliver: notify::deliver_due (retry, digest, dead letter) ─► email │ webhook │ log
//! ```
//!
//! - `model`: the shared words (event kinds, severity, the clock); imports
//!   nothing from the crate.
//! - [`config`] parses the file (structure, types, defaults, file:line);
//!   [`validate`] checks what running it needs (secrets, files, plugins,
//!   templates). `schedule` turns a schedule into run times.
//! - [`job`] wires a pull job: the repository's policy, the two-phase
//!   record, and delivery for a one-shot pull.
//! - `git` makes one attempt and classifies its failure; it knows nothing
//!   of retries. `pull` runs attempts until success or a stop.
//! - [`policy`] decides from a failure class and clamps to the user's limits;
//!   it never touches git. [`plugin`] hosts WebAssembly plugins behind
//!   the same trait; [`authoring`] serves plugin authors.
//! - [`events`] decides what a finished pull means; [`notify`] renders and
//!   delivers; [`store`] remembers (SQLite, versioned schema, outbox).
//! - [`daemon`] schedules and limits, and keeps the metrics; `server` is
//!   its HTTP face (health, metrics, the API, push webhooks, the status
//!   page `page`), [`receiver`] verifies and reads push webhooks.
//! - [`github`] is `gitpulse pull` as an Actions step; [`githook`] manages
//!   git hooks and reads what git changed. [`step`] runs the commands a
//!   pull owes (`[[repo.step]]`, `--step`); the job decides what is owed
//!   and the store remembers it.
//! - [`ui`] is terminal output; [`redact`] keeps credentials out of every
//!   message.
//!
//! ```no_run
//! use std::sync::Arc;
//! use clap::Parser;
//! use gitpulse::{cli::{Cli, Command}, config::Config, job::{Job, Timing}, store::MemoryStore, Quiet};
//!
//! let Command::Pull(args) = Cli::parse_from(["gitpulse", "pull", "https://example.com/r.git", "r"]).command else {
//!     unreachable!()
//! };
//! // The flags make the repository a `[[repo]]` would; the job pulls it.
//! let repo = args.repo(None).unwrap();
//! let config = Config::without_file();
//! let store = MemoryStore::new();
//! let no_plugins = |name: &str| Err(gitpulse::plugin::LoadError::NotWasm(name.into()));
//! let job = Job {
//!     repo: &repo, config: &config, plugins: &no_plugins, store: &store,
//!     cancel: Arc::default(), budget: None, quiet: None, seed: None,
//!     digests: false, news: Box::new(|| {}),
//! };
//! let run = job.run(&mut Quiet, Timing::default());
//! println!("{:?}", run.report.outcome);
//! ```

pub mod authoring;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod events;
mod git;
pub mod githook;
pub mod github;
pub mod job;
mod model;
pub mod notify;
pub mod outcome;
mod page;
pub mod plugin;
pub mod policy;
mod pull;
pub mod receiver;
pub mod redact;
mod schedule;
mod server;
mod step;
pub mod store;
pub mod ui;
pub mod validate;

// The words of modules that stay private (how a pull is attempted, the
// shared vocabulary, time math, the HTTP face) as far as the public API
// needs them.
pub use git::{Auth, FailureClass, Mode, SpecError, SyncSpec, Transfer};
pub use model::{now_ms, EventKind, Severity};
pub use pull::{Observer, Quiet};
pub use schedule::{Cron, Schedule};
