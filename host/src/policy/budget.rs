//! Per-host retry budgets: when a host fails, every repository on it
//! retrying on its own curve multiplies its load. A [`RetryBudget`] is
//! shared by the repositories of one host: within a sliding minute,
//! retries may add at most `ratio` of the pulls started (Envoy's and
//! gRPC's retry-budget idea), and at least `min_per_minute` are always
//! allowed so a lone repository still retries. [`Budgeted`] puts a policy
//! behind it: a retry the budget refuses stops with
//! [`StopReason::Budget`].
//!
//! Pure bookkeeping and a policy wrapper; the daemon owns one per host.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{AttemptContext, Decision, RetryPolicy, StopReason};

/// The window the budget counts over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One host's retry budget.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    min_per_minute: u32,
    pulls: VecDeque<Instant>,
    retries: VecDeque<Instant>,
    denied: u64,
}

/// The budget's numbers now, for `status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BudgetState {
    /// Pulls started in the window.
    pub pulls: u32,
    /// Retries made in the window.
    pub retries: u32,
    /// Retries the window allows.
    pub allowed: u32,
    /// Retries refused since start.
    pub denied: u64,
}

impl RetryBudget {
    /// Retries up to `ratio` of the pulls of the last minute, and at least
    /// `min_per_minute`.
    pub fn new(ratio: f64, min_per_minute: u32) -> Self {
        RetryBudget {
            ratio: ratio.clamp(0.0, 1.0),
            min_per_minute,
            pulls: VecDeque::new(),
            retries: VecDeque::new(),
            denied: 0,
        }
    }

    fn prune(&mut self, now: Instant) {
        for times in [&mut self.pulls, &mut self.retries] {
            while times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
            {
                times.pop_front();
            }
        }
    }

    fn allowed(&self) -> u32 {
        let share = (self.pulls.len() as f64 * self.ratio).floor() as u32;
        share.max(self.min_per_minute)
    }

    /// A pull of this host started at `now` (its first attempt).
    pub fn pull_started(&mut self, now: Instant) {
        self.prune(now);
        self.pulls.push_back(now);
    }

    /// Takes a retry from the budget at `now`, if it has one.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        self.prune(now);
        if (self.retries.len() as u32) < self.allowed() {
            self.retries.push_back(now);
            true
        } else {
            self.denied += 1;
            false
        }
    }

    /// Its numbers at `now`.
    pub fn state(&mut self, now: Instant) -> BudgetState {
        self.prune(now);
        BudgetState {
            pulls: self.pulls.len() as u32,
            retries: self.retries.len() as u32,
            allowed: self.allowed(),
            denied: self.denied,
        }
    }
}

/// A policy whose retries are drawn from a shared host budget.
pub struct Budgeted {
    inner: Box<dyn RetryPolicy>,
    budget: Arc<Mutex<RetryBudget>>,
}

impl Budgeted {
    /// `inner` decides; `budget` may veto its retries.
    pub fn new(inner: Box<dyn RetryPolicy>, budget: Arc<Mutex<RetryBudget>>) -> Self {
        Budgeted { inner, budget }
    }
}

impl RetryPolicy for Budgeted {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn decide(&mut self, ctx: &AttemptContext) -> Decision {
        let before = self
            .budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state(Instant::now());
        self.inner.note_budget(
            before.allowed.saturating_sub(before.retries),
            before.allowed,
        );
        match self.inner.decide(ctx) {
            Decision::RetryAfter { delay, timeout } => {
                let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
                if budget.try_retry(Instant::now()) {
                    Decision::RetryAfter { delay, timeout }
                } else {
                    Decision::Stop(StopReason::Budget)
                }
            }
            stop => stop,
        }
    }

    fn take_notices(&mut self) -> Vec<String> {
        self.inner.take_notices()
    }

    fn take_faults(&mut self) -> Vec<String> {
        self.inner.take_faults()
    }

    fn note_failure_message(&mut self, message: &str) {
        self.inner.note_failure_message(message)
    }

    fn note_budget(&mut self, remaining: u32, capacity: u32) {
        self.inner.note_budget(remaining, capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_the_pulls_with_a_floor() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 2);
        for _ in 0..50 {
            b.pull_started(t0);
        }
        let granted = (0..100).filter(|_| b.try_retry(t0)).count();
        assert_eq!(granted, 10, "20 % of 50 pulls");
        assert_eq!(b.state(t0).denied, 90);

        let mut lone = RetryBudget::new(0.2, 2);
        lone.pull_started(t0);
        assert_eq!(
            (0..5).filter(|_| lone.try_retry(t0)).count(),
            2,
            "the floor"
        );
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.0, 1);
        assert!(b.try_retry(t0));
        assert!(!b.try_retry(t0 + Duration::from_secs(59)));
        assert!(b.try_retry(t0 + Duration::from_secs(60)), "refilled");
        let s = b.state(t0 + Duration::from_secs(60));
        assert_eq!((s.retries, s.allowed, s.denied), (1, 1, 1));
    }

    struct Always;
    impl RetryPolicy for Always {
        fn name(&self) -> &str {
            "always"
        }
        fn decide(&mut self, _: &AttemptContext) -> Decision {
            Decision::RetryAfter {
                delay: Duration::from_millis(1),
                timeout: None,
            }
        }
    }

    #[test]
    fn a_refused_retry_stops_with_the_budget_reason() {
        let budget = Arc::new(Mutex::new(RetryBudget::new(0.0, 1)));
        let mut p = Budgeted::new(Box::new(Always), budget.clone());
        let ctx = AttemptContext {
            attempt: 1,
            class: crate::FailureClass::ServerError,
            http_status: Some(503),
            retry_after: None,
            elapsed: Duration::ZERO,
            remaining: None,
            previous_delay: None,
        };
        assert!(matches!(p.decide(&ctx), Decision::RetryAfter { .. }));
        assert_eq!(p.decide(&ctx), Decision::Stop(StopReason::Budget));
        assert_eq!(budget.lock().unwrap().state(Instant::now()).denied, 1);
    }
}
