//! Which asked-for pulls start: at most one run of a repository at a
//! time, a push or manual ask during a run coalesced into exactly one run
//! after it, a scheduled run that finds the repository running skipped.
//!
//! Pure, like the breaker: no clock, no I/O, no permits (the global and
//! per-host semaphores bound how many admitted pulls run at once; the
//! breaker decides whether a host is tried at all).

use std::collections::HashSet;

/// Who asked for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Its schedule.
    Schedule,
    /// A person, or a push: worth one more run when it is already running
    /// (what they announced may have arrived after the running pull
    /// listed the remote).
    Now,
}

/// What becomes of an ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Run it now; it counts as running until [`Running::finish`].
    Run,
    /// It is running: one more run follows when this one ends (however
    /// many asks arrive meanwhile).
    After,
    /// It is running and the schedule asked: this run is skipped.
    Skip,
}

/// The repositories running now, and those owed one more run.
#[derive(Debug, Default)]
pub struct Running {
    now: HashSet<String>,
    again: HashSet<String>,
}

impl Running {
    /// Admits or defers an ask for `repo`.
    pub fn admit(&mut self, repo: &str, asked: Asked) -> Admit {
        if self.now.insert(repo.to_string()) {
            return Admit::Run;
        }
        match asked {
            Asked::Now => {
                self.again.insert(repo.to_string());
                Admit::After
            }
            Asked::Schedule => Admit::Skip,
        }
    }

    /// `repo` stopped running (its pull, and its steps, ended, or it was
    /// not started after all); whether one more run is owed, which the
    /// caller starts with [`Running::admit`].
    pub fn finish(&mut self, repo: &str) -> bool {
        self.now.remove(repo);
        self.again.remove(repo)
    }

    /// Whether `repo` is running.
    pub fn contains(&self, repo: &str) -> bool {
        self.now.contains(repo)
    }

    /// How many are running.
    pub fn len(&self) -> usize {
        self.now.len()
    }

    /// Whether none is.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.now.is_empty()
    }

    /// The running repositories' names.
    pub fn names(&self) -> HashSet<String> {
        self.now.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_at_a_time_and_asks_meanwhile_make_exactly_one_more() {
        let mut running = Running::default();
        assert_eq!(running.admit("app", Asked::Schedule), Admit::Run);
        assert!(running.contains("app"));
        // A scheduled run while it runs is skipped; pushes coalesce.
        assert_eq!(running.admit("app", Asked::Schedule), Admit::Skip);
        assert_eq!(running.admit("app", Asked::Now), Admit::After);
        assert_eq!(running.admit("app", Asked::Now), Admit::After);
        // Another repository is not held back.
        assert_eq!(running.admit("lib", Asked::Now), Admit::Run);
        assert_eq!(running.len(), 2);
        // It ends: one more run is owed, once.
        assert!(running.finish("app"));
        assert!(!running.contains("app"));
        assert_eq!(running.admit("app", Asked::Now), Admit::Run);
        assert!(!running.finish("app"));
        assert!(!running.finish("lib"));
        assert!(running.is_empty());
    }

    #[test]
    fn a_skipped_schedule_owes_nothing() {
        let mut running = Running::default();
        assert_eq!(running.admit("app", Asked::Now), Admit::Run);
        assert_eq!(running.admit("app", Asked::Schedule), Admit::Skip);
        assert!(!running.finish("app"));
    }
}
