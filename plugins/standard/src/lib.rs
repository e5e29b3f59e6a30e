//! The standard policy as a component: retry and backoff exactly as the
//! host's built-in (both call `gitpulse_policy_core`), and notify choosing
//! the host's default template for every event.
//!
//! Settings (`[plugin.NAME]` or `--plugin-config`): `base_ms` (default 1000)
//! and `max_ms` (default 60000), the curve's first ceiling and cap.

use gitpulse_plugin_sdk::types::{AttemptContext, Channel, Decision, Event, Message, NotifyChoice};
use gitpulse_plugin_sdk::{backoff, export, helpers, notify, retry};

/// The built-in policy, as a plugin.
pub struct Standard;

fn curve() -> (u64, u64) {
    (
        helpers::setting("base_ms", 1000),
        helpers::setting("max_ms", 60_000),
    )
}

impl retry::Guest for Standard {
    fn decide(ctx: AttemptContext) -> Decision {
        let (base, max) = curve();
        helpers::standard_decide(&ctx, base, max)
    }
}

impl backoff::Guest for Standard {
    fn delay_ms(ctx: AttemptContext) -> u64 {
        let (base, max) = curve();
        helpers::full_jitter(helpers::ceiling_ms(
            base,
            max.min(ctx.max_delay_ms),
            ctx.attempt,
        ))
    }
}

impl notify::Guest for Standard {
    fn choose(_event: Event, _channel: Channel) -> NotifyChoice {
        NotifyChoice::Send(Message {
            template: None,
            vars: vec![],
        })
    }
}

export!(Standard);

#[cfg(test)]
mod tests {
    use super::*;
    use gitpulse_plugin_sdk::testing::{context, Harness};
    use gitpulse_plugin_sdk::types::{FailureClass, StopReason};

    #[test]
    fn permanent_failures_stop_and_transient_ones_wait_within_the_curve() {
        Harness::new().seed(9).run(|| {
            let stop = <Standard as retry::Guest>::decide(context(FailureClass::NotFound, 1));
            assert_eq!(stop, Decision::Stop(StopReason::NotRetryable));
            match <Standard as retry::Guest>::decide(context(FailureClass::Timeout, 3)) {
                Decision::Retry(r) => assert!(r.delay_ms <= 4000),
                other => panic!("{other:?}"),
            }
        });
    }
}
