//! The pull job: attempts, decisions, waits, until success or a stop.
//!
//! Owns the loop around `git::sync`: it builds each attempt's time limit
//! from the per-attempt timeout and the overall deadline, asks the
//! [`RetryPolicy`] what to do after a failure, clamps the answer, waits
//! (cancellably) and tells an [`Observer`] what happens. It does not know how
//! git failures are classified nor how a policy decides; it only connects
//! the two.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::git::{
    self, AttemptControl, AttemptError, Change, SpecError, SyncSpec, Synced, Transfer,
};
use crate::outcome::{AttemptRecord, Outcome, PullReport};
use crate::policy::timeout::{AttemptLimit, Learnt};
use crate::policy::{clamp, AttemptContext, Decision, Limits, RetryPolicy, StopReason};

/// Everything `gitpulse pull` was asked to do.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// What to update and how.
    pub sync: SyncSpec,
    /// Limit of one attempt: the ceiling of learnt limits.
    pub timeout: Duration,
    /// The floor of learnt limits.
    pub min_timeout: Duration,
    /// When a transfer counts as stalled.
    pub low_speed: git::LowSpeed,
    /// What the repository's attempts took before (none: the ceiling).
    pub learnt: Learnt,
    /// Limit of the whole pull, waits included.
    pub deadline: Option<Duration>,
    /// Attempts at most.
    pub max_attempts: u32,
    /// The longest wait between attempts.
    pub max_delay: Duration,
}

/// What a pull tells its caller while it runs. Every method has a no-op
/// default.
pub trait Observer {
    /// Attempt `n` starts.
    fn attempt_started(&mut self, _n: u32) {}
    /// Transfer progress.
    fn transfer(&mut self, _progress: Transfer) {}
    /// An attempt failed; `decision` is what happens next.
    fn attempt_failed(&mut self, _record: &AttemptRecord, _decision: &Decision) {}
    /// Something worth knowing that did not stop the pull.
    fn notice(&mut self, _text: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// One attempt at bringing the checkout up to date: `git::sync` in
/// production, a script in this module's tests.
pub type Attempt<'a> = dyn FnMut(&SyncSpec, &AttemptControl, &mut dyn FnMut(Transfer)) -> Result<Synced, AttemptError>
    + 'a;

/// Runs the pull to its end over `attempt` (`git::sync` for real, a script
/// in tests). Blocks the calling thread.
///
/// Setting `cancel` stops the current attempt at its next check and the
/// pull with class `cancelled`; the checkout stays consistent. A
/// [`SpecError`] (DIR is not a repository, wrong kind of repository) ends the
/// pull before any attempt is recorded: it is a usage problem, not a failure
/// to retry.
pub(crate) fn pull_with(
    attempt: &mut Attempt<'_>,
    options: &PullOptions,
    policy: &mut dyn RetryPolicy,
    observer: &mut dyn Observer,
    cancel: Arc<AtomicBool>,
) -> Result<PullReport, SpecError> {
    let started = Instant::now();
    let deadline = options.deadline.map(|d| started + d);
    let mut attempts = Vec::new();
    let mut previous_delay = None;
    let mut next_timeout = None;
    let mut timed_out: Option<AttemptLimit> = None;
    let mut report = PullReport::failed(&options.sync.url, &options.sync.dir);

    for n in 1.. {
        observer.attempt_started(n);
        let mut limit = AttemptLimit::next(
            &options.learnt,
            options.min_timeout,
            options.timeout,
            timed_out.take().as_ref(),
        );
        // A policy that set this try's timeout overrides what was learnt.
        if let Some(total) = next_timeout.take() {
            limit.total = total;
            limit.refs = limit.refs.min(total);
        }
        let control = AttemptControl::new(limit.total, deadline, cancel.clone())
            .with_refs_limit(limit.refs)
            .with_low_speed(options.low_speed);
        let attempt_started = Instant::now();
        let result = attempt(&options.sync, &control, &mut |t| observer.transfer(t));
        report.limit = Some(limit);
        let failure = match result {
            Ok(synced) => {
                // What this attempt took teaches the repository's next limits.
                let transferred = matches!(synced.change, Change::Cloned | Change::Updated);
                report.learnt = Some(options.learnt.learn(transferred, attempt_started.elapsed()));
                for notice in &synced.notices {
                    observer.notice(notice);
                }
                report.outcome = match synced.change {
                    Change::Cloned => Outcome::Cloned,
                    Change::Updated => Outcome::Updated,
                    Change::Unchanged => Outcome::Unchanged,
                };
                report.old = synced.old;
                report.new = Some(synced.new);
                report.commits = synced.commits;
                report.notices = synced.notices;
                break;
            }
            Err(AttemptError::Spec(e)) => return Err(e),
            Err(AttemptError::Failed(f)) => f,
        };

        let ctx = AttemptContext {
            attempt: n,
            class: failure.class,
            http_status: failure.http_status,
            retry_after: failure.retry_after,
            elapsed: started.elapsed(),
            remaining: deadline.map(|d| d.saturating_duration_since(Instant::now())),
            previous_delay,
        };
        let limits = Limits {
            max_attempts: options.max_attempts,
            max_delay: options.max_delay,
            remaining: ctx.remaining,
        };
        let decision = if cancel.load(Ordering::Relaxed) {
            Decision::Stop(StopReason::Cancelled)
        } else if ctx.remaining.is_some_and(|r| r.is_zero()) {
            Decision::Stop(StopReason::Deadline)
        } else {
            policy.note_failure_message(&failure.message);
            let decision = clamp(policy.decide(&ctx), &ctx, &limits);
            for notice in policy.take_notices() {
                observer.notice(&notice);
            }
            report.plugin_faults.extend(policy.take_faults());
            decision
        };
        if failure.class == git::FailureClass::Timeout {
            timed_out = Some(limit);
        }
        let record = AttemptRecord {
            n,
            limit: Some(limit),
            duration_ms: attempt_started.elapsed().as_millis() as u64,
            class: failure.class,
            http_status: failure.http_status,
            message: failure.message,
            delay_ms: match &decision {
                Decision::RetryAfter { delay, .. } => Some(delay.as_millis() as u64),
                Decision::Stop(_) => None,
            },
        };
        observer.attempt_failed(&record, &decision);
        attempts.push(record);
        match decision {
            Decision::Stop(reason) => {
                report.reason = Some(reason);
                break;
            }
            Decision::RetryAfter { delay, timeout } => {
                if !sleep(delay, &cancel) {
                    report.reason = Some(StopReason::Cancelled);
                    break;
                }
                previous_delay = Some(delay);
                next_timeout = timeout;
            }
        }
    }
    report.attempts = attempts;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Waits `delay`; false if cancelled first.
fn sleep(delay: Duration, cancel: &AtomicBool) -> bool {
    let until = Instant::now() + delay;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::git::{Auth, FailureClass, GitFailure, Mode};
    use crate::policy::{Backoff, Builtin};

    fn options(max_attempts: u32) -> PullOptions {
        PullOptions {
            sync: SyncSpec {
                url: "https://user:secret@git.example.com/app.git".into(),
                dir: "/nonexistent/app".into(),
                follow: Default::default(),
                depth: None,
                submodules: false,
                local_submodules: false,
                mode: Mode::FastForward,
                sparse: None,
                auth: Auth::None,
                username: None,
                credentials: Vec::new(),
                lock_wait: Duration::ZERO,
                group_write: false,
            },
            timeout: Duration::from_secs(5),
            deadline: None,
            max_attempts,
            max_delay: Duration::from_millis(20),
            min_timeout: crate::config::MIN_TIMEOUT,
            low_speed: Default::default(),
            learnt: Default::default(),
        }
    }

    fn builtin() -> Builtin {
        let backoff = Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(20),
        };
        Builtin::new(backoff, 10, Some(7))
    }

    fn fail(class: FailureClass) -> Result<Synced, AttemptError> {
        Err(AttemptError::Failed(GitFailure {
            class,
            http_status: None,
            retry_after: None,
            message: format!("{class} on purpose"),
        }))
    }

    fn updated() -> Result<Synced, AttemptError> {
        Ok(Synced {
            change: Change::Updated,
            old: Some("a".repeat(40)),
            new: "b".repeat(40),
            commits: 2,
            notices: vec![],
        })
    }

    /// Runs a pull whose attempts answer `script` in turn.
    fn run(
        script: Vec<Result<Synced, AttemptError>>,
        max_attempts: u32,
        cancel: Arc<AtomicBool>,
    ) -> (PullReport, usize) {
        let mut script = VecDeque::from(script);
        let mut calls = 0;
        let mut attempt = |_: &SyncSpec, _: &AttemptControl, _: &mut dyn FnMut(Transfer)| {
            calls += 1;
            script
                .pop_front()
                .unwrap_or_else(|| fail(FailureClass::Other))
        };
        let report = pull_with(
            &mut attempt,
            &options(max_attempts),
            &mut builtin(),
            &mut Quiet,
            cancel,
        )
        .unwrap();
        (report, calls)
    }

    fn classes(report: &PullReport) -> Vec<FailureClass> {
        report.attempts.iter().map(|a| a.class).collect()
    }

    #[test]
    fn transient_failures_are_retried_until_an_attempt_succeeds() {
        let script = vec![
            fail(FailureClass::ServerError),
            fail(FailureClass::Timeout),
            updated(),
        ];
        let (report, calls) = run(script, 5, Arc::default());
        assert_eq!(calls, 3);
        assert_eq!(report.outcome, Outcome::Updated);
        assert_eq!(report.commits, 2);
        assert_eq!(
            classes(&report),
            [FailureClass::ServerError, FailureClass::Timeout]
        );
        assert!(report.attempts.iter().all(|a| a.delay_ms.is_some()));
        assert_eq!(report.reason, None);
        assert_eq!(report.url, "https://***@git.example.com/app.git");
    }

    #[test]
    fn a_permanent_failure_stops_at_once() {
        let (report, calls) = run(vec![fail(FailureClass::Auth)], 5, Arc::default());
        assert_eq!(calls, 1);
        assert_eq!(report.outcome, Outcome::Failed);
        assert_eq!(report.reason, Some(StopReason::NotRetryable));
        assert_eq!(report.attempts[0].delay_ms, None);
    }

    #[test]
    fn the_attempt_limit_holds_whatever_the_policy_says() {
        let script = (0..10).map(|_| fail(FailureClass::ServerError)).collect();
        let (report, calls) = run(script, 3, Arc::default());
        assert_eq!(calls, 3);
        assert_eq!(report.reason, Some(StopReason::AttemptsExhausted));
        assert_eq!(report.attempts.len(), 3);
    }

    #[test]
    fn a_cancelled_pull_stops_after_its_attempt() {
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let mut attempt = |_: &SyncSpec, _: &AttemptControl, _: &mut dyn FnMut(Transfer)| {
            flag.store(true, Ordering::SeqCst);
            fail(FailureClass::ServerError)
        };
        let report = pull_with(
            &mut attempt,
            &options(5),
            &mut builtin(),
            &mut Quiet,
            cancel,
        )
        .unwrap();
        assert_eq!(report.attempts.len(), 1);
        assert_eq!(report.reason, Some(StopReason::Cancelled));
    }

    #[test]
    fn a_spec_error_ends_the_pull_before_any_attempt_is_recorded() {
        let mut attempt = |s: &SyncSpec, _: &AttemptControl, _: &mut dyn FnMut(Transfer)| {
            Err(AttemptError::Spec(SpecError::NotARepository(s.dir.clone())))
        };
        let err = pull_with(
            &mut attempt,
            &options(5),
            &mut builtin(),
            &mut Quiet,
            Arc::default(),
        )
        .unwrap_err();
        assert!(matches!(err, SpecError::NotARepository(_)));
    }
}
