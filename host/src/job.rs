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

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Config, PolicyRef};
use crate::events::{EventKind, PullEvents, RepoRef};
use crate::notify::{Audience, PluginLoader, Router};
use crate::outcome::PullReport;
use crate::plugin::{LoadError, Told, WasmPolicy};
use crate::policy::{Builtin, RetryPolicy};
use crate::store::{Store, StoreError, StoredEvent};

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
    pub start_lag_ms: Option<u64>,
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

/// What `gitpulse pull --notify-config` did with its notifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullNotified {
    pub events: usize,
    pub delivered: u64,
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
    let router = Router::new(config, load_plugin).without_digests();
    let with_retries = router.wants(EventKind::Retrying, audience);
    let pull_events = PullEvents::read(repo, dir, report, with_retries);
    let store = Mutex::new(Store::open(&Store::path_in(&config.daemon.state_dir))?);
    let recorded = record(
        &store,
        &router,
        audience,
        repo.name(),
        &pull_events,
        report,
        Timing::default(),
    )?;
    let mut result = PullNotified {
        events: recorded.len(),
        ..PullNotified::default()
    };
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
