//! Several daemons on one PostgreSQL state: replicas with heartbeats,
//! repository leases with epochs that fence a replica's late writes, and
//! wake-ups through `LISTEN/NOTIFY`. No leader and no consensus of our
//! own: a lease is a row, taken by one statement; PostgreSQL decides who
//! wins.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::postgres::fallible_iterator::FallibleIterator;

use super::session::Cached as _;
use super::Tx;

use super::{ms, said, unms, PostgresStore};
use crate::store::{now_ms, Claim, Fleet, FleetMode, FleetView, Replica, StoreError};

/// The channel wake-ups travel on; the payload is a repository's name.
const WAKE: &str = "gitpulse_wake";

/// This process as a replica.
pub(super) struct FleetState {
    pub(super) replica: Replica,
    /// Random per process: tells this daemon from an earlier one (or a
    /// duplicate) with the same name.
    instance: String,
    /// The epoch of every lease this replica took, by repository: a write
    /// of a repository is fenced unless its lease still has this epoch.
    held: Mutex<HashMap<String, i64>>,
    /// Repositories another live replica held at the last heartbeat.
    others: Mutex<std::collections::HashSet<String>>,
    fenced: AtomicU64,
    taken: AtomicU64,
    /// Whether the last heartbeat held the housekeeping lease.
    leads: AtomicBool,
    /// Stops the wake-up listener when the store goes.
    pub(super) stop: Arc<AtomicBool>,
}

impl FleetState {
    pub(super) fn new(replica: Replica) -> FleetState {
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        FleetState {
            replica,
            instance: hex::encode(bytes),
            held: Mutex::default(),
            others: Mutex::default(),
            fenced: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            leads: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn others(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.others.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl_ms(&self) -> u64 {
        self.replica.lease_ttl.as_millis() as u64
    }

    /// Refuses a write of `repo` inside `tx` unless this replica still
    /// holds its lease with the epoch it took (shard mode; a solo daemon
    /// has nothing to fence). The lease row stays locked until commit.
    pub(super) fn fence(&self, tx: &mut Tx<'_>, repo: &str) -> Result<(), StoreError> {
        if self.replica.mode != FleetMode::Shard || repo.is_empty() {
            return Ok(());
        }
        let epoch = self.held().get(repo).copied();
        let still = match epoch {
            None => false,
            Some(epoch) => tx
                .query_opt(
                    "SELECT 1 FROM leases WHERE repo = $1 AND owner = $2 AND epoch = $3 FOR SHARE",
                    &[&repo, &self.replica.name, &epoch],
                )?
                .is_some(),
        };
        if still {
            Ok(())
        } else {
            self.fenced.fetch_add(1, Ordering::Relaxed);
            Err(StoreError::Fenced(repo.to_string()))
        }
    }
}

impl Fleet for PostgresStore {
    fn replica(&self) -> &Replica {
        // A store without a fleet is never handed out as one (`fleet()`).
        match &self.fleet {
            Some(f) => &f.replica,
            None => &SOLO,
        }
    }

    fn join(&self) -> Result<(), StoreError> {
        let Some(f) = &self.fleet else { return Ok(()) };
        let now = now_ms();
        let me = &f.replica.name;
        self.write(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock(7164212791)", &[])?;
            let live = tx.query(
                "SELECT name, mode, heartbeat_ms FROM replicas WHERE heartbeat_ms >= $1 AND name <> $2",
                &[&ms(now.saturating_sub(f.ttl_ms())), me],
            )?;
            for row in &live {
                let (name, mode): (String, String) = (row.get(0), row.get(1));
                let ago = now.saturating_sub(unms(row.get(2))) / 1000;
                // Replicas share only in the same way.
                let clash = f.replica.mode == FleetMode::Solo || mode != f.replica.mode.as_str();
                if clash {
                    return Err(StoreError::Setup {
                        target: self.target.clone(),
                        message: format!(
                            "another daemon ({name}, {mode}, heartbeat {ago}s ago) uses this database: \
                             give every daemon that shares it the same [fleet] mode (\"shard\" or \"replicate\") and its own replica name"
                        ),
                    });
                }
            }
            // The same name again is this replica restarted: it takes its
            // row (and its leases) over; a duplicate still running finds
            // its row taken at its next heartbeat and stops.
            tx.execute(
                "INSERT INTO replicas (name, instance, mode, started_ms, heartbeat_ms) VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (name) DO UPDATE SET instance = excluded.instance, mode = excluded.mode,
                    started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms",
                &[me, &f.instance, &f.replica.mode.as_str(), &ms(now)],
            )?;
            // Leases it held before a restart are its own again.
            let rows = tx.query(
                "SELECT repo, epoch FROM leases WHERE owner = $1",
                &[me],
            )?;
            let mut held = f.held();
            for r in &rows {
                held.insert(r.get(0), r.get(1));
            }
            Ok(())
        })
    }

    fn claim(&self, repo: &str, fair_share: Option<usize>) -> Result<Claim, StoreError> {
        let Some(f) = &self.fleet else {
            return Ok(Claim::Mine);
        };
        if f.replica.mode != FleetMode::Shard {
            return Ok(Claim::Mine);
        }
        if fair_share.is_some() {
            if f.held().contains_key(repo) {
                return Ok(Claim::Mine);
            }
            if f.others().contains(repo) {
                return Ok(Claim::Theirs(None));
            }
        }
        let fair_share = fair_share.unwrap_or(usize::MAX);
        let now = now_ms();
        let until = ms(now + f.ttl_ms());
        let me = &f.replica.name;
        let mut client = self.client()?;
        let renewed = client.query_opt(
            "UPDATE leases SET expires_ms = $3 WHERE repo = $1 AND owner = $2 RETURNING epoch",
            &[&repo, me, &until],
        )?;
        if let Some(row) = renewed {
            f.held().insert(repo.to_string(), row.get(0));
            return Ok(Claim::Mine);
        }
        // Free, or its holder stopped renewing it: taken while this
        // replica holds less than its share. The epoch moves on, so the
        // old holder's late writes are refused.
        let share = i64::try_from(fair_share).unwrap_or(i64::MAX);
        let taken = client.query_opt(
            "INSERT INTO leases AS l (repo, owner, epoch, since_ms, expires_ms)
                SELECT $1, $2, 1, $3, $4 WHERE (SELECT count(*) FROM leases WHERE owner = $2) < $5
             ON CONFLICT (repo) DO UPDATE SET owner = excluded.owner, epoch = l.epoch + 1,
                since_ms = excluded.since_ms, expires_ms = excluded.expires_ms
                WHERE l.expires_ms < excluded.since_ms
             RETURNING epoch",
            &[&repo, me, &ms(now), &until, &share],
        )?;
        if let Some(row) = taken {
            f.held().insert(repo.to_string(), row.get(0));
            f.taken.fetch_add(1, Ordering::Relaxed);
            // Another replica may have written it since this one last did.
            self.known.forget(repo);
            return Ok(Claim::Mine);
        }
        f.held().remove(repo);
        let owner = client
            .query_opt(
                "SELECT owner FROM leases WHERE repo = $1 AND expires_ms >= $2",
                &[&repo, &ms(now)],
            )?
            .map(|r| r.get(0));
        Ok(Claim::Theirs(owner))
    }

    fn heartbeat(&self) -> Result<FleetView, StoreError> {
        let Some(f) = &self.fleet else {
            return Ok(FleetView::default());
        };
        let now = now_ms();
        let me = &f.replica.name;
        let view = self.write(|tx| {
            let mine = tx.execute(
                "UPDATE replicas SET heartbeat_ms = $3 WHERE name = $1 AND instance = $2",
                &[me, &f.instance, &ms(now)],
            )?;
            if mine == 0 {
                return Err(StoreError::Setup {
                    target: self.target.clone(),
                    message: format!(
                        "replica {me} was taken over by another daemon with the same name: this one stops"
                    ),
                });
            }
            tx.execute(
                "UPDATE leases SET expires_ms = $2 WHERE owner = $1",
                &[me, &ms(now + f.ttl_ms())],
            )?;
            let held: Vec<String> = tx
                .query("SELECT repo FROM leases WHERE owner = $1 ORDER BY repo", &[me])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let live = tx
                .query(
                    "SELECT name, heartbeat_ms FROM replicas WHERE heartbeat_ms >= $1 ORDER BY name",
                    &[&ms(now.saturating_sub(f.ttl_ms()))],
                )?
                .iter()
                .map(|r| (r.get(0), unms(r.get(1))))
                .collect();
            let others: std::collections::HashSet<String> = tx
                .query(
                    "SELECT repo FROM leases WHERE owner <> $1 AND expires_ms >= $2",
                    &[me, &ms(now)],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            *f.others() = others;
            // Housekeeping has a lease of its own (River's leader): taken
            // when free or expired, renewed by its holder's heartbeats.
            let leads = tx
                .query_opt(
                    "INSERT INTO leader AS l (role, holder, expires_ms) VALUES ('housekeeping', $1, $2)
                     ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
                        WHERE l.holder = excluded.holder OR l.expires_ms < $3
                     RETURNING holder",
                    &[me, &ms(now + f.ttl_ms()), &ms(now)],
                )?
                .is_some();
            Ok(FleetView { live, held, leads })
        })?;
        f.leads.store(view.leads, Ordering::Relaxed);
        // A lease that moved while this replica was away is no longer its
        // own: its writes of that repository are fenced from now on.
        f.held().retain(|repo, _| view.held.contains(repo));
        Ok(view)
    }

    fn orphans(&self, repos: &[String]) -> Result<Vec<String>, StoreError> {
        let rows = self.client()?.query(
            "SELECT r FROM unnest($1::TEXT[]) AS r
             WHERE NOT EXISTS (SELECT 1 FROM leases WHERE repo = r AND expires_ms >= $2)",
            &[&repos, &ms(now_ms())],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn release(&self, repos: &[String]) -> Result<(), StoreError> {
        let Some(f) = &self.fleet else { return Ok(()) };
        self.client()?.execute(
            "DELETE FROM leases WHERE owner = $1 AND repo = ANY($2)",
            &[&f.replica.name, &repos],
        )?;
        let mut held = f.held();
        for repo in repos {
            held.remove(repo);
        }
        Ok(())
    }

    fn leave(&self) -> Result<(), StoreError> {
        let Some(f) = &self.fleet else { return Ok(()) };
        self.write(|tx| {
            tx.execute(
                "DELETE FROM leases WHERE owner = $1 AND EXISTS
                    (SELECT 1 FROM replicas WHERE name = $1 AND instance = $2)",
                &[&f.replica.name, &f.instance],
            )?;
            tx.execute(
                "DELETE FROM leader WHERE holder = $1 AND EXISTS
                    (SELECT 1 FROM replicas WHERE name = $1 AND instance = $2)",
                &[&f.replica.name, &f.instance],
            )?;
            tx.execute(
                "DELETE FROM replicas WHERE name = $1 AND instance = $2",
                &[&f.replica.name, &f.instance],
            )?;
            Ok(())
        })?;
        f.held().clear();
        f.leads.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn wake(&self, repo: &str) -> Result<(), StoreError> {
        self.client()?
            .execute("SELECT pg_notify($1, $2)", &[&WAKE, &repo])?;
        Ok(())
    }

    fn on_wake(&self, woken: Box<dyn Fn(String) + Send>) -> Result<(), StoreError> {
        let Some(f) = &self.fleet else { return Ok(()) };
        let server = self.server.clone();
        let stop = f.stop.clone();
        let target = self.target.clone();
        std::thread::Builder::new()
            .name("gitpulse-wake".into())
            .spawn(move || listen(&server, &stop, &target, woken))
            .map_err(|e| StoreError::Setup {
                target: self.target.clone(),
                message: format!("starting the wake-up listener: {e}"),
            })?;
        Ok(())
    }

    fn run_once(&self, repo: &str, step: &str, new: &str) -> Result<bool, StoreError> {
        let Some(f) = self
            .fleet
            .as_ref()
            .filter(|f| f.replica.mode == FleetMode::Replicate)
        else {
            return Ok(true);
        };
        let first = self.client()?.query_opt(
            "INSERT INTO fleet_once (repo, step, new, replica, at_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING RETURNING 1",
            &[&repo, &step, &new, &f.replica.name, &ms(now_ms())],
        )?;
        Ok(first.is_some())
    }

    fn holds(&self, repo: &str) -> bool {
        self.fleet
            .as_ref()
            .is_some_and(|f| f.held().contains_key(repo))
    }

    fn leads(&self) -> bool {
        self.fleet
            .as_ref()
            .is_none_or(|f| f.leads.load(Ordering::Relaxed))
    }

    fn fenced_writes(&self) -> u64 {
        self.fleet
            .as_ref()
            .map_or(0, |f| f.fenced.load(Ordering::Relaxed))
    }

    fn leases_taken(&self) -> u64 {
        self.fleet
            .as_ref()
            .map_or(0, |f| f.taken.load(Ordering::Relaxed))
    }
}

static SOLO: Replica = Replica {
    name: String::new(),
    mode: FleetMode::Solo,
    lease_ttl: Duration::from_secs(15),
};

/// Listens for wake-ups on a connection of its own, reconnecting after a
/// second when the server goes away, until `stop`.
fn listen(
    server: &super::Server,
    stop: &AtomicBool,
    target: &str,
    woken: Box<dyn Fn(String) + Send>,
) {
    // Said once per outage, not every second of it.
    let mut down = false;
    let lost = |what: String, down: &mut bool| {
        if !*down {
            tracing::warn!("wake-ups from {target}: {what}; trying again every second");
        }
        *down = true;
        std::thread::sleep(Duration::from_secs(1));
    };
    while !stop.load(Ordering::Relaxed) {
        let mut client = match server.open() {
            Ok(c) => c,
            Err(e) => {
                lost(said(&e), &mut down);
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {WAKE}")) {
            lost(said(&e), &mut down);
            continue;
        }
        if down {
            tracing::info!("wake-ups from {target}: listening again");
            down = false;
        }
        while !stop.load(Ordering::Relaxed) && !client.is_closed() {
            let mut notifications = client.notifications();
            let mut batch = notifications.timeout_iter(Duration::from_millis(500));
            loop {
                match batch.next() {
                    Ok(Some(n)) => woken(n.payload().to_string()),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("wake-ups from {target}: {}", said(&e));
                        down = true;
                        break;
                    }
                }
            }
        }
    }
}
