//! The pull job's policy and recording steps, shared by `gitpulse pull`
//! (`--policy`, `--notify-config`) and the daemon: which plugins decide a
//! repository's retries, and what a finished pull means (its events),
//! rendered into messages and written with the pull's result.
//!
//! Recording is two-phase so that nothing slow happens under the store's
//! lock or inside its write transaction: read the repository's failure
//! streak (a short read), decide the events and render their messages
//! (plugin calls, templates: no lock held), then write the result, its
//! events and their outbox rows in one transaction. If another process
//! recorded a pull of the same repository in between, the streak has moved
//! and the events are decided again.
//!
//! It also chooses a repository's policy (which plugin plays which role),
//! for the CLI and the daemon alike. This module wires the parts together;
//! it does not pull (`pull`), decide events (`events`), render (`notify`),
//! store (`store`) or load plugins (its callers hand it a loader).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{self, AuthRef, Config, PolicyRef, RepoConfig, SecretRef};
use crate::events::{EventKind, PullEvents, RepoRef};
use crate::git::FailureClass;
use crate::git::{Auth, SyncSpec};
use crate::notify::{Audience, PluginLoader, Router};
use crate::outcome::{AttemptRecord, PullReport};
use crate::plugin::{LoadError, Told, WasmPolicy};
use crate::policy::{Backoff, Budgeted, Builtin, RetryBudget, RetryPolicy, StopReason};
use crate::pull::{self, Observer, PullOptions};
use crate::store::{Store, StoreError, StoredEvent};

/// Why a configured repository's job could not run. Nothing was pulled.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Its token could not be read.
    #[error("{0}")]
    Auth(String),
    /// Its checkout cannot be used (not a repository, the wrong kind).
    #[error(transparent)]
    Spec(#[from] crate::git::SpecError),
    /// A plugin it names will not load.
    #[error(transparent)]
    Plugin(#[from] LoadError),
}

/// A configured repository's pull job: pull under its policy, then record
/// the result with its events and their messages.
pub struct Job<'a> {
    /// The repository and its settings.
    pub repo: &'a RepoConfig,
    /// The whole config (notifiers, plugin settings).
    pub config: &'a Config,
    /// Where its plugins come from (the daemon's registry).
    pub plugins: PluginLoader<'a>,
    /// The state.
    pub store: &'a Mutex<Store>,
    /// Set to stop the pull at its next check.
    pub cancel: Arc<AtomicBool>,
    /// The retry budget of the repository's host, shared with the other
    /// repositories on it (the daemon's); none: retries are not budgeted.
    pub budget: Option<Arc<Mutex<RetryBudget>>>,
}

impl Job<'_> {
    /// Runs the job; `observer` hears of each attempt. Returns the pull's
    /// report and how recording it went (a pull that happened is reported
    /// even when the state could not take it). A job that cannot start (a
    /// token file gone, DIR not a repository, a plugin that will not load)
    /// is recorded too, as a failed pull with its class and a `failed`
    /// event, so `status` and notifiers see it. Blocks: call it on a
    /// blocking thread.
    pub fn run(
        &self,
        observer: &mut dyn Observer,
        timing: Timing,
    ) -> (PullReport, Result<Vec<StoredEvent>, StoreError>) {
        let report = self
            .pull(observer)
            .unwrap_or_else(|e| not_started(self.repo, &e));
        let identity = identity(self.repo);
        // Retries were told as they happened (by the observer).
        let events = PullEvents::read(&identity, &self.repo.dir, &report, false);
        let router = Router::new(self.config, self.plugins);
        let recorded = record(
            self.store,
            &router,
            &Audience::of(self.repo),
            &self.repo.name,
            &events,
            &report,
            timing,
        );
        (report, recorded)
    }

    /// The pull itself, under the repository's policy.
    fn pull(&self, observer: &mut dyn Observer) -> Result<PullReport, JobError> {
        let repo = self.repo;
        let builtin = Builtin::new(
            Backoff {
                base: repo.backoff_base,
                max: repo.backoff_max,
            },
            repo.max_attempts,
            None,
        );
        let told = Told {
            max_attempts: repo.max_attempts,
            max_delay: repo.backoff_max,
        };
        let mut policy = policy(&repo.policy, builtin, identity(repo), told, self.plugins)?;
        if let Some(budget) = &self.budget {
            budget
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pull_started(std::time::Instant::now());
            policy = Box::new(Budgeted::new(policy, budget.clone()));
        }
        Ok(pull::pull(
            &options(repo, auth(repo)?),
            policy.as_mut(),
            observer,
            self.cancel.clone(),
        )?)
    }
}

/// The report of a job that could not start: one failed attempt that says
/// why, not retried.
fn not_started(repo: &RepoConfig, e: &JobError) -> PullReport {
    let class = match e {
        JobError::Auth(_) => FailureClass::Auth,
        JobError::Spec(_) | JobError::Plugin(_) => FailureClass::Other,
    };
    PullReport {
        attempts: vec![AttemptRecord {
            n: 1,
            class,
            http_status: None,
            message: format!("could not start: {e}"),
            delay_ms: None,
            duration_ms: 0,
        }],
        reason: Some(StopReason::NotRetryable),
        ..PullReport::failed(&repo.url, &repo.dir)
    }
}

/// A configured repository as events and plugins see it.
pub fn identity(repo: &RepoConfig) -> RepoRef {
    RepoRef::new(
        &repo.name,
        &repo.url,
        Some(repo.follow.describe().as_str()).filter(|f| !f.is_empty()),
        repo.labels.clone(),
    )
}

/// The credentials `repo` names, read now (rotated tokens are picked up).
fn auth(repo: &RepoConfig) -> Result<Auth, JobError> {
    let token = |secret: SecretRef| {
        config::read_secret(&secret)
            .map(Auth::Token)
            .map_err(JobError::Auth)
    };
    Ok(match &repo.auth {
        AuthRef::None => Auth::None,
        AuthRef::TokenEnv(var) => token(SecretRef::Env(var.clone()))?,
        AuthRef::TokenFile(path) => token(SecretRef::File(path.clone()))?,
        AuthRef::SshKey { key, known_hosts } => Auth::SshKey {
            key: key.clone(),
            known_hosts: known_hosts.clone(),
        },
    })
}

/// What one pull of `repo` is asked to do.
fn options(repo: &RepoConfig, auth: Auth) -> PullOptions {
    PullOptions {
        sync: SyncSpec {
            url: repo.url.clone(),
            dir: repo.dir.clone(),
            follow: repo.follow.clone(),
            depth: repo.depth,
            submodules: repo.submodules,
            local_submodules: repo.local_submodules,
            mode: repo.mode,
            auth,
            username: repo.username.clone(),
            lock_wait: repo.lock_wait,
        },
        timeout: repo.timeout,
        deadline: repo.deadline,
        max_attempts: repo.max_attempts,
        max_delay: repo.backoff_max,
    }
}

/// The retry policy of `repo`: the plugins `roles` names, each in its role,
/// loaded by `load`, and `builtin` for every role nobody plays. One plugin
/// named for both retry and backoff answers alone (its retry answer already
/// holds a delay). Loading may compile: call it on a blocking thread.
pub fn policy(
    roles: &PolicyRef,
    builtin: Builtin,
    repo: RepoRef,
    told: Told,
    load: PluginLoader<'_>,
) -> Result<Box<dyn RetryPolicy>, LoadError> {
    Ok(match (&roles.retry, &roles.backoff) {
        (None, None) => Box::new(builtin),
        (Some(retry), Some(backoff)) if retry == backoff => {
            Box::new(WasmPolicy::new(load(retry)?, builtin, repo, told))
        }
        (retry, backoff) => {
            let get = |name: &Option<String>| name.as_deref().map(load).transpose();
            Box::new(WasmPolicy::with_roles(
                get(retry)?,
                get(backoff)?,
                builtin,
                repo,
                told,
            ))
        }
    })
}

/// When a scheduled pull ran, for the state: how late it started and when
/// the next one is planned (both absent for a manual or one-shot pull).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// How late a scheduled pull started.
    pub start_lag_ms: Option<u64>,
    /// When the next run is planned.
    pub next_run_ms: Option<u64>,
}

/// Records `report` for the repository `name` with the events `events`
/// implies and their messages for `audience`. Blocks (SQLite, plugin
/// calls): call it on a blocking thread.
pub fn record(
    store: &Mutex<Store>,
    router: &Router<'_>,
    audience: &Audience<'_>,
    name: &str,
    events: &PullEvents<'_>,
    report: &PullReport,
    timing: Timing,
) -> Result<Vec<StoredEvent>, StoreError> {
    // A moving streak means another writer; it settles within a few tries.
    const TRIES: usize = 3;
    let mut tries = 0;
    loop {
        tries += 1;
        let previous = lock(store).failures_in_row(name)?;
        let outgoing = router.outgoing(events.given(previous), audience);
        match lock(store).record_pull(
            name,
            report,
            timing.start_lag_ms,
            timing.next_run_ms,
            previous,
            outgoing,
        ) {
            Err(StoreError::StreakChanged(_)) if tries < TRIES => continue,
            result => return result,
        }
    }
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    // The store holds no invariant a panic elsewhere could break.
    store.lock().unwrap_or_else(|p| p.into_inner())
}

/// A change made in a worktree by hand (`git pull`, `checkout`, …), as a
/// git hook reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalChange {
    /// Before (none: the worktree had no commit).
    pub old: Option<String>,
    /// After.
    pub new: String,
    /// Commits from `old` to `new` (0 when the checkout went back).
    pub commits: u64,
    /// The worktree's name (its directory's).
    pub name: String,
    /// Its `origin` URL, if any.
    pub url: String,
    /// The checked-out branch, if any.
    pub branch: Option<String>,
}

/// Records a change a git hook saw in the worktree `top` as a pull of it
/// would be: the `[[repo]]` whose `dir` is `top` gives its name, labels,
/// notifiers and notify plugin; otherwise the change's own name, URL and
/// branch. Returns how many events were recorded; delivery is left to the
/// caller.
pub fn record_change(config: &Config, top: &Path, seen: &LocalChange) -> Result<usize, StoreError> {
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let here = canonical(top);
    let configured = config.repos.iter().find(|r| canonical(&r.dir) == here);
    let (repo, notifiers, plugin) = match configured {
        Some(r) => (identity(r), r.notifiers.clone(), r.policy.notify.clone()),
        None => (
            RepoRef::new(
                &seen.name,
                &seen.url,
                seen.branch.as_deref(),
                Default::default(),
            ),
            Vec::new(),
            None,
        ),
    };
    let report = PullReport {
        outcome: crate::outcome::Outcome::Updated,
        old: seen.old.clone(),
        new: Some(seen.new.clone()),
        commits: seen.commits,
        ..PullReport::failed(repo.url(), top)
    };
    let audience = Audience {
        notifiers: &notifiers,
        plugin: plugin.as_deref(),
    };
    let registry = crate::plugin::Registry::new(
        Some(config.daemon.compile_cache()),
        crate::plugin::Sandbox::default(),
    );
    let load = |name: &str| plugin_in_dir(config, &registry, name);
    record_only(config, &repo, top, &report, &audience, &load)
}

/// Plugin `name` from `config`'s plugin directory through `registry`, with
/// its settings and its key-value store persisted in the state directory:
/// for one-shot commands (a git hook), which share nothing across runs.
pub fn plugin_in_dir(
    config: &Config,
    registry: &crate::plugin::Registry,
    name: &str,
) -> Result<crate::plugin::Plugin, crate::plugin::LoadError> {
    let (wasm, kv_file) = plugin_files(config, name);
    let mut env =
        crate::plugin::PluginEnv::new(config.plugins.get(name).cloned().unwrap_or_default(), None);
    if let Ok(kv) = crate::plugin::KvStore::persisted(kv_file) {
        env = env.with_kv(kv);
    }
    registry.get(&wasm, env)
}

/// Where plugin `name` of `config` lives (`plugin_dir/NAME.wasm`) and where
/// its key-value store is kept (`state_dir/plugins/NAME.json`).
pub fn plugin_files(config: &Config, name: &str) -> (PathBuf, PathBuf) {
    let dir = config.daemon.plugin_dir.clone().unwrap_or_default();
    let kv = config
        .daemon
        .state_dir
        .join("plugins")
        .join(format!("{name}.json"));
    (dir.join(format!("{name}.wasm")), kv)
}

/// What `gitpulse pull --notify-config` did with its notifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullNotified {
    /// Events recorded.
    pub events: usize,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages given up on.
    pub dead: u64,
    /// Still in the outbox when the wait ran out.
    pub pending: u64,
}

/// Records a one-shot pull's events (as the daemon would) in the outbox of
/// `config`'s state database, then delivers until nothing is due or `wait`
/// has passed. Digests are not held for: there is one pull to tell of.
pub fn record_and_deliver(
    config: &Config,
    repo: &RepoRef,
    dir: &Path,
    report: &PullReport,
    audience: &Audience<'_>,
    load_plugin: PluginLoader<'_>,
    wait: Duration,
) -> Result<PullNotified, StoreError> {
    let events = record_only(config, repo, dir, report, audience, load_plugin)?;
    let mut result = deliver_pending(config, wait)?;
    result.events = events;
    Ok(result)
}

/// Records the events of `report` (a pull, or a change a git hook saw) and
/// their messages in `config`'s state database; returns how many events.
/// Delivery is left to the daemon or [`deliver_pending`].
pub fn record_only(
    config: &Config,
    repo: &RepoRef,
    dir: &Path,
    report: &PullReport,
    audience: &Audience<'_>,
    load_plugin: PluginLoader<'_>,
) -> Result<usize, StoreError> {
    let router = Router::new(config, load_plugin).without_digests();
    let with_retries = router.wants(EventKind::Retrying, audience);
    let pull_events = PullEvents::read(repo, dir, report, with_retries);
    let store = open_store(config)?;
    let recorded = record(
        &store,
        &router,
        audience,
        repo.name(),
        &pull_events,
        report,
        Timing::default(),
    )?;
    Ok(recorded.len())
}

fn open_store(config: &Config) -> Result<Mutex<Store>, StoreError> {
    Ok(Mutex::new(Store::open(&Store::path_in(
        &config.daemon.state_dir,
    ))?))
}

/// Delivers what is due in `config`'s outbox until nothing is or `wait`
/// has passed.
pub fn deliver_pending(config: &Config, wait: Duration) -> Result<PullNotified, StoreError> {
    let store = open_store(config)?;
    let mut result = PullNotified::default();
    let senders = crate::notify::Senders::default();
    let until = Instant::now() + wait;
    loop {
        let stats = crate::notify::deliver_due(&store, config, &senders, 500)?;
        result.delivered += stats.delivered;
        result.dead += stats.dead;
        let Some(next) = lock(&store).next_due_ms()? else {
            break;
        };
        let pause = Duration::from_millis(next.saturating_sub(crate::model::now_ms()));
        if Instant::now() + pause >= until {
            break;
        }
        std::thread::sleep(pause.max(Duration::from_millis(20)));
    }
    result.pending = lock(&store).outbox_counts()?.pending;
    Ok(result)
}
