//! When each repository runs next, as pure state: no clock of its own, no
//! I/O, no schedule math (that is `schedule`). The scheduler plans a run,
//! replans or cancels it on reload, sleeps until [`Timetable::next_wake`]
//! and takes what is due.
//!
//! A heap of (instant, generation, name): planning a repository again
//! supersedes its earlier entry without searching the heap; superseded
//! entries are dropped when they reach the top.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Instant, SystemTime};

#[derive(Debug, Default)]
pub struct Timetable {
    heap: BinaryHeap<Reverse<(Instant, u64, String)>>,
    /// The live plan of each repository: its generation and when (in wall
    /// time, for the state and the next plan).
    plans: HashMap<String, (u64, SystemTime)>,
    generation: u64,
}

/// A run that fell due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub name: String,
    /// When it was planned for.
    pub planned: SystemTime,
}

impl Timetable {
    /// Plans `name` at wall time `at`, replacing any earlier plan. `now` and
    /// `now_wall` are the same moment on both clocks.
    pub fn plan(&mut self, name: &str, at: SystemTime, now: Instant, now_wall: SystemTime) {
        self.generation += 1;
        let delay = at.duration_since(now_wall).unwrap_or_default();
        self.heap
            .push(Reverse((now + delay, self.generation, name.to_string())));
        self.plans.insert(name.to_string(), (self.generation, at));
    }

    /// Forgets `name`'s plan (a repository removed by a reload).
    pub fn cancel(&mut self, name: &str) {
        self.plans.remove(name);
    }

    /// When `name` is planned to run, if it is.
    pub fn planned(&self, name: &str) -> Option<SystemTime> {
        self.plans.get(name).map(|(_, at)| *at)
    }

    /// When the earliest live plan falls due.
    pub fn next_wake(&mut self) -> Option<Instant> {
        self.drop_superseded();
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes every run due at `now`, earliest first. A taken run is no
    /// longer planned: the caller plans the next one.
    pub fn pop_due(&mut self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        loop {
            self.drop_superseded();
            match self.heap.peek() {
                Some(Reverse((at, _, _))) if *at <= now => {}
                _ => return due,
            }
            let Some(Reverse((_, _, name))) = self.heap.pop() else {
                return due;
            };
            if let Some((_, planned)) = self.plans.remove(&name) {
                due.push(Due { name, planned });
            }
        }
    }

    fn drop_superseded(&mut self) {
        while let Some(Reverse((_, generation, name))) = self.heap.peek() {
            if self.plans.get(name).is_some_and(|(g, _)| g == generation) {
                return;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn runs_fall_due_in_order() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut t = Timetable::default();
        t.plan("b", wall + s(20), now, wall);
        t.plan("a", wall + s(10), now, wall);
        assert_eq!(t.next_wake(), Some(now + s(10)));
        assert!(t.pop_due(now + s(5)).is_empty());
        let due = t.pop_due(now + s(30));
        let names: Vec<&str> = due.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(due[0].planned, wall + s(10));
        assert_eq!(t.next_wake(), None, "taken runs are no longer planned");
    }

    #[test]
    fn a_new_plan_replaces_the_old_and_a_cancelled_one_never_runs() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut t = Timetable::default();
        t.plan("a", wall + s(10), now, wall);
        t.plan("a", wall + s(60), now, wall);
        t.plan("gone", wall + s(5), now, wall);
        t.cancel("gone");
        assert_eq!(
            t.next_wake(),
            Some(now + s(60)),
            "superseded plans do not wake"
        );
        assert!(t.pop_due(now + s(59)).is_empty());
        assert_eq!(t.pop_due(now + s(60)).len(), 1);
        assert_eq!(t.planned("a"), None);
    }

    #[test]
    fn a_plan_in_the_past_is_due_at_once() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut t = Timetable::default();
        t.plan("late", wall - s(3), now, wall);
        assert_eq!(t.planned("late"), Some(wall - s(3)));
        assert_eq!(t.pop_due(now).len(), 1);
    }
}
