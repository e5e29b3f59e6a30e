//! This daemon as a replica of a fleet sharing one PostgreSQL state: it
//! joins at start, says it is alive (and renews its leases) three times a
//! lease TTL, keeps to its fair share of the repositories (handing back
//! what it holds beyond it, never one that runs; taking up what nobody
//! holds while below it, and pulling it at once), pulls a repository only
//! while it holds its lease, wakes the holder when a push or a trigger
//! lands here, and gives every lease back when it stops. What a lease is
//! and how writes are fenced belongs to the store (`store::Fleet`).

use super::*;
use crate::store::{Claim, FleetMode};

/// What the replica knows of its fleet, between heartbeats.
#[derive(Debug, Default)]
pub(super) struct FleetGauges {
    /// Replicas alive at the last heartbeat.
    pub(super) replicas: AtomicU64,
    /// Leases this replica held at the last heartbeat.
    pub(super) held: AtomicU64,
    /// How many leases this replica may hold: the repositories over the
    /// live replicas, rounded up. No limit until the first heartbeat.
    pub(super) fair_share: AtomicU64,
    /// The replicas alive at the last heartbeat, with theirs (unix ms).
    pub(super) live: Mutex<Vec<(String, u64)>>,
}

/// The fair share of `repos` among `live` replicas: rounded up, so the
/// shares always cover every repository.
pub(super) fn fair_share(repos: usize, live: usize) -> usize {
    repos.div_ceil(live.max(1))
}

/// Of `held`, those to hand back to come down to `share`: never one that
/// runs now (its result would be fenced), the last by name first.
pub(super) fn excess(held: &[String], share: usize, running: &dyn Fn(&str) -> bool) -> Vec<String> {
    let over = held.len().saturating_sub(share);
    held.iter()
        .rev()
        .filter(|r| !running(r))
        .take(over)
        .cloned()
        .collect()
}

/// Joins the fleet (off the runtime's threads) and starts listening for
/// wake-ups meant for this replica.
pub(super) async fn join(shared: &Arc<Shared>) -> Result<(), DaemonError> {
    if shared.store.fleet().is_none() {
        return Ok(());
    }
    let joining = shared.clone();
    tokio::task::spawn_blocking(move || {
        let Some(fleet) = joining.store.fleet() else {
            return Ok(());
        };
        fleet.join()?;
        let weak = Arc::downgrade(&joining);
        fleet.on_wake(Box::new(move |repo| {
            let Some(shared) = weak.upgrade() else { return };
            if shared.store.fleet().is_some_and(|f| f.holds(&repo)) {
                let _ = shared
                    .commands
                    .send(CommandHandle(Command::Wake(vec![repo])));
            }
        }))
    })
    .await
    .map_err(|e| DaemonError::Runtime(format!("joining the fleet: {e}")))?
    .map_err(DaemonError::from)
}

/// Heartbeats until `stop`, then leaves the fleet. A heartbeat refused
/// because another daemon took this replica's name stops this one.
pub(super) async fn heartbeats(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(fleet) = shared.store.fleet() else {
        return;
    };
    let every = (fleet.replica().lease_ttl / 3).max(Duration::from_millis(200));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let beat = shared.clone();
        match tokio::task::spawn_blocking(move || heartbeat(&beat)).await {
            Ok(Ok(())) => {}
            Ok(Err(e @ crate::store::StoreError::Setup { .. })) => {
                error!("{e}");
                let _ = shared.commands.send(CommandHandle(Command::Shutdown));
                break;
            }
            Ok(Err(e)) => warn!("fleet heartbeat: {e}"),
            Err(e) => warn!("fleet heartbeat: {e}"),
        }
    }
    let leaving = shared.clone();
    let left = tokio::task::spawn_blocking(move || match leaving.store.fleet() {
        Some(fleet) => fleet.leave(),
        None => Ok(()),
    })
    .await;
    match left {
        Ok(Ok(())) => info!("left the fleet: its leases are free for the others"),
        Ok(Err(e)) => warn!("leaving the fleet: {e}"),
        Err(e) => warn!("leaving the fleet: {e}"),
    }
}

/// One heartbeat: alive, leases renewed, the fair share learnt and what
/// is held beyond it handed back. Blocks.
fn heartbeat(shared: &Shared) -> Result<(), crate::store::StoreError> {
    let Some(fleet) = shared.store.fleet() else {
        return Ok(());
    };
    let view = fleet.heartbeat()?;
    let repos = shared.config().repos.len();
    let share = fair_share(repos, view.live.len());
    let gauges = &shared.fleet;
    gauges
        .replicas
        .store(view.live.len() as u64, Ordering::Relaxed);
    *lock(&gauges.live) = view.live.clone();
    gauges.fair_share.store(share as u64, Ordering::Relaxed);
    if fleet.replica().mode == FleetMode::Shard {
        let running = lock(&shared.running);
        let back = excess(&view.held, share, &|r| running.contains(r));
        drop(running);
        if !back.is_empty() {
            info!(
                count = back.len(),
                share, "handing back leases beyond this replica's share"
            );
            // Pulls of them waiting in the quiet batch are written first:
            // after the release they would be fenced.
            shared.quiet.flush(shared.store.as_ref())?;
            fleet.release(&back)?;
        }
        let mut held = view.held.len() - back.len();
        // Repositories nobody holds (handed back, or their replica died)
        // are taken up at once, not at their next scheduled run, which may
        // be an hour away; in a shuffled order, so replicas taking up
        // together rarely reach for the same one.
        if held < share {
            let names: Vec<String> = shared
                .config()
                .repos
                .iter()
                .map(|r| r.name.clone())
                .collect();
            let mut orphans = fleet.orphans(&names)?;
            fastrand::shuffle(&mut orphans);
            for repo in orphans {
                if held >= share {
                    break;
                }
                // One still running here started under a lease this
                // replica lost: taking the lease again now would let that
                // late result through its fence. It waits for its end.
                if lock(&shared.running).contains(&repo) {
                    continue;
                }
                if fleet.claim(&repo, Some(share))? == Claim::Mine {
                    held += 1;
                    info!(repo, "took up its lease: pulling it here now");
                    let _ = shared
                        .commands
                        .send(CommandHandle(Command::Wake(vec![repo])));
                }
            }
        }
        gauges.held.store(held as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Whether this replica may pull `repo` now. A push or a trigger that
/// landed here for a repository another replica holds wakes that one.
/// Blocks.
pub(super) fn may_pull(shared: &Shared, repo: &str, scheduled: bool) -> bool {
    let Some(fleet) = shared.store.fleet() else {
        return true;
    };
    if fleet.replica().mode != FleetMode::Shard {
        return true;
    }
    // Asked for now: a free repository is taken whatever the share (the
    // heartbeat hands it back later if it is one too many).
    let share = scheduled.then(|| {
        let share = shared.fleet.fair_share.load(Ordering::Relaxed);
        usize::try_from(share).unwrap_or(usize::MAX)
    });
    match fleet.claim(repo, share) {
        Ok(Claim::Mine) => true,
        Ok(Claim::Theirs(owner)) => {
            if !scheduled && owner.is_some() {
                if let Err(e) = fleet.wake(repo) {
                    warn!(repo, "waking its replica: {e}");
                }
            }
            false
        }
        Err(e) => {
            warn!(repo, "claiming its lease: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_repository() {
        assert_eq!(fair_share(60, 3), 20);
        assert_eq!(fair_share(61, 3), 21);
        assert_eq!(fair_share(5, 0), 5, "no live replica counted yet: this one");
        assert_eq!(fair_share(0, 2), 0);
        for (repos, live) in [(7, 2), (100, 7), (1, 5)] {
            assert!(fair_share(repos, live) * live >= repos);
        }
    }

    #[test]
    fn the_excess_handed_back_never_includes_a_running_repository() {
        let held: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        assert_eq!(excess(&held, 3, &|_| false), ["e", "d"]);
        assert_eq!(excess(&held, 3, &|r| r == "e"), ["d", "c"]);
        assert!(excess(&held, 5, &|_| false).is_empty());
        assert!(excess(&held, 9, &|_| false).is_empty());
        // All running: nothing goes now; the next heartbeat tries again.
        assert!(excess(&held, 0, &|_| true).is_empty());
    }
}
