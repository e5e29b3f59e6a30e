//! A retry policy for busy forges: it always waits at least as long as the
//! server's `Retry-After`, and when rate-limited without a hint it backs off
//! on a steeper curve (base × 4ⁿ instead of 2ⁿ) so a fleet does not keep
//! hammering a host that is already shedding load.
//!
//! Settings: `base_ms` (default 1000), `rate_limit_factor` (default 4).

use gitpulse_plugin_sdk::types::{AttemptContext, Decision, FailureClass, RetryAfter, StopReason};
use gitpulse_plugin_sdk::{export, helpers, retry};

/// Waits what the server's Retry-After asks.
pub struct RetryAfterPolicy;

impl retry::Guest for RetryAfterPolicy {
    fn decide(ctx: AttemptContext) -> Decision {
        let failure = &ctx.failure;
        if helpers::is_permanent(failure.class) {
            return Decision::Stop(StopReason::NotRetryable);
        }
        if ctx.attempt >= ctx.max_attempts {
            return Decision::Stop(StopReason::AttemptsExhausted);
        }
        let base = helpers::setting("base_ms", 1000u64);
        let delay = if failure.class == FailureClass::RateLimited {
            let factor = helpers::setting("rate_limit_factor", 4u64).max(2);
            let steep = base.saturating_mul(factor.saturating_pow(ctx.attempt.saturating_sub(1)));
            // Equal jitter: never much shorter than the curve.
            let curve = helpers::equal_jitter(steep.min(ctx.max_delay_ms));
            curve.max(failure.retry_after_ms.unwrap_or(0))
        } else {
            let curve =
                helpers::full_jitter(helpers::ceiling_ms(base, ctx.max_delay_ms, ctx.attempt));
            curve.max(failure.retry_after_ms.unwrap_or(0))
        };
        if ctx.remaining_ms.is_some_and(|left| delay >= left) {
            return Decision::Stop(StopReason::Deadline);
        }
        Decision::Retry(RetryAfter {
            delay_ms: delay.min(ctx.max_delay_ms),
            timeout_ms: None,
        })
    }
}

export!(RetryAfterPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use gitpulse_plugin_sdk::testing::{context, Harness};

    fn decide(ctx: AttemptContext) -> Decision {
        Harness::new()
            .seed(5)
            .run(|| <RetryAfterPolicy as retry::Guest>::decide(ctx))
    }

    #[test]
    fn waits_at_least_retry_after() {
        let mut ctx = context(FailureClass::ServerError, 1);
        ctx.failure.retry_after_ms = Some(30_000);
        assert_eq!(
            decide(ctx),
            Decision::Retry(RetryAfter {
                delay_ms: 30_000,
                timeout_ms: None
            })
        );
    }

    #[test]
    fn rate_limits_back_off_on_a_steeper_curve() {
        // Attempt 3: the standard ceiling is 4 s; the 429 curve is 16 s with
        // equal jitter, so at least 8 s.
        let Decision::Retry(r) = decide(context(FailureClass::RateLimited, 3)) else {
            panic!()
        };
        assert!((8_000..=16_000).contains(&r.delay_ms), "{}", r.delay_ms);
        let Decision::Retry(r) = decide(context(FailureClass::ServerError, 3)) else {
            panic!()
        };
        assert!(r.delay_ms <= 4_000, "{}", r.delay_ms);
    }

    #[test]
    fn never_retries_auth_and_never_exceeds_the_cap() {
        assert_eq!(
            decide(context(FailureClass::Auth, 1)),
            Decision::Stop(StopReason::NotRetryable)
        );
        let mut ctx = context(FailureClass::RateLimited, 4);
        ctx.failure.retry_after_ms = Some(10 * 60_000);
        let Decision::Retry(r) = decide(ctx) else {
            panic!()
        };
        assert_eq!(r.delay_ms, 60_000);
    }
}
