//! The state in one SQLite file (WAL): one connection, taken in turn
//! (SQLite writes one transaction at a time anyway, and every call is
//! short). Versioned migrations run when it opens; a newer schema is
//! refused.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::*;
use crate::outcome::{Outcome, PullReport};
use crate::policy::timeout::Learnt;

mod outbox;

/// The open state database. One connection, taken in turn: SQLite
/// writes one transaction at a time anyway, and every call is short.
pub struct SqliteStore {
    conn: Mutex<Connection>,
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

impl SqliteStore {
    /// The state database in `state_dir`.
    pub fn path_in(state_dir: &Path) -> std::path::PathBuf {
        state_dir.join("state.db")
    }

    /// Opens (creating if needed) `path` in WAL mode.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
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
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic elsewhere leaves no half-done transaction: SQLite rolls
        // back what was not committed.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State for SqliteStore {
    fn failures_in_row(&self, repo: &str) -> Result<u32, StoreError> {
        Ok(self
            .conn()
            .row(
                "SELECT failures_in_row FROM repos WHERE name = ?1",
                params![repo],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

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
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let at = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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

    fn record_quiet_pulls(&self, pulls: &[QuietPull]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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

    fn learnt(&self, repo: &str) -> Result<Learnt, StoreError> {
        let text: Option<String> = self
            .conn()
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

    fn record_skip(&self, repo: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO repos (name, skipped) VALUES (?1, 1) ON CONFLICT(name) DO UPDATE SET skipped = skipped + 1",
            params![repo],
        )?;
        Ok(())
    }

    fn set_next_runs(&self, runs: &[(String, u64)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (repo, at_ms) in runs {
            tx.execute(
                "INSERT INTO repos (name, next_run_ms) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET next_run_ms = ?2",
                params![repo, *at_ms as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn last_good(&self, repo: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT last_good_commit FROM repos WHERE name = ?1",
                params![repo],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.conn().execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
        Ok(())
    }

    fn status(&self) -> Result<Vec<RepoStatus>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
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
                replica: None,
                replica_since_ms: None,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Steps for SqliteStore {
    fn owed_steps(&self, repo: &str) -> Result<Vec<OwedStep>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
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

    fn repos_owing_steps(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT DISTINCT repo FROM steps_owed ORDER BY repo")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
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
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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

    fn drop_owed_steps(&self, repo: &str, step: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM steps_owed WHERE repo = ?1 AND step = ?2",
            params![repo, step],
        )?;
        Ok(())
    }

    fn forget_owed_steps(&self, repo: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM steps_owed WHERE repo = ?1", params![repo])?;
        Ok(())
    }
}

impl History for SqliteStore {
    fn history(&self, repo: &str, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
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

    fn start_lags(&self) -> Result<Vec<u64>, StoreError> {
        self.start_lags_since(0)
    }

    fn start_lags_since(&self, since_ms: u64) -> Result<Vec<u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT start_lag_ms FROM pulls WHERE start_lag_ms IS NOT NULL AND at_ms >= ?1 ORDER BY start_lag_ms",
        )?;
        let rows = stmt.query_map(params![since_ms as i64], |r| r.get::<_, i64>(0))?;
        Ok(rows
            .map(|r| r.map(|v| v.max(0) as u64))
            .collect::<Result<_, _>>()?)
    }

    fn prune_history(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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

    fn recent_pulls(&self, repo: &str, limit: usize) -> Result<Vec<PullPoint>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
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

    fn recent_events(&self, repo: &str, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT at_ms, kind FROM events WHERE repo = ?1 ORDER BY id DESC LIMIT ?2")?;
        let rows = stmt.query_map(params![repo, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn last_failure_message(&self, repo: &str) -> Result<Option<String>, StoreError> {
        let found = self.conn().query_row(
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

    fn events_after(&self, after: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
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
/// (the outbox's part is `outbox::SCHEMA`). `IF NOT EXISTS`, so stores
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

    #[test]
    fn the_schema_is_versioned_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open(&path).unwrap();
        let version: u32 = store
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        store
            .conn()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        let err = SqliteStore::open(&path).err().unwrap().to_string();
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
        let store = SqliteStore::open(&old).unwrap();
        assert_eq!(store.failures_in_row("app").unwrap(), 2);
    }

    #[test]
    fn a_new_state_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = SqliteStore::open(&state.join("state.db")).unwrap();
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
        drop(SqliteStore::open(&state.join("state.db")).unwrap());
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        set(&state, 0o777);
        set(&state.join("state.db"), 0o666);
        drop(SqliteStore::open(&state.join("state.db")).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o750);
        assert_eq!(mode(&state.join("state.db")), 0o600);
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open(&path).unwrap();
        let report = crate::store::contract::report(Outcome::Cloned, 5, &[]);
        crate::store::contract::record(&store, &report, None, None).unwrap();
        store.record_skip("app").unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.last_good("app").unwrap(), Some("b".repeat(40)));
        assert_eq!(store.status().unwrap()[0].skipped, 1);
    }
}
