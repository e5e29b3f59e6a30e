//! The pull job's recording step, shared by `gitpulse pull --notify-config`
//! and the daemon: what a finished pull means (its events), rendered into
//! messages, and written with the pull's result.
//!
//! Recording is two-phase so that nothing slow happens under the store's
//! lock or inside its write transaction: read the repository's failure
//! streak (a short read), decide the events and render their messages
//! (plugin calls, templates: no lock held), then write the result, its
//! events and their outbox rows in one transaction. If another process
//! recorded a pull of the same repository in between, the streak has moved
//! and the events are decided again.
//!
//! This module wires the parts together; it does not pull (`pull`), decide
//! events (`events`), render (`notify`) or store (`store`).

use std::sync::Mutex;

use crate::events::PullEvents;
use crate::notify::{Audience, Router};
use crate::outcome::PullReport;
use crate::store::{Store, StoreError, StoredEvent};

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
