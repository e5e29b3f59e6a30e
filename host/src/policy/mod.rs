//! Retry decisions: which policy answers, and the limits it cannot exceed.
//!
//! A [`RetryPolicy`] says whether and when to try again; the host then
//! [`clamp`]s the answer to the user's limits (maximum attempts, maximum
//! delay, overall deadline) whatever the policy said. [`Builtin`] is the
//! standard policy linked natively from `gitpulse-policy-core`;
//! [`WasmPolicy`] runs plugin components behind the same trait. This
//! module never touches git: it sees failure classes, not errors.

mod budget;
pub mod timeout;
mod wasm;

use std::time::Duration;

pub use budget::{BudgetState, Budgeted, RetryBudget};
pub use gitpulse_policy_core::{AttemptContext, Backoff, Decision, StopReason};
pub use wasm::WasmPolicy;

/// Something that decides after each failed attempt.
pub trait RetryPolicy {
    /// A short name for logs.
    fn name(&self) -> &str;
    /// What to do after the failed attempt `ctx` describes.
    fn decide(&mut self, ctx: &AttemptContext) -> Decision;
    /// Things a person should know (a plugin fault, a quarantine), drained
    /// after each decision.
    fn take_notices(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// The plugin faults among those notices (a fault, a quarantine), for
    /// `plugin-fault` events; drained after each decision.
    fn take_faults(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// The (redacted) message of the failure about to be decided on.
    fn note_failure_message(&mut self, _message: &str) {}
    /// The host's retry budget before this decision: retries `remaining`
    /// of `capacity` in the current window (plugins see it as `budget`).
    fn note_budget(&mut self, _remaining: u32, _capacity: u32) {}
}

/// The standard policy: transient classes retried with capped exponential
/// backoff and full jitter.
#[derive(Debug)]
pub struct Builtin {
    backoff: Backoff,
    max_attempts: u32,
    rng: fastrand::Rng,
}

impl Builtin {
    /// `seed` makes the jitter reproducible; `None` seeds from the OS.
    pub fn new(backoff: Backoff, max_attempts: u32, seed: Option<u64>) -> Self {
        Builtin {
            backoff,
            max_attempts,
            rng: seed.map(fastrand::Rng::with_seed).unwrap_or_default(),
        }
    }
}

impl RetryPolicy for Builtin {
    fn name(&self) -> &str {
        "builtin"
    }

    fn decide(&mut self, ctx: &AttemptContext) -> Decision {
        gitpulse_policy_core::decide(ctx, &self.backoff, self.max_attempts, self.rng.u64(..))
    }
}

/// The limits the host enforces on every policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Attempts at most.
    pub max_attempts: u32,
    /// The longest wait.
    pub max_delay: Duration,
    /// Time left before the overall deadline, when there is one.
    pub remaining: Option<Duration>,
}

/// `decision` brought within `limits`.
pub fn clamp(decision: Decision, ctx: &AttemptContext, limits: &Limits) -> Decision {
    match decision {
        Decision::Stop(reason) => Decision::Stop(reason),
        Decision::RetryAfter { .. } if ctx.attempt >= limits.max_attempts => {
            Decision::Stop(StopReason::AttemptsExhausted)
        }
        Decision::RetryAfter { delay, timeout } => {
            let delay = delay.min(limits.max_delay);
            match limits.remaining {
                Some(remaining) if delay >= remaining => Decision::Stop(StopReason::Deadline),
                _ => Decision::RetryAfter { delay, timeout },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitpulse_policy_core::FailureClass;

    /// A policy that always asks for an absurd wait.
    struct Greedy;
    impl RetryPolicy for Greedy {
        fn name(&self) -> &str {
            "greedy"
        }
        fn decide(&mut self, _: &AttemptContext) -> Decision {
            Decision::RetryAfter {
                delay: Duration::from_secs(86_400 * 365),
                timeout: None,
            }
        }
    }

    #[test]
    fn the_host_caps_what_a_policy_asks_for() {
        let limits = Limits {
            max_attempts: 3,
            max_delay: Duration::from_secs(60),
            remaining: None,
        };
        let ctx = AttemptContext::first(FailureClass::Timeout);
        assert_eq!(
            clamp(Greedy.decide(&ctx), &ctx, &limits),
            Decision::RetryAfter {
                delay: Duration::from_secs(60),
                timeout: None
            }
        );
        let third = AttemptContext {
            attempt: 3,
            ..ctx.clone()
        };
        assert_eq!(
            clamp(Greedy.decide(&third), &third, &limits),
            Decision::Stop(StopReason::AttemptsExhausted)
        );
        let tight = Limits {
            remaining: Some(Duration::from_secs(5)),
            ..limits
        };
        assert_eq!(
            clamp(Greedy.decide(&ctx), &ctx, &tight),
            Decision::Stop(StopReason::Deadline)
        );
    }

    #[test]
    fn a_seeded_builtin_is_reproducible() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let ctx = AttemptContext {
            attempt: 3,
            ..AttemptContext::first(FailureClass::ServerError)
        };
        let a: Vec<_> = (0..5)
            .map({
                let mut p = Builtin::new(backoff, 5, Some(42));
                move |_| p.decide(&ctx)
            })
            .collect();
        let ctx = AttemptContext {
            attempt: 3,
            ..AttemptContext::first(FailureClass::ServerError)
        };
        let b: Vec<_> = (0..5)
            .map({
                let mut p = Builtin::new(backoff, 5, Some(42));
                move |_| p.decide(&ctx)
            })
            .collect();
        assert_eq!(a, b);
    }
}
