//! Notifications: which notifiers get an event, what the message says, and
//! delivering it from the outbox.
//!
//! ```text
//! events ─► Router (filters, plugin notify role, handlebars) ─► store::outbox
//!                                                                   │
//!                  receivers ◄─ send (SMTP, webhook, log) ◄─ deliver_due (retry, digest, dead-letter)
//! ```
//!
//! Messages are rendered when they are accepted, so the outbox holds
//! exactly what will be sent and a template edit never changes a message in
//! flight. A template that fails (the plugin's or a configured file) is
//! replaced by the host's default for that event and channel, and the
//! failure becomes a `plugin-fault` event: the event itself is never lost.
//! This module does not decide which events a pull implies (`events`) or
//! store anything itself (`store`).

use std::collections::BTreeMap;

use serde_json::Value;
use tracing::{info, warn};

use crate::config::{Config, NotifierConfig, RepoConfig, Shape};
use crate::events::{Event, EventKind, RepoRef};
use crate::plugin::{LoadError, NotifyChoice, Plugin};
use crate::store::{NewMessage, Outgoing};

mod channel;
mod deliver;
pub mod send;
pub(crate) mod template;

pub use channel::webhook::signature;
pub use deliver::{deliver_due, deliver_due_by_notifier, DeliveryStats};
pub use send::{DeliveryClass, Letter, SendError, Senders};

use template::{Rendered, Templates};

/// Loads a plugin by its configured name (the daemon and the CLI find and
/// cache plugins differently).
pub type PluginLoader<'a> = &'a dyn Fn(&str) -> Result<Plugin, LoadError>;

/// Who hears about a repository's events: the notifiers it names (none
/// named: every notifier) and the plugin whose notify role shapes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Audience<'r> {
    /// Notifiers named by the repo; empty: every notifier.
    pub notifiers: &'r [String],
    /// The plugin playing the repo's notify role.
    pub plugin: Option<&'r str>,
}

impl<'r> Audience<'r> {
    /// Every notifier, host templates: events not about a configured repo.
    pub const ALL: Audience<'static> = Audience {
        notifiers: &[],
        plugin: None,
    };

    /// The audience of a configured repository.
    pub fn of(repo: &'r RepoConfig) -> Self {
        Audience {
            notifiers: &repo.notifiers,
            plugin: repo.policy.notify.as_deref(),
        }
    }
}

/// Turns events into outbox messages for the notifiers that want them.
pub struct Router<'a> {
    config: &'a Config,
    load_plugin: PluginLoader<'a>,
    digests: bool,
}

impl<'a> Router<'a> {
    /// A router over `config`'s notifiers; `load_plugin` finds notify plugins.
    pub fn new(config: &'a Config, load_plugin: PluginLoader<'a>) -> Self {
        Router {
            config,
            load_plugin,
            digests: true,
        }
    }

    /// Messages are sent at once, never held for a digest (a one-shot
    /// `gitpulse pull` has nothing to collect them with).
    pub fn without_digests(mut self) -> Self {
        self.digests = false;
        self
    }

    fn notifiers_for(&self, audience: &Audience<'_>) -> Vec<&'a NotifierConfig> {
        if audience.notifiers.is_empty() {
            self.config.notifiers.values().collect()
        } else {
            audience
                .notifiers
                .iter()
                .filter_map(|n| self.config.notifiers.get(n))
                .collect()
        }
    }

    /// Whether any notifier of `audience` takes events of `kind` (so callers
    /// can skip building events nobody wants, such as `retrying`).
    pub fn wants(&self, kind: EventKind, audience: &Audience<'_>) -> bool {
        self.notifiers_for(audience)
            .iter()
            .any(|n| n.filter.events.contains(&kind))
    }

    /// `m`, or `m` sent at once when this router holds no digests.
    fn hold(&self, mut m: NewMessage) -> NewMessage {
        if !self.digests {
            m.digest_window_ms = 0;
        }
        m
    }

    /// `events`, each with its messages for `audience`, plus a
    /// `plugin-fault` event for every template or plugin that failed.
    pub fn outgoing(&self, events: Vec<Event>, audience: &Audience<'_>) -> Vec<Outgoing> {
        let notifiers = self.notifiers_for(audience);
        let plugin_name = audience.plugin.map(str::to_string);
        let mut plugin: Option<Plugin> = None;
        let mut faults = Vec::new();
        if let Some(name) = &plugin_name {
            if events.iter().any(|e| e.kind != EventKind::PluginFault) && !notifiers.is_empty() {
                match (self.load_plugin)(name) {
                    Ok(p) => plugin = Some(p),
                    Err(e) => faults.push(format!("plugin {name} (notify) could not load: {e}")),
                }
            }
        }
        let repo_ref = events.first().map(|e| e.repo.clone()).unwrap_or_default();
        let at = events
            .first()
            .map(|e| e.at_ms)
            .unwrap_or_else(crate::model::now_ms);
        let mut out = Vec::new();
        for event in events {
            let mut messages = Vec::new();
            for n in &notifiers {
                if !n
                    .filter
                    .accepts(event.kind, event.repo.name(), event.repo.labels())
                {
                    continue;
                }
                let ask = plugin
                    .as_mut()
                    .filter(|_| event.kind != EventKind::PluginFault);
                if let Some(m) = message_for(&event, n, ask, plugin_name.as_deref(), &mut faults) {
                    messages.push(self.hold(m));
                }
            }
            out.push(Outgoing {
                event: event.row(),
                messages,
            });
        }
        if let (Some(p), Some(name)) = (&plugin, &plugin_name) {
            for line in p.env().take_logs().into_iter().filter(|l| l.is_loud()) {
                warn!(repo = repo_ref.name(), "plugin {name}: {}", line.message);
            }
        }
        for detail in faults {
            warn!(repo = repo_ref.name(), "{detail}");
            let event = Event::problem(EventKind::PluginFault, repo_ref.clone(), detail, at);
            let mut ignored = Vec::new();
            let messages = notifiers
                .iter()
                .filter(|n| {
                    n.filter
                        .accepts(event.kind, event.repo.name(), event.repo.labels())
                })
                .filter_map(|n| message_for(&event, n, None, None, &mut ignored))
                .map(|m| self.hold(m))
                .collect();
            out.push(Outgoing {
                event: event.row(),
                messages,
            });
        }
        out
    }
}

/// The message for `event` on notifier `n`, or none if a plugin suppressed
/// it. Template faults are pushed to `faults` and the default is used.
fn message_for(
    event: &Event,
    n: &NotifierConfig,
    plugin: Option<&mut Plugin>,
    plugin_name: Option<&str>,
    faults: &mut Vec<String>,
) -> Option<NewMessage> {
    let mut vars = Vec::new();
    let mut plugin_template = None;
    if let Some(plugin) = plugin {
        match plugin.notify(event, &n.name, n.channel.kind()) {
            Ok(NotifyChoice::Suppress(reason)) => {
                info!(repo = event.repo.name(), notifier = n.name, event = %event.kind, "suppressed by plugin: {reason}");
                return None;
            }
            Ok(NotifyChoice::Send { template, vars: v }) => {
                vars = v;
                plugin_template = template;
            }
            Err(fault) => faults.push(format!(
                "plugin {} (notify) {fault}; the default template was used",
                plugin_name.unwrap_or("?")
            )),
        }
    }
    let rendered = render_event(event, n, plugin_template, &vars, plugin_name, faults);
    Some(NewMessage {
        notifier: n.name.clone(),
        subject: rendered.subject,
        body: rendered.body,
        html: rendered.html,
        max_attempts: n.delivery.max_attempts,
        dedup_window_ms: n.delivery.dedup_window.as_millis() as u64,
        digest_window_ms: n.delivery.digest_window.as_millis() as u64,
    })
}

/// Renders with the chosen templates, falling back to the defaults.
fn render_event(
    event: &Event,
    n: &NotifierConfig,
    plugin_template: Option<(String, String)>,
    vars: &[(String, String)],
    plugin_name: Option<&str>,
    faults: &mut Vec<String>,
) -> Rendered {
    let data = template::event_data(event, &n.name, vars);
    let shape = n.channel.shape();
    let chosen = match plugin_template {
        Some((subject, body)) => Some((
            format!("plugin {} template", plugin_name.unwrap_or("?")),
            Ok(Templates {
                subject,
                body,
                html: None,
            }),
        )),
        None => n.templates.get(event.kind.as_str()).map(|o| {
            (
                format!("notifier {} template for {}", n.name, event.kind),
                overridden(o, default_templates(event.kind, shape)),
            )
        }),
    };
    if let Some((what, templates)) = chosen {
        match templates.and_then(|t| render_checked(&t, &data, shape)) {
            Ok(r) => return r,
            Err(e) => faults.push(format!("{what}: {e}; the default template was used")),
        }
    }
    let defaults = default_templates(event.kind, shape);
    render_checked(&defaults, &data, shape).unwrap_or_else(|e| {
        // Only a bug in a default template gets here; send the raw event.
        warn!("default template for {}: {e}", event.kind);
        Rendered {
            subject: format!("[gitpulse] {} {}", event.kind, event.repo.name()),
            body: serde_json::to_string_pretty(&data).unwrap_or_default(),
            html: None,
        }
    })
}

/// The host's templates; a webhook's default body is the event's JSON.
fn default_templates(kind: EventKind, shape: Shape) -> Templates {
    let mut t = template::default_for(kind, shape.html);
    if shape.json_body {
        t.body = "{{json this}}".into();
    }
    t
}

/// `defaults` with a configured override's parts read in.
fn overridden(
    o: &crate::config::TemplateOverride,
    defaults: Templates,
) -> Result<Templates, String> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    Ok(Templates {
        subject: o.subject.clone().unwrap_or(defaults.subject),
        body: o
            .body
            .as_deref()
            .map(read)
            .transpose()?
            .unwrap_or(defaults.body),
        html: match &o.html {
            Some(p) => Some(read(p)?),
            None => defaults.html,
        },
    })
}

/// Renders; a webhook body must be JSON.
fn render_checked(t: &Templates, data: &Value, shape: Shape) -> Result<Rendered, String> {
    let part = if shape.json_body {
        template::Part::Json
    } else {
        template::Part::Text
    };
    let r = template::render(t, data, part)?;
    if shape.json_body {
        template::check_json(&r.body).map_err(|e| format!("the webhook body is not JSON ({e})"))?;
    }
    Ok(r)
}

/// Renders the digest of `events` (JSON, as stored) for notifier `n`, and
/// what went wrong when its configured template could not be used (the
/// default was).
pub fn render_digest(
    n: &NotifierConfig,
    kind: &str,
    host: &str,
    events: &[String],
) -> (Rendered, Option<String>) {
    let shape = n.channel.shape();
    let events: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    let data = template::digest_data(kind, host, &events, &n.name);
    let mut defaults = template::default_digest(shape.html);
    if shape.json_body {
        defaults.body = "{\"kind\":\"digest\",\"of\":{{json kind}},\"host\":{{json host}},\"count\":{{count}},\"events\":{{json events}}}".into();
    }
    let mut fault = None;
    if let Some(o) = n.templates.get("digest") {
        match overridden(o, defaults.clone()).and_then(|t| render_checked(&t, &data, shape)) {
            Ok(r) => return (r, None),
            Err(e) => {
                fault = Some(format!(
                    "notifier {} template for digest: {e}; the default template was used",
                    n.name
                ))
            }
        }
    }
    let rendered = render_checked(&defaults, &data, shape).unwrap_or_else(|_| Rendered {
        subject: format!("[gitpulse] {} repositories {kind}", events.len()),
        body: serde_json::to_string(&data).unwrap_or_default(),
        html: None,
    });
    (rendered, fault)
}

/// A `plugin-fault` event about `detail`, found while sending through `n`
/// (its digest template), with a message for `n` if it takes such events:
/// the people who own that template hear of it. Host templates; never
/// digested.
fn fault_outgoing(n: &NotifierConfig, detail: String) -> Vec<Outgoing> {
    let event = Event::problem(
        EventKind::PluginFault,
        RepoRef::default(),
        detail,
        crate::model::now_ms(),
    );
    let mut ignored = Vec::new();
    let messages = n
        .filter
        .accepts(event.kind, event.repo.name(), event.repo.labels())
        .then(|| message_for(&event, n, None, None, &mut ignored))
        .flatten()
        .map(|mut m| {
            m.digest_window_ms = 0;
            m
        })
        .into_iter()
        .collect();
    vec![Outgoing {
        event: event.row(),
        messages,
    }]
}

/// A test message for `gitpulse notify test`.
pub fn test_message(n: &NotifierConfig) -> Rendered {
    let repo = RepoRef::new("gitpulse-test", "", None, Default::default());
    let mut event = Event::problem(
        EventKind::Changed,
        repo,
        "a test message from `gitpulse notify test`",
        crate::model::now_ms(),
    );
    event.severity = crate::events::Severity::Info;
    let data = template::event_data(&event, &n.name, &[]);
    Rendered {
        subject: format!("[gitpulse] test message for notifier {}", n.name),
        body: if n.channel.shape().json_body {
            serde_json::json!({ "kind": "test", "notifier": n.name, "event": data }).to_string()
        } else {
            format!("This is a test message from gitpulse through the notifier `{}`.\nIf you can read it, the notifier works.\n", n.name)
        },
        html: None,
    }
}

/// Problems with the templates a config names, for `gitpulse validate` and
/// reloads: each must compile, and render a sample event of its kind on its
/// notifier's channel within the limits (a webhook body as JSON), so a
/// template that would fall back to the default at its first real event is
/// caught before it is in service.
pub fn check_templates(config: &Config) -> Vec<crate::config::Problem> {
    let mut problems = Vec::new();
    for n in config.notifiers.values() {
        let mut problem = |field: String, message: String| {
            problems.push(crate::config::Problem {
                file: config.path.clone(),
                line: n.line,
                field: format!("notifier.{}.{field}", n.name),
                message,
            })
        };
        for (kind, o) in &n.templates {
            let mut compiled = true;
            if let Some(s) = &o.subject {
                if let Err(e) = template::check(s) {
                    problem(format!("templates.{kind}.subject"), e);
                    compiled = false;
                }
            }
            for (part, path) in [("body", &o.body), ("html", &o.html)] {
                if let Some(p) = path {
                    if let Ok(text) = std::fs::read_to_string(p) {
                        if let Err(e) = template::check(&text) {
                            problem(format!("templates.{kind}.{part} ({})", p.display()), e);
                            compiled = false;
                        }
                    }
                }
            }
            let Ok(kind) = kind.parse::<EventKind>() else {
                continue;
            };
            if compiled {
                if let Err(e) = render_sample(config, n, kind, o) {
                    problem(
                        format!("templates.{kind}"),
                        format!("rendering a sample {kind} event: {e}"),
                    );
                }
            }
        }
    }
    problems
}

/// Renders the sample event of `kind` with notifier `n`'s override `o`,
/// for a repository with every label the config's repositories use.
/// Templates that use plugin variables are left to send time: which
/// variables a plugin sets is known only when it runs, and templates
/// render in strict mode.
fn render_sample(
    config: &Config,
    n: &NotifierConfig,
    kind: EventKind,
    o: &crate::config::TemplateOverride,
) -> Result<(), String> {
    let shape = n.channel.shape();
    let templates = overridden(o, default_templates(kind, shape))?;
    if mentions_vars(&templates) {
        return Ok(());
    }
    let mut labels = BTreeMap::new();
    for repo in &config.repos {
        for (k, v) in &repo.labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let repo = RepoRef::new(
        "sample",
        "https://github.com/example/app.git",
        Some("main"),
        labels,
    );
    let data = template::event_data(&Event::sample(kind, repo), &n.name, &[]);
    render_checked(&templates, &data, shape).map(drop)
}

/// A notify plugin's own template (`subject`, `body`) rendered with the
/// sample event of `kind` on a `channel` (`email`, `webhook`, `log`), as
/// the daemon would render it, for `gitpulse plugin check`.
pub fn check_plugin_template(
    kind: EventKind,
    channel: &str,
    subject: &str,
    body: &str,
    vars: &[(String, String)],
) -> Result<(), String> {
    let templates = Templates {
        subject: subject.to_string(),
        body: body.to_string(),
        html: None,
    };
    let repo = RepoRef::new(
        "smoke",
        "https://git.example.com/smoke.git",
        Some("main"),
        [("team".to_string(), "platform".to_string())].into(),
    );
    let data = template::event_data(&Event::sample(kind, repo), "smoke", vars);
    render_checked(&templates, &data, Shape::of_kind(channel)).map(drop)
}

/// Whether a template reads plugin variables (`vars.x`, `vars/x`, `@root.vars`).
fn mentions_vars(t: &Templates) -> bool {
    [Some(&t.subject), Some(&t.body), t.html.as_ref()]
        .into_iter()
        .flatten()
        .any(|text| text.contains("vars"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::git::FailureClass;

    fn config(text: &str) -> Config {
        crate::config::parse(Path::new("/nonexistent/gitpulse.toml"), text, &|_| None).unwrap()
    }

    fn no_plugins(name: &str) -> Result<Plugin, LoadError> {
        Err(LoadError::Read {
            path: format!("{name}.wasm").into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }

    fn failed(repo: &str) -> Event {
        let mut e = Event::new(
            EventKind::Failed,
            RepoRef::new(repo, "https://h.example/x.git", None, Default::default()),
            1,
        );
        e.failure = Some(crate::events::Failure {
            class: FailureClass::ServerError,
            http_status: Some(503),
            message: "HTTP 503".into(),
        });
        e
    }

    fn changed(repo: &str) -> Event {
        Event::new(
            EventKind::Changed,
            RepoRef::new(repo, "https://h.example/x.git", None, Default::default()),
            1,
        )
    }

    /// Notifier names with a message, per event, in order.
    fn routed(out: &[Outgoing]) -> Vec<(String, Vec<String>)> {
        out.iter()
            .map(|o| {
                let names = o.messages.iter().map(|m| m.notifier.clone()).collect();
                (o.event.kind.clone(), names)
            })
            .collect()
    }

    const TWO: &str = "[notifier.errors]\nkind = \"log\"\nevents = [\"failed\"]\n\n\
                       [notifier.app-only]\nkind = \"log\"\nrepos = [\"app\"]\n";

    #[test]
    fn events_go_to_the_notifiers_whose_filters_take_them() {
        let config = config(TWO);
        let router = Router::new(&config, &no_plugins);
        let out = router.outgoing(vec![failed("app"), changed("lib")], &Audience::ALL);
        assert_eq!(
            routed(&out),
            [
                (
                    "failed".to_string(),
                    vec!["app-only".to_string(), "errors".to_string()]
                ),
                ("changed".to_string(), vec![]),
            ],
            "an event nobody takes is still recorded, with no message"
        );
        let named = ["errors".to_string()];
        let audience = Audience {
            notifiers: &named,
            plugin: None,
        };
        let out = router.outgoing(vec![failed("app")], &audience);
        assert_eq!(routed(&out)[0].1, ["errors"], "a repo's notifiers = [...]");
        assert!(router.wants(EventKind::Failed, &Audience::ALL));
        assert!(!router.wants(EventKind::Retrying, &Audience::ALL), "opt-in");
    }

    #[test]
    fn a_notify_plugin_that_cannot_load_is_a_fault_and_the_defaults_are_sent() {
        let config = config(TWO);
        let router = Router::new(&config, &no_plugins);
        let audience = Audience {
            notifiers: &[],
            plugin: Some("gone"),
        };
        let out = router.outgoing(vec![failed("app")], &audience);
        assert_eq!(out.len(), 2, "the event and a plugin-fault");
        assert_eq!(out[0].messages.len(), 2, "sent with the host's templates");
        assert_eq!(out[1].event.kind, "plugin-fault");
        assert!(
            out[1]
                .event
                .payload
                .contains("plugin gone (notify) could not load"),
            "{}",
            out[1].event.payload
        );
    }

    #[test]
    fn failures_wait_for_a_digest_unless_the_router_holds_none() {
        let config = config(TWO);
        let router = Router::new(&config, &no_plugins);
        let held = router.outgoing(vec![failed("app")], &Audience::ALL);
        assert!(held[0].messages.iter().all(|m| m.digest_window_ms > 0));
        assert_eq!(
            held[0].event.digest_key.as_deref(),
            Some("failed@h.example")
        );
        let at_once = Router::new(&config, &no_plugins)
            .without_digests()
            .outgoing(vec![failed("app")], &Audience::ALL);
        assert!(at_once[0].messages.iter().all(|m| m.digest_window_ms == 0));
    }

    #[test]
    fn a_webhook_template_that_is_not_json_falls_back_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("body.hbs");
        std::fs::write(&body, "not json: {{repo.name}}").unwrap();
        let config = config(&format!(
            "[notifier.hook]\nkind = \"webhook\"\nurl = \"https://hooks.example/x\"\n\
             templates.failed = {{ body = \"{}\" }}\n",
            body.display()
        ));
        let out = Router::new(&config, &no_plugins).outgoing(vec![failed("app")], &Audience::ALL);
        let message = &out[0].messages[0];
        let sent: serde_json::Value = serde_json::from_str(&message.body).unwrap();
        assert_eq!(sent["kind"], "failed", "the default body: the event's JSON");
        assert_eq!(out[1].event.kind, "plugin-fault");
        assert!(
            out[1].event.payload.contains("not JSON"),
            "{}",
            out[1].event.payload
        );
    }
}
