//! The state, behind traits: per repository, the last good commit and the
//! run of failures ([`State`]), what steps it owes ([`Steps`]), every pull,
//! failed attempt and event ([`History`]), and the notification outbox
//! ([`Outbox`]). The job, the daemon, the server and notify depend on these
//! traits ([`Storage`] is all four), not on a database.
//!
//! Every implementation keeps the same promises, which one contract suite
//! checks against each (`contract`): a pull's result is recorded at once —
//! its attempts, the repository's new state, the steps it owes, its events
//! and their messages together — so a crash leaves the store before or
//! after that pull, never between, and an accepted notification cannot be
//! lost. [`SqliteStore`] is the daemon's default (one file, WAL);
//! [`PostgresStore`] is a database several daemons can share (`[store]
//! backend = "postgres"`, [`open`] picks by [`Backend`]); [`MemoryStore`]
//! lives as long as its value (a one-shot pull without a state directory,
//! unit tests). The store does not schedule, pull, render or send; it
//! remembers.

use serde::Serialize;

use crate::outcome::PullReport;
use crate::policy::timeout::Learnt;

#[cfg(test)]
pub(crate) mod contract;
mod memory;
pub mod outbox;
mod postgres;
mod sqlite;
pub use memory::MemoryStore;
pub use outbox::{
    EventRow, NewDigest, NewMessage, OutboxCounts, OutboxMessage, OutboxRow, OutboxState, Outgoing,
    Receipt,
};
pub use postgres::{Connect, PostgresStore, PG_SCHEMA_VERSION};
pub use sqlite::{SqliteStore, SCHEMA_VERSION};

#[derive(Debug, thiserror::Error)]
/// Why the state database failed.
pub enum StoreError {
    #[error("state database {path}: {source}")]
    /// It cannot be opened.
    Open {
        /// The file.
        path: String,
        /// Why.
        source: rusqlite::Error,
    },
    #[error("state database: {0}")]
    /// A query failed.
    Sql(#[from] rusqlite::Error),
    #[error("state database {target}: {source}")]
    /// No connection to the database server (at start, or none came free
    /// in time).
    Connect {
        /// `postgres://user@host:port/db` (never the password).
        target: String,
        /// Why.
        source: r2d2::Error,
    },
    #[error("state database: {}", postgres::said(.0))]
    /// A PostgreSQL statement failed.
    Postgres(#[from] ::postgres::Error),
    #[error("state database {target}: {message}")]
    /// The database cannot be used as it is (its URL, a newer schema).
    Setup {
        /// Where (never the password).
        target: String,
        /// Why.
        message: String,
    },
    #[error("state database: {0}")]
    /// A row holds what this gitpulse never writes.
    Corrupt(String),
    /// This replica lost `repo`'s lease while it pulled (it was paused or
    /// cut off longer than the lease's time to live, and another replica
    /// took it): its result is dropped, nothing of it is written.
    #[error("{0} is no longer this replica's (its lease moved): the result is dropped")]
    Fenced(String),
    /// The repository's failure streak changed between reading it and
    /// recording (another process recorded a pull of it): decide its
    /// events again.
    #[error("state database: the failure streak of {0} changed while recording")]
    StreakChanged(String),
}

impl StoreError {
    /// Whether the state could not be reached (its server restarting or
    /// failing over, the connection cut), as opposed to a write it refused:
    /// the same write may succeed in a moment.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Postgres(e) => match e.code() {
                // No SQL state: the connection itself failed.
                None => true,
                // Connection exceptions, and a server shutting down or
                // not yet accepting connections.
                Some(state) => {
                    let code = state.code();
                    code.starts_with("08") || code.starts_with("57P")
                }
            },
            _ => false,
        }
    }
}

/// What `gitpulse status` shows for one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RepoStatus {
    /// The repository.
    pub repo: String,
    /// Unix milliseconds of the last successful pull.
    pub last_success_ms: Option<u64>,
    /// `cloned`, `updated`, `unchanged`, `failed` or `skipped`.
    pub last_result: Option<String>,
    /// The failure class of the last failed pull.
    pub last_class: Option<String>,
    /// Full SHA of the last good commit.
    pub last_commit: Option<String>,
    /// Pulls in a row that failed.
    pub failures_in_row: u32,
    /// Unix milliseconds of the next scheduled run, as the daemon last saw it.
    pub next_run_ms: Option<u64>,
    /// Scheduled runs skipped because the previous one was still running.
    pub skipped: u64,
    /// Unix milliseconds of its last pull on record, whatever the result.
    pub last_pull_ms: Option<u64>,
    /// In a fleet: the replica that holds its lease now (it alone pulls it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Since when (unix ms) that replica holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_since_ms: Option<u64>,
}

/// One pull, as the status page charts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullPoint {
    /// When it ended, in unix milliseconds.
    pub at_ms: u64,
    /// `cloned`, `updated`, `unchanged` or `failed`.
    pub outcome: String,
    /// How long it took.
    pub duration_ms: u64,
}

/// One row of `gitpulse history REPO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// When, in unix milliseconds.
    pub at_ms: u64,
    /// The pull's outcome, or `attempt` for a failed attempt.
    pub kind: String,
    /// The failure class, for failures.
    pub class: Option<String>,
    /// The HTTP status, when there was one.
    pub http_status: Option<u16>,
    /// The wait before the next attempt.
    pub delay_ms: Option<u64>,
    /// How long it ran.
    pub duration_ms: Option<u64>,
    /// The outcome's reason or the failure message.
    pub detail: String,
    /// The time limit it ran under (pulls and attempts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_ms: Option<u64>,
    /// Why that limit: `ceiling` (no history), `learnt`, `doubled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_why: Option<String>,
}

/// A step a repository owes for a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedStep {
    /// The step's name.
    pub step: String,
    /// Where the revision started (the last one the step ran for).
    pub old: Option<String>,
    /// The revision (none: a failed pull with no checkout).
    pub new: Option<String>,
    /// The outcome of the pull that made it owed.
    pub outcome: String,
    /// Failed tries so far.
    pub tries: u32,
    /// Not before this time (unix ms).
    pub next_try_ms: u64,
    /// Whether its failure was already told (one `step-failed` per revision).
    pub told: bool,
}

/// One try of a step, as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRun {
    /// `succeeded`, `failed`, `timeout`, `killed`, `not-started`, `skipped`.
    pub status: String,
    /// Its exit status, when it exited.
    pub exit_code: Option<i32>,
    /// How long it ran.
    pub duration_ms: u64,
    /// The tail of its output, redacted.
    pub output: String,
}

/// What a try settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Nothing more is owed for that revision (done, skipped or given up).
    Done,
    /// Try again, not before this time (unix ms).
    RetryAt(u64),
    /// It did not finish (shutdown): owed as before.
    Keep,
}

/// An event a pull produced, for notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEvent {
    /// Its row id (increasing).
    pub id: i64,
    /// The repository.
    pub repo: String,
    /// When, in unix milliseconds.
    pub at_ms: u64,
    /// `changed`, `failed`, `recovered`, …
    pub kind: String,
    /// The event's JSON.
    pub payload: String,
}

pub use crate::model::now_ms;

/// How a daemon shares its state with others (`[fleet] mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FleetMode {
    /// No sharing: one daemon per state (a second one on the same
    /// database is refused at start).
    #[default]
    Solo,
    /// Each repository is pulled by one replica at a time, the one that
    /// holds its lease.
    Shard,
    /// Every replica pulls every repository into its own checkout and
    /// keeps its own state of it; a change is told once for the fleet.
    Replicate,
}

impl FleetMode {
    /// Its name in `[fleet] mode` and in the replicas table.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetMode::Solo => "solo",
            FleetMode::Shard => "shard",
            FleetMode::Replicate => "replicate",
        }
    }
}

/// This daemon as one of the state's replicas (`[fleet]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Unique in the fleet, stable across restarts (the host's name).
    pub name: String,
    /// How it shares.
    pub mode: FleetMode,
    /// How long a replica that stopped renewing keeps its leases.
    pub lease_ttl: std::time::Duration,
}

/// Whether this replica may pull a repository now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Its lease is this replica's (taken or renewed).
    Mine,
    /// Another live replica holds it (or this one holds its fair share
    /// and leaves it to the others).
    Theirs(Option<String>),
}

/// The fleet as one heartbeat saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetView {
    /// Replicas whose heartbeat is younger than the lease TTL.
    pub live: Vec<(String, u64)>,
    /// Repositories whose lease this replica holds, by name.
    pub held: Vec<String>,
    /// Whether this replica does the fleet's housekeeping (pruning).
    pub leads: bool,
}

/// Leases, heartbeats and wake-ups of several daemons on one state (a
/// database server). Only a store that several processes share has one.
pub trait Fleet: Send + Sync {
    /// This replica.
    fn replica(&self) -> &Replica;

    /// Registers this replica; refused when a live replica has its name,
    /// or (solo) any other replica is live.
    fn join(&self) -> Result<(), StoreError>;

    /// Takes or renews `repo`'s lease: renewed if it is this replica's,
    /// taken if it is free or expired and this replica holds fewer than
    /// `fair_share` (none: asked for now, taken whatever the share); the
    /// epoch taken fences this replica's writes of it. With a share (a
    /// scheduled run), a lease the last heartbeat saw held, by this replica
    /// or another, is answered without asking the database: a lease lost
    /// since is caught by the fence, one freed since by the next heartbeat.
    fn claim(&self, repo: &str, fair_share: Option<usize>) -> Result<Claim, StoreError>;

    /// Says this replica is alive and renews every lease it holds.
    fn heartbeat(&self) -> Result<FleetView, StoreError>;

    /// Those of `repos` no live replica holds (free, or their holder
    /// stopped renewing them).
    fn orphans(&self, repos: &[String]) -> Result<Vec<String>, StoreError>;

    /// Gives `repos` back (more than a fair share, or shutting down).
    fn release(&self, repos: &[String]) -> Result<(), StoreError>;

    /// Leaves the fleet: every lease given back, the replica forgotten.
    fn leave(&self) -> Result<(), StoreError>;

    /// Asks whoever holds `repo` to pull it now.
    fn wake(&self, repo: &str) -> Result<(), StoreError>;

    /// Whether this replica holds `repo`'s lease, as far as it knows.
    fn holds(&self, repo: &str) -> bool;

    /// Whether this replica runs `step` of `repo` for revision `new` when
    /// the step runs once for the fleet: the first replica to ask does
    /// (replicate mode); elsewhere every replica does.
    fn run_once(&self, repo: &str, step: &str, new: &str) -> Result<bool, StoreError>;

    /// Calls `woken` with each repository another replica asked this one
    /// to pull, on a thread of its own, until the store is dropped.
    fn on_wake(&self, woken: Box<dyn Fn(String) + Send>) -> Result<(), StoreError>;

    /// Whether this replica does the fleet's housekeeping (pruning old
    /// history and delivered messages): one replica at a time, by a lease
    /// of its own taken at heartbeats. Losing it stops no pull and no
    /// delivery.
    fn leads(&self) -> bool;

    /// Writes refused because their lease had moved, since start.
    fn fenced_writes(&self) -> u64;

    /// Leases taken (not renewed) by this replica, since start.
    fn leases_taken(&self) -> u64;
}

/// Where the state lives (`[store]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// `state.db` in the state directory: one daemon, no server to run.
    #[default]
    Sqlite,
    /// A PostgreSQL database, which several daemons may share.
    Postgres {
        /// Where the connection URL is read from when the store opens (it
        /// may hold a password: never in the config file itself).
        url: crate::git::SecretRef,
        /// Connections kept open at most.
        pool_size: u32,
        /// How long to wait for a connection.
        connect_timeout: std::time::Duration,
        /// A CA (PEM) trusted for the server's certificate besides the
        /// system's and the bundled roots.
        ca_file: Option<std::path::PathBuf>,
    },
}

impl Backend {
    /// How to connect to the database server, its URL read now; none for
    /// SQLite.
    fn connect(&self) -> Option<Result<Connect, StoreError>> {
        let Backend::Postgres {
            url,
            pool_size,
            connect_timeout,
            ca_file,
        } = self
        else {
            return None;
        };
        Some(
            url.read()
                .map(|url| Connect {
                    url,
                    pool_size: *pool_size,
                    connect_timeout: *connect_timeout,
                    ca_file: ca_file.clone(),
                })
                .map_err(|message| StoreError::Setup {
                    target: "postgres".into(),
                    message: format!("the connection URL: {message}"),
                }),
        )
    }
}

/// Opens the state `backend` names (`state_dir` holds SQLite's file), as
/// `replica` sees it (in a replicating fleet, its own repositories' state).
pub fn open(
    backend: &Backend,
    state_dir: &std::path::Path,
    replica: &Replica,
) -> Result<Box<dyn Storage>, StoreError> {
    match backend.connect() {
        None => Ok(Box::new(SqliteStore::open(&SqliteStore::path_in(
            state_dir,
        ))?)),
        Some(how) => Ok(Box::new(PostgresStore::connect_for(&how?, Some(replica))?)),
    }
}

/// Opens the state as a daemon does: a database server's as `replica` of
/// its fleet (its writes fenced by its leases, see [`Fleet`]).
pub fn open_as(
    backend: &Backend,
    state_dir: &std::path::Path,
    replica: &Replica,
) -> Result<Box<dyn Storage>, StoreError> {
    match backend.connect() {
        None => Ok(Box::new(SqliteStore::open(&SqliteStore::path_in(
            state_dir,
        ))?)),
        Some(how) => Ok(Box::new(
            PostgresStore::connect_for(&how?, Some(replica))?.as_replica(replica.clone()),
        )),
    }
}

/// Where `backend` keeps the state, for messages: the SQLite file or the
/// PostgreSQL server (never a password).
pub fn describe(backend: &Backend, state_dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => SqliteStore::path_in(state_dir).display().to_string(),
        Backend::Postgres { .. } => "the PostgreSQL database of [store]".to_string(),
    }
}

/// Whether the state `backend` names can be used, changing nothing: for a
/// database server, that it answers and its schema is not newer than this
/// gitpulse's. Says where it is and what will happen at start.
pub fn probe(backend: &Backend, state_dir: &std::path::Path) -> Result<String, StoreError> {
    match backend.connect() {
        None => Ok(SqliteStore::path_in(state_dir).display().to_string()),
        Some(how) => {
            let (target, version) = postgres::probe(&how?)?;
            Ok(match version {
                v if v == PG_SCHEMA_VERSION => format!("{target} (schema version {v})"),
                0 => format!("{target} (empty: its tables are made at daemon start)"),
                v => format!(
                    "{target} (schema version {v}: brought to {PG_SCHEMA_VERSION} at daemon start)"
                ),
            })
        }
    }
}

/// A pull that changed nothing, told nobody and owes nothing: most of a
/// daemon's pulls. A daemon writes such pulls in batches.
#[derive(Debug, Clone)]
pub struct QuietPull {
    /// The repository.
    pub repo: String,
    /// The pull.
    pub report: PullReport,
    /// How late it started, if scheduled.
    pub start_lag_ms: Option<u64>,
    /// When the next one is planned, if scheduled.
    pub next_run_ms: Option<u64>,
    /// When it was recorded (unix ms).
    pub at_ms: u64,
}

/// What the store knows of each repository now: its failure streak, last good commit, learnt limits and next run; a pull's result is written here.
pub trait State {
    /// How many pulls of `repo` in a row have failed (what decides a
    /// recovery). Read before rendering, outside any transaction.
    fn failures_in_row(&self, repo: &str) -> Result<u32, StoreError>;

    /// Records a finished pull: its attempts, the repository's state, and
    /// its events with their rendered messages, atomically. `outgoing` was
    /// decided given `previous_failures` (from [`State::failures_in_row`]);
    /// if the streak changed since, nothing is written and
    /// [`StoreError::StreakChanged`] says to decide again. Returns the
    /// events recorded. `start_lag_ms` is how late a scheduled pull started
    /// and `next_run_ms` when the next one is planned (none for a manual
    /// run).
    ///
    /// `steps_owed` names the steps this pull owes; they are recorded in the
    /// same transaction, so a crash right after cannot lose them. A step
    /// still owed for an earlier revision now owes the newest one, from
    /// where the earlier one started (its `old`).
    #[allow(clippy::too_many_arguments)]
    fn record_pull(
        &self,
        repo: &str,
        report: &PullReport,
        start_lag_ms: Option<u64>,
        next_run_ms: Option<u64>,
        previous_failures: u32,
        outgoing: Vec<Outgoing>,
        steps_owed: &[String],
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Records quiet pulls (a daemon's batch of them) in one transaction.
    fn record_quiet_pulls(&self, pulls: &[QuietPull]) -> Result<(), StoreError>;

    /// What `repo`'s successful attempts took (its learnt limits).
    fn learnt(&self, repo: &str) -> Result<Learnt, StoreError>;

    /// Notes a scheduled run skipped because the previous one still ran.
    fn record_skip(&self, repo: &str) -> Result<(), StoreError>;

    /// Records planned next runs, in one transaction.
    fn set_next_runs(&self, runs: &[(String, u64)]) -> Result<(), StoreError>;

    /// The last good commit of `repo`.
    fn last_good(&self, repo: &str) -> Result<Option<String>, StoreError>;

    /// Whether a write would succeed now (a write lock taken and given
    /// back): the disk is not read-only, the file not locked for good.
    fn check_writable(&self) -> Result<(), StoreError>;

    /// Every repository the store knows, by name.
    fn status(&self) -> Result<Vec<RepoStatus>, StoreError>;

    /// The fleet this store is shared by, when several daemons share it.
    fn fleet(&self) -> Option<&dyn Fleet> {
        None
    }
}

/// The steps repositories owe (recorded with the pull that owes them) and each try of one.
pub trait Steps {
    /// The steps `repo` owes, oldest first.
    fn owed_steps(&self, repo: &str) -> Result<Vec<OwedStep>, StoreError>;

    /// The repositories that owe steps (the daemon runs them at start).
    fn repos_owing_steps(&self) -> Result<Vec<String>, StoreError>;

    /// Records one try of an owed step and settles what is owed, with its
    /// events, atomically. When a newer revision became owed while it ran
    /// (`owed.new` no longer matches), the newer one stays owed as it is.
    fn record_step_run(
        &self,
        repo: &str,
        owed: &OwedStep,
        run: &StepRun,
        settle: Settle,
        outgoing: Vec<Outgoing>,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Forgets what `repo` owes for steps no longer configured.
    fn drop_owed_steps(&self, repo: &str, step: &str) -> Result<(), StoreError>;

    /// Forgets every step `repo` owes (it has none configured any more).
    fn forget_owed_steps(&self, repo: &str) -> Result<(), StoreError>;
}

/// What happened: pulls, failed attempts and events, newest first, pruned by age.
pub trait History {
    /// The newest `limit` pulls and failed attempts of `repo`, newest first.
    fn history(&self, repo: &str, limit: usize) -> Result<Vec<HistoryEntry>, StoreError>;

    /// How late every scheduled pull started, in milliseconds, ascending.
    fn start_lags(&self) -> Result<Vec<u64>, StoreError>;

    /// Like [`Store::start_lags`], for pulls recorded at or after `since_ms`.
    fn start_lags_since(&self, since_ms: u64) -> Result<Vec<u64>, StoreError>;

    /// Forgets pulls, attempts and events recorded before `before_ms` (the
    /// retention of `[daemon] retention`); the outbox keeps its own rules.
    /// Returns how many rows went.
    fn prune_history(&self, before_ms: u64) -> Result<usize, StoreError>;

    /// The last `limit` pulls of `repo`, oldest first: when, the outcome
    /// and how long (for the status page's chart).
    fn recent_pulls(&self, repo: &str, limit: usize) -> Result<Vec<PullPoint>, StoreError>;

    /// The last `limit` events of `repo`, newest first: when and what kind.
    fn recent_events(&self, repo: &str, limit: usize) -> Result<Vec<(u64, String)>, StoreError>;

    /// The message of `repo`'s most recent failed attempt.
    fn last_failure_message(&self, repo: &str) -> Result<Option<String>, StoreError>;

    /// Events with an id above `after`, oldest first.
    fn events_after(&self, after: i64) -> Result<Vec<StoredEvent>, StoreError>;
}

/// Events and their rendered messages, until each is delivered or dead-lettered (see [`outbox`]).
pub trait Outbox {
    /// Records events that no pull result carries (a retry, a plugin fault,
    /// a rejected config) with their messages, atomically.
    fn record_events(&self, outgoing: Vec<Outgoing>) -> Result<Vec<StoredEvent>, StoreError>;

    /// Pending messages due at `now_ms`, oldest first.
    fn due_messages(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxMessage>, StoreError>;

    /// Every pending message of `notifier` with `digest_key`, due or not.
    fn digest_group(
        &self,
        notifier: &str,
        digest_key: &str,
    ) -> Result<Vec<OutboxMessage>, StoreError>;

    /// When the earliest pending message falls due.
    fn next_due_ms(&self) -> Result<Option<u64>, StoreError>;

    /// Accepts `digest` of the pending messages `members` of `notifier`,
    /// with `also` (a fault in rendering it), in one transaction: the
    /// digest is due at once and the members wait in it. Returns the
    /// digest as a sender sees it.
    fn accept_digest(
        &self,
        notifier: &str,
        members: &[i64],
        digest: NewDigest,
        also: Vec<Outgoing>,
    ) -> Result<OutboxMessage, StoreError>;

    /// Marks deliveries done (a digest's members with it), in one
    /// transaction.
    fn mark_delivered(&self, receipts: &[Receipt]) -> Result<(), StoreError>;

    /// Records a failed delivery of `ids`: retried at `retry_at_ms`, or
    /// dead-lettered with `error` as the reason when that is none.
    fn mark_failed(
        &self,
        ids: &[i64],
        error: &str,
        retry_at_ms: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Puts a dead (or pending) message back in the queue, due now, with its
    /// attempts reset and on its own (out of any digest: someone asked for
    /// this message). False if there is no such message or it was delivered.
    fn requeue(&self, id: i64) -> Result<bool, StoreError>;

    /// Messages in `states`, oldest first.
    fn outbox(&self, states: &[OutboxState], limit: usize) -> Result<Vec<OutboxRow>, StoreError>;

    /// Forgets delivered messages created before `before_ms` (dead and
    /// pending ones stay until someone acts on them). Returns how many.
    fn prune_delivered(&self, before_ms: u64) -> Result<usize, StoreError>;

    /// How many messages are in each state.
    fn outbox_counts(&self) -> Result<OutboxCounts, StoreError>;

    /// (created, delivered) times of delivered messages, for benchmarks.
    fn delivery_times(&self) -> Result<Vec<(u64, u64)>, StoreError>;
}

/// The whole state: what the job, the daemon and the server use.
pub trait Storage: State + Steps + History + Outbox + Send + Sync {}

impl<T: State + Steps + History + Outbox + Send + Sync> Storage for T {}
