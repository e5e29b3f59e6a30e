//! The daemon's write batching: most pulls change nothing, tell nobody
//! and owe nothing, and writing each in its own transaction cost more
//! than the pull. The job hands such pulls to the batch (see
//! [`crate::job::Batch`]); a timer flushes it.

use std::sync::Mutex;

use crate::store::{QuietPull, Storage, StoreError};

/// A batch flushes on its own when this many wait.
const MOST: usize = 512;

/// Quiet pulls waiting to be written together: one transaction a second
/// instead of one a pull. Whoever records anything else about a repository
/// flushes first, so the state is written in the order it happened. A
/// process killed outright loses the quiet pulls of its last second; they
/// told nothing and changed nothing.
#[derive(Debug, Default)]
pub struct QuietPulls {
    waiting: Mutex<Vec<QuietPull>>,
}

impl crate::job::Batch for QuietPulls {
    /// Queues `pull`; writes the batch if it is full. The pull is queued
    /// whatever the write does (a failed one is tried again by the next
    /// flush), so a caller that tries again never queues it twice.
    fn push(&self, pull: QuietPull, store: &dyn Storage) -> Result<(), StoreError> {
        let full = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.push(pull);
            waiting.len() >= MOST
        };
        if full {
            if let Err(e) = self.flush(store) {
                tracing::warn!("recording quiet pulls: {e}; kept for the next try");
            }
        }
        Ok(())
    }

    /// Writes what waits. On failure the pulls are kept for the next try.
    fn flush(&self, store: &dyn Storage) -> Result<(), StoreError> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.is_empty() {
            return Ok(());
        }
        store.record_quiet_pulls(&waiting)?;
        waiting.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Batch as _;
    use crate::outcome::Outcome;
    use crate::store::{History as _, MemoryStore, State as _};

    #[test]
    fn quiet_pulls_are_written_together_when_flushed() {
        let store = MemoryStore::new();
        let quiet = QuietPulls::default();
        for at_ms in [1_000, 2_000] {
            let pull = QuietPull {
                repo: "app".into(),
                report: crate::store::contract::report(Outcome::Unchanged, 0, &[]),
                start_lag_ms: Some(3),
                next_run_ms: Some(60_000 + at_ms),
                at_ms,
            };
            quiet.push(pull, &store).unwrap();
        }
        assert_eq!(store.history("app", 10).unwrap().len(), 0, "waiting");
        quiet.flush(&store).unwrap();
        assert_eq!(store.history("app", 10).unwrap().len(), 2);
        let status = store.status().unwrap();
        assert_eq!(status[0].last_result.as_deref(), Some("unchanged"));
        assert_eq!(status[0].next_run_ms, Some(62_000), "the later one last");
        quiet.flush(&store).unwrap();
        assert_eq!(store.history("app", 10).unwrap().len(), 2, "written once");
    }
}
