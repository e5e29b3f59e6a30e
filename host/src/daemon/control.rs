//! What the HTTP server may see and do ([`crate::server::Control`]): the
//! status JSON, the metrics and the page, built from the daemon's shared
//! state; triggers go to the scheduler as commands. Nothing here schedules
//! or pulls.

use super::*;

/// What the HTTP server may see and do (see [`crate::server::Control`]).
pub(super) struct DaemonView {
    pub(super) shared: Arc<Shared>,
    pub(super) tx: mpsc::UnboundedSender<CommandHandle>,
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
            "fleet": self.fleet().map(|f| serde_json::json!({
                "replica": f.replica,
                "replicas_alive": f.replicas,
                "leases_held": f.held,
                "fenced_writes": f.fenced,
                "leases_taken": f.taken,
                "leader": f.leads,
            })),
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
        // A replica of a sharded fleet answers for the repositories it
        // holds: the others are not its to pull.
        let sharded = self
            .shared
            .store
            .fleet()
            .filter(|f| f.replica().mode == store::FleetMode::Shard);
        for repo in self.shared.config().repos.iter().filter(|r| r.required) {
            let elsewhere = sharded.is_some_and(|f| !f.holds(&repo.name));
            if pulled.contains(&repo.name) || elsewhere {
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
            fleet: self.fleet(),
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
                    replica: row.and_then(|s| s.replica.clone()),
                }
            })
            .collect();
        let fleet = self.fleet().map(|f| crate::page::FleetPanel {
            replica: f.replica,
            leads: f.leads,
            replicas: lock(&self.shared.fleet.live).clone(),
        });
        crate::page::render(&repos, fleet.as_ref(), store::now_ms())
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
pub(super) fn rows_by_name(store: &dyn Storage) -> HashMap<String, store::RepoStatus> {
    store
        .status()
        .unwrap_or_default()
        .into_iter()
        .map(|row| (row.repo.clone(), row))
        .collect()
}

impl DaemonView {
    /// This replica's view of its fleet, when it shares its state.
    fn fleet(&self) -> Option<super::metrics::FleetGauge> {
        let fleet = self.shared.store.fleet()?;
        let gauges = &self.shared.fleet;
        Some(super::metrics::FleetGauge {
            replica: fleet.replica().name.clone(),
            replicas: gauges.replicas.load(Ordering::Relaxed),
            held: gauges.held.load(Ordering::Relaxed),
            fenced: fleet.fenced_writes(),
            taken: fleet.leases_taken(),
            leads: fleet.leads(),
        })
    }

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
pub(super) fn api_token(
    daemon: &config::DaemonSettings,
) -> Result<crate::redact::Secret, DaemonError> {
    let fail = |what: String| DaemonError::Runtime(format!("API token: {what}"));
    let token = match super::client::configured_token(daemon).map_err(fail)? {
        Some(token) => token,
        None => {
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
