//! The scheduler: one task owns the timetable of next runs, sleeps until
//! the earliest, and takes commands (a trigger, a reload, shutdown) from one
//! channel. It decides when a repository runs, not how: the runner does
//! that. Reading the state and the checkouts happens on blocking threads.

use super::*;

/// A command on its way to the scheduler.
#[derive(Debug)]
pub(super) struct CommandHandle(pub(super) Command);

pub(super) async fn schedule_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<CommandHandle>,
) {
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
pub(super) async fn never_pulled(
    shared: &Arc<Shared>,
    names: Vec<String>,
    starting: bool,
) -> HashSet<String> {
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
pub(super) async fn record_first_runs(
    shared: &Arc<Shared>,
    timetable: &Timetable,
    names: Vec<String>,
) {
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
pub(super) fn reload(shared: &Shared) -> Option<Vec<String>> {
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
            if old.store != new.store || old.daemon.state_dir != new.daemon.state_dir {
                warn!("[store] and daemon.state_dir take effect at the next restart: the running daemon keeps its state where it is");
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
