//! `gitpulse daemon`: many repositories on their schedules, within
//! concurrency limits, with state in SQLite, hot reload and a graceful
//! shutdown.
//!
//! One scheduler task owns the `timetable` of next runs and sleeps until
//! the earliest; commands (a trigger, a reload, shutdown) wake it through one
//! channel. A due repository that is still running is skipped and counted;
//! otherwise its pull runs on a blocking thread once it holds a global
//! permit and one for its remote host. A per-host circuit breaker, fed by
//! pulls that gave up on transient failures, holds back a failing host's
//! repositories and lets one canary probe for recovery.
//!
//! Reload (config file or plugin directory changed, SIGHUP) validates the
//! new config completely before swapping it in; an invalid one is logged
//! with file:line and the old one keeps running. Shutdown (SIGTERM/SIGINT)
//! stops scheduling, lets running pulls finish within the grace period,
//! then cancels them (checkouts stay consistent: see `git`).
//!
//! Each pull's events and their rendered messages are recorded with its
//! result (see `notify` and `store::outbox`); a sender task delivers the
//! outbox, woken by new messages and by retry times, and picks up whatever
//! a previous run left pending.

mod admission;
mod breaker;
mod client;
mod control;
mod fleet;
mod metrics;
mod quiet;
mod runner;
mod scheduler;
mod sender;
mod signals;
mod timetable;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::model::unix_ms;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{self, Config, RepoConfig};
use crate::events::{Event, EventKind, RepoRef};
use crate::job::Batch as _;
use crate::notify::{Audience, Router, Senders};
use crate::outcome::{Outcome, PullReport};
use crate::plugin::{KvStore, Plugin, PluginEnv, Registry, Sandbox};
use crate::policy::{BudgetState, RetryBudget};
use crate::pull;
use crate::store::{self, Storage};
use breaker::{Admission, Breaker, Change, Verdict};
pub use client::{Client, ClientError};
use control::{api_token, DaemonView};
use metrics::{Format, Metrics, RepoGauges, Snapshot};
use quiet::QuietPulls;
use runner::*;
use scheduler::*;
use timetable::Timetable;

#[derive(Debug, thiserror::Error)]
/// Why the daemon stopped or would not start.
pub enum DaemonError {
    #[error("{0}")]
    /// The config has problems (every one listed).
    Config(config::Problems),
    #[error(transparent)]
    /// The state database failed.
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    /// The listen address is taken or not allowed.
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    #[error("{0}")]
    /// The async runtime could not start.
    Runtime(String),
}

/// What the scheduler is asked to do.
#[derive(Debug)]
enum Command {
    Trigger(String),
    TriggerAll,
    /// A push webhook: pull these now, within the breaker.
    Wake(Vec<String>),
    Reload,
    Shutdown,
    /// Answered at once: the loop is alive (`/healthz`).
    Ping(tokio::sync::oneshot::Sender<()>),
    /// A step is owed again at this time: run the repository then, if its
    /// schedule would not sooner.
    RunBy(String, SystemTime),
}

/// Counters served on /status and logged at shutdown.
#[derive(Debug, Default)]
pub struct Counters {
    /// Pulls finished.
    pub pulls: AtomicU64,
    /// Scheduled runs skipped because the last one still ran.
    pub skipped_running: AtomicU64,
    /// Scheduled runs held back by an open circuit.
    pub skipped_breaker: AtomicU64,
    /// Configs reloaded.
    pub reloads: AtomicU64,
    /// Configs refused on reload.
    pub reloads_rejected: AtomicU64,
}

struct Shared {
    config: Mutex<Arc<Config>>,
    store: Box<dyn Storage>,
    /// Pulls that changed nothing, written once a second.
    quiet: QuietPulls,
    global: Arc<Semaphore>,
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Owed steps running at once: their own pool, so a slow step holds
    /// no pull's global or per-host permit.
    steps: Arc<Semaphore>,
    /// Which repositories run now, and which are owed one more run.
    running: Mutex<admission::Running>,
    /// Each remote host's retry budget, shared by its repositories.
    budgets: Mutex<HashMap<String, Arc<Mutex<RetryBudget>>>>,
    breakers: Mutex<HashMap<String, Breaker>>,
    /// Compiled plugins with their fault records, shared by every pull.
    plugins: Registry,
    /// Key-value stores of plugins, shared by every pull that uses them.
    plugin_kv: Mutex<HashMap<String, Arc<Mutex<KvStore>>>>,
    /// Set after the shutdown grace period: running pulls stop (at their
    /// next libgit2 callback: a flag, because the pulls block).
    cancel: Arc<AtomicBool>,
    /// Every pull task, so shutdown can wait for them.
    pulls: TaskTracker,
    counters: Counters,
    /// Notification delivery: connections kept across messages, and a
    /// wake-up for the sender when messages are queued.
    senders: Senders,
    outbox_wake: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    /// Repositories pulled successfully since start (`/readyz`).
    pulled: Mutex<HashSet<String>>,
    /// The API's bearer token.
    api_token: crate::redact::Secret,
    /// The scheduler's inbox (a pull asks for an earlier run).
    commands: mpsc::UnboundedSender<CommandHandle>,
    /// The fleet as the last heartbeat saw it (a replica of a shared state).
    fleet: fleet::FleetGauges,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn config(&self) -> Arc<Config> {
        lock(&self.config).clone()
    }
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The config file (watched for changes).
    pub config_path: PathBuf,
    /// How long running pulls may finish after SIGTERM before they are cancelled.
    pub grace: Duration,
}

/// Loads the config (refusing to start on any problem), then runs until
/// SIGTERM/SIGINT. Blocks the calling thread.
pub fn run(options: DaemonOptions) -> Result<(), DaemonError> {
    limit_malloc_arenas();
    let config =
        crate::validate::load_environment(&options.config_path).map_err(DaemonError::Config)?;
    // Checking the plugins compiles them into the registry the pulls use.
    // (The compile cache stays where the daemon started.)
    let plugins = Registry::new(Some(config.daemon.compile_cache()), Sandbox::default());
    let config = crate::validate::checked(config, &plugins).map_err(DaemonError::Config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(config.daemon.max_concurrent + 4)
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Runtime(e.to_string()))?;
    // The daemon runs on the workers, not on this thread: a timer that
    // falls due then wakes the worker that launches the pull, instead of
    // this thread waking a worker for every pull.
    runtime.block_on(async {
        tokio::spawn(serve(options, config, plugins))
            .await
            .map_err(|e| DaemonError::Runtime(e.to_string()))?
    })
}

/// One malloc arena per core instead of glibc's up to eight: pulls run on
/// many blocking threads that mostly wait on the network, and an arena per
/// thread keeps each one's freed memory to itself (10,000 repositories
/// peaked at 206 MB, 176 MB with this). `MALLOC_ARENA_MAX` in the
/// environment still decides when set.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: mallopt only adjusts a tuning parameter of the allocator;
        // called first, before plugin compilation or the runtime start threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores.min(64) as libc::c_int);
        }
    }
}

async fn serve(
    options: DaemonOptions,
    config: Config,
    plugins: Registry,
) -> Result<(), DaemonError> {
    crate::model::private_dir(&config.daemon.state_dir)
        .map_err(|e| DaemonError::Runtime(format!("{}: {e}", config.daemon.state_dir.display())))?;
    // A database server is connected to off the runtime's threads (its
    // client blocks), as every store call is.
    let (backend, state_dir) = (config.store.clone(), config.daemon.state_dir.clone());
    let replica = config.fleet.clone();
    let store = tokio::task::spawn_blocking(move || store::open_as(&backend, &state_dir, &replica))
        .await
        .map_err(|e| DaemonError::Runtime(format!("opening the state: {e}")))??;
    let api_token = api_token(&config.daemon)?;
    let listener = tokio::net::TcpListener::bind(config.daemon.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.daemon.listen.to_string(),
            source,
        })?;
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        commands: tx.clone(),
        global: Arc::new(Semaphore::new(config.daemon.max_concurrent)),
        steps: Arc::new(Semaphore::new(config.daemon.max_concurrent_steps)),
        config: Mutex::new(Arc::new(config)),
        store,
        quiet: QuietPulls::default(),
        per_host: Mutex::default(),
        running: Mutex::default(),
        budgets: Mutex::default(),
        breakers: Mutex::default(),
        plugins,
        plugin_kv: Mutex::default(),
        cancel: Arc::new(AtomicBool::new(false)),
        pulls: TaskTracker::new(),
        counters: Counters::default(),
        senders: Senders::default(),
        outbox_wake: tokio::sync::Notify::new(),
        metrics: Arc::new(Metrics::new()),
        pulled: Mutex::default(),
        api_token,
        fleet: fleet::FleetGauges {
            fair_share: AtomicU64::new(u64::MAX),
            ..Default::default()
        },
    });
    // Signals first: a SIGTERM while the fleet is joined (a database
    // statement, maybe a wait for another replica's lock) stops the
    // daemon cleanly instead of killing it.
    signals::spawn_signal_handlers(tx.clone());
    fleet::join(&shared).await?;
    let stop_fleet = CancellationToken::new();
    let heartbeats = tokio::spawn(fleet::heartbeats(shared.clone(), stop_fleet.clone()));
    let _watcher = signals::watch_files(&shared.config(), tx.clone());
    let view = Arc::new(DaemonView {
        shared: shared.clone(),
        tx: tx.clone(),
    });
    tokio::spawn(crate::server::serve(listener, view));
    let stop_sender = CancellationToken::new();
    let sender = tokio::spawn(sender::send_loop(shared.clone(), stop_sender.clone()));
    let flusher = tokio::spawn(flush_quiet_pulls(shared.clone(), stop_sender.clone()));
    let config = shared.config();
    info!(repos = config.repos.len(), listen = %config.daemon.listen, "gitpulse daemon started");
    if !config.daemon.listen.ip().is_loopback() {
        warn!(listen = %config.daemon.listen, "listening beyond loopback (listen_public = true): /metrics, /healthz and /readyz are open to that network; the API needs the token");
    }
    schedule_loop(shared.clone(), rx).await;

    // Shutdown: no new pulls; running ones get the grace period, then are cancelled.
    info!(
        running = lock(&shared.running).len(),
        "stopping: waiting for running pulls"
    );
    shared.pulls.close();
    if tokio::time::timeout(options.grace, shared.pulls.wait())
        .await
        .is_err()
    {
        warn!("grace period over: cancelling running pulls");
        shared.cancel.store(true, Ordering::SeqCst);
        // A cancelled pull stops at libgit2's next callback; a socket
        // stalled on a silent server only at its attempt's limit.
        let _ = tokio::time::timeout(Duration::from_secs(10), shared.pulls.wait()).await;
    }
    // Messages still pending stay in the outbox for the next start.
    stop_sender.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), sender).await;
    let _ = flusher.await;
    let last = shared.clone();
    match tokio::task::spawn_blocking(move || last.quiet.flush(last.store.as_ref())).await {
        Ok(Err(e)) => error!("recording the last quiet pulls: {e}"),
        Err(e) => error!("recording the last quiet pulls: {e}"),
        Ok(Ok(())) => {}
    }
    // Its leases go back once everything it pulled is written (a write
    // after would be fenced).
    stop_fleet.cancel();
    let _ = heartbeats.await;
    info!(
        pulls = shared.counters.pulls.load(Ordering::Relaxed),
        "gitpulse daemon stopped"
    );
    Ok(())
}

/// Writes the waiting quiet pulls once a second, until `stop`.
async fn flush_quiet_pulls(shared: Arc<Shared>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let job = shared.clone();
        let flushed =
            tokio::task::spawn_blocking(move || job.quiet.flush(job.store.as_ref())).await;
        if let Ok(Err(e)) = flushed {
            error!("recording quiet pulls: {e}");
        }
    }
}
