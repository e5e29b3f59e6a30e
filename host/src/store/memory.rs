//! The state in memory, for as long as the value lives: what a one-shot
//! `gitpulse pull` records into when it has no state directory, and what
//! unit tests use. It keeps every promise the SQLite store keeps (the
//! contract suite runs against both); "atomic" is one lock held for the
//! whole write.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::outbox::{
    NewDigest, OutboxCounts, OutboxMessage, OutboxRow, OutboxState, Outgoing, Receipt,
};
use super::{
    now_ms, History, HistoryEntry, OwedStep, PullPoint, QuietPull, RepoStatus, Settle, State,
    StepRun, Steps, StoreError, StoredEvent,
};
use crate::outcome::PullReport;
use crate::policy::timeout::Learnt;

/// The state in memory.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    /// An empty state.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // Every write finishes before the lock is given back; a panic
        // cannot leave half of one behind.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct Tables {
    repos: BTreeMap<String, RepoRow>,
    attempts: Vec<AttemptRow>,
    pulls: Vec<PullRow>,
    events: Vec<StoredEvent>,
    learnt: BTreeMap<String, Learnt>,
    /// In the order first owed (a newer revision keeps the place).
    owed: Vec<(String, OwedStep)>,
    step_runs: Vec<StepRunRow>,
    outbox: Vec<Message>,
    /// The last id given, per kind of row.
    ids: Ids,
}

#[derive(Default)]
struct Ids {
    attempt: i64,
    pull: i64,
    event: i64,
    step_run: i64,
    message: i64,
}

fn next(id: &mut i64) -> i64 {
    *id += 1;
    *id
}

#[derive(Default, Clone)]
struct RepoRow {
    last_good_commit: Option<String>,
    last_success_ms: Option<u64>,
    last_result: Option<String>,
    last_class: Option<String>,
    failures_in_row: u32,
    next_run_ms: Option<u64>,
    skipped: u64,
}

struct AttemptRow {
    id: i64,
    repo: String,
    at_ms: u64,
    entry: HistoryEntry,
}

struct PullRow {
    id: i64,
    repo: String,
    at_ms: u64,
    start_lag_ms: Option<u64>,
    point: PullPoint,
    entry: HistoryEntry,
}

struct StepRunRow {
    id: i64,
    repo: String,
    at_ms: u64,
    entry: HistoryEntry,
}

#[derive(Clone)]
struct Message {
    id: i64,
    notifier: String,
    kind: String,
    repo: String,
    subject: String,
    body: String,
    html: Option<String>,
    event: String,
    dedup_key: String,
    digest_key: Option<String>,
    state: OutboxState,
    attempts: u32,
    max_attempts: u32,
    created_ms: u64,
    next_at_ms: u64,
    delivered_ms: Option<u64>,
    last_error: Option<String>,
    answer: Option<String>,
    digest_of: Option<i64>,
}

/// The first ten characters of a commit, as history shows it.
fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

impl Tables {
    /// Writes one finished pull, as the SQLite store's `write_pull`.
    fn write_pull(
        &mut self,
        repo: &str,
        report: &PullReport,
        start_lag_ms: Option<u64>,
        next_run_ms: Option<u64>,
        at: u64,
    ) {
        for a in &report.attempts {
            let id = next(&mut self.ids.attempt);
            self.attempts.push(AttemptRow {
                id,
                repo: repo.to_string(),
                at_ms: at,
                entry: HistoryEntry {
                    at_ms: at,
                    kind: format!("attempt {}", a.n),
                    class: Some(a.class.as_str().to_string()),
                    http_status: a.http_status,
                    delay_ms: a.delay_ms,
                    duration_ms: Some(a.duration_ms),
                    detail: a.message.trim().to_string(),
                    limit_ms: a.limit.map(|l| l.total.as_millis() as u64),
                    limit_why: a.limit.map(|l| l.why.as_str().to_string()),
                },
            });
        }
        let outcome = report.outcome.as_str().to_string();
        let last_class = report.attempts.last().map(|a| a.class.as_str().to_string());
        let reason = report.reason.as_ref().map(ToString::to_string);
        let new = report.new.as_deref().map(|n| format!(" {}", short(n)));
        let id = next(&mut self.ids.pull);
        self.pulls.push(PullRow {
            id,
            repo: repo.to_string(),
            at_ms: at,
            start_lag_ms,
            point: PullPoint {
                at_ms: at,
                outcome: outcome.clone(),
                duration_ms: report.duration_ms,
            },
            entry: HistoryEntry {
                at_ms: at,
                kind: outcome.clone(),
                class: last_class.clone().filter(|_| !report.outcome.is_success()),
                http_status: None,
                delay_ms: None,
                duration_ms: Some(report.duration_ms),
                detail: format!("{}{}", reason.unwrap_or_default(), new.unwrap_or_default())
                    .trim()
                    .to_string(),
                limit_ms: report.limit.map(|l| l.total.as_millis() as u64),
                limit_why: report.limit.map(|l| l.why.as_str().to_string()),
            },
        });
        if let Some(learnt) = &report.learnt {
            self.learnt.insert(repo.to_string(), *learnt);
        }
        let row = self.repos.entry(repo.to_string()).or_default();
        if report.outcome.is_success() {
            row.last_good_commit = report.new.clone();
            row.last_success_ms = Some(at);
            row.last_result = Some(outcome);
            row.last_class = None;
            row.failures_in_row = 0;
        } else {
            row.last_result = Some("failed".into());
            row.last_class = last_class;
            row.failures_in_row += 1;
        }
        if let Some(next) = next_run_ms {
            row.next_run_ms = Some(next);
        }
    }

    /// Inserts events and their messages, deduplicated and held for
    /// digests as the SQLite outbox does.
    fn insert(&mut self, outgoing: Vec<Outgoing>, at: u64) -> Vec<StoredEvent> {
        let mut stored = Vec::new();
        for Outgoing { event, messages } in outgoing {
            let event_id = next(&mut self.ids.event);
            let row = StoredEvent {
                id: event_id,
                repo: event.repo.clone(),
                at_ms: at,
                kind: event.kind.clone(),
                payload: event.payload.clone(),
            };
            self.events.push(row.clone());
            for m in messages {
                let since = at.saturating_sub(m.dedup_window_ms);
                let duplicate = self.outbox.iter().any(|o| {
                    o.notifier == m.notifier
                        && o.dedup_key == event.dedup_key
                        && o.created_ms >= since
                });
                if m.dedup_window_ms > 0 && duplicate {
                    continue;
                }
                let digest = event.digest_key.clone().filter(|_| m.digest_window_ms > 0);
                let next_at_ms = at
                    + if digest.is_some() {
                        m.digest_window_ms
                    } else {
                        0
                    };
                let id = next(&mut self.ids.message);
                self.outbox.push(Message {
                    id,
                    notifier: m.notifier,
                    kind: event.kind.clone(),
                    repo: event.repo.clone(),
                    subject: m.subject,
                    body: m.body,
                    html: m.html,
                    event: event.payload.clone(),
                    dedup_key: event.dedup_key.clone(),
                    digest_key: digest,
                    state: OutboxState::Pending,
                    attempts: 0,
                    max_attempts: m.max_attempts,
                    created_ms: at,
                    next_at_ms,
                    delivered_ms: None,
                    last_error: None,
                    answer: None,
                    digest_of: None,
                });
            }
            stored.push(row);
        }
        stored
    }

    fn message(&self, m: &Message) -> OutboxMessage {
        let carries = match m.kind.as_str() {
            "digest" => self
                .outbox
                .iter()
                .filter(|o| o.digest_of == Some(m.id))
                .count() as u64,
            _ => 1,
        };
        OutboxMessage {
            id: m.id,
            notifier: m.notifier.clone(),
            kind: m.kind.clone(),
            repo: m.repo.clone(),
            subject: m.subject.clone(),
            body: m.body.clone(),
            html: m.html.clone(),
            event: m.event.clone(),
            digest_key: m.digest_key.clone(),
            attempts: m.attempts,
            max_attempts: m.max_attempts,
            created_ms: m.created_ms,
            carries: carries.max(1),
        }
    }
}

impl State for MemoryStore {
    fn failures_in_row(&self, repo: &str) -> Result<u32, StoreError> {
        Ok(self
            .tables()
            .repos
            .get(repo)
            .map_or(0, |r| r.failures_in_row))
    }

    fn record_pull(
        &self,
        repo: &str,
        report: &PullReport,
        start_lag_ms: Option<u64>,
        next_run_ms: Option<u64>,
        previous_failures: u32,
        outgoing: Vec<Outgoing>,
        steps_owed: &[String],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let at = now_ms();
        let mut t = self.tables();
        let streak = t.repos.get(repo).map_or(0, |r| r.failures_in_row);
        if streak != previous_failures {
            return Err(StoreError::StreakChanged(repo.to_string()));
        }
        t.write_pull(repo, report, start_lag_ms, next_run_ms, at);
        for step in steps_owed {
            let owed = t
                .owed
                .iter_mut()
                .find(|(r, o)| r == repo && o.step == *step);
            match owed {
                // A newer revision: owed from where the earlier one started.
                Some((_, o)) => {
                    o.new = report.new.clone();
                    o.outcome = report.outcome.as_str().to_string();
                    o.tries = 0;
                    o.next_try_ms = 0;
                    o.told = false;
                }
                None => t.owed.push((
                    repo.to_string(),
                    OwedStep {
                        step: step.clone(),
                        old: report.old.clone(),
                        new: report.new.clone(),
                        outcome: report.outcome.as_str().to_string(),
                        tries: 0,
                        next_try_ms: 0,
                        told: false,
                    },
                )),
            }
        }
        Ok(t.insert(outgoing, at))
    }

    fn record_quiet_pulls(&self, pulls: &[QuietPull]) -> Result<(), StoreError> {
        let mut t = self.tables();
        for p in pulls {
            t.write_pull(&p.repo, &p.report, p.start_lag_ms, p.next_run_ms, p.at_ms);
        }
        Ok(())
    }

    fn learnt(&self, repo: &str) -> Result<Learnt, StoreError> {
        Ok(self.tables().learnt.get(repo).copied().unwrap_or_default())
    }

    fn record_skip(&self, repo: &str) -> Result<(), StoreError> {
        self.tables()
            .repos
            .entry(repo.to_string())
            .or_default()
            .skipped += 1;
        Ok(())
    }

    fn set_next_runs(&self, runs: &[(String, u64)]) -> Result<(), StoreError> {
        let mut t = self.tables();
        for (repo, at_ms) in runs {
            t.repos.entry(repo.clone()).or_default().next_run_ms = Some(*at_ms);
        }
        Ok(())
    }

    fn last_good(&self, repo: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .tables()
            .repos
            .get(repo)
            .and_then(|r| r.last_good_commit.clone()))
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn status(&self) -> Result<Vec<RepoStatus>, StoreError> {
        let t = self.tables();
        Ok(t.repos
            .iter()
            .map(|(name, r)| RepoStatus {
                repo: name.clone(),
                last_success_ms: r.last_success_ms,
                last_result: r.last_result.clone(),
                last_class: r.last_class.clone(),
                last_commit: r.last_good_commit.clone(),
                failures_in_row: r.failures_in_row,
                next_run_ms: r.next_run_ms,
                skipped: r.skipped,
                last_pull_ms: t
                    .pulls
                    .iter()
                    .filter(|p| p.repo == *name)
                    .map(|p| p.at_ms)
                    .max(),
                replica: None,
                replica_since_ms: None,
            })
            .collect())
    }
}

impl Steps for MemoryStore {
    fn owed_steps(&self, repo: &str) -> Result<Vec<OwedStep>, StoreError> {
        Ok(self
            .tables()
            .owed
            .iter()
            .filter(|(r, _)| r == repo)
            .map(|(_, o)| o.clone())
            .collect())
    }

    fn repos_owing_steps(&self) -> Result<Vec<String>, StoreError> {
        let t = self.tables();
        let mut repos: Vec<String> = t.owed.iter().map(|(r, _)| r.clone()).collect();
        repos.sort();
        repos.dedup();
        Ok(repos)
    }

    fn record_step_run(
        &self,
        repo: &str,
        owed: &OwedStep,
        run: &StepRun,
        settle: Settle,
        outgoing: Vec<Outgoing>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let at = now_ms();
        let mut t = self.tables();
        let id = next(&mut t.ids.step_run);
        let exit = run
            .exit_code
            .filter(|c| *c != 0)
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default();
        let new = owed
            .new
            .as_deref()
            .map(|n| format!(" {}", short(n)))
            .unwrap_or_default();
        let output = match run.output.as_str() {
            "" => String::new(),
            o => format!("\n{o}"),
        };
        t.step_runs.push(StepRunRow {
            id,
            repo: repo.to_string(),
            at_ms: at,
            entry: HistoryEntry {
                at_ms: at,
                kind: format!("step {}", owed.step),
                class: Some(run.status.clone()).filter(|s| s != "succeeded" && s != "skipped"),
                http_status: None,
                delay_ms: None,
                duration_ms: Some(run.duration_ms),
                detail: format!("{}{exit}{new}{output}", run.status)
                    .trim()
                    .to_string(),
                limit_ms: None,
                limit_why: None,
            },
        });
        let same = |r: &String, o: &OwedStep| r == repo && o.step == owed.step && o.new == owed.new;
        match settle {
            Settle::Done => t.owed.retain(|(r, o)| !same(r, o)),
            Settle::RetryAt(at_ms) => {
                for (r, o) in t.owed.iter_mut() {
                    if same(r, o) {
                        o.tries += 1;
                        o.next_try_ms = at_ms;
                        o.told = true;
                    }
                }
            }
            Settle::Keep => {}
        }
        Ok(t.insert(outgoing, at))
    }

    fn drop_owed_steps(&self, repo: &str, step: &str) -> Result<(), StoreError> {
        self.tables()
            .owed
            .retain(|(r, o)| !(r == repo && o.step == step));
        Ok(())
    }

    fn forget_owed_steps(&self, repo: &str) -> Result<(), StoreError> {
        self.tables().owed.retain(|(r, _)| r != repo);
        Ok(())
    }
}

impl History for MemoryStore {
    fn history(&self, repo: &str, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let t = self.tables();
        // As the SQLite store orders them: newest first; at one time, step
        // runs, then the pull, then its attempts, each newest first.
        let mut rows: Vec<(u64, u8, i64, &HistoryEntry)> = Vec::new();
        rows.extend(
            t.pulls
                .iter()
                .filter(|p| p.repo == repo)
                .map(|p| (p.at_ms, 1, p.id, &p.entry)),
        );
        rows.extend(
            t.attempts
                .iter()
                .filter(|a| a.repo == repo)
                .map(|a| (a.at_ms, 0, a.id, &a.entry)),
        );
        rows.extend(
            t.step_runs
                .iter()
                .filter(|s| s.repo == repo)
                .map(|s| (s.at_ms, 2, s.id, &s.entry)),
        );
        rows.sort_by_key(|r| std::cmp::Reverse((r.0, r.1, r.2)));
        Ok(rows
            .into_iter()
            .take(limit)
            .map(|(_, _, _, e)| e.clone())
            .collect())
    }

    fn start_lags(&self) -> Result<Vec<u64>, StoreError> {
        self.start_lags_since(0)
    }

    fn start_lags_since(&self, since_ms: u64) -> Result<Vec<u64>, StoreError> {
        let mut lags: Vec<u64> = self
            .tables()
            .pulls
            .iter()
            .filter(|p| p.at_ms >= since_ms)
            .filter_map(|p| p.start_lag_ms)
            .collect();
        lags.sort_unstable();
        Ok(lags)
    }

    fn prune_history(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut t = self.tables();
        let before = t.pulls.len() + t.attempts.len() + t.events.len() + t.step_runs.len();
        t.pulls.retain(|r| r.at_ms >= before_ms);
        t.attempts.retain(|r| r.at_ms >= before_ms);
        t.events.retain(|r| r.at_ms >= before_ms);
        t.step_runs.retain(|r| r.at_ms >= before_ms);
        let after = t.pulls.len() + t.attempts.len() + t.events.len() + t.step_runs.len();
        Ok(before - after)
    }

    fn recent_pulls(&self, repo: &str, limit: usize) -> Result<Vec<PullPoint>, StoreError> {
        let t = self.tables();
        let mine: Vec<&PullRow> = t.pulls.iter().filter(|p| p.repo == repo).collect();
        let from = mine.len().saturating_sub(limit);
        Ok(mine[from..].iter().map(|p| p.point.clone()).collect())
    }

    fn recent_events(&self, repo: &str, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        Ok(self
            .tables()
            .events
            .iter()
            .rev()
            .filter(|e| e.repo == repo)
            .take(limit)
            .map(|e| (e.at_ms, e.kind.clone()))
            .collect())
    }

    fn last_failure_message(&self, repo: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .tables()
            .attempts
            .iter()
            .rev()
            .find(|a| a.repo == repo)
            .map(|a| a.entry.detail.clone()))
    }

    fn events_after(&self, after: i64) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(self
            .tables()
            .events
            .iter()
            .filter(|e| e.id > after)
            .cloned()
            .collect())
    }
}

impl super::Outbox for MemoryStore {
    fn record_events(&self, outgoing: Vec<Outgoing>) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(self.tables().insert(outgoing, now_ms()))
    }

    fn due_messages(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        let t = self.tables();
        let mut due: Vec<&Message> = t
            .outbox
            .iter()
            .filter(|m| m.state == OutboxState::Pending && m.next_at_ms <= now_ms)
            .collect();
        due.sort_by_key(|m| (m.next_at_ms, m.id));
        Ok(due.into_iter().take(limit).map(|m| t.message(m)).collect())
    }

    fn digest_group(
        &self,
        notifier: &str,
        digest_key: &str,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let t = self.tables();
        Ok(t.outbox
            .iter()
            .filter(|m| {
                m.notifier == notifier
                    && m.digest_key.as_deref() == Some(digest_key)
                    && m.state == OutboxState::Pending
            })
            .map(|m| t.message(m))
            .collect())
    }

    fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .tables()
            .outbox
            .iter()
            .filter(|m| m.state == OutboxState::Pending)
            .map(|m| m.next_at_ms)
            .min())
    }

    fn accept_digest(
        &self,
        notifier: &str,
        members: &[i64],
        digest: NewDigest,
        also: Vec<Outgoing>,
    ) -> Result<OutboxMessage, StoreError> {
        let at = now_ms();
        let mut t = self.tables();
        t.insert(also, at);
        let id = next(&mut t.ids.message);
        let row = Message {
            id,
            notifier: notifier.to_string(),
            kind: "digest".into(),
            repo: String::new(),
            subject: digest.subject,
            body: digest.body,
            html: digest.html,
            event: digest.events,
            dedup_key: format!("digest:{}", members.first().copied().unwrap_or_default()),
            digest_key: None,
            state: OutboxState::Pending,
            attempts: 0,
            max_attempts: digest.max_attempts,
            created_ms: at,
            next_at_ms: at,
            delivered_ms: None,
            last_error: None,
            answer: None,
            digest_of: None,
        };
        t.outbox.push(row.clone());
        for m in t.outbox.iter_mut() {
            if members.contains(&m.id) && m.state == OutboxState::Pending {
                m.state = OutboxState::InDigest;
                m.digest_of = Some(id);
            }
        }
        Ok(t.message(&row))
    }

    fn mark_delivered(&self, receipts: &[Receipt]) -> Result<(), StoreError> {
        let at = now_ms();
        let mut t = self.tables();
        for r in receipts {
            for m in t.outbox.iter_mut() {
                let it = m.id == r.id && m.state == OutboxState::Pending;
                let member = m.digest_of == Some(r.id) && m.state == OutboxState::InDigest;
                if it || member {
                    m.state = OutboxState::Delivered;
                    m.delivered_ms = Some(at);
                    m.answer = Some(r.answer.clone());
                    m.last_error = None;
                }
            }
        }
        Ok(())
    }

    fn mark_failed(
        &self,
        ids: &[i64],
        error: &str,
        retry_at_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut t = self.tables();
        for m in t.outbox.iter_mut() {
            if ids.contains(&m.id) && m.state == OutboxState::Pending {
                m.attempts += 1;
                m.last_error = Some(error.to_string());
                match retry_at_ms {
                    Some(at) => m.next_at_ms = at,
                    None => m.state = OutboxState::Dead,
                }
            }
        }
        Ok(())
    }

    fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut t = self.tables();
        let found = t
            .outbox
            .iter_mut()
            .find(|m| m.id == id && matches!(m.state, OutboxState::Pending | OutboxState::Dead));
        Ok(match found {
            Some(m) => {
                m.state = OutboxState::Pending;
                m.attempts = 0;
                m.next_at_ms = now;
                m.digest_key = None;
                true
            }
            None => false,
        })
    }

    fn outbox(&self, states: &[OutboxState], limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(self
            .tables()
            .outbox
            .iter()
            .filter(|m| states.contains(&m.state))
            .take(limit)
            .map(|m| OutboxRow {
                id: m.id,
                notifier: m.notifier.clone(),
                kind: m.kind.clone(),
                repo: m.repo.clone(),
                subject: m.subject.clone(),
                state: m.state,
                attempts: m.attempts,
                created_ms: m.created_ms,
                next_at_ms: (m.state == OutboxState::Pending).then_some(m.next_at_ms),
                delivered_ms: m.delivered_ms,
                last_error: m.last_error.clone(),
                answer: m.answer.clone(),
                digest_of: m.digest_of,
            })
            .collect())
    }

    fn prune_delivered(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut t = self.tables();
        let before = t.outbox.len();
        t.outbox
            .retain(|m| !(m.state == OutboxState::Delivered && m.created_ms < before_ms));
        Ok(before - t.outbox.len())
    }

    fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let t = self.tables();
        let mut counts = OutboxCounts::default();
        for m in &t.outbox {
            match m.state {
                OutboxState::Pending => counts.pending += 1,
                OutboxState::Delivered => counts.delivered += 1,
                OutboxState::Dead => counts.dead += 1,
                OutboxState::InDigest => counts.in_digest += 1,
            }
        }
        counts.oldest_pending_ms = t
            .outbox
            .iter()
            .filter(|m| m.state == OutboxState::Pending)
            .map(|m| m.created_ms)
            .min();
        Ok(counts)
    }

    fn delivery_times(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        Ok(self
            .tables()
            .outbox
            .iter()
            .filter(|m| m.state == OutboxState::Delivered)
            .filter_map(|m| m.delivered_ms.map(|d| (m.created_ms, d)))
            .collect())
    }
}
