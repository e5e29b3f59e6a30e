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
mod metrics;
mod quiet;
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
use crate::store::{self, SqliteStore, Storage};
use breaker::{Admission, Breaker, Change, Verdict};
use metrics::{Format, Metrics, RepoGauges, Snapshot};
use quiet::QuietPulls;
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
    let config = config::load(&options.config_path, config::Scope::Environment)
        .map_err(DaemonError::Config)?;
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

/// Where the daemon keeps its SQLite state for `config`.
pub fn state_db(config: &Config) -> PathBuf {
    SqliteStore::path_in(&config.daemon.state_dir)
}

async fn serve(
    options: DaemonOptions,
    config: Config,
    plugins: Registry,
) -> Result<(), DaemonError> {
    crate::model::private_dir(&config.daemon.state_dir)
        .map_err(|e| DaemonError::Runtime(format!("{}: {e}", config.daemon.state_dir.display())))?;
    let store = SqliteStore::open(&state_db(&config))?;
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
        store: Box::new(store),
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
    });
    signals::spawn_signal_handlers(tx.clone());
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
    if let Err(e) = shared.quiet.flush(shared.store.as_ref()) {
        error!("recording the last quiet pulls: {e}");
    }
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

/// What the HTTP server may see and do (see [`crate::server::Control`]).
struct DaemonView {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<CommandHandle>,
}

impl crate::server::Control for DaemonView {
    fn trigger(&self, repo: Option<&str>) -> Vec<String> {
        let (command, asked) = match repo {
            Some(r) => (Command::Trigger(r.to_string()), vec![r.to_string()]),
            None => (
                Command::TriggerAll,
                self.shared
                    .config()
                    .repos
                    .iter()
                    .map(|r| r.name.clone())
                    .collect(),
            ),
        };
        let _ = self.tx.send(CommandHandle(command));
        asked
    }

    fn has_repo(&self, name: &str) -> bool {
        self.shared.config().repo(name).is_some()
    }

    fn status(&self) -> serde_json::Value {
        let config = self.shared.config();
        let rows = rows_by_name(self.shared.store.as_ref());
        let running = lock(&self.shared.running).names();
        let open: Vec<String> = lock(&self.shared.breakers)
            .iter()
            .filter(|(_, b)| b.is_open())
            .map(|(host, _)| host.clone())
            .collect();
        let c = &self.shared.counters;
        serde_json::json!({
            "repos": config.repos.iter().map(|r| {
                let row = rows.get(&r.name);
                serde_json::json!({ "repo": r.name, "running": running.contains(&r.name), "state": row })
            }).collect::<Vec<_>>(),
            "counters": {
                "pulls": c.pulls.load(Ordering::Relaxed),
                "skipped_running": c.skipped_running.load(Ordering::Relaxed),
                "skipped_breaker": c.skipped_breaker.load(Ordering::Relaxed),
                "reloads": c.reloads.load(Ordering::Relaxed),
                "reloads_rejected": c.reloads_rejected.load(Ordering::Relaxed),
            },
            "outbox": self.shared.store.outbox_counts().ok(),
            "breakers_open": open,
            "retry_budgets": self.budgets().into_iter().collect::<BTreeMap<_, _>>(),
        })
    }

    fn ping(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(CommandHandle(Command::Ping(tx)));
        rx
    }

    fn not_ready(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if let Err(e) = self.shared.store.check_writable() {
            missing.push(format!("the state database is not writable: {e}"));
        }
        let pulled = lock(&self.shared.pulled).clone();
        let rows = rows_by_name(self.shared.store.as_ref());
        for repo in self.shared.config().repos.iter().filter(|r| r.required) {
            if pulled.contains(&repo.name) {
                continue;
            }
            let failing = rows
                .get(&repo.name)
                .filter(|s| s.failures_in_row > 0)
                .and_then(|s| s.last_class.clone());
            missing.push(match failing {
                Some(class) => format!("repo {}: its pulls fail ({class})", repo.name),
                None => format!("repo {}: first pull not done yet", repo.name),
            });
        }
        missing
    }

    fn metrics(&self, openmetrics: bool) -> String {
        let config = self.shared.config();
        let rows = rows_by_name(self.shared.store.as_ref());
        let pulled = lock(&self.shared.pulled).clone();
        let repos = config
            .repos
            .iter()
            .map(|r| {
                let row = rows.get(&r.name);
                RepoGauges {
                    repo: r.name.clone(),
                    last_success_ms: row.and_then(|s| s.last_success_ms),
                    last_attempt_ms: row.and_then(|s| s.last_pull_ms),
                    failures_in_row: row.map(|s| s.failures_in_row).unwrap_or(0),
                    ready: pulled.contains(&r.name),
                    url: crate::redact::url(&r.url),
                    follows: r.follow.describe(),
                    revision: row.and_then(|s| s.last_commit.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let breakers = lock(&self.shared.breakers)
            .iter()
            .map(|(host, b)| (host.clone(), b.is_open()))
            .collect();
        let counts = self.shared.store.outbox_counts().unwrap_or_default();
        let snapshot = Snapshot {
            repos,
            breakers,
            outbox: vec![
                ("pending", counts.pending),
                ("in-digest", counts.in_digest),
                ("delivered", counts.delivered),
                ("dead", counts.dead),
            ],
            budgets: self.budgets(),
            oldest_pending: counts
                .oldest_pending_ms
                .map(|at| Duration::from_millis(store::now_ms().saturating_sub(at))),
        };
        let format = if openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        };
        self.shared.metrics.encode(&snapshot, format)
    }

    fn token_matches(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(
            token
                .as_bytes()
                .ct_eq(self.shared.api_token.expose().as_bytes()),
        )
    }

    fn host_names(&self) -> Vec<String> {
        self.shared.config().daemon.host_names.clone()
    }

    fn page(&self) -> String {
        use crate::page::{RepoRow, RepoState};
        let config = self.shared.config();
        let running = lock(&self.shared.running).names();
        let open: HashSet<String> = lock(&self.shared.breakers)
            .iter()
            .filter(|(_, b)| b.is_open())
            .map(|(host, _)| host.clone())
            .collect();
        let store = self.shared.store.as_ref();
        let rows = rows_by_name(store);
        let repos: Vec<RepoRow> = config
            .repos
            .iter()
            .map(|r| {
                let row = rows.get(&r.name);
                let failures_in_row = row.map(|s| s.failures_in_row).unwrap_or(0);
                let state = if open.contains(&crate::git::remote_host(&r.url)) {
                    RepoState::BreakerOpen
                } else if failures_in_row > 0 {
                    RepoState::Failing
                } else if running.contains(&r.name) {
                    RepoState::Running
                } else if row.and_then(|s| s.last_result.as_ref()).is_none() {
                    RepoState::Waiting
                } else {
                    RepoState::Ok
                };
                RepoRow {
                    name: r.name.clone(),
                    state,
                    last_success_ms: row.and_then(|s| s.last_success_ms),
                    next_run_ms: row.and_then(|s| s.next_run_ms),
                    failures_in_row,
                    last_class: row.and_then(|s| s.last_class.clone()),
                    last_error: store.last_failure_message(&r.name).ok().flatten(),
                    events: store.recent_events(&r.name, 5).unwrap_or_default(),
                    pulls: store.recent_pulls(&r.name, 50).unwrap_or_default(),
                }
            })
            .collect();
        crate::page::render(&repos, store::now_ms())
    }

    fn receiver(&self, name: &str) -> Option<Result<crate::server::Receiver, String>> {
        let config = self.shared.config();
        let r = config.receivers.iter().find(|r| r.name == name)?;
        Some(
            config::read_secret(&r.secret).map(|secret| crate::server::Receiver {
                kind: r.kind,
                secret,
                repos: r.repos.clone(),
                max_body: r.max_body,
            }),
        )
    }

    fn targets(&self) -> Vec<crate::receiver::Target> {
        self.shared
            .config()
            .repos
            .iter()
            .map(|r| crate::receiver::Target {
                name: r.name.clone(),
                url: r.url.clone(),
                follow: r.follow.clone(),
            })
            .collect()
    }

    fn wake(&self, repos: &[String]) {
        let _ = self.tx.send(CommandHandle(Command::Wake(repos.to_vec())));
    }

    fn hook_answered(&self, receiver: &str, result: &'static str) {
        self.shared.metrics.webhook_request(receiver, result);
    }
}

/// The store's rows by repository name: one lookup per repo, not a scan
/// (a scrape of 10,000 repositories must not compare 10⁸ names).
fn rows_by_name(store: &dyn Storage) -> HashMap<String, store::RepoStatus> {
    store
        .status()
        .unwrap_or_default()
        .into_iter()
        .map(|row| (row.repo.clone(), row))
        .collect()
}

impl DaemonView {
    /// Every host's retry budget now.
    fn budgets(&self) -> Vec<(String, BudgetState)> {
        let now = Instant::now();
        lock(&self.shared.budgets)
            .iter()
            .map(|(host, b)| (host.clone(), lock(b).state(now)))
            .collect()
    }
}

/// The API's bearer token: from the environment or a file when the config
/// names one, else a new random one written to the state directory (mode
/// 0600) for `gitpulse trigger` and `status --live` to read.
fn api_token(daemon: &config::DaemonSettings) -> Result<crate::redact::Secret, DaemonError> {
    let fail = |what: String| DaemonError::Runtime(format!("API token: {what}"));
    let token = match &daemon.api_token {
        config::ApiToken::Env(var) => std::env::var(var)
            .map_err(|_| fail(format!("environment variable {var} is not set")))?,
        config::ApiToken::File(path) => {
            std::fs::read_to_string(path).map_err(|e| fail(format!("{}: {e}", path.display())))?
        }
        config::ApiToken::Generated => {
            let token = crate::model::random_hex(32).map_err(|e| fail(e.to_string()))?;
            crate::model::write_private(&daemon.api_token_file(), token.as_bytes())
                .map_err(|e| fail(format!("{}: {e}", daemon.api_token_file().display())))?;
            token
        }
    };
    let token = token.trim().to_string();
    if token.len() < 16 {
        return Err(fail("shorter than 16 characters: too easy to guess".into()));
    }
    Ok(crate::redact::Secret::new(token))
}

/// A command on its way to the scheduler.
#[derive(Debug)]
struct CommandHandle(Command);

async fn schedule_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<CommandHandle>) {
    let mut rng = fastrand::Rng::new();
    let mut timetable = Timetable::default();
    let mut reload_pending: Option<Instant> = None;

    // Repositories run at once at start-up: their next run is spread over
    // the period, as if their checkouts had existed. Otherwise a fleet
    // started fresh would pull in one burst every period, for ever.
    let mut spread_next: HashSet<String> = HashSet::new();
    let plan_first = |repo: &RepoConfig,
                      never_pulled: &HashSet<String>,
                      timetable: &mut Timetable,
                      spread_next: &mut HashSet<String>,
                      rng: &mut fastrand::Rng| {
        let now = SystemTime::now();
        // Spreading first runs over the period is for checkouts that exist;
        // one never pulled is wanted now (a sidecar's app waits on it).
        let first = if never_pulled.contains(&repo.name) {
            spread_next.insert(repo.name.clone());
            Some(now)
        } else {
            crate::schedule::first_run(&repo.schedule, &repo.name, now, rng.u64(..))
        };
        match first {
            Some(at) => timetable.plan(&repo.name, at, Instant::now(), now),
            None => {
                timetable.cancel(&repo.name);
                warn!(repo = repo.name, "its schedule fires no more: not planned");
            }
        }
    };
    let config = shared.config();
    let all: Vec<String> = config.repos.iter().map(|r| r.name.clone()).collect();
    let fresh = never_pulled(&shared, all, true).await;
    for repo in &config.repos {
        plan_first(repo, &fresh, &mut timetable, &mut spread_next, &mut rng);
    }
    let names = config.repos.iter().map(|r| r.name.clone()).collect();
    record_first_runs(&shared, &timetable, names).await;

    loop {
        let wake = match (timetable.next_wake(), reload_pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            command = rx.recv() => match command.map(|c| c.0) {
                None | Some(Command::Shutdown) => return,
                Some(Command::Ping(answer)) => {
                    let _ = answer.send(());
                }
                Some(Command::RunBy(name, at)) => {
                    if timetable.planned(&name).is_some_and(|planned| planned > at) {
                        timetable.plan(&name, at, Instant::now(), SystemTime::now());
                    }
                }
                Some(Command::Trigger(name)) => {
                    if let Some(repo) = shared.config().repo(&name).cloned() {
                        launch(&shared, repo, Start::Manual);
                    }
                }
                Some(Command::TriggerAll) => {
                    for repo in shared.config().repos.clone() {
                        launch(&shared, repo, Start::Manual);
                    }
                }
                Some(Command::Wake(names)) => {
                    let config = shared.config();
                    for name in names {
                        if let Some(repo) = config.repo(&name).cloned() {
                            launch(&shared, repo, Start::Push);
                        }
                    }
                }
                // Debounce: editors write in bursts.
                Some(Command::Reload) => reload_pending = Some(Instant::now() + Duration::from_millis(300)),
            }
        }

        if reload_pending.is_some_and(|at| at <= Instant::now()) {
            reload_pending = None;
            let job = shared.clone();
            let reloaded = tokio::task::spawn_blocking(move || reload(&job))
                .await
                .unwrap_or_else(|e| {
                    error!("reload failed: {e}");
                    None
                });
            if let Some(changed) = reloaded {
                let config = shared.config();
                let fresh = never_pulled(&shared, changed.clone(), false).await;
                for name in &changed {
                    match config.repo(name) {
                        Some(repo) => {
                            plan_first(repo, &fresh, &mut timetable, &mut spread_next, &mut rng)
                        }
                        None => timetable.cancel(name),
                    }
                }
                record_first_runs(&shared, &timetable, changed).await;
            }
        }

        let config = shared.config();
        for due in timetable.pop_due(Instant::now()) {
            let Some(repo) = config.repo(&due.name).cloned() else {
                continue;
            };
            let now = SystemTime::now();
            let next = match spread_next.remove(&due.name) {
                true => crate::schedule::first_run(&repo.schedule, &due.name, now, rng.u64(..)),
                false => crate::schedule::next_run(
                    &repo.schedule,
                    &due.name,
                    due.planned,
                    now,
                    rng.u64(..),
                ),
            };
            match next {
                Some(at) => timetable.plan(&due.name, at, Instant::now(), now),
                None => warn!(
                    repo = due.name,
                    "its schedule fires no more: this is its last run"
                ),
            }
            launch(
                &shared,
                repo,
                Start::Scheduled {
                    due: due.planned,
                    next,
                },
            );
        }
    }
}

/// Which of `names` were never pulled: no checkout, or no pull on record.
/// At start (`starting`), a repository that a crash left owing steps
/// counts as never pulled (so it is pulled, and its steps run, now), and one
/// with no steps configured any more owes none. Reads the state and the
/// checkouts on a blocking thread, not the scheduler's.
async fn never_pulled(shared: &Arc<Shared>, names: Vec<String>, starting: bool) -> HashSet<String> {
    let shared = shared.clone();
    let found = tokio::task::spawn_blocking(move || {
        let config = shared.config();
        let mut recorded: HashSet<String> = shared
            .store
            .status()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.last_pull_ms.is_some())
            .map(|s| s.repo)
            .collect();
        if starting {
            let owing = shared.store.repos_owing_steps().unwrap_or_default();
            for owing in owing {
                if config.repo(&owing).is_some_and(|r| !r.steps.is_empty()) {
                    recorded.remove(&owing);
                } else if let Err(e) = shared.store.forget_owed_steps(&owing) {
                    warn!(repo = owing, "forgetting steps no longer configured: {e}");
                }
            }
        }
        names
            .into_iter()
            .filter(|name| {
                config.repo(name).is_some_and(|repo| {
                    let checkout = repo.publish.repo_dir(&repo.dir);
                    !checkout.join(".git").exists() || !recorded.contains(name)
                })
            })
            .collect()
    })
    .await;
    found.unwrap_or_else(|e| {
        error!("reading which repositories were pulled: {e}");
        HashSet::new()
    })
}

/// Records planned first runs (start-up, reload) in one transaction, off
/// the scheduler's thread; later runs are recorded with each pull's result.
async fn record_first_runs(shared: &Arc<Shared>, timetable: &Timetable, names: Vec<String>) {
    let runs: Vec<(String, u64)> = names
        .iter()
        .filter_map(|n| timetable.planned(n).map(|t| (n.clone(), unix_ms(t))))
        .collect();
    let shared = shared.clone();
    // Quiet pulls carry the next runs planned before: written first.
    let written = tokio::task::spawn_blocking(move || {
        shared.quiet.flush(shared.store.as_ref())?;
        shared.store.set_next_runs(&runs)
    });
    match written.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("recording the next runs: {e}"),
        Err(e) => warn!("recording the next runs: {e}"),
    }
}

/// Validates and swaps in the config file; returns the names of repos that
/// were added, removed or changed, or `None` if the new config was refused.
fn reload(shared: &Shared) -> Option<Vec<String>> {
    let old = shared.config();
    match crate::validate::load_with(&old.path, &shared.plugins) {
        Err(problems) => {
            shared
                .counters
                .reloads_rejected
                .fetch_add(1, Ordering::Relaxed);
            for p in &problems.0 {
                error!("config rejected, keeping the running one: {p}");
            }
            let event = Event::problem(
                EventKind::ConfigRejected,
                RepoRef::default(),
                problems.to_string(),
                store::now_ms(),
            );
            record_events(shared, &old, &Audience::ALL, vec![event]);
            None
        }
        Ok(new) => {
            let mut changed = Vec::new();
            for repo in &new.repos {
                if !old.repo(&repo.name).is_some_and(|o| o.same_settings(repo)) {
                    changed.push(repo.name.clone());
                }
            }
            for repo in &old.repos {
                if new.repo(&repo.name).is_none() {
                    changed.push(repo.name.clone());
                }
            }
            if old.daemon.max_concurrent != new.daemon.max_concurrent
                || old.daemon.listen != new.daemon.listen
            {
                warn!("daemon.max_concurrent and daemon.listen take effect at the next restart");
            }
            shared.counters.reloads.fetch_add(1, Ordering::Relaxed);
            info!(
                repos = new.repos.len(),
                changed = changed.len(),
                "config reloaded"
            );
            *lock(&shared.config) = Arc::new(new);
            Some(changed)
        }
    }
}

/// Why a pull starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Its schedule: when it was due, and when the next run is.
    Scheduled {
        due: SystemTime,
        next: Option<SystemTime>,
    },
    /// A person asked (API, `gitpulse trigger`, SIGUSR1): passes an open
    /// breaker, as a deliberate probe.
    Manual,
    /// A push webhook: held back by an open breaker like a scheduled run.
    Push,
}

/// Counts and records a scheduled run skipped because the repository is
/// still running (off the async workers: it writes the state).
fn skipped_running(shared: &Arc<Shared>, repo: RepoConfig) {
    shared
        .counters
        .skipped_running
        .fetch_add(1, Ordering::Relaxed);
    info!(repo = repo.name, "still running: this run is skipped");
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = shared.store.record_skip(&repo.name) {
            warn!(repo = repo.name, "recording a skip: {e}");
        }
    });
}

/// Starts a pull of `repo` unless its host's breaker holds it back. A
/// scheduled run of a repository still running is skipped; a manual or
/// push one is coalesced into one more pull after the running one, so a
/// push that arrived mid-pull is not lost.
fn launch(shared: &Arc<Shared>, repo: RepoConfig, start: Start) {
    let manual = matches!(start, Start::Manual);
    let (scheduled, next_run_ms) = match start {
        Start::Scheduled { due, next } => (Some(due), next.map(unix_ms)),
        _ => (None, None),
    };
    let asked = match start {
        Start::Scheduled { .. } => admission::Asked::Schedule,
        Start::Manual | Start::Push => admission::Asked::Now,
    };
    match lock(&shared.running).admit(&repo.name, asked) {
        admission::Admit::Run => {}
        admission::Admit::After => {
            info!(repo = repo.name, "running: one more pull when it ends");
            return;
        }
        admission::Admit::Skip => {
            skipped_running(shared, repo);
            return;
        }
    }
    let host = crate::git::remote_host(&repo.url);
    let budget = {
        let daemon = &shared.config().daemon;
        lock(&shared.budgets)
            .entry(host.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(RetryBudget::new(
                    daemon.retry_budget_ratio,
                    daemon.retry_budget_min,
                )))
            })
            .clone()
    };
    let admission = lock(&shared.breakers)
        .entry(host.clone())
        .or_default()
        .admit(Instant::now(), manual);
    if admission == Admission::HeldBack {
        lock(&shared.running).finish(&repo.name);
        shared
            .counters
            .skipped_breaker
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    let host_permits = lock(&shared.per_host)
        .entry(host.clone())
        .or_insert_with(|| Arc::new(Semaphore::new(shared.config().daemon.per_host)))
        .clone();
    let pull = Pull {
        shared: shared.clone(),
        repo,
        host,
        admission,
        budget,
        scheduled,
        next_run_ms,
    };
    // A pull runs on a blocking thread and settles there: no task on a
    // worker waits for it to be woken when it ends. Uncontended (the usual
    // case) it starts at once; otherwise a task waits for the permits.
    let permits = (
        shared.global.clone().try_acquire_owned(),
        host_permits.clone().try_acquire_owned(),
    );
    if let (Ok(global), Ok(host)) = permits {
        shared
            .pulls
            .spawn_blocking(move || pull.run((global, host)));
        return;
    }
    shared.pulls.spawn(async move {
        let (Ok(global), Ok(host)) = (
            pull.shared.global.clone().acquire_owned().await,
            host_permits.acquire_owned().await,
        ) else {
            lock(&pull.shared.running).finish(&pull.repo.name);
            return;
        };
        let pulls = pull.shared.pulls.clone();
        pulls.spawn_blocking(move || pull.run((global, host)));
    });
}

/// A pull that [`launch`] admitted, to run on a blocking thread.
struct Pull {
    shared: Arc<Shared>,
    repo: RepoConfig,
    host: String,
    admission: Admission,
    budget: Arc<Mutex<RetryBudget>>,
    /// When a scheduled run was due (`None`: manual or push).
    scheduled: Option<SystemTime>,
    next_run_ms: Option<u64>,
}

/// The global permit and the host's, held while a pull runs.
type Permits = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
);

impl Pull {
    /// Runs the job and settles it (metrics, breaker), holding `permits`
    /// only for the pull itself: owed steps then run in their own pool,
    /// and the repository counts as running until they end (a coalesced
    /// rerun follows). Blocks.
    fn run(self, permits: Permits) {
        let shared = self.shared;
        let start_lag = self
            .scheduled
            .map(|due| SystemTime::now().duration_since(due).unwrap_or_default());
        if let Some(lag) = start_lag {
            shared.metrics.pull_started_late(lag);
        }
        let timing = crate::job::Timing {
            start_lag_ms: start_lag.map(|lag| lag.as_millis() as u64),
            next_run_ms: self.next_run_ms,
        };
        let name = self.repo.name.clone();
        // A panicking pull must still leave `running`, or the repository
        // would be skipped as still running for ever.
        let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_job(&shared, &self.repo, self.budget, timing)
        }));
        drop(permits);
        shared.counters.pulls.fetch_add(1, Ordering::Relaxed);
        let after = AfterPull {
            shared,
            repo: self.repo,
        };
        let owes_steps = match report {
            Ok((report, told, owes_steps)) => {
                // The sender looks at the outbox only when there is news
                // for it: a no-op pull records no event.
                if told {
                    after.shared.outbox_wake.notify_one();
                }
                finish(&after.shared, &name, &self.host, self.admission, &report);
                owes_steps
            }
            Err(_) => {
                error!(repo = name, "pull task failed: it panicked");
                false
            }
        };
        if !owes_steps {
            return after.done();
        }
        match after.shared.steps.clone().try_acquire_owned() {
            Ok(permit) => after.run_steps(permit),
            Err(_) => {
                let tracker = after.shared.pulls.clone();
                tracker.spawn(async move {
                    let Ok(permit) = after.shared.steps.clone().acquire_owned().await else {
                        return after.done();
                    };
                    let tracker = after.shared.pulls.clone();
                    tracker.spawn_blocking(move || after.run_steps(permit));
                });
            }
        }
    }
}

/// A repository whose pull ended: its owed steps may still run, then it
/// stops counting as running.
struct AfterPull {
    shared: Arc<Shared>,
    repo: RepoConfig,
}

impl AfterPull {
    /// Runs the owed steps holding a step permit, then settles. Blocks.
    fn run_steps(self, _permit: tokio::sync::OwnedSemaphorePermit) {
        let shared = &self.shared;
        let repo = &self.repo;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let config = shared.config();
            let load = |name: &str| load_plugin(shared, &config, name);
            let steps = daemon_job(shared, &config, repo, &load, None).run_steps();
            steps
        }));
        match ran {
            Ok(steps) => {
                if let Some(due) = steps.next_step_due_ms {
                    // Never sooner than a second: an owed step is no busy loop.
                    let due = due.max(crate::model::now_ms() + 1000);
                    let at = UNIX_EPOCH + Duration::from_millis(due);
                    let _ = shared
                        .commands
                        .send(CommandHandle(Command::RunBy(repo.name.clone(), at)));
                }
                match steps.recorded {
                    Ok(events) if !events.is_empty() => {
                        for e in &events {
                            info!(repo = repo.name, event = e.kind, "event");
                        }
                        shared.outbox_wake.notify_one();
                    }
                    Ok(_) => {}
                    Err(e) => error!(repo = repo.name, "recording its steps: {e}"),
                }
            }
            Err(_) => error!(repo = repo.name, "steps task failed: it panicked"),
        }
        self.done();
    }

    /// The repository no longer runs; one asked for meanwhile runs now.
    fn done(self) {
        let name = &self.repo.name;
        let again = lock(&self.shared.running).finish(name);
        if again {
            if let Some(repo) = self.shared.config().repo(name).cloned() {
                launch(&self.shared, repo, Start::Push);
            }
        }
    }
}

/// The job of `repo` in this daemon: its config, plugins, state, quiet
/// pulls' batching and cancellation, and its host's retry budget when it
/// pulls.
fn daemon_job<'a>(
    shared: &'a Shared,
    config: &'a Config,
    repo: &'a RepoConfig,
    plugins: crate::notify::PluginLoader<'a>,
    budget: Option<Arc<Mutex<RetryBudget>>>,
) -> crate::job::Job<'a> {
    crate::job::Job {
        repo,
        config,
        plugins,
        store: shared.store.as_ref(),
        quiet: Some(&shared.quiet),
        cancel: shared.cancel.clone(),
        budget,
        seed: None,
        digests: true,
        news: Box::new(|| shared.outbox_wake.notify_one()),
    }
}

/// One pull job of `repo` under the daemon's config, store and plugins:
/// its report, whether it recorded news for the sender, and whether steps
/// may be owed. Blocks.
fn run_job(
    shared: &Arc<Shared>,
    repo: &RepoConfig,
    budget: Arc<Mutex<RetryBudget>>,
    timing: crate::job::Timing,
) -> (PullReport, bool, bool) {
    let config = shared.config();
    let load = |name: &str| load_plugin(shared, &config, name);
    let mut observer = LogObserver { repo };
    let pull_job = daemon_job(shared, &config, repo, &load, Some(budget));
    let crate::job::JobRun {
        report,
        recorded,
        owes_steps,
        ..
    } = pull_job.run(&mut observer, timing);
    let told = match recorded {
        Ok(events) => {
            for e in &events {
                info!(repo = repo.name, event = e.kind, "event");
            }
            !events.is_empty()
        }
        Err(e) => {
            error!(repo = repo.name, "recording the pull: {e}");
            false
        }
    };
    (report, told, owes_steps)
}

/// Records events that no pull result carries, with their messages.
fn record_events(shared: &Shared, config: &Config, audience: &Audience<'_>, events: Vec<Event>) {
    let loader = |name: &str| load_plugin(shared, config, name);
    let outgoing = Router::new(config, &loader).outgoing(events, audience);
    if let Err(e) = shared.store.record_events(outgoing) {
        error!("recording events: {e}");
    }
    shared.outbox_wake.notify_one();
}

fn finish(shared: &Shared, name: &str, host: &str, admission: Admission, report: &PullReport) {
    shared.metrics.pull_finished(name, report);
    if report.outcome.is_success() {
        lock(&shared.pulled).insert(name.to_string());
    }
    let verdict = match report.outcome {
        Outcome::Failed
            if report
                .attempts
                .last()
                .is_some_and(|a| a.class.is_transient()) =>
        {
            Verdict::FailedTransiently
        }
        Outcome::Failed => Verdict::Other,
        _ => Verdict::Succeeded,
    };
    let daemon = &shared.config().daemon;
    let change = lock(&shared.breakers)
        .entry(host.to_string())
        .or_default()
        .record(
            admission,
            verdict,
            Instant::now(),
            daemon.breaker_threshold,
            daemon.breaker_cool_down,
        );
    match change {
        Some(Change::Opened { failures_in_row }) => warn!(
            host,
            failures = failures_in_row,
            "circuit open: holding this host's repositories back"
        ),
        Some(Change::Closed) => info!(host, "circuit closed: the host recovered"),
        None => {}
    }
    match report.outcome {
        Outcome::Failed => warn!(
            repo = name,
            class = report
                .attempts
                .last()
                .map(|a| a.class.as_str())
                .unwrap_or("?"),
            reason = report
                .reason
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            "pull failed"
        ),
        Outcome::Unchanged => tracing::debug!(repo = name, "unchanged"),
        outcome => info!(
            repo = name,
            outcome = outcome.as_str(),
            commits = report.commits,
            old = report.old.as_deref().unwrap_or(""),
            new = report.new.as_deref().unwrap_or(""),
            duration_ms = report.duration_ms,
            "pulled"
        ),
    }
}

/// Plugin `name` from the plugin directory, compiled once per content (see
/// [`Registry`]), with its settings and its key-value store (shared by
/// every pull that uses it). Blocks while it compiles.
fn load_plugin(
    shared: &Shared,
    config: &Config,
    name: &str,
) -> Result<Plugin, crate::plugin::LoadError> {
    let (wasm, kv_file) = crate::job::plugin_files(config, name);
    let kv = lock(&shared.plugin_kv)
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(Mutex::new(KvStore::persisted(kv_file).unwrap_or_else(
                |e| {
                    warn!(
                        plugin = name,
                        "plugin state unreadable, starting empty: {e}"
                    );
                    KvStore::in_memory()
                },
            )))
        })
        .clone();
    let mut env = PluginEnv::new(config.plugins.get(name).cloned().unwrap_or_default(), None);
    env.kv = kv;
    env.calls = Some(shared.metrics.clone());
    shared.plugins.get(&wasm, env)
}

/// Attempt lines and notices go to the daemon's log (the job records a
/// retry as a `retrying` event itself).
struct LogObserver<'a> {
    repo: &'a RepoConfig,
}

impl pull::Observer for LogObserver<'_> {
    fn attempt_failed(
        &mut self,
        record: &crate::outcome::AttemptRecord,
        decision: &crate::policy::Decision,
    ) {
        let delay_ms = match decision {
            crate::policy::Decision::RetryAfter { delay, .. } => Some(delay.as_millis() as u64),
            crate::policy::Decision::Stop(_) => None,
        };
        info!(
            repo = self.repo.name,
            attempt = record.n,
            class = record.class.as_str(),
            http_status = record.http_status,
            delay_ms,
            duration_ms = record.duration_ms,
            "{}",
            crate::ui::attempt_line(record, decision)
        );
    }

    fn notice(&mut self, text: &str) {
        warn!(repo = self.repo.name, "{text}");
    }
}
