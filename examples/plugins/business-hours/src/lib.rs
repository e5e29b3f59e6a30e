//! Quiet outside business hours: inside the window the standard policy
//! retries and every notification goes out; outside it nothing is retried
//! (the next scheduled pull will try again) and nothing is sent, except
//! `config-rejected`, which someone must see.
//!
//! Settings: `start` and `end` as `HH:MM` (default 09:00–18:00), `utc_offset`
//! as `+HH:MM`/`-HH:MM` (default +00:00), `days` as a list of weekdays
//! (default `mon,tue,wed,thu,fri`).

use gitpulse_plugin_sdk::types::{
    AttemptContext, Channel, Decision, Event, EventKind, Message, NotifyChoice, StopReason,
};
use gitpulse_plugin_sdk::{backoff, export, helpers, host, notify, retry};

/// Retries only inside the configured business hours.
pub struct BusinessHours;

/// Minutes since midnight from `HH:MM`.
fn minutes(text: &str) -> Option<i64> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
}

fn offset_minutes(text: &str) -> Option<i64> {
    let text = text.trim();
    let (sign, rest) = match text.as_bytes().first()? {
        b'-' => (-1, &text[1..]),
        b'+' => (1, &text[1..]),
        _ => (1, text),
    };
    Some(sign * minutes(rest)?)
}

fn setting_or(key: &str, parse: fn(&str) -> Option<i64>, default: i64) -> i64 {
    match host::config_get(key) {
        None => default,
        Some(v) => parse(&v).unwrap_or_else(|| {
            host::log(
                host::Level::Warn,
                &format!("setting `{key}` = `{v}` is not valid; using the default"),
            );
            default
        }),
    }
}

/// Whether `now_ms` (Unix time) falls inside the configured window.
pub fn in_window(now_ms: u64) -> bool {
    let start = setting_or("start", minutes, 9 * 60);
    let end = setting_or("end", minutes, 18 * 60);
    let offset = setting_or("utc_offset", offset_minutes, 0);
    let days = host::config_get("days").unwrap_or_else(|| "mon,tue,wed,thu,fri".into());
    let local_min = (now_ms / 60_000) as i64 + offset;
    let day_index = local_min.div_euclid(24 * 60); // days since 1970-01-01, a Thursday
    let minute = local_min.rem_euclid(24 * 60);
    const NAMES: [&str; 7] = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"];
    let today = NAMES[day_index.rem_euclid(7) as usize];
    let day_ok = days
        .split(',')
        .any(|d| d.trim().eq_ignore_ascii_case(today));
    let time_ok = if start <= end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end // a window across midnight
    };
    day_ok && time_ok
}

impl retry::Guest for BusinessHours {
    fn decide(ctx: AttemptContext) -> Decision {
        if !in_window(host::now_ms()) {
            return Decision::Stop(StopReason::Policy("outside business hours".into()));
        }
        helpers::standard_decide(&ctx, helpers::setting("base_ms", 1000), ctx.max_delay_ms)
    }
}

impl backoff::Guest for BusinessHours {
    fn delay_ms(ctx: AttemptContext) -> u64 {
        helpers::full_jitter(helpers::ceiling_ms(
            helpers::setting("base_ms", 1000),
            ctx.max_delay_ms,
            ctx.attempt,
        ))
    }
}

impl notify::Guest for BusinessHours {
    fn choose(event: Event, _channel: Channel) -> NotifyChoice {
        if event.kind != EventKind::ConfigRejected && !in_window(host::now_ms()) {
            return NotifyChoice::Suppress("outside business hours".into());
        }
        NotifyChoice::Send(Message {
            template: None,
            vars: vec![],
        })
    }
}

export!(BusinessHours);

#[cfg(test)]
mod tests {
    use super::*;
    use gitpulse_plugin_sdk::testing::{context, Harness};
    use gitpulse_plugin_sdk::types::FailureClass;

    // 2026-11-23 is a Monday.
    const MONDAY_10_UTC: u64 = 1_795_428_000_000;
    const MONDAY_20_UTC: u64 = MONDAY_10_UTC + 10 * 3_600_000;
    const SATURDAY_10_UTC: u64 = MONDAY_10_UTC + 5 * 86_400_000;

    #[test]
    fn retries_only_inside_the_window() {
        let at = |now| {
            Harness::new()
                .now(now)
                .run(|| <BusinessHours as retry::Guest>::decide(context(FailureClass::Timeout, 1)))
        };
        assert!(matches!(at(MONDAY_10_UTC), Decision::Retry(_)));
        assert_eq!(
            at(MONDAY_20_UTC),
            Decision::Stop(StopReason::Policy("outside business hours".into()))
        );
        assert!(matches!(at(SATURDAY_10_UTC), Decision::Stop(_)));
    }

    #[test]
    fn the_window_follows_the_offset_setting() {
        // 20:00 UTC is 12:00 at -08:00.
        let inside = Harness::new()
            .now(MONDAY_20_UTC)
            .config("utc_offset", "-08:00")
            .run(|| in_window(host::now_ms()));
        assert!(inside);
    }

    #[test]
    fn a_bad_setting_is_logged_and_defaulted() {
        let (inside, h) = Harness::new()
            .now(MONDAY_10_UTC)
            .config("start", "nine")
            .run_keep(|| in_window(host::now_ms()));
        assert!(inside);
        assert!(h.logs.iter().any(|(_, m)| m.contains("start")));
    }
}
