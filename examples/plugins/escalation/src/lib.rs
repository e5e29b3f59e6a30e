//! Escalation: one failed pull is noise, several in a short time are an
//! incident. A `failed` event is sent only when it is at least the
//! `threshold`-th failure of that repository within `window_minutes`
//! (default 3 within 30); the message then says how many. `recovered` is
//! sent only if a failure was actually escalated. Everything else passes.
//!
//! State lives in the plugin's key-value store (`fail:REPO` holds recent
//! failure times, `escalated:REPO` marks an open incident), so it survives
//! restarts of the host.

use gitpulse_plugin_sdk::types::{Channel, Event, EventKind, Message, NotifyChoice, Template};
use gitpulse_plugin_sdk::{export, helpers, host, notify};

/// Tells nobody of the first failures; escalates once a repository keeps failing.
pub struct Escalation;

fn recent_failures(repo: &str, now: u64, window_ms: u64) -> Vec<u64> {
    host::kv_get(&format!("fail:{repo}"))
        .unwrap_or_default()
        .split(',')
        .filter_map(|t| t.parse::<u64>().ok())
        .filter(|t| now.saturating_sub(*t) <= window_ms)
        .collect()
}

impl notify::Guest for Escalation {
    fn choose(event: Event, _channel: Channel) -> NotifyChoice {
        let repo = event.repo.name.clone();
        let threshold = helpers::setting("threshold", 3u32).max(1) as usize;
        let window_ms = helpers::setting("window_minutes", 30u64) * 60_000;
        let now = host::now_ms();
        match event.kind {
            EventKind::Failed => {
                let mut times = recent_failures(&repo, now, window_ms);
                times.push(now);
                let keep: Vec<String> = times
                    .iter()
                    .rev()
                    .take(threshold)
                    .rev()
                    .map(u64::to_string)
                    .collect();
                host::kv_set(&format!("fail:{repo}"), &keep.join(","));
                if times.len() < threshold {
                    return NotifyChoice::Suppress(format!(
                        "{} of {threshold} failures within {} min",
                        times.len(),
                        window_ms / 60_000
                    ));
                }
                host::kv_set(&format!("escalated:{repo}"), "1");
                NotifyChoice::Send(Message {
                    template: Some(Template {
                        subject: "[gitpulse] {{repo.name}} failed {{vars.failures}} times in {{vars.window}} min".into(),
                        body: "{{repo.name}} ({{repo.url}}) keeps failing: {{failure.class}} — {{failure.message}}\n".into(),
                    }),
                    vars: vec![
                        ("failures".into(), times.len().to_string()),
                        ("window".into(), (window_ms / 60_000).to_string()),
                    ],
                })
            }
            EventKind::Recovered => {
                host::kv_delete(&format!("fail:{repo}"));
                if host::kv_get(&format!("escalated:{repo}")).is_some() {
                    host::kv_delete(&format!("escalated:{repo}"));
                    NotifyChoice::Send(Message {
                        template: None,
                        vars: vec![],
                    })
                } else {
                    NotifyChoice::Suppress("no failure was escalated".into())
                }
            }
            _ => NotifyChoice::Send(Message {
                template: None,
                vars: vec![],
            }),
        }
    }
}

export!(Escalation);

#[cfg(test)]
mod tests {
    use super::*;
    use gitpulse_plugin_sdk::testing::Harness;
    use gitpulse_plugin_sdk::types::{ChannelKind, Repo};

    fn event(kind: EventKind) -> Event {
        Event {
            kind,
            repo: Repo {
                name: "app".into(),
                url: "https://h/app.git".into(),
                remote_host: "h".into(),
                branch: "main".into(),
                labels: vec![],
            },
            old: None,
            new: None,
            commits: vec![],
            failure: None,
            attempts: 1,
            at_ms: 0,
        }
    }

    fn channel() -> Channel {
        Channel {
            name: "ops".into(),
            kind: ChannelKind::Email,
        }
    }

    fn sends(c: &NotifyChoice) -> bool {
        matches!(c, NotifyChoice::Send(_))
    }

    #[test]
    fn escalates_on_the_third_failure_within_the_window_then_announces_recovery() {
        let mut h = Harness::new().now(1_000_000);
        let mut choices = Vec::new();
        for step in 0..3 {
            h.now_ms = 1_000_000 + step * 60_000;
            let (c, next) = h.run_keep(|| {
                <Escalation as notify::Guest>::choose(event(EventKind::Failed), channel())
            });
            choices.push(sends(&c));
            h = next;
        }
        assert_eq!(choices, [false, false, true]);
        let (c, h) = h.run_keep(|| {
            <Escalation as notify::Guest>::choose(event(EventKind::Recovered), channel())
        });
        assert!(sends(&c));
        assert!(h.kv.is_empty(), "state cleared: {:?}", h.kv);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut h = Harness::new().config("window_minutes", "10");
        let mut last = None;
        for step in 0..3 {
            h.now_ms = 1_000_000 + step * 20 * 60_000; // 20 minutes apart
            let (c, next) = h.run_keep(|| {
                <Escalation as notify::Guest>::choose(event(EventKind::Failed), channel())
            });
            last = Some(sends(&c));
            h = next;
        }
        assert_eq!(last, Some(false));
        let (c, _) = h.run_keep(|| {
            <Escalation as notify::Guest>::choose(event(EventKind::Recovered), channel())
        });
        assert!(!sends(&c), "nothing was escalated, so no recovery message");
    }
}
