//! The daemon's state: one SQLite file (WAL) holding, per repository, the
//! last good commit and the run of failures, every failed attempt, the
//! events the pulls produced, and the notification outbox (see [`outbox`]).
//!
//! A pull's result is recorded in one transaction — its attempts, the
//! repository's new state, its events and their messages together — so a
//! crash leaves the store either before or after that pull, never between,
//! and an accepted notification cannot be lost. The store does not
//! schedule, pull, render or send; it remembers.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::outcome::{Outcome, PullReport};
use crate::policy::timeout::Learnt;

pub mod outbox;
pub use outbox::{
    EventRow, NewDigest, NewMessage, OutboxMessage, OutboxRow, OutboxState, Outgoing, Receipt,
};

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
    /// The repository's failure streak changed between reading it and
    /// recording (another process recorded a pull of it): decide its
    /// events again.
    #[error("state database: the failure streak of {0} changed while recording")]
    StreakChanged(String),
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

/// The open state database.
pub struct Store {
    conn: Connection,
}

/// Takes from `path`'s mode what `allowed` does not grant (a state left
/// readable by others by an older version or by hand), and says so. A
/// path that is missing or is a symlink is left alone.
fn tighten(path: &Path, allowed: u32) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & !allowed == 0 {
        return;
    }
    let tight = mode & allowed;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(tight)) {
        Ok(()) => tracing::warn!(
            "{} was mode {mode:o}; tightened to {tight:o} (the state holds every repository's history)",
            path.display()
        ),
        Err(e) => tracing::warn!(
            "{} is mode {mode:o} and could not be tightened to {tight:o}: {e}",
            path.display()
        ),
    }
}

impl Store {
    /// The state database in `state_dir`.
    pub fn path_in(state_dir: &Path) -> std::path::PathBuf {
        state_dir.join("state.db")
    }

    /// Opens (creating if needed) `path` in WAL mode.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = crate::model::private_dir(dir);
            // One that existed keeps group read (a web server's group may
            // serve the checkouts in it) but loses what others could do
            // and what the group could write.
            tighten(dir, 0o750);
        }
        // Made owner-only before SQLite opens it (its -wal and -shm files
        // take the database's mode): the state holds every repo's history.
        {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path);
        }
        for file in [
            path.to_path_buf(),
            path.with_extension("db-wal"),
            path.with_extension("db-shm"),
        ] {
            tighten(&file, 0o600);
        }
        let conn = Connection::open(path).map_err(open_err)?;
        // Room for every statement a pull runs (see `Cached`).
        conn.set_prepared_statement_cache_capacity(64);
        // journal_mode answers with the mode it set, so it is a query.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate(&conn).map_err(open_err)?;
        Ok(Store { conn })
    }

    /// A state that lives as long as the value: what a one-shot pull
    /// without a state directory records into.
    pub fn in_memory() -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: ":memory:".to_string(),
            source,
        };
        let conn = Connection::open_in_memory().map_err(open_err)?;
        migrate(&conn).map_err(open_err)?;
        Ok(Store { conn })
    }

    /// How many pulls of `repo` in a row have failed (what decides a
    /// recovery). Read before rendering, outside any transaction.
    pub fn failures_in_row(&self, repo: &str) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .row(
                "SELECT failures_in_row FROM repos WHERE name = ?1",
                params![repo],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Records a finished pull: its attempts, the repository's state, and
    /// its events with their rendered messages, atomically. `outgoing` was
    /// decided given `previous_failures` (from [`Store::failures_in_row`]);
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
    pub fn record_pull(
        &mut self,
        repo: &str,
        report: &PullReport,
        start_lag_ms: Option<u64>,
        next_run_ms: Option<u64>,
        previous_failures: u32,
        outgoing: Vec<Outgoing>,
        steps_owed: &[String],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let at = now_ms();
        let tx = self.conn.transaction()?;
        let streak: u32 = tx
            .row(
                "SELECT failures_in_row FROM repos WHERE name = ?1",
                params![repo],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        if streak != previous_failures {
            return Err(StoreError::StreakChanged(repo.to_string()));
        }
        write_pull(&tx, repo, report, start_lag_ms, next_run_ms, at)?;
        for step in steps_owed {
            tx.run(
                "INSERT INTO steps_owed (repo, step, old, new, outcome) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(repo, step) DO UPDATE SET new = excluded.new, outcome = excluded.outcome,
                    tries = 0, next_try_ms = 0, told = 0",
                params![repo, step, report.old, report.new, outcome_name(report.outcome)],
            )?;
        }
        let stored = outbox::insert(&tx, outgoing, at)?;
        tx.commit()?;
        Ok(stored)
    }

    /// Records quiet pulls (see [`QuietPulls`]) in one transaction.
    pub fn record_quiet_pulls(&mut self, pulls: &[QuietPull]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for p in pulls {
            write_pull(
                &tx,
                &p.repo,
                &p.report,
                p.start_lag_ms,
                p.next_run_ms,
                p.at_ms,
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// What `repo`'s successful attempts took (its learnt limits).
    pub fn learnt(&self, repo: &str) -> Result<Learnt, StoreError> {
        let text: Option<String> = self
            .conn
            .row(
                "SELECT learnt FROM timings WHERE repo = ?1",
                params![repo],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    /// The steps `repo` owes, oldest first.
    pub fn owed_steps(&self, repo: &str) -> Result<Vec<OwedStep>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT step, old, new, outcome, tries, next_try_ms, told FROM steps_owed
             WHERE repo = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![repo], |r| {
            Ok(OwedStep {
                step: r.get(0)?,
                old: r.get(1)?,
                new: r.get(2)?,
                outcome: r.get(3)?,
                tries: r.get(4)?,
                next_try_ms: r.get::<_, i64>(5)? as u64,
                told: r.get::<_, i64>(6)? != 0,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The repositories that owe steps (the daemon runs them at start).
    pub fn repos_owing_steps(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT repo FROM steps_owed ORDER BY repo")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records one try of an owed step and settles what is owed, with its
    /// events, atomically. When a newer revision became owed while it ran
    /// (`owed.new` no longer matches), the newer one stays owed as it is.
    pub fn record_step_run(
        &mut self,
        repo: &str,
        owed: &OwedStep,
        run: &StepRun,
        settle: Settle,
        outgoing: Vec<Outgoing>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let at = now_ms();
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO step_runs (repo, step, at_ms, old, new, status, exit_code, duration_ms, output)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                repo,
                owed.step,
                at as i64,
                owed.old,
                owed.new,
                run.status,
                run.exit_code,
                run.duration_ms as i64,
                run.output
            ],
        )?;
        let same = "repo = ?1 AND step = ?2 AND new IS ?3";
        match settle {
            Settle::Done => {
                tx.execute(
                    &format!("DELETE FROM steps_owed WHERE {same}"),
                    params![repo, owed.step, owed.new],
                )?;
            }
            Settle::RetryAt(at_ms) => {
                tx.execute(
                    &format!(
                        "UPDATE steps_owed SET tries = tries + 1, next_try_ms = ?4, told = 1 WHERE {same}"
                    ),
                    params![repo, owed.step, owed.new, at_ms as i64],
                )?;
            }
            Settle::Keep => {}
        }
        let stored = outbox::insert(&tx, outgoing, at)?;
        tx.commit()?;
        Ok(stored)
    }

    /// Forgets what `repo` owes for steps no longer configured.
    pub fn drop_owed_steps(&mut self, repo: &str, step: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM steps_owed WHERE repo = ?1 AND step = ?2",
            params![repo, step],
        )?;
        Ok(())
    }

    /// Forgets every step `repo` owes (it has none configured any more).
    pub fn forget_owed_steps(&mut self, repo: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM steps_owed WHERE repo = ?1", params![repo])?;
        Ok(())
    }

    /// Records events that no pull result carries (a retry, a plugin fault,
    /// a rejected config) with their messages, atomically.
    pub fn record_events(
        &mut self,
        outgoing: Vec<Outgoing>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let tx = self.conn.transaction()?;
        let stored = outbox::insert(&tx, outgoing, now_ms())?;
        tx.commit()?;
        Ok(stored)
    }

    /// Notes a scheduled run skipped because the previous one still ran.
    pub fn record_skip(&mut self, repo: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO repos (name, skipped) VALUES (?1, 1) ON CONFLICT(name) DO UPDATE SET skipped = skipped + 1",
            params![repo],
        )?;
        Ok(())
    }

    /// Records planned next runs, in one transaction.
    pub fn set_next_runs(&mut self, runs: &[(String, u64)]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for (repo, at_ms) in runs {
            tx.execute(
                "INSERT INTO repos (name, next_run_ms) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET next_run_ms = ?2",
                params![repo, *at_ms as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The last good commit of `repo`.
    pub fn last_good(&self, repo: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT last_good_commit FROM repos WHERE name = ?1",
                params![repo],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Whether a write would succeed now (a write lock taken and given
    /// back): the disk is not read-only, the file not locked for good.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
        Ok(())
    }

    /// Every repository the store knows, by name.
    pub fn status(&self) -> Result<Vec<RepoStatus>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, last_success_ms, last_result, last_class, last_good_commit, failures_in_row, next_run_ms, skipped,
                    (SELECT MAX(at_ms) FROM pulls WHERE pulls.repo = repos.name)
             FROM repos ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RepoStatus {
                repo: r.get(0)?,
                last_success_ms: r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                last_result: r.get(2)?,
                last_class: r.get(3)?,
                last_commit: r.get(4)?,
                failures_in_row: r.get(5)?,
                next_run_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                skipped: r.get::<_, i64>(7)? as u64,
                last_pull_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest `limit` pulls and failed attempts of `repo`, newest first.
    pub fn history(&self, repo: &str, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT at_ms, kind, class, http_status, delay_ms, duration_ms, detail, limit_ms, limit_why FROM (
                SELECT id, at_ms, outcome AS kind, class, NULL AS http_status, NULL AS delay_ms, duration_ms,
                       COALESCE(reason, '') || CASE WHEN new IS NOT NULL THEN ' ' || substr(new, 1, 10) ELSE '' END AS detail,
                       1 AS ord, limit_ms, limit_why
                FROM pulls WHERE repo = ?1
                UNION ALL
                SELECT id, at_ms, 'attempt ' || n, class, http_status, delay_ms, duration_ms, message, 0,
                       limit_ms, limit_why
                FROM attempts WHERE repo = ?1
                UNION ALL
                SELECT id, at_ms, 'step ' || step,
                       CASE WHEN status IN ('succeeded', 'skipped') THEN NULL ELSE status END,
                       NULL, NULL, duration_ms,
                       status || CASE WHEN exit_code IS NOT NULL AND exit_code != 0 THEN ' (exit ' || exit_code || ')' ELSE '' END
                         || CASE WHEN new IS NOT NULL THEN ' ' || substr(new, 1, 10) ELSE '' END
                         || CASE WHEN output != '' THEN char(10) || output ELSE '' END,
                       2, NULL, NULL
                FROM step_runs WHERE repo = ?1
             ) ORDER BY at_ms DESC, ord DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![repo, limit as i64], |r| {
            Ok(HistoryEntry {
                at_ms: r.get::<_, i64>(0)? as u64,
                kind: r.get(1)?,
                class: r.get(2)?,
                http_status: r.get(3)?,
                delay_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                duration_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                detail: r.get::<_, String>(6)?.trim().to_string(),
                limit_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                limit_why: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How late every scheduled pull started, in milliseconds, ascending.
    pub fn start_lags(&self) -> Result<Vec<u64>, StoreError> {
        self.start_lags_since(0)
    }

    /// Like [`Store::start_lags`], for pulls recorded at or after `since_ms`.
    pub fn start_lags_since(&self, since_ms: u64) -> Result<Vec<u64>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT start_lag_ms FROM pulls WHERE start_lag_ms IS NOT NULL AND at_ms >= ?1 ORDER BY start_lag_ms",
        )?;
        let rows = stmt.query_map(params![since_ms as i64], |r| r.get::<_, i64>(0))?;
        Ok(rows
            .map(|r| r.map(|v| v.max(0) as u64))
            .collect::<Result<_, _>>()?)
    }

    /// Forgets pulls, attempts and events recorded before `before_ms` (the
    /// retention of `[daemon] retention`); the outbox keeps its own rules.
    /// Returns how many rows went.
    pub fn prune_history(&mut self, before_ms: u64) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut gone = 0;
        for table in ["pulls", "attempts", "events", "step_runs"] {
            gone += tx.execute(
                &format!("DELETE FROM {table} WHERE at_ms < ?1"),
                params![before_ms as i64],
            )?;
        }
        tx.commit()?;
        Ok(gone)
    }

    /// The last `limit` pulls of `repo`, oldest first: when, the outcome
    /// and how long (for the status page's chart).
    pub fn recent_pulls(&self, repo: &str, limit: usize) -> Result<Vec<PullPoint>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT at_ms, outcome, duration_ms FROM
               (SELECT id, at_ms, outcome, duration_ms FROM pulls WHERE repo = ?1 ORDER BY id DESC LIMIT ?2)
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![repo, limit as i64], |r| {
            Ok(PullPoint {
                at_ms: r.get::<_, i64>(0)? as u64,
                outcome: r.get(1)?,
                duration_ms: r.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last `limit` events of `repo`, newest first: when and what kind.
    pub fn recent_events(
        &self,
        repo: &str,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT at_ms, kind FROM events WHERE repo = ?1 ORDER BY id DESC LIMIT ?2")?;
        let rows = stmt.query_map(params![repo, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The message of `repo`'s most recent failed attempt.
    pub fn last_failure_message(&self, repo: &str) -> Result<Option<String>, StoreError> {
        let found = self.conn.query_row(
            "SELECT message FROM attempts WHERE repo = ?1 ORDER BY id DESC LIMIT 1",
            params![repo],
            |r| r.get(0),
        );
        match found {
            Ok(message) => Ok(Some(message)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Events with an id above `after`, oldest first.
    pub fn events_after(&self, after: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, repo, at_ms, kind, payload FROM events WHERE id > ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![after], |r| {
            Ok(StoredEvent {
                id: r.get(0)?,
                repo: r.get(1)?,
                at_ms: r.get::<_, i64>(2)? as u64,
                kind: r.get(3)?,
                payload: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The schema as first released: repositories, attempts, pulls, events
/// (the outbox's part is [`outbox::SCHEMA`]). `IF NOT EXISTS`, so stores
/// made before the schema was versioned adopt it as version 1.
const SCHEMA_V1: &str = "CREATE TABLE IF NOT EXISTS repos (
                name TEXT PRIMARY KEY,
                last_good_commit TEXT,
                last_success_ms INTEGER,
                last_result TEXT,
                last_class TEXT,
                failures_in_row INTEGER NOT NULL DEFAULT 0,
                next_run_ms INTEGER,
                skipped INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS attempts (
                id INTEGER PRIMARY KEY,
                repo TEXT NOT NULL,
                at_ms INTEGER NOT NULL,
                n INTEGER NOT NULL,
                class TEXT NOT NULL,
                http_status INTEGER,
                delay_ms INTEGER,
                duration_ms INTEGER,
                message TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS attempts_by_repo ON attempts (repo, at_ms);
            CREATE TABLE IF NOT EXISTS pulls (
                id INTEGER PRIMARY KEY,
                repo TEXT NOT NULL,
                at_ms INTEGER NOT NULL,
                outcome TEXT NOT NULL,
                class TEXT,
                old TEXT,
                new TEXT,
                commits INTEGER NOT NULL,
                duration_ms INTEGER NOT NULL,
                reason TEXT,
                start_lag_ms INTEGER
            );
            CREATE INDEX IF NOT EXISTS pulls_by_repo ON pulls (repo, at_ms);
            CREATE TABLE IF NOT EXISTS events (
                id INTEGER PRIMARY KEY,
                repo TEXT NOT NULL,
                at_ms INTEGER NOT NULL,
                kind TEXT NOT NULL,
                payload TEXT NOT NULL
            );";

/// Writes one finished pull: its attempts, the pull, what it learnt, the
/// repository's state and its next run.
fn write_pull(
    tx: &rusqlite::Transaction<'_>,
    repo: &str,
    report: &PullReport,
    start_lag_ms: Option<u64>,
    next_run_ms: Option<u64>,
    at: u64,
) -> Result<(), StoreError> {
    for a in &report.attempts {
        tx.run(
            "INSERT INTO attempts (repo, at_ms, n, class, http_status, delay_ms, duration_ms, message, limit_ms, limit_why)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                repo,
                at as i64,
                a.n,
                a.class.as_str(),
                a.http_status,
                a.delay_ms.map(|d| d as i64),
                a.duration_ms as i64,
                a.message,
                a.limit.map(|l| l.total.as_millis() as i64),
                a.limit.map(|l| l.why.as_str())
            ],
        )?;
    }
    let outcome = outcome_name(report.outcome);
    let last_class = report.attempts.last().map(|a| a.class.as_str().to_string());
    tx.run(
        "INSERT INTO pulls (repo, at_ms, outcome, class, old, new, commits, duration_ms, reason, start_lag_ms, limit_ms, limit_why)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            repo,
            at as i64,
            outcome,
            if report.outcome.is_success() { None } else { last_class.clone() },
            report.old,
            report.new,
            report.commits as i64,
            report.duration_ms as i64,
            report.reason.as_ref().map(ToString::to_string),
            start_lag_ms.map(|l| l as i64),
            report.limit.map(|l| l.total.as_millis() as i64),
            report.limit.map(|l| l.why.as_str())
        ],
    )?;
    // The limits the pull learnt, kept with its result.
    if let Some(learnt) = &report.learnt {
        tx.run(
            "INSERT INTO timings (repo, learnt) VALUES (?1, ?2)
             ON CONFLICT(repo) DO UPDATE SET learnt = ?2",
            params![repo, serde_json::to_string(&learnt).unwrap_or_default()],
        )?;
    }
    if report.outcome.is_success() {
        tx.run(
            "INSERT INTO repos (name, last_good_commit, last_success_ms, last_result, last_class, failures_in_row)
             VALUES (?1, ?2, ?3, ?4, NULL, 0)
             ON CONFLICT(name) DO UPDATE SET last_good_commit = ?2, last_success_ms = ?3, last_result = ?4, last_class = NULL, failures_in_row = 0",
            params![repo, report.new, at as i64, outcome],
        )?;
    } else {
        tx.run(
            "INSERT INTO repos (name, last_result, last_class, failures_in_row) VALUES (?1, 'failed', ?2, 1)
             ON CONFLICT(name) DO UPDATE SET last_result = 'failed', last_class = ?2, failures_in_row = failures_in_row + 1",
            params![repo, last_class],
        )?;
    }
    if let Some(next) = next_run_ms {
        tx.run(
            "UPDATE repos SET next_run_ms = ?2 WHERE name = ?1",
            params![repo, next as i64],
        )?;
    }
    Ok(())
}

/// A pull that changed nothing, told nobody and owes nothing: most of a
/// daemon's pulls. Such pulls are written in batches ([`QuietPulls`]).
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

/// Quiet pulls waiting to be written together: one transaction a second
/// instead of one a pull. Whoever records anything else about a repository
/// flushes first, so the state is written in the order it happened. A
/// process killed outright loses the quiet pulls of its last second; they
/// told nothing and changed nothing.
#[derive(Debug, Default)]
pub struct QuietPulls {
    waiting: Mutex<Vec<QuietPull>>,
}

impl QuietPulls {
    /// Flushes on its own when this many wait.
    const MOST: usize = 512;

    /// Queues `pull`; writes the batch if it is full.
    pub fn push(&self, pull: QuietPull, store: &Mutex<Store>) -> Result<(), StoreError> {
        let full = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.push(pull);
            waiting.len() >= Self::MOST
        };
        match full {
            true => self.flush(store),
            false => Ok(()),
        }
    }

    /// Writes what waits. On failure the pulls are kept for the next try.
    pub fn flush(&self, store: &Mutex<Store>) -> Result<(), StoreError> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.is_empty() {
            return Ok(());
        }
        store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_quiet_pulls(&waiting)?;
        waiting.clear();
        Ok(())
    }
}

/// `execute` and `query_row` through the connection's statement cache.
/// The daemon runs the same few statements for every pull, thousands of
/// times a minute; compiling them each time cost more than running them.
trait Cached {
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Every version of the schema after the first, in order: version N+2 is
/// `MIGRATIONS[N]`. `PRAGMA user_version` records the version a store has;
/// each step runs in its own transaction. Never edit a released step: add
/// one.
const MIGRATIONS: &[&str] = &[
    // 2: digests are messages of their own; their members point at them.
    "CREATE INDEX IF NOT EXISTS outbox_digest_of ON outbox (digest_of);",
    // 3: history is pruned by age.
    "CREATE INDEX IF NOT EXISTS events_by_time ON events (at_ms);
     CREATE INDEX IF NOT EXISTS pulls_by_time ON pulls (at_ms);
     CREATE INDEX IF NOT EXISTS attempts_by_time ON attempts (at_ms);",
    // 4: steps owed (one row per repository and step: a newer revision
    // replaces an older one not yet run, keeping where it started) and
    // steps run.
    "CREATE TABLE IF NOT EXISTS steps_owed (
        repo TEXT NOT NULL,
        step TEXT NOT NULL,
        old TEXT,
        new TEXT,
        outcome TEXT NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,
        next_try_ms INTEGER NOT NULL DEFAULT 0,
        told INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (repo, step)
     );
     CREATE TABLE IF NOT EXISTS step_runs (
        id INTEGER PRIMARY KEY,
        repo TEXT NOT NULL,
        step TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        old TEXT,
        new TEXT,
        status TEXT NOT NULL,
        exit_code INTEGER,
        duration_ms INTEGER NOT NULL,
        output TEXT NOT NULL
     );
     CREATE INDEX IF NOT EXISTS step_runs_by_repo ON step_runs (repo, at_ms);
     CREATE INDEX IF NOT EXISTS step_runs_by_time ON step_runs (at_ms);",
    // 5: attempt limits learnt per repository, and the limit each attempt
    // and pull ran under.
    "CREATE TABLE IF NOT EXISTS timings (repo TEXT PRIMARY KEY, learnt TEXT NOT NULL);
     ALTER TABLE attempts ADD COLUMN limit_ms INTEGER;
     ALTER TABLE attempts ADD COLUMN limit_why TEXT;
     ALTER TABLE pulls ADD COLUMN limit_ms INTEGER;
     ALTER TABLE pulls ADD COLUMN limit_why TEXT;",
];

/// The schema version this gitpulse writes.
pub const SCHEMA_VERSION: u32 = 1 + MIGRATIONS.len() as u32;

/// Brings `conn` to [`SCHEMA_VERSION`]; refuses a store from a newer
/// gitpulse rather than guess at it.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "written by a newer gitpulse (schema version {version}; this one knows up to {SCHEMA_VERSION})"
            )),
        ));
    }
    let steps = std::iter::once(format!("{SCHEMA_V1}{}", outbox::SCHEMA))
        .chain(MIGRATIONS.iter().map(|m| m.to_string()));
    for (n, step) in steps.enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(&step)?;
        tx.pragma_update(None, "user_version", n as u32 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Cloned => "cloned",
        Outcome::Updated => "updated",
        Outcome::Unchanged => "unchanged",
        Outcome::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::FailureClass;
    use crate::outcome::AttemptRecord;

    fn report(outcome: Outcome, commits: u64, failures: &[FailureClass]) -> PullReport {
        PullReport {
            url: "https://h/app.git".into(),
            dir: "/srv/app".into(),
            outcome,
            old: Some("a".repeat(40)),
            new: outcome.is_success().then(|| "b".repeat(40)),
            commits,
            attempts: failures
                .iter()
                .enumerate()
                .map(|(i, c)| AttemptRecord {
                    n: i as u32 + 1,
                    class: *c,
                    http_status: Some(503),
                    message: "HTTP 503".into(),
                    delay_ms: Some(100),
                    duration_ms: 7,
                    limit: None,
                })
                .collect(),
            duration_ms: 12,
            reason: (!outcome.is_success()).then_some(crate::policy::StopReason::AttemptsExhausted),
            notices: vec![],
            plugin_faults: Vec::new(),
            limit: None,
            learnt: None,
        }
    }

    /// Records `report` with the events it implies and no notifiers.
    fn record(
        store: &mut Store,
        report: &PullReport,
        lag: Option<u64>,
        next: Option<u64>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let repo = crate::events::RepoRef::new("app", &report.url, None, Default::default());
        let previous = store.failures_in_row("app")?;
        let outgoing = crate::events::for_pull(&repo, report, previous, None, 1)
            .into_iter()
            .map(|event| Outgoing {
                event: event.row(),
                messages: Vec::new(),
            })
            .collect();
        store.record_pull("app", report, lag, next, previous, outgoing, &[])
    }

    #[test]
    fn quiet_pulls_are_written_together_when_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Mutex::new(Store::open(&dir.path().join("state.db")).unwrap());
        let quiet = QuietPulls::default();
        for at_ms in [1_000, 2_000] {
            let pull = QuietPull {
                repo: "app".into(),
                report: report(Outcome::Unchanged, 0, &[]),
                start_lag_ms: Some(3),
                next_run_ms: Some(60_000 + at_ms),
                at_ms,
            };
            quiet.push(pull, &store).unwrap();
        }
        let read = |f: &dyn Fn(&Store) -> usize| f(&store.lock().unwrap());
        assert_eq!(read(&|s| s.history("app", 10).unwrap().len()), 0, "waiting");
        quiet.flush(&store).unwrap();
        assert_eq!(read(&|s| s.history("app", 10).unwrap().len()), 2);
        let status = store.lock().unwrap().status().unwrap();
        assert_eq!(status[0].last_result.as_deref(), Some("unchanged"));
        assert_eq!(status[0].next_run_ms, Some(62_000), "the later one last");
        quiet.flush(&store).unwrap();
        assert_eq!(
            read(&|s| s.history("app", 10).unwrap().len()),
            2,
            "written once"
        );
    }

    #[test]
    fn a_streak_that_changed_since_it_was_read_is_not_recorded_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let failed = report(Outcome::Failed, 0, &[FailureClass::ServerError]);
        let seen = store.failures_in_row("app").unwrap();
        record(&mut store, &failed, None, None).unwrap();
        let err = store
            .record_pull("app", &failed, None, None, seen, Vec::new(), &[])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::StreakChanged(ref r) if r == "app"),
            "{err}"
        );
        assert_eq!(
            store.status().unwrap()[0].failures_in_row,
            1,
            "nothing written"
        );
        assert_eq!(
            store.history("app", 10).unwrap().len(),
            2,
            "one pull, one attempt"
        );
    }

    #[test]
    fn pulls_update_state_and_emit_events_in_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let events = record(&mut store, &report(Outcome::Updated, 2, &[]), Some(5), None).unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["changed"]
        );
        let events = record(
            &mut store,
            &report(Outcome::Failed, 0, &[FailureClass::ServerError; 2]),
            Some(1),
            Some(1_000),
        )
        .unwrap();
        assert_eq!(events[0].kind, "failed");
        record(
            &mut store,
            &report(Outcome::Failed, 0, &[FailureClass::Timeout]),
            None,
            None,
        )
        .unwrap();
        let status = store.status().unwrap();
        assert_eq!(status[0].failures_in_row, 2);
        assert_eq!(status[0].next_run_ms, Some(1_000));
        assert_eq!(status[0].last_class.as_deref(), Some("timeout"));
        assert_eq!(
            status[0].last_commit.as_deref(),
            Some("b".repeat(40).as_str())
        );
        let events = record(
            &mut store,
            &report(Outcome::Unchanged, 0, &[]),
            Some(3),
            None,
        )
        .unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["recovered"]
        );
        assert_eq!(store.status().unwrap()[0].failures_in_row, 0);
        let history = store.history("app", 100).unwrap();
        assert_eq!(
            history.len(),
            4 + 3,
            "4 pulls and 3 failed attempts: {history:?}"
        );
        assert_eq!(history[0].kind, "unchanged");
        assert_eq!(store.events_after(0).unwrap().len(), 4);
        assert_eq!(
            store.start_lags().unwrap(),
            [1, 3, 5],
            "manual pulls have no lag"
        );
    }

    #[test]
    fn old_history_is_pruned_and_state_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        record(
            &mut store,
            &report(Outcome::Failed, 0, &[FailureClass::Timeout]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(store.prune_history(1).unwrap(), 0, "nothing that old");
        assert_eq!(
            store.prune_history(now_ms() + 1).unwrap(),
            3,
            "pull, attempt, event"
        );
        assert!(store.history("app", 10).unwrap().is_empty());
        assert_eq!(
            store.status().unwrap()[0].failures_in_row,
            1,
            "state is not history"
        );
    }

    #[test]
    fn the_schema_is_versioned_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        let version: u32 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer gitpulse"), "{err}");

        // A store made before versioning (tables, user_version 0) adopts it.
        let old = dir.path().join("old.db");
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch(outbox::SCHEMA).unwrap();
        conn.execute(
            "INSERT INTO repos (name, failures_in_row) VALUES ('app', 2)",
            [],
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&old).unwrap();
        assert_eq!(store.failures_in_row("app").unwrap(), 2);
    }

    #[test]
    fn a_new_state_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state.join("state.db")).unwrap();
        drop(store);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("state.db")), 0o600);
    }

    #[test]
    fn a_loose_existing_state_is_tightened_when_opened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        drop(Store::open(&state.join("state.db")).unwrap());
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        set(&state, 0o777);
        set(&state.join("state.db"), 0o666);
        drop(Store::open(&state.join("state.db")).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o750);
        assert_eq!(mode(&state.join("state.db")), 0o600);
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut store = Store::open(&path).unwrap();
        record(&mut store, &report(Outcome::Cloned, 5, &[]), None, None).unwrap();
        store.record_skip("app").unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.last_good("app").unwrap(), Some("b".repeat(40)));
        assert_eq!(store.status().unwrap()[0].skipped, 1);
    }
}
