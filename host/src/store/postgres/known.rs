//! What the store read or wrote last of each repository's failure streak
//! and learnt limits, kept in memory: a daemon reads both around every
//! pull, most pulls change neither, and asking the server each time was
//! most of what a no-op pull cost it. The store that writes a repository
//! is the one that reads it (one daemon; in a shard fleet the lease's
//! holder, whose entry is forgotten when it takes a lease; in a
//! replicating fleet each replica's own rows), and a streak another
//! writer changed is caught by `record_pull`'s check in its transaction,
//! which forgets the entry.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::policy::timeout::Learnt;

#[derive(Default)]
pub(super) struct Known {
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Default)]
struct Entry {
    failures: Option<u32>,
    learnt: Option<Learnt>,
}

impl Known {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn failures(&self, repo: &str) -> Option<u32> {
        self.entries().get(repo).and_then(|e| e.failures)
    }

    pub(super) fn learnt(&self, repo: &str) -> Option<Learnt> {
        self.entries().get(repo).and_then(|e| e.learnt)
    }

    pub(super) fn set_failures(&self, repo: &str, failures: u32) {
        self.entries().entry(repo.to_string()).or_default().failures = Some(failures);
    }

    pub(super) fn set_learnt(&self, repo: &str, learnt: Learnt) {
        self.entries().entry(repo.to_string()).or_default().learnt = Some(learnt);
    }

    /// Read `repo` from the server next time.
    pub(super) fn forget(&self, repo: &str) {
        self.entries().remove(repo);
    }
}
