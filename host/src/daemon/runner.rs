//! The runner: admits a due repository (one run at a time, global and
//! per-host permits, the host's circuit breaker), runs its job on a
//! blocking thread, then its owed steps in their own pool, and settles
//! what the pull means for the breaker, the metrics and the timetable.

use super::*;

/// Why a pull starts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Start {
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
pub(super) fn skipped_running(shared: &Arc<Shared>, repo: RepoConfig) {
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
pub(super) fn launch(shared: &Arc<Shared>, repo: RepoConfig, start: Start) {
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
pub(super) struct Pull {
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
        if !fleet::may_pull(&shared, &self.repo.name, self.scheduled.is_some()) {
            lock(&shared.running).finish(&self.repo.name);
            return;
        }
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
pub(super) struct AfterPull {
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
pub(super) fn daemon_job<'a>(
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
pub(super) fn run_job(
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
pub(super) fn record_events(
    shared: &Shared,
    config: &Config,
    audience: &Audience<'_>,
    events: Vec<Event>,
) {
    let loader = |name: &str| load_plugin(shared, config, name);
    let outgoing = Router::new(config, &loader).outgoing(events, audience);
    if let Err(e) = shared.store.record_events(outgoing) {
        error!("recording events: {e}");
    }
    shared.outbox_wake.notify_one();
}

pub(super) fn finish(
    shared: &Shared,
    name: &str,
    host: &str,
    admission: Admission,
    report: &PullReport,
) {
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
pub(super) fn load_plugin(
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
pub(super) struct LogObserver<'a> {
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
