//! Building blocks for policies: class predicates, the standard decision,
//! and the three well-known jitter strategies (see "Exponential Backoff And
//! Jitter", AWS Architecture Blog, 2015).

use std::time::Duration;

use gitpulse_policy_core as core;

use crate::host;
use crate::types::{AttemptContext, Decision, FailureClass, RetryAfter, StopReason};

/// The contract's class as the policy core's class.
pub fn to_core(class: FailureClass) -> core::FailureClass {
    use core::FailureClass as C;
    match class {
        FailureClass::Dns => C::Dns,
        FailureClass::Connect => C::Connect,
        FailureClass::Timeout => C::Timeout,
        FailureClass::Tls => C::Tls,
        FailureClass::ServerError => C::ServerError,
        FailureClass::RateLimited => C::RateLimited,
        FailureClass::Auth => C::Auth,
        FailureClass::NotFound => C::NotFound,
        FailureClass::RefNotFound => C::RefNotFound,
        FailureClass::Protocol => C::Protocol,
        FailureClass::CorruptRepo => C::CorruptRepo,
        FailureClass::LockHeld => C::LockHeld,
        FailureClass::DiskFull => C::DiskFull,
        FailureClass::Diverged => C::Diverged,
        FailureClass::Cancelled => C::Cancelled,
        FailureClass::Other => C::Other,
    }
}

/// Worth retrying by the standard policy's judgement.
pub fn is_transient(class: FailureClass) -> bool {
    to_core(class).is_transient()
}

/// Never worth retrying: a person has to act (credentials, a missing
/// repository or branch, diverged history, …).
pub fn is_permanent(class: FailureClass) -> bool {
    !is_transient(class)
}

/// The ceiling of the capped exponential curve after attempt `attempt`:
/// `min(max_ms, base_ms * 2^(attempt-1))`.
pub fn ceiling_ms(base_ms: u64, max_ms: u64, attempt: u32) -> u64 {
    core::Backoff {
        base: Duration::from_millis(base_ms),
        max: Duration::from_millis(max_ms),
    }
    .ceiling(attempt)
    .as_millis() as u64
}

/// Full jitter: uniform in `[0, ceiling]`.
pub fn full_jitter(ceiling_ms: u64) -> u64 {
    uniform(0, ceiling_ms)
}

/// Equal jitter: half the ceiling plus uniform in `[0, ceiling/2]`.
pub fn equal_jitter(ceiling_ms: u64) -> u64 {
    let half = ceiling_ms / 2;
    half + uniform(0, ceiling_ms - half)
}

/// Decorrelated jitter: uniform in `[base, previous * 3]`, capped at `max`.
pub fn decorrelated_jitter(base_ms: u64, previous_ms: Option<u64>, max_ms: u64) -> u64 {
    let upper = previous_ms
        .unwrap_or(base_ms)
        .saturating_mul(3)
        .max(base_ms);
    uniform(base_ms, upper).min(max_ms)
}

/// Uniform in `[low, high]` from the host's random source.
pub fn uniform(low: u64, high: u64) -> u64 {
    if high <= low {
        return low;
    }
    let span = high - low;
    low + host::random() % span.saturating_add(1).max(1)
}

/// The standard policy's decision (what the host does without a plugin),
/// with the curve's base and cap in milliseconds.
pub fn standard_decide(ctx: &AttemptContext, base_ms: u64, max_ms: u64) -> Decision {
    let core_ctx = core::AttemptContext {
        attempt: ctx.attempt,
        class: to_core(ctx.failure.class),
        http_status: ctx.failure.http_status,
        retry_after: ctx.failure.retry_after_ms.map(Duration::from_millis),
        elapsed: Duration::from_millis(ctx.elapsed_ms),
        remaining: ctx.remaining_ms.map(Duration::from_millis),
        previous_delay: ctx.previous_delay_ms.map(Duration::from_millis),
    };
    let backoff = core::Backoff {
        base: Duration::from_millis(base_ms),
        max: Duration::from_millis(max_ms.min(ctx.max_delay_ms)),
    };
    from_core(core::decide(
        &core_ctx,
        &backoff,
        ctx.max_attempts,
        host::random(),
    ))
}

/// The policy core's decision as the contract's decision.
pub fn from_core(decision: core::Decision) -> Decision {
    match decision {
        core::Decision::RetryAfter { delay, timeout } => Decision::Retry(RetryAfter {
            delay_ms: delay.as_millis() as u64,
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
        }),
        core::Decision::Stop(reason) => Decision::Stop(match reason {
            core::StopReason::NotRetryable => StopReason::NotRetryable,
            core::StopReason::AttemptsExhausted => StopReason::AttemptsExhausted,
            core::StopReason::Deadline => StopReason::Deadline,
            core::StopReason::Budget => StopReason::Budget,
            core::StopReason::Policy(text) => StopReason::Policy(text),
            core::StopReason::Cancelled => StopReason::Policy("cancelled".into()),
        }),
    }
}

/// A setting parsed as `T`, or `default` when absent or unparsable (the
/// problem is logged).
pub fn setting<T: std::str::FromStr>(key: &str, default: T) -> T {
    match host::config_get(key) {
        None => default,
        Some(text) => text.trim().parse().unwrap_or_else(|_| {
            host::log(
                host::Level::Warn,
                &format!("setting `{key}` = `{text}` is not valid; using the default"),
            );
            default
        }),
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing::{context, Harness};

    #[test]
    fn jitters_stay_in_their_ranges() {
        Harness::new().seed(3).run(|| {
            for _ in 0..500 {
                assert!(full_jitter(1000) <= 1000);
                let e = equal_jitter(1000);
                assert!((500..=1000).contains(&e));
                let d = decorrelated_jitter(100, Some(400), 1000);
                assert!((100..=1000).contains(&d));
            }
        });
    }

    #[test]
    fn the_standard_decision_matches_the_core() {
        Harness::new().seed(1).run(|| {
            let ctx = context(FailureClass::Auth, 1);
            assert_eq!(
                standard_decide(&ctx, 1000, 60_000),
                Decision::Stop(StopReason::NotRetryable)
            );
            let ctx = context(FailureClass::ServerError, 2);
            match standard_decide(&ctx, 1000, 60_000) {
                Decision::Retry(r) => assert!(r.delay_ms <= 2000),
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn settings_fall_back_and_log() {
        Harness::new().config("base_ms", "oops").run(|| {
            assert_eq!(setting("base_ms", 250u64), 250);
            assert_eq!(setting("absent", 7u32), 7);
        });
    }
}
