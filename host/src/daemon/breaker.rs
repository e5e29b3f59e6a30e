//! The per-host circuit breaker, as pure state: no clock of its own, no
//! I/O. The daemon keeps one per remote host, asks it before starting a
//! scheduled pull and tells it how each pull ended.
//!
//! Closed, it lets every pull through and counts transient failures in a
//! row. At the threshold it opens for the cool-down: scheduled pulls of
//! that host are held back (a manual trigger still goes). After the
//! cool-down one canary pull probes; while it runs the others still wait.
//! A success closes the breaker; another transient failure re-opens it for
//! a new cool-down. Permanent failures (auth, not-found …) say nothing
//! about the host's health and change nothing.

use std::time::{Duration, Instant};

/// What the breaker says to a pull that is about to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Go,
    /// Go ahead as the one probe of an open breaker.
    Canary,
    /// Not now: the host is failing.
    HeldBack,
}

/// How a pull ended, as far as the host's health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    /// Gave up on a failure that waiting could fix (5xx, timeout …).
    FailedTransiently,
    /// Any other end (a permanent failure, a cancellation).
    Other,
}

/// A change worth telling an operator about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened { failures_in_row: u32 },
    Closed,
}

/// One host's breaker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Breaker {
    failures_in_row: u32,
    open_until: Option<Instant>,
    canary_running: bool,
}

impl Breaker {
    /// Whether a pull may start at `now`; a `manual` one (a trigger) always
    /// may, and is not a canary.
    pub fn admit(&mut self, now: Instant, manual: bool) -> Admission {
        match self.open_until {
            Some(until) if !manual => {
                if now < until || self.canary_running {
                    Admission::HeldBack
                } else {
                    self.canary_running = true;
                    Admission::Canary
                }
            }
            _ => Admission::Go,
        }
    }

    /// Records how a pull admitted as `admission` ended at `now`.
    pub fn record(
        &mut self,
        admission: Admission,
        verdict: Verdict,
        now: Instant,
        threshold: u32,
        cool_down: Duration,
    ) -> Option<Change> {
        if admission == Admission::Canary {
            self.canary_running = false;
        }
        match verdict {
            Verdict::FailedTransiently => {
                self.failures_in_row += 1;
                if self.failures_in_row < threshold {
                    return None;
                }
                let was_open = self.open_until.is_some();
                self.open_until = Some(now + cool_down);
                (!was_open).then_some(Change::Opened {
                    failures_in_row: self.failures_in_row,
                })
            }
            Verdict::Succeeded => {
                let was_open = self.open_until.is_some();
                *self = Breaker::default();
                was_open.then_some(Change::Closed)
            }
            Verdict::Other => None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(30);

    fn fail(b: &mut Breaker, admission: Admission, now: Instant) -> Option<Change> {
        b.record(admission, Verdict::FailedTransiently, now, 3, COOL)
    }

    #[test]
    fn opens_at_the_threshold_and_holds_scheduled_pulls_back() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert_eq!(fail(&mut b, Admission::Go, t0), None);
        assert_eq!(fail(&mut b, Admission::Go, t0), None);
        assert_eq!(
            fail(&mut b, Admission::Go, t0),
            Some(Change::Opened { failures_in_row: 3 })
        );
        assert_eq!(
            b.admit(t0 + Duration::from_secs(1), false),
            Admission::HeldBack
        );
        assert_eq!(
            b.admit(t0 + Duration::from_secs(1), true),
            Admission::Go,
            "a trigger goes"
        );
    }

    #[test]
    fn one_canary_after_the_cool_down_closes_it_or_reopens_it() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..3 {
            fail(&mut b, Admission::Go, t0);
        }
        let later = t0 + COOL;
        assert_eq!(b.admit(later, false), Admission::Canary);
        assert_eq!(
            b.admit(later, false),
            Admission::HeldBack,
            "one canary at a time"
        );
        assert_eq!(
            fail(&mut b, Admission::Canary, later),
            None,
            "still open: no news"
        );
        assert_eq!(
            b.admit(later + Duration::from_secs(1), false),
            Admission::HeldBack
        );
        let much_later = later + COOL;
        assert_eq!(b.admit(much_later, false), Admission::Canary);
        assert_eq!(
            b.record(Admission::Canary, Verdict::Succeeded, much_later, 3, COOL),
            Some(Change::Closed)
        );
        assert!(!b.is_open());
        assert_eq!(b.admit(much_later, false), Admission::Go);
    }

    #[test]
    fn permanent_failures_say_nothing_about_the_host() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..10 {
            assert_eq!(b.record(Admission::Go, Verdict::Other, t0, 3, COOL), None);
        }
        assert_eq!(b.admit(t0, false), Admission::Go);
        fail(&mut b, Admission::Go, t0);
        fail(&mut b, Admission::Go, t0);
        b.record(Admission::Go, Verdict::Succeeded, t0, 3, COOL);
        assert_eq!(
            fail(&mut b, Admission::Go, t0),
            None,
            "a success resets the count"
        );
    }
}
