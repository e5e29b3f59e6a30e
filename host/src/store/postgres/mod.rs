//! The state in PostgreSQL: what several daemons share (`[store] backend =
//! "postgres"`). A small pool of connections, each statement on one of
//! them; a write that must be atomic is one transaction. Versioned
//! migrations run when it connects, one replica at a time (an advisory
//! lock); a newer schema is refused.
//!
//! The SQL mirrors the SQLite store's statement for statement, so the two
//! keep the same promises (the contract suite checks both). This module
//! owns the connection and the schema; the fleet (leases, claims) does not
//! live here.

use std::time::Duration;

use ::postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::*;
use crate::outcome::PullReport;
use crate::policy::timeout::Learnt;
use crate::redact::Secret;

mod fleet;
mod known;
mod outbox;
mod session;
mod tls;

use session::{Cached as _, Manager, Tx};

type Pool = r2d2::Pool<Manager>;
type Client = r2d2::PooledConnection<Manager>;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct Connect {
    /// A `postgres://` URL or `key=value` connection string; it may hold
    /// the password, so it is a secret and never shown.
    pub url: Secret,
    /// Connections kept open at most.
    pub pool_size: u32,
    /// How long to wait for a connection (to open one, or for one of the
    /// pool's to come free).
    pub connect_timeout: Duration,
    /// A CA (PEM) trusted for the server's certificate besides the usual
    /// roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The state in one PostgreSQL database, through a pool of connections.
pub struct PostgresStore {
    /// Always there until the store is dropped (see its `Drop`).
    pool: Option<Pool>,
    /// How to connect (the wake-up listener has a connection of its own).
    server: Server,
    /// This daemon as a replica, when it is one (`as_replica`).
    fleet: Option<fleet::FleetState>,
    /// Failure streaks and learnt limits as last read or written.
    known: known::Known,
    /// `user@host:port/db`, for messages (never the password).
    target: String,
}

/// `user@host:port/dbname` of `config`: what messages may show of a
/// connection string.
fn target_of(config: &::postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            ::postgres::config::Host::Tcp(name) => name.clone(),
            ::postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = config
        .get_ports()
        .first()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config
        .get_dbname()
        .map(|d| format!("/{d}"))
        .unwrap_or_default();
    format!("postgres://{user}{}{port}{db}", hosts.join(","))
}

/// A server to connect to: its settings, what messages may show of them,
/// and the TLS connector.
#[derive(Clone)]
pub(super) struct Server {
    config: ::postgres::Config,
    target: String,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.target)
    }
}

impl Server {
    /// A new connection, or why not in the server's (or TLS's) words.
    pub(super) fn connect(&self) -> Result<::postgres::Client, StoreError> {
        self.config.connect(self.tls.clone()).map_err(|e| {
            let message = said(&e);
            let hint = tls::hint(&message);
            StoreError::Setup {
                target: self.target.clone(),
                message: format!("{message}{hint}"),
            }
        })
    }

    /// Makes the connections look for tables in `schema` first (a
    /// replicating replica's own, see [`PER_REPLICA`]).
    fn keep_own_tables_in(&mut self, schema: &str) {
        let options = self.config.get_options().unwrap_or_default().to_string();
        self.config
            .options(&format!("{options} -c search_path={schema},public"));
    }

    /// A new connection, with the client's own error (the pool's way).
    pub(super) fn open(&self) -> Result<::postgres::Client, ::postgres::Error> {
        self.config.connect(self.tls.clone())
    }
}

/// The server `how` names.
fn server(how: &Connect) -> Result<Server, StoreError> {
    let (config, target) = parse(how)?;
    let tls = tls::connector(how.ca_file.as_deref()).map_err(|message| StoreError::Setup {
        target: target.clone(),
        message,
    })?;
    Ok(Server {
        config,
        target,
        tls,
    })
}

/// The connection settings `how` names, and what messages may show of them.
fn parse(how: &Connect) -> Result<(::postgres::Config, String), StoreError> {
    let mut config: ::postgres::Config =
        how.url
            .expose()
            .parse()
            .map_err(|e: ::postgres::Error| StoreError::Setup {
                target: "postgres".into(),
                // The parser's message names the part it refused, never
                // the whole string.
                message: format!("the connection URL does not parse: {e}"),
            })?;
    // A daemon paused (SIGSTOP, a VM frozen) in the middle of a
    // transaction would hold its row locks, and every other replica's
    // statements on those rows would wait for it: the server ends such a
    // session after 10 s, and no statement waits more than 5 s for a lock
    // (it fails, and is tried again at the next heartbeat or pull).
    config
        .application_name("gitpulse")
        .connect_timeout(how.connect_timeout)
        .options("-c idle_in_transaction_session_timeout=10s -c lock_timeout=5s");
    let target = target_of(&config);
    Ok((config, target))
}

/// Connects once and reads the schema version, changing nothing (what
/// `gitpulse validate` asks): where the database is and its version, or
/// why it cannot be used.
pub fn probe(how: &Connect) -> Result<(String, u32), StoreError> {
    let server = server(how)?;
    let target = server.target.clone();
    let setup = |message: String| StoreError::Setup {
        target: target.clone(),
        message,
    };
    let mut client = server.connect()?;
    let exists: bool = client
        .query_one("SELECT to_regclass('gitpulse_schema') IS NOT NULL", &[])?
        .get(0);
    let version = match exists {
        false => 0,
        true => client
            .query_opt("SELECT version FROM gitpulse_schema", &[])?
            .map(|r| uncount(r.get(0)))
            .unwrap_or(0),
    };
    if version > PG_SCHEMA_VERSION {
        return Err(setup(format!(
            "written by a newer gitpulse (schema version {version}; this one knows up to {PG_SCHEMA_VERSION})"
        )));
    }
    Ok((target, version))
}

impl PostgresStore {
    /// Connects, checks the schema and brings it to [`PG_SCHEMA_VERSION`].
    pub fn connect(how: &Connect) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_for(how, None)
    }

    /// Like [`PostgresStore::connect`], reading and writing the state of
    /// `replica` where replicas keep their own (`[fleet] mode =
    /// "replicate"`: a schema of its own for its repositories' state, see
    /// [`PER_REPLICA`]).
    pub fn connect_for(
        how: &Connect,
        replica: Option<&Replica>,
    ) -> Result<PostgresStore, StoreError> {
        let mut server = server(how)?;
        let target = server.target.clone();
        // The first connection is made here, not by the pool, so that its
        // failure reaches the caller in the server's words; it migrates.
        let mut first = server.connect()?;
        migrate(&mut first).map_err(|e| match e {
            Migration::Newer(version) => StoreError::Setup {
                target: target.clone(),
                message: format!(
                    "written by a newer gitpulse (schema version {version}; this one knows up to {PG_SCHEMA_VERSION})"
                ),
            },
            Migration::Sql(e) => StoreError::Postgres(e),
        })?;
        if let Some(replica) = replica.filter(|r| r.mode == FleetMode::Replicate) {
            let schema = own_tables(&mut first, &replica.name)?;
            server.keep_own_tables_in(&schema);
        }
        drop(first);
        let manager = Manager {
            server: server.clone(),
        };
        let pool = r2d2::Pool::builder()
            .max_size(how.pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(how.connect_timeout)
            // A connection the server closed is found by the statement
            // that meets it (and the write waits for the server, see
            // `StoreError::is_unavailable`), not by a query before each use.
            .test_on_check_out(false)
            // r2d2 logs through `log`, which nothing here reads; a failed
            // connection reaches the caller as an error instead.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager)
            .map_err(|source| StoreError::Connect {
                target: target.clone(),
                source,
            })?;
        Ok(PostgresStore {
            pool: Some(pool),
            server,
            fleet: None,
            known: known::Known::default(),
            target,
        })
    }

    /// The store as `replica` of its fleet: it says which replica recorded
    /// each pull and, in shard mode, fences writes by lease (see
    /// [`Fleet`](super::Fleet)).
    pub fn as_replica(mut self, replica: Replica) -> PostgresStore {
        self.fleet = Some(fleet::FleetState::new(replica));
        self
    }

    /// Refuses a write of `repo` in `tx` when its lease moved away.
    fn fence(&self, tx: &mut Tx<'_>, repo: &str) -> Result<(), StoreError> {
        match &self.fleet {
            Some(f) => f.fence(tx, repo),
            None => Ok(()),
        }
    }

    /// Whether a change is told once for the fleet (replicas that all pull
    /// the same repositories).
    fn told_once_for_fleet(&self) -> bool {
        self.fleet
            .as_ref()
            .is_some_and(|f| f.replica.mode == FleetMode::Replicate)
    }

    /// The replica that records, for `pulls.replica`.
    fn replica_name(&self) -> Option<&str> {
        self.fleet.as_ref().map(|f| f.replica.name.as_str())
    }

    /// Where it is, for messages: `postgres://user@host:port/db`.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn client(&self) -> Result<Client, StoreError> {
        let pool = self.pool.as_ref().ok_or_else(|| StoreError::Setup {
            target: self.target.clone(),
            message: "closed".into(),
        })?;
        pool.get().map_err(|source| StoreError::Connect {
            target: self.target.clone(),
            source,
        })
    }

    /// Runs `f` in one transaction and commits what it did.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        let value = f(&mut tx)?;
        tx.commit()?;
        Ok(value)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // A connection closes by blocking on a runtime of its own, which
        // panics on a thread that drives async tasks (where a daemon's
        // last reference may go): the pool is closed on a thread of its own.
        if let Some(f) = &self.fleet {
            f.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

/// What a PostgreSQL error says with its causes: the client's own message
/// is only their kind ("db error", "error connecting to server").
pub(crate) fn said(e: &::postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Milliseconds as PostgreSQL keeps them (BIGINT).
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A BIGINT of milliseconds back (never negative in what gitpulse writes).
fn unms(v: i64) -> u64 {
    v.max(0) as u64
}

fn opt_ms(v: Option<i64>) -> Option<u64> {
    v.map(unms)
}

/// Counts (attempts, tries, failures) as INTEGER.
fn count(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn uncount(v: i32) -> u32 {
    v.max(0) as u32
}

impl State for PostgresStore {
    fn failures_in_row(&self, repo: &str) -> Result<u32, StoreError> {
        if let Some(failures) = self.known.failures(repo) {
            return Ok(failures);
        }
        let row = self.client()?.query_opt(
            "SELECT failures_in_row FROM repos WHERE name = $1",
            &[&repo],
        )?;
        let failures = row.map(|r| uncount(r.get(0))).unwrap_or(0);
        self.known.set_failures(repo, failures);
        Ok(failures)
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
        let written = self.write(|tx| {
            // The row stays locked until commit: no other replica records
            // a pull of this repository in between.
            let streak = tx
                .query_opt(
                    "SELECT failures_in_row FROM repos WHERE name = $1 FOR UPDATE",
                    &[&repo],
                )?
                .map(|r| uncount(r.get(0)))
                .unwrap_or(0);
            if streak != previous_failures {
                return Err(StoreError::StreakChanged(repo.to_string()));
            }
            self.fence(tx, repo)?;
            write_pull(tx, self.replica_name(), repo, report, start_lag_ms, next_run_ms, at)?;
            for step in steps_owed {
                tx.execute(
                    "INSERT INTO steps_owed (repo, step, old, new, outcome) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (repo, step) DO UPDATE SET new = excluded.new, outcome = excluded.outcome,
                        tries = 0, next_try_ms = 0, told = FALSE",
                    &[&repo, step, &report.old, &report.new, &report.outcome.as_str()],
                )?;
            }
            outbox::insert(tx, outgoing, at, self.told_once_for_fleet())
        });
        match &written {
            Ok(_) => {
                let failures = match report.outcome.is_success() {
                    true => 0,
                    false => previous_failures + 1,
                };
                self.known.set_failures(repo, failures);
                if let Some(learnt) = report.learnt {
                    self.known.set_learnt(repo, learnt);
                }
            }
            // Another writer moved the streak: read it again.
            Err(_) => self.known.forget(repo),
        }
        written
    }

    fn record_quiet_pulls(&self, pulls: &[QuietPull]) -> Result<(), StoreError> {
        let written = self.write(|tx| {
            for p in pulls {
                // One pull whose lease moved is left out, not the batch.
                if let Err(StoreError::Fenced(repo)) = self.fence(tx, &p.repo) {
                    tracing::warn!(repo, "a quiet pull is dropped: its lease moved");
                    continue;
                }
                write_pull(
                    tx,
                    self.replica_name(),
                    &p.repo,
                    &p.report,
                    p.start_lag_ms,
                    p.next_run_ms,
                    p.at_ms,
                )?;
            }
            Ok(())
        });
        for p in pulls {
            match (&written, p.report.outcome.is_success()) {
                (Ok(()), true) => {
                    self.known.set_failures(&p.repo, 0);
                    if let Some(learnt) = p.report.learnt {
                        self.known.set_learnt(&p.repo, learnt);
                    }
                }
                _ => self.known.forget(&p.repo),
            }
        }
        written
    }

    fn learnt(&self, repo: &str) -> Result<Learnt, StoreError> {
        if let Some(learnt) = self.known.learnt(repo) {
            return Ok(learnt);
        }
        let row = self
            .client()?
            .query_opt("SELECT learnt FROM timings WHERE repo = $1", &[&repo])?;
        let learnt: Learnt = row
            .and_then(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
            .unwrap_or_default();
        self.known.set_learnt(repo, learnt);
        Ok(learnt)
    }

    fn record_skip(&self, repo: &str) -> Result<(), StoreError> {
        self.client()?.execute(
            "INSERT INTO repos (name, skipped) VALUES ($1, 1)
             ON CONFLICT (name) DO UPDATE SET skipped = repos.skipped + 1",
            &[&repo],
        )?;
        Ok(())
    }

    fn set_next_runs(&self, runs: &[(String, u64)]) -> Result<(), StoreError> {
        self.write(|tx| {
            for (repo, at_ms) in runs {
                tx.execute(
                    "INSERT INTO repos (name, next_run_ms) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET next_run_ms = excluded.next_run_ms",
                    &[repo, &ms(*at_ms)],
                )?;
            }
            Ok(())
        })
    }

    fn last_good(&self, repo: &str) -> Result<Option<String>, StoreError> {
        let row = self.client()?.query_opt(
            "SELECT last_good_commit FROM repos WHERE name = $1",
            &[&repo],
        )?;
        Ok(row.and_then(|r| r.get(0)))
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        // Refused on a read-only server (a standby, or one out of disk
        // that an operator set read-only).
        self.client()?
            .batch_execute("BEGIN READ WRITE; ROLLBACK;")?;
        Ok(())
    }

    fn fleet(&self) -> Option<&dyn super::Fleet> {
        self.fleet.as_ref().map(|_| self as &dyn super::Fleet)
    }

    fn status(&self) -> Result<Vec<RepoStatus>, StoreError> {
        let rows = self.client()?.query(
            "SELECT name, last_success_ms, last_result, last_class, last_good_commit, failures_in_row,
                    next_run_ms, skipped,
                    (SELECT MAX(at_ms) FROM pulls WHERE pulls.repo = repos.name),
                    l.owner, l.since_ms
             FROM repos LEFT JOIN leases l ON l.repo = repos.name AND l.expires_ms >= $1
             ORDER BY name",
            &[&ms(now_ms())],
        )?;
        Ok(rows
            .iter()
            .map(|r| RepoStatus {
                repo: r.get(0),
                last_success_ms: opt_ms(r.get(1)),
                last_result: r.get(2),
                last_class: r.get(3),
                last_commit: r.get(4),
                failures_in_row: uncount(r.get(5)),
                next_run_ms: opt_ms(r.get(6)),
                skipped: unms(r.get(7)),
                last_pull_ms: opt_ms(r.get(8)),
                replica: r.get(9),
                replica_since_ms: opt_ms(r.get(10)),
            })
            .collect())
    }
}

impl Steps for PostgresStore {
    fn owed_steps(&self, repo: &str) -> Result<Vec<OwedStep>, StoreError> {
        let rows = self.client()?.query(
            "SELECT step, old, new, outcome, tries, next_try_ms, told FROM steps_owed
             WHERE repo = $1 ORDER BY seq",
            &[&repo],
        )?;
        Ok(rows
            .iter()
            .map(|r| OwedStep {
                step: r.get(0),
                old: r.get(1),
                new: r.get(2),
                outcome: r.get(3),
                tries: uncount(r.get(4)),
                next_try_ms: unms(r.get(5)),
                told: r.get(6),
            })
            .collect())
    }

    fn repos_owing_steps(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client()?
            .query("SELECT DISTINCT repo FROM steps_owed ORDER BY repo", &[])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
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
        self.write(|tx| {
            self.fence(tx, repo)?;
            tx.execute(
                "INSERT INTO step_runs (repo, step, at_ms, old, new, status, exit_code, duration_ms, output)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &repo,
                    &owed.step,
                    &ms(at),
                    &owed.old,
                    &owed.new,
                    &run.status,
                    &run.exit_code,
                    &ms(run.duration_ms),
                    &run.output,
                ],
            )?;
            let same = "repo = $1 AND step = $2 AND new IS NOT DISTINCT FROM $3";
            match settle {
                Settle::Done => {
                    tx.execute(
                        &format!("DELETE FROM steps_owed WHERE {same}"),
                        &[&repo, &owed.step, &owed.new],
                    )?;
                }
                Settle::RetryAt(at_ms) => {
                    tx.execute(
                        &format!(
                            "UPDATE steps_owed SET tries = tries + 1, next_try_ms = $4, told = TRUE WHERE {same}"
                        ),
                        &[&repo, &owed.step, &owed.new, &ms(at_ms)],
                    )?;
                }
                Settle::Keep => {}
            }
            outbox::insert(tx, outgoing, at, self.told_once_for_fleet())
        })
    }

    fn drop_owed_steps(&self, repo: &str, step: &str) -> Result<(), StoreError> {
        self.client()?.execute(
            "DELETE FROM steps_owed WHERE repo = $1 AND step = $2",
            &[&repo, &step],
        )?;
        Ok(())
    }

    fn forget_owed_steps(&self, repo: &str) -> Result<(), StoreError> {
        self.client()?
            .execute("DELETE FROM steps_owed WHERE repo = $1", &[&repo])?;
        Ok(())
    }
}

impl History for PostgresStore {
    fn history(&self, repo: &str, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = self.client()?.query(
            "SELECT at_ms, kind, class, http_status, delay_ms, duration_ms, detail, limit_ms, limit_why FROM (
                SELECT id, at_ms, outcome AS kind, class, NULL::INTEGER AS http_status, NULL::BIGINT AS delay_ms,
                       duration_ms,
                       COALESCE(reason, '') || CASE WHEN new IS NOT NULL THEN ' ' || substr(new, 1, 10) ELSE '' END AS detail,
                       1 AS ord, limit_ms, limit_why
                FROM pulls WHERE repo = $1
                UNION ALL
                SELECT id, at_ms, 'attempt ' || n::TEXT, class, http_status, delay_ms, duration_ms, message, 0,
                       limit_ms, limit_why
                FROM attempts WHERE repo = $1
                UNION ALL
                SELECT id, at_ms, 'step ' || step,
                       CASE WHEN status IN ('succeeded', 'skipped') THEN NULL ELSE status END,
                       NULL, NULL, duration_ms,
                       status || CASE WHEN exit_code IS NOT NULL AND exit_code != 0 THEN ' (exit ' || exit_code::TEXT || ')' ELSE '' END
                         || CASE WHEN new IS NOT NULL THEN ' ' || substr(new, 1, 10) ELSE '' END
                         || CASE WHEN output != '' THEN chr(10) || output ELSE '' END,
                       2, NULL, NULL
                FROM step_runs WHERE repo = $1
             ) AS h ORDER BY at_ms DESC, ord DESC, id DESC LIMIT $2",
            &[&repo, &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| HistoryEntry {
                at_ms: unms(r.get(0)),
                kind: r.get(1),
                class: r.get(2),
                http_status: r
                    .get::<_, Option<i32>>(3)
                    .and_then(|s| u16::try_from(s).ok()),
                delay_ms: opt_ms(r.get(4)),
                duration_ms: opt_ms(r.get(5)),
                detail: r.get::<_, String>(6).trim().to_string(),
                limit_ms: opt_ms(r.get(7)),
                limit_why: r.get(8),
            })
            .collect())
    }

    fn start_lags(&self) -> Result<Vec<u64>, StoreError> {
        self.start_lags_since(0)
    }

    fn start_lags_since(&self, since_ms: u64) -> Result<Vec<u64>, StoreError> {
        let rows = self.client()?.query(
            "SELECT start_lag_ms FROM pulls WHERE start_lag_ms IS NOT NULL AND at_ms >= $1 ORDER BY start_lag_ms",
            &[&ms(since_ms)],
        )?;
        Ok(rows.iter().map(|r| unms(r.get(0))).collect())
    }

    fn prune_history(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.write(|tx| {
            let mut gone = 0;
            for table in ["pulls", "attempts", "events", "step_runs"] {
                gone += tx.execute(
                    &format!("DELETE FROM {table} WHERE at_ms < $1"),
                    &[&ms(before_ms)],
                )?;
            }
            Ok(gone as usize)
        })
    }

    fn recent_pulls(&self, repo: &str, limit: usize) -> Result<Vec<PullPoint>, StoreError> {
        let rows = self.client()?.query(
            "SELECT at_ms, outcome, duration_ms FROM
               (SELECT id, at_ms, outcome, duration_ms FROM pulls WHERE repo = $1 ORDER BY id DESC LIMIT $2) AS p
             ORDER BY id",
            &[&repo, &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| PullPoint {
                at_ms: unms(r.get(0)),
                outcome: r.get(1),
                duration_ms: unms(r.get(2)),
            })
            .collect())
    }

    fn recent_events(&self, repo: &str, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let rows = self.client()?.query(
            "SELECT at_ms, kind FROM events WHERE repo = $1 ORDER BY id DESC LIMIT $2",
            &[&repo, &(limit as i64)],
        )?;
        Ok(rows.iter().map(|r| (unms(r.get(0)), r.get(1))).collect())
    }

    fn last_failure_message(&self, repo: &str) -> Result<Option<String>, StoreError> {
        let row = self.client()?.query_opt(
            "SELECT message FROM attempts WHERE repo = $1 ORDER BY id DESC LIMIT 1",
            &[&repo],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    fn events_after(&self, after: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = self.client()?.query(
            "SELECT id, repo, at_ms, kind, payload FROM events WHERE id > $1 ORDER BY id",
            &[&after],
        )?;
        Ok(rows.iter().map(stored_event).collect())
    }
}

fn stored_event(r: &Row) -> StoredEvent {
    StoredEvent {
        id: r.get(0),
        repo: r.get(1),
        at_ms: unms(r.get(2)),
        kind: r.get(3),
        payload: r.get(4),
    }
}

/// Writes one finished pull: its attempts, the pull, what it learnt, the
/// repository's state and its next run.
fn write_pull(
    tx: &mut Tx<'_>,
    replica: Option<&str>,
    repo: &str,
    report: &PullReport,
    start_lag_ms: Option<u64>,
    next_run_ms: Option<u64>,
    at: u64,
) -> Result<(), StoreError> {
    for a in &report.attempts {
        tx.execute(
            "INSERT INTO attempts (repo, at_ms, n, class, http_status, delay_ms, duration_ms, message, limit_ms, limit_why)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &repo,
                &ms(at),
                &count(a.n),
                &a.class.as_str(),
                &a.http_status.map(i32::from),
                &a.delay_ms.map(ms),
                &ms(a.duration_ms),
                &a.message,
                &a.limit.map(|l| ms(l.total.as_millis() as u64)),
                &a.limit.map(|l| l.why.as_str()),
            ],
        )?;
    }
    let outcome = report.outcome.as_str();
    let last_class = report.attempts.last().map(|a| a.class.as_str());
    tx.execute(
        "INSERT INTO pulls (repo, at_ms, outcome, class, old, new, commits, duration_ms, reason, start_lag_ms, limit_ms, limit_why, replica)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &repo,
            &ms(at),
            &outcome,
            &if report.outcome.is_success() { None } else { last_class },
            &report.old,
            &report.new,
            &ms(report.commits),
            &ms(report.duration_ms),
            &report.reason.as_ref().map(ToString::to_string),
            &start_lag_ms.map(ms),
            &report.limit.map(|l| ms(l.total.as_millis() as u64)),
            &report.limit.map(|l| l.why.as_str()),
            &replica,
        ],
    )?;
    if let Some(learnt) = &report.learnt {
        tx.execute(
            "INSERT INTO timings (repo, learnt) VALUES ($1, $2)
             ON CONFLICT (repo) DO UPDATE SET learnt = excluded.learnt",
            &[&repo, &serde_json::to_string(&learnt).unwrap_or_default()],
        )?;
    }
    if report.outcome.is_success() {
        tx.execute(
            "INSERT INTO repos (name, last_good_commit, last_success_ms, last_result, last_class, failures_in_row)
             VALUES ($1, $2, $3, $4, NULL, 0)
             ON CONFLICT (name) DO UPDATE SET last_good_commit = excluded.last_good_commit,
                last_success_ms = excluded.last_success_ms, last_result = excluded.last_result,
                last_class = NULL, failures_in_row = 0",
            &[&repo, &report.new, &ms(at), &outcome],
        )?;
    } else {
        tx.execute(
            "INSERT INTO repos (name, last_result, last_class, failures_in_row) VALUES ($1, 'failed', $2, 1)
             ON CONFLICT (name) DO UPDATE SET last_result = 'failed', last_class = excluded.last_class,
                failures_in_row = repos.failures_in_row + 1",
            &[&repo, &last_class],
        )?;
    }
    if let Some(next) = next_run_ms {
        tx.execute(
            "UPDATE repos SET next_run_ms = $2 WHERE name = $1",
            &[&repo, &ms(next)],
        )?;
    }
    Ok(())
}

/// What each replica of a replicating fleet keeps for itself: the state of
/// its own checkouts. Events, the outbox, leases and replicas stay shared
/// (a change is told once for the fleet). Its copies live in a schema of
/// the replica's own, found first by its connections' `search_path`, so
/// every statement reads the same whatever the mode. A migration that
/// changes one of these tables must change the replicas' copies too.
pub const PER_REPLICA: [&str; 6] = [
    "repos",
    "attempts",
    "pulls",
    "timings",
    "steps_owed",
    "step_runs",
];

/// The schema of `replica`'s own tables (made if missing, from the shared
/// tables' shape): a name PostgreSQL takes whatever the replica's.
fn own_tables(client: &mut ::postgres::Client, replica: &str) -> Result<String, StoreError> {
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(replica.as_bytes()));
    let schema = format!("gitpulse_replica_{}", &digest[..16]);
    let mut sql = format!("CREATE SCHEMA IF NOT EXISTS {schema};");
    for table in PER_REPLICA {
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.{table} (LIKE public.{table} INCLUDING ALL);"
        ));
    }
    client.batch_execute(&sql)?;
    Ok(schema)
}

/// Every version of the schema, in order: version N+1 is `MIGRATIONS[N]`.
/// `gitpulse_schema` records the version a database has; all steps run in
/// one transaction. Never edit a released step: add one.
const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's version 5, in PostgreSQL's types.
    "CREATE TABLE repos (
        name TEXT PRIMARY KEY,
        last_good_commit TEXT,
        last_success_ms BIGINT,
        last_result TEXT,
        last_class TEXT,
        failures_in_row INTEGER NOT NULL DEFAULT 0,
        next_run_ms BIGINT,
        skipped BIGINT NOT NULL DEFAULT 0
     );
     CREATE TABLE attempts (
        id BIGSERIAL PRIMARY KEY,
        repo TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        n INTEGER NOT NULL,
        class TEXT NOT NULL,
        http_status INTEGER,
        delay_ms BIGINT,
        duration_ms BIGINT,
        message TEXT NOT NULL,
        limit_ms BIGINT,
        limit_why TEXT
     );
     CREATE INDEX attempts_by_repo ON attempts (repo, at_ms);
     CREATE INDEX attempts_by_time ON attempts (at_ms);
     CREATE TABLE pulls (
        id BIGSERIAL PRIMARY KEY,
        repo TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        class TEXT,
        old TEXT,
        new TEXT,
        commits BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL,
        reason TEXT,
        start_lag_ms BIGINT,
        limit_ms BIGINT,
        limit_why TEXT
     );
     CREATE INDEX pulls_by_repo ON pulls (repo, at_ms);
     CREATE INDEX pulls_by_time ON pulls (at_ms);
     CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        repo TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL
     );
     CREATE INDEX events_by_repo ON events (repo, id);
     CREATE INDEX events_by_time ON events (at_ms);
     CREATE TABLE steps_owed (
        seq BIGSERIAL,
        repo TEXT NOT NULL,
        step TEXT NOT NULL,
        old TEXT,
        new TEXT,
        outcome TEXT NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,
        next_try_ms BIGINT NOT NULL DEFAULT 0,
        told BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (repo, step)
     );
     CREATE TABLE step_runs (
        id BIGSERIAL PRIMARY KEY,
        repo TEXT NOT NULL,
        step TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        old TEXT,
        new TEXT,
        status TEXT NOT NULL,
        exit_code INTEGER,
        duration_ms BIGINT NOT NULL,
        output TEXT NOT NULL
     );
     CREATE INDEX step_runs_by_repo ON step_runs (repo, at_ms);
     CREATE INDEX step_runs_by_time ON step_runs (at_ms);
     CREATE TABLE timings (repo TEXT PRIMARY KEY, learnt TEXT NOT NULL);
     CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY,
        event_id BIGINT NOT NULL,
        notifier TEXT NOT NULL,
        kind TEXT NOT NULL,
        repo TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        html TEXT,
        event TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        digest_key TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        created_ms BIGINT NOT NULL,
        next_at_ms BIGINT NOT NULL,
        delivered_ms BIGINT,
        last_error TEXT,
        answer TEXT,
        digest_of BIGINT
     );
     CREATE INDEX outbox_due ON outbox (state, next_at_ms);
     CREATE INDEX outbox_dedup ON outbox (notifier, dedup_key, created_ms);
     CREATE INDEX outbox_digest ON outbox (notifier, digest_key, state);
     CREATE INDEX outbox_digest_of ON outbox (digest_of);",
    // 2: several daemons on one state: replicas and their heartbeats,
    // repository leases (an epoch per taking), which replica pulled.
    "CREATE TABLE replicas (
        name TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        mode TEXT NOT NULL,
        started_ms BIGINT NOT NULL,
        heartbeat_ms BIGINT NOT NULL
     );
     CREATE TABLE leases (
        repo TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        since_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL
     );
     CREATE INDEX leases_by_owner ON leases (owner);
     ALTER TABLE pulls ADD COLUMN replica TEXT;
     ALTER TABLE outbox ADD COLUMN claimed_until_ms BIGINT;",
    // 3: one replica does the housekeeping, by a lease of its own.
    "CREATE TABLE leader (
        role TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_ms BIGINT NOT NULL
     );",
    // 4: replicas that all pull the same repositories tell a change once
    // (one message per notifier and fleet key) and run a step once for the
    // fleet when it asks (one row per repository, step and revision).
    "ALTER TABLE outbox ADD COLUMN fleet_key TEXT;
     CREATE UNIQUE INDEX outbox_fleet_key ON outbox (notifier, fleet_key) WHERE fleet_key IS NOT NULL;
     CREATE TABLE fleet_once (
        repo TEXT NOT NULL,
        step TEXT NOT NULL,
        new TEXT NOT NULL,
        replica TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (repo, step, new)
     );",
];

/// The schema version this gitpulse writes in PostgreSQL.
pub const PG_SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

enum Migration {
    /// The database's schema is newer than this gitpulse knows.
    Newer(u32),
    Sql(::postgres::Error),
}

impl From<::postgres::Error> for Migration {
    fn from(e: ::postgres::Error) -> Self {
        Migration::Sql(e)
    }
}

/// Brings the database to [`PG_SCHEMA_VERSION`]; refuses one from a newer
/// gitpulse rather than guess at it. Replicas starting together take
/// turns (a transaction-scoped advisory lock), so each step runs once.
fn migrate(client: &mut ::postgres::Client) -> Result<(), Migration> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(7164212790)", &[])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS gitpulse_schema (version INTEGER NOT NULL)")?;
    let version = tx
        .query_opt("SELECT version FROM gitpulse_schema", &[])?
        .map(|r| uncount(r.get(0)));
    let current = version.unwrap_or(0);
    if current > PG_SCHEMA_VERSION {
        return Err(Migration::Newer(current));
    }
    for step in &MIGRATIONS[current as usize..] {
        tx.batch_execute(step)?;
    }
    let now = count(PG_SCHEMA_VERSION);
    match version {
        None => tx.execute("INSERT INTO gitpulse_schema (version) VALUES ($1)", &[&now])?,
        Some(_) => tx.execute("UPDATE gitpulse_schema SET version = $1", &[&now])?,
    };
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;
    use gitpulse_testkit::{PostgresServer, POSTGRES_PASSWORD};

    fn connect(url: String) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(&Connect {
            url: Secret::new(url),
            pool_size: 2,
            connect_timeout: Duration::from_secs(5),
            ca_file: None,
        })
    }

    #[test]
    fn tls_is_used_when_asked_and_the_certificate_is_verified() {
        let server = PostgresServer::start_with_tls();
        let url = server.database("secure");
        let ca = server.ca_file().map(std::path::Path::to_path_buf);
        let with = |url: String, ca_file: Option<std::path::PathBuf>| {
            PostgresStore::connect(&Connect {
                url: Secret::new(url),
                pool_size: 1,
                connect_timeout: Duration::from_secs(5),
                ca_file,
            })
        };
        let encrypted = |store: &PostgresStore| -> bool {
            store
                .client()
                .unwrap()
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .unwrap()
                .get(0)
        };

        // Required, with the CA that signed the server's certificate.
        let required = format!("{url}?sslmode=require");
        let store = with(required.clone(), ca.clone()).unwrap();
        assert!(encrypted(&store));
        // Required, with nobody vouching for the certificate: refused, and
        // the message says what to do.
        let err = with(required, None).err().unwrap().to_string();
        assert!(
            err.contains("certificate") && err.contains("ca_file"),
            "{err}"
        );
        assert!(!err.contains(POSTGRES_PASSWORD), "{err}");
        // Turned off: plain TCP.
        let plain = with(format!("{url}?sslmode=disable"), None).unwrap();
        assert!(!encrypted(&plain));
        // A ca_file that holds no certificate is said so.
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let err = with(url, Some(empty)).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn daemons_sharing_the_outbox_never_take_the_same_message() {
        use crate::store::contract::{failed, message};
        let server = PostgresServer::start();
        let url = server.database("shared");
        let (one, two) = (connect(url.clone()).unwrap(), connect(url).unwrap());
        for i in 0..10 {
            let mut m = message(0);
            m.dedup_window_ms = 0;
            one.record_events(vec![Outgoing {
                event: failed(&format!("repo-{i}")).row(),
                messages: vec![m],
            }])
            .unwrap();
        }
        let first = one.due_messages(now_ms(), 6).unwrap();
        let second = two.due_messages(now_ms(), 6).unwrap();
        assert_eq!((first.len(), second.len()), (6, 4));
        let mut ids: Vec<i64> = first.iter().chain(&second).map(|m| m.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10, "each message taken once");
        assert!(two.due_messages(now_ms(), 10).unwrap().is_empty());

        // A failed delivery gives its claim back with its retry time; a
        // claim left by a daemon that died is taken over when it expires.
        two.mark_failed(&[second[0].id], "HTTP 503", Some(now_ms()))
            .unwrap();
        let again = one.due_messages(now_ms() + 1, 10).unwrap();
        assert_eq!(
            again.iter().map(|m| m.id).collect::<Vec<_>>(),
            [second[0].id]
        );
        let later = now_ms() + outbox::CLAIM.as_millis() as u64 + 1_000;
        assert_eq!(two.due_messages(later, 20).unwrap().len(), 10);
    }

    #[test]
    fn the_schema_is_versioned_a_newer_one_refused_and_no_message_shows_the_password() {
        let server = PostgresServer::start();
        let url = server.database("versioned");
        let how = |url: &str| Connect {
            url: Secret::new(url),
            pool_size: 2,
            connect_timeout: Duration::from_secs(5),
            ca_file: None,
        };

        // Probing an empty database changes nothing.
        assert_eq!(probe(&how(&url)).unwrap().1, 0);
        assert_eq!(
            server.sql("versioned", "SELECT to_regclass('gitpulse_schema') IS NULL"),
            "t"
        );

        let store = connect(url.clone()).unwrap();
        assert_eq!(
            store.target(),
            format!("postgres://gitpulse@127.0.0.1:{}/versioned", server.port())
        );
        let report = crate::store::contract::report(Outcome::Cloned, 5, &[]);
        crate::store::contract::record(&store, &report, None, None).unwrap();
        drop(store);
        assert_eq!(
            server.sql("versioned", "SELECT version FROM gitpulse_schema"),
            PG_SCHEMA_VERSION.to_string()
        );

        // Connecting again keeps what was recorded (no step runs twice).
        let store = connect(url.clone()).unwrap();
        assert_eq!(store.last_good("app").unwrap(), Some("b".repeat(40)));
        drop(store);

        server.sql(
            "versioned",
            &format!(
                "UPDATE gitpulse_schema SET version = {}",
                PG_SCHEMA_VERSION + 1
            ),
        );
        for err in [
            connect(url.clone()).err().unwrap().to_string(),
            probe(&how(&url)).err().unwrap().to_string(),
        ] {
            assert!(err.contains("newer gitpulse"), "{err}");
        }

        // A wrong password, a database that is not there, a server that is
        // not listening: each says where, none shows the password.
        let wrong = url.replace(POSTGRES_PASSWORD, "not-the-password");
        let missing = server.url("nowhere");
        let closed = url.replace(
            &server.port().to_string(),
            &gitpulse_testkit::free_port().to_string(),
        );
        for (url, says) in [
            (wrong.as_str(), "password authentication failed"),
            (missing.as_str(), "nowhere"),
            (closed.as_str(), "postgres://gitpulse@127.0.0.1"),
        ] {
            let err = connect(url.to_string()).err().unwrap().to_string();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains(POSTGRES_PASSWORD), "{err}");
            assert!(!err.contains("not-the-password"), "{err}");
        }
    }
}
