//! `[notifier.NAME]`: where notifications go and which ones.
//!
//! ```toml
//! [notifier.ops-mail]
//! kind = "email"
//! server = "smtp://mail.example.com:587"   # smtps:// for implicit TLS
//! starttls = "required"                    # required (default for smtp://), opportunistic, off
//! username = "gitpulse"
//! password_env = "SMTP_PASSWORD"           # or password_file
//! from = "gitpulse <gitpulse@example.com>"
//! to = ["ops@example.com"]
//! cc = []
//! ca_file = "corp-ca.pem"                  # extra trusted root, e.g. a self-signed server
//!
//! [notifier.chat]
//! kind = "webhook"
//! url = "https://hooks.example.com/gitpulse"
//! method = "POST"
//! headers = { "X-Team" = "platform" }
//! secret_env = "HOOK_SECRET"               # signs X-Gitpulse-Signature: sha256=<hex>
//! timeout = "10s"
//!
//! [notifier.audit]
//! kind = "log"
//! path = "events.jsonl"                    # omitted: stdout
//!
//! # Every kind: filters, delivery and templates.
//! events = ["changed", "failed", "recovered"]   # the default; add "retrying" to opt in
//! repos = ["app"]                          # or labels = { team = "platform" }
//! min_severity = "info"                    # info, warning, error
//! max_attempts = 8                         # then the message is dead-lettered
//! retry_base = "2s"
//! retry_max = "5m"
//! dedup_window = "1h"                      # identical messages within it are sent once
//! digest_window = "30s"                    # failures/recoveries of one host collect this long
//! digest_min = 3                           # and become one digest from this many
//! templates.changed = { subject = "{{repo.name}}: {{commit_count}} new", body = "changed.txt.hbs", html = "changed.html.hbs" }
//! ```
//!
//! This module checks the table and resolves paths; it reads no secret (they
//! are read when a message is sent, so rotating one needs no reload).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Check;
use crate::model::{EventKind, Severity};

/// Where a secret comes from. The value itself is read when it is used.
pub use crate::git::SecretRef;

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// STARTTLS, refusing a server that does not offer it.
    StartTlsRequired,
    /// STARTTLS when offered, plain otherwise.
    StartTlsOpportunistic,
    /// Plain text (loopback relays).
    Plain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// An email notifier.
pub struct EmailConfig {
    /// The SMTP server's host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Implicit TLS, STARTTLS (required or opportunistic) or none.
    pub security: SmtpSecurity,
    /// The login, if the server wants one.
    pub username: Option<String>,
    /// Where the login's password is.
    pub password: Option<SecretRef>,
    /// The sender, `name <address>` or an address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Copied recipients.
    pub cc: Vec<String>,
    /// An extra trusted root certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// Limit of one delivery.
    pub timeout: Duration,
}

/// How a webhook sends its body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HttpMethod {
    #[default]
    /// `POST` (the default).
    Post,
    /// `PUT`.
    Put,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// A webhook notifier.
pub struct WebhookConfig {
    /// Where to send (may carry a token: never printed).
    pub url: String,
    /// `POST` or `PUT`.
    pub method: HttpMethod,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// The HMAC key for `X-Gitpulse-Signature`.
    pub secret: Option<SecretRef>,
    /// Limit of one delivery.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// A notifier that writes JSON lines.
pub struct LogConfig {
    /// A JSON-lines file; none prints one line per message to stdout.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// Where a notifier delivers.
pub enum Channel {
    /// By SMTP.
    Email(EmailConfig),
    /// By HTTP.
    Webhook(WebhookConfig),
    /// To stdout or a file.
    Log(LogConfig),
}

impl Channel {
    /// The channel's name: `email`, `webhook` or `log`.
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Email(_) => "email",
            Channel::Webhook(_) => "webhook",
            Channel::Log(_) => "log",
        }
    }

    /// What a message for this channel is made of.
    pub fn shape(&self) -> Shape {
        Shape::of_kind(self.kind())
    }
}

/// What a channel's messages are made of, which decides their templates
/// and how values are escaped: the one place a channel kind says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// An HTML part beside the text (email).
    pub html: bool,
    /// The body is JSON (webhook): values escaped as JSON strings, the
    /// default body the event itself, the result checked to be JSON.
    pub json_body: bool,
}

impl Shape {
    /// The shape of the channel kind named `kind` (`email`, `webhook`,
    /// `log`); an unknown kind is plain text.
    pub fn of_kind(kind: &str) -> Shape {
        match kind {
            "email" => Shape {
                html: true,
                json_body: false,
            },
            "webhook" => Shape {
                html: false,
                json_body: true,
            },
            _ => Shape::default(),
        }
    }
}

/// Which events a notifier wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The event kinds it takes.
    pub events: BTreeSet<EventKind>,
    /// None: every repository.
    pub repos: Option<BTreeSet<String>>,
    /// Every pair must be among the repository's labels.
    pub labels: BTreeMap<String, String>,
    /// The least severity it takes.
    pub min_severity: Severity,
}

impl Filter {
    /// Whether an event of `kind` about a repository named `repo` with
    /// `labels` passes. Host events with no repository pass repo and label
    /// filters.
    pub fn accepts(&self, kind: EventKind, repo: &str, labels: &BTreeMap<String, String>) -> bool {
        if !self.events.contains(&kind) || kind.severity() < self.min_severity {
            return false;
        }
        if repo.is_empty() {
            return true;
        }
        self.repos.as_ref().is_none_or(|r| r.contains(repo))
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// How hard the outbox tries, and how it keeps floods down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Deliveries before a message is dead-lettered.
    pub max_attempts: u32,
    /// The retry curve's base delay.
    pub retry_base: Duration,
    /// The retry curve's cap.
    pub retry_max: Duration,
    /// An identical message within this long is sent once.
    pub dedup_window: Duration,
    /// How long failures and recoveries wait for a digest.
    pub digest_window: Duration,
    /// How many make a digest.
    pub digest_min: u32,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            max_attempts: 8,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            dedup_window: Duration::from_secs(3600),
            digest_window: Duration::from_secs(30),
            digest_min: 3,
        }
    }
}

/// A template override for one event kind (or `digest`): an inline subject,
/// and body/html template files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateOverride {
    /// An inline subject template.
    pub subject: Option<String>,
    /// A body template file.
    pub body: Option<PathBuf>,
    /// An HTML template file (email).
    pub html: Option<PathBuf>,
}

/// One `[notifier.NAME]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifierConfig {
    /// The `[notifier.NAME]` name.
    pub name: String,
    /// Where it delivers.
    pub channel: Channel,
    /// Which events it takes.
    pub filter: Filter,
    /// How hard it tries.
    pub delivery: Delivery,
    /// Keyed by event kind name or `digest`.
    pub templates: BTreeMap<String, TemplateOverride>,
    /// Where the table starts in the file.
    pub line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotifier {
    kind: Option<Spanned<String>>,
    // email
    server: Option<Spanned<String>>,
    starttls: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    to: Option<Spanned<Vec<String>>>,
    cc: Option<Spanned<Vec<String>>>,
    ca_file: Option<Spanned<String>>,
    allow_plain_login: Option<Spanned<bool>>,
    // webhook
    url: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    headers: Option<Spanned<BTreeMap<String, String>>>,
    secret_env: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    // email and webhook
    timeout: Option<Spanned<String>>,
    // log
    path: Option<Spanned<String>>,
    // every kind
    events: Option<Spanned<Vec<String>>>,
    repos: Option<Spanned<Vec<String>>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    min_severity: Option<Spanned<String>>,
    max_attempts: Option<Spanned<i64>>,
    retry_base: Option<Spanned<String>>,
    retry_max: Option<Spanned<String>>,
    dedup_window: Option<Spanned<String>>,
    digest_window: Option<Spanned<String>>,
    digest_min: Option<Spanned<i64>>,
    templates: Option<BTreeMap<String, Spanned<RawTemplate>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    subject: Option<String>,
    body: Option<String>,
    html: Option<String>,
}

/// The default event kinds: everything but the opt-in `retrying`.
fn default_events() -> BTreeSet<EventKind> {
    EventKind::ALL
        .into_iter()
        .filter(|k| *k != EventKind::Retrying)
        .collect()
}

pub(super) fn check_notifier(
    check: &mut Check<'_>,
    name: &str,
    table: &Spanned<RawNotifier>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Option<NotifierConfig> {
    let line = check.line(table.span().start);
    let r = table.get_ref();
    let label = format!("notifier.{name}");
    let before = check.problems.len();
    let kind = check_kind(check, r, &label, line)?;
    let timeout = r
        .timeout
        .as_ref()
        .and_then(|t| check.duration(t, &format!("{label}.timeout")))
        .unwrap_or(Duration::from_secs(10));
    let channel = match kind {
        "email" => check_email(check, r, &label, line, timeout, resolve).map(Channel::Email),
        "webhook" => check_webhook(check, r, &label, line, timeout, resolve).map(Channel::Webhook),
        _ => Some(Channel::Log(check_log(check, r, &label, resolve))),
    };
    let filter = check_filter(check, r, &label);
    let delivery = check_delivery(check, r, &label, line);
    let templates = check_template_files(check, r, &label, resolve);
    if check.problems.len() > before {
        return None;
    }
    Some(NotifierConfig {
        name: name.to_string(),
        channel: channel?,
        filter,
        delivery,
        templates,
        line,
    })
}

/// The notifier's `kind`, and no setting of another kind.
fn check_kind<'r>(
    check: &mut Check<'_>,
    r: &'r RawNotifier,
    label: &str,
    line: usize,
) -> Option<&'r str> {
    let field = |f: &str| format!("{label}.{f}");
    // Settings that belong to another kind are mistakes worth naming.
    let email_only: [(&str, bool); 10] = [
        ("server", r.server.is_some()),
        ("starttls", r.starttls.is_some()),
        ("username", r.username.is_some()),
        ("password_env", r.password_env.is_some()),
        ("password_file", r.password_file.is_some()),
        ("from", r.from.is_some()),
        ("to", r.to.is_some()),
        ("cc", r.cc.is_some()),
        ("ca_file", r.ca_file.is_some()),
        ("allow_plain_login", r.allow_plain_login.is_some()),
    ];
    let webhook_only: [(&str, bool); 5] = [
        ("url", r.url.is_some()),
        ("method", r.method.is_some()),
        ("headers", r.headers.is_some()),
        ("secret_env", r.secret_env.is_some()),
        ("secret_file", r.secret_file.is_some()),
    ];
    let log_only: [(&str, bool); 1] = [("path", r.path.is_some())];
    let timeout_set = [("timeout", r.timeout.is_some())];
    let kind = match &r.kind {
        None => {
            check.push(
                line,
                label.to_string(),
                "missing `kind` (email, webhook or log)",
            );
            return None;
        }
        Some(k) => k,
    };
    let foreign: Vec<&str> = match kind.get_ref().as_str() {
        "email" => webhook_only.iter().chain(&log_only).collect::<Vec<_>>(),
        "webhook" => email_only.iter().chain(&log_only).collect(),
        "log" => email_only
            .iter()
            .chain(&webhook_only)
            .chain(&timeout_set)
            .collect(),
        other => {
            check.at(
                kind,
                field("kind"),
                format!("`{other}`: use email, webhook or log"),
            );
            return None;
        }
    }
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(f, _)| *f)
    .collect();
    for f in foreign {
        check.push(
            line,
            field(f),
            format!("not a setting of {} notifiers", kind.get_ref()),
        );
    }

    Some(kind.get_ref().as_str())
}

/// `kind = "log"`: a file whose directory exists, or stdout.
fn check_log(
    check: &mut Check<'_>,
    r: &RawNotifier,
    label: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> LogConfig {
    let field = |f: &str| format!("{label}.{f}");
    let path = r.path.as_ref().map(|p| (p, resolve(p.get_ref())));
    // A file in a directory that does not exist is never written.
    if let Some((at, file)) = &path {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            let line = check.line(at.span().start);
            check.need(
                line,
                field("path"),
                super::Need::ParentDir(dir.to_path_buf()),
            );
        }
    }
    LogConfig {
        path: path.map(|(_, file)| file),
    }
}

/// Which events, repositories, labels and severities it takes.
fn check_filter(check: &mut Check<'_>, r: &RawNotifier, label: &str) -> Filter {
    let field = |f: &str| format!("{label}.{f}");
    let mut filter = Filter {
        events: default_events(),
        repos: None,
        labels: r
            .labels
            .as_ref()
            .map(|l| l.get_ref().clone())
            .unwrap_or_default(),
        min_severity: Severity::Info,
    };
    if let Some(events) = &r.events {
        filter.events.clear();
        for e in events.get_ref() {
            match e.parse::<EventKind>() {
                Ok(k) => {
                    filter.events.insert(k);
                }
                Err(msg) => check.at(events, field("events"), msg),
            }
        }
    }
    if let Some(repos) = &r.repos {
        filter.repos = Some(repos.get_ref().iter().cloned().collect());
    }
    if let Some(s) = &r.min_severity {
        match s.get_ref().parse() {
            Ok(sev) => filter.min_severity = sev,
            Err(msg) => check.at(s, field("min_severity"), msg),
        }
    }
    filter
}

/// Retries, dedup and digest windows.
fn check_delivery(check: &mut Check<'_>, r: &RawNotifier, label: &str, line: usize) -> Delivery {
    let field = |f: &str| format!("{label}.{f}");
    let mut delivery = Delivery::default();
    if let Some(n) = &r.max_attempts {
        delivery.max_attempts = check.positive(n, &field("max_attempts"), 1000).unwrap_or(8) as u32;
    }
    if let Some(n) = &r.digest_min {
        delivery.digest_min = check
            .positive(n, &field("digest_min"), 100_000)
            .unwrap_or(3) as u32;
    }
    for (value, slot, f) in [
        (&r.retry_base, &mut delivery.retry_base, "retry_base"),
        (&r.retry_max, &mut delivery.retry_max, "retry_max"),
        (&r.dedup_window, &mut delivery.dedup_window, "dedup_window"),
        (
            &r.digest_window,
            &mut delivery.digest_window,
            "digest_window",
        ),
    ] {
        if let Some(d) = value.as_ref().and_then(|v| check.duration(v, &field(f))) {
            *slot = d;
        }
    }
    if delivery.retry_base > delivery.retry_max {
        check.push(line, field("retry_base"), "is longer than retry_max");
    }
    delivery
}

/// `templates.KIND`: known kinds, template files that exist.
fn check_template_files(
    check: &mut Check<'_>,
    r: &RawNotifier,
    label: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> BTreeMap<String, TemplateOverride> {
    let field = |f: &str| format!("{label}.{f}");
    let mut templates = BTreeMap::new();
    for (key, t) in r.templates.iter().flatten() {
        if key != "digest" && key.parse::<EventKind>().is_err() {
            check.at(
                t,
                field(&format!("templates.{key}")),
                format!(
                    "`{key}` is not an event kind or `digest` (use {}, digest)",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ),
            );
            continue;
        }
        let raw = t.get_ref();
        let mut file = |p: &Option<String>, part: &str| -> Option<PathBuf> {
            let path = resolve(p.as_ref()?);
            check.need_file(t, field(&format!("templates.{key}.{part}")), &path);
            Some(path)
        };
        let body = file(&raw.body, "body");
        let html = file(&raw.html, "html");
        templates.insert(
            key.clone(),
            TemplateOverride {
                subject: raw.subject.clone(),
                body,
                html,
            },
        );
    }
    templates
}

pub(super) fn check_secret(
    check: &mut Check<'_>,
    label: &str,
    from_env: &Option<Spanned<String>>,
    from_file: &Option<Spanned<String>>,
    names: (&str, &str),
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Option<SecretRef> {
    match (from_env, from_file) {
        (Some(var), Some(_)) => {
            check.at(
                var,
                format!("{label}.{}", names.0),
                format!("use only one of {} and {}", names.0, names.1),
            );
            None
        }
        (Some(var), None) => {
            check.need_variable(var, format!("{label}.{}", names.0));
            Some(SecretRef::Env(var.get_ref().clone()))
        }
        (None, Some(file)) => {
            let path = resolve(file.get_ref());
            check.need_file(file, format!("{label}.{}", names.1), &path);
            Some(SecretRef::File(path))
        }
        (None, None) => None,
    }
}

fn check_email(
    check: &mut Check<'_>,
    r: &RawNotifier,
    label: &str,
    line: usize,
    timeout: Duration,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Option<EmailConfig> {
    let field = |f: &str| format!("{label}.{f}");
    // Every field is checked even when the server is wrong, so one run of
    // `gitpulse validate` shows every problem.
    let server_parts = check_server(check, r, label, line);
    let scheme = server_parts.as_ref().map(|(s, _, _)| *s).unwrap_or("smtp");
    let security = check_security(check, r, label, scheme);
    let password = check_secret(
        check,
        label,
        &r.password_env,
        &r.password_file,
        ("password_env", "password_file"),
        resolve,
    );
    let username = r.username.as_ref().map(|u| u.get_ref().clone());
    // Without TLS guaranteed, a login would send the password in clear to
    // a server (or anyone in between) that does not offer STARTTLS.
    let plain_allowed = r.allow_plain_login.as_ref().is_some_and(|a| *a.get_ref());
    let tls_optional = matches!(
        security,
        SmtpSecurity::StartTlsOpportunistic | SmtpSecurity::Plain
    );
    if password.is_some() && tls_optional && !plain_allowed {
        let at = r.starttls.as_ref().map(|s| check.line(s.span().start));
        check.push(
            at.unwrap_or(line),
            field("starttls"),
            "with a password, TLS must be required: the login would go in clear to a server \
             without STARTTLS; use starttls = \"required\" or smtps://, or set \
             allow_plain_login = true if the network is yours",
        );
    }
    if password.is_some() != username.is_some() {
        check.push(
            line,
            field("username"),
            "username and a password go together",
        );
    }
    let mut mailbox = |value: &Spanned<String>, f: &str| {
        if value.get_ref().parse::<lettre::message::Mailbox>().is_err() {
            check.at(
                value,
                field(f),
                format!("`{}` is not an email address", value.get_ref()),
            );
        }
    };
    let from = match &r.from {
        Some(from) => {
            mailbox(from, "from");
            from.get_ref().clone()
        }
        None => {
            check.push(
                line,
                field("from"),
                "missing (e.g. \"gitpulse <gitpulse@example.com>\")",
            );
            String::new()
        }
    };
    let list = |check: &mut Check<'_>, v: &Option<Spanned<Vec<String>>>, f: &str| -> Vec<String> {
        let Some(v) = v else { return Vec::new() };
        for a in v.get_ref() {
            if a.parse::<lettre::message::Mailbox>().is_err() {
                check.at(v, field(f), format!("`{a}` is not an email address"));
            }
        }
        v.get_ref().clone()
    };
    let to = list(check, &r.to, "to");
    let cc = list(check, &r.cc, "cc");
    if to.is_empty() {
        check.push(line, field("to"), "no recipients");
    }
    let ca_file = r.ca_file.as_ref().map(|f| {
        let path = resolve(f.get_ref());
        check.need_file(f, field("ca_file"), &path);
        path
    });
    let (_, host, port) = server_parts?;
    Some(EmailConfig {
        host,
        port,
        security,
        username,
        password,
        from,
        to,
        cc,
        ca_file,
        timeout,
    })
}

/// `server`: smtp:// or smtps://, a host, no credentials in it; its
/// scheme, host and port.
fn check_server(
    check: &mut Check<'_>,
    r: &RawNotifier,
    label: &str,
    line: usize,
) -> Option<(&'static str, String, u16)> {
    let field = |f: &str| format!("{label}.{f}");
    let mut server_parts = None;
    match &r.server {
        None => check.push(
            line,
            field("server"),
            "missing (e.g. smtp://mail.example.com:587)",
        ),
        Some(server) => {
            let parsed = url::Url::parse(server.get_ref()).ok();
            match parsed
                .as_ref()
                .and_then(|u| Some((u.scheme(), u.host_str()?, u.port())))
            {
                Some(("smtp", host, port)) => {
                    server_parts = Some(("smtp", host.to_string(), port.unwrap_or(587)))
                }
                Some(("smtps", host, port)) => {
                    server_parts = Some(("smtps", host.to_string(), port.unwrap_or(465)))
                }
                _ => check.at(
                    server,
                    field("server"),
                    format!(
                        "`{}` is not smtp://HOST[:PORT] or smtps://HOST[:PORT]",
                        crate::redact::url(server.get_ref())
                    ),
                ),
            }
            if parsed
                .as_ref()
                .is_some_and(|u| u.password().is_some() || !u.username().is_empty())
            {
                check.at(
                    server,
                    field("server"),
                    "put the user in `username` and the password in password_env or password_file, not in the URL",
                );
            }
        }
    }
    server_parts
}

/// `starttls` for the server's scheme.
fn check_security(
    check: &mut Check<'_>,
    r: &RawNotifier,
    label: &str,
    scheme: &str,
) -> SmtpSecurity {
    let field = |f: &str| format!("{label}.{f}");
    match (scheme, r.starttls.as_ref().map(|s| s.get_ref().as_str())) {
        ("smtps", None) => SmtpSecurity::Implicit,
        ("smtps", Some(_)) => {
            if let Some(s) = &r.starttls {
                check.at(
                    s,
                    field("starttls"),
                    "smtps:// is TLS from the start; starttls applies to smtp://",
                );
            }
            SmtpSecurity::Implicit
        }
        (_, None | Some("required")) => SmtpSecurity::StartTlsRequired,
        (_, Some("opportunistic")) => SmtpSecurity::StartTlsOpportunistic,
        (_, Some("off")) => SmtpSecurity::Plain,
        (_, Some(other)) => {
            if let Some(s) = &r.starttls {
                check.at(
                    s,
                    field("starttls"),
                    format!("`{other}`: use required, opportunistic or off"),
                );
            }
            SmtpSecurity::StartTlsRequired
        }
    }
}

fn check_webhook(
    check: &mut Check<'_>,
    r: &RawNotifier,
    label: &str,
    line: usize,
    timeout: Duration,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Option<WebhookConfig> {
    let field = |f: &str| format!("{label}.{f}");
    let Some(url) = &r.url else {
        check.push(
            line,
            field("url"),
            "missing (e.g. https://hooks.example.com/gitpulse)",
        );
        return None;
    };
    match url::Url::parse(url.get_ref()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            if u.password().is_some() {
                check.at(
                    url,
                    field("url"),
                    "put the secret in secret_env or secret_file, not in the URL",
                );
            }
        }
        _ => check.at(
            url,
            field("url"),
            format!(
                "`{}` is not an http:// or https:// URL",
                crate::redact::url(url.get_ref())
            ),
        ),
    }
    let method = match &r.method {
        None => HttpMethod::Post,
        Some(m) => match m.get_ref().to_ascii_uppercase().as_str() {
            "POST" => HttpMethod::Post,
            "PUT" => HttpMethod::Put,
            _ => {
                check.at(
                    m,
                    field("method"),
                    format!("`{}`: use POST or PUT", m.get_ref()),
                );
                HttpMethod::Post
            }
        },
    };
    let headers = r
        .headers
        .as_ref()
        .map(|h| h.get_ref().clone())
        .unwrap_or_default();
    if let Some(h) = &r.headers {
        for (k, v) in h.get_ref() {
            let bad_name = k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if bad_name || v.contains(['\r', '\n']) {
                check.at(h, field("headers"), format!("`{k}` is not a valid header"));
            }
        }
    }
    let secret = check_secret(
        check,
        label,
        &r.secret_env,
        &r.secret_file,
        ("secret_env", "secret_file"),
        resolve,
    );
    Some(WebhookConfig {
        url: url.get_ref().clone(),
        method,
        headers,
        secret,
        timeout,
    })
}

/// Reads a secret now. The error names where it should have been, never
/// what it holds.
pub fn read_secret(secret: &SecretRef) -> Result<crate::redact::Secret, String> {
    secret.read()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<crate::config::Config, crate::config::Problems> {
        // The file and its needs, as the daemon starts.
        let env = |v: &str| (v == "SECRET").then(|| "s".to_string());
        let (read, needs) =
            crate::config::parse_needing(Path::new("/etc/gitpulse.toml"), text, &env);
        crate::validate::with_needs_met(read, &needs, &env)
    }

    #[test]
    fn a_login_without_required_tls_needs_an_explicit_opt_in() {
        let mail = |starttls: &str, extra: &str| {
            format!(
                "[notifier.m]\nkind = \"email\"\nserver = \"smtp://mail.example.com\"\n\
                 starttls = \"{starttls}\"\nusername = \"u\"\npassword_env = \"SECRET\"\n\
                 from = \"a@example.com\"\nto = [\"b@example.com\"]\n{extra}"
            )
        };
        for starttls in ["opportunistic", "off"] {
            let err = parse(&mail(starttls, "")).unwrap_err();
            assert_eq!(err.0[0].field, "notifier.m.starttls", "{err}");
            assert!(err.0[0].message.contains("in clear"), "{err}");
            assert!(parse(&mail(starttls, "allow_plain_login = true\n")).is_ok());
        }
        assert!(parse(&mail("required", "")).is_ok());
    }

    #[test]
    fn a_log_file_in_a_missing_directory_is_refused() {
        let err =
            parse("[notifier.audit]\nkind = \"log\"\npath = \"/nonexistent/dir/audit.jsonl\"\n")
                .unwrap_err();
        assert_eq!(err.0[0].field, "notifier.audit.path");
        assert!(
            err.0[0].message.contains("/nonexistent/dir does not exist"),
            "{err}"
        );
        assert!(parse("[notifier.audit]\nkind = \"log\"\npath = \"/tmp/audit.jsonl\"\n").is_ok());
    }

    #[test]
    fn filters_take_kinds_repos_labels_and_severity() {
        let config = parse(
            "[notifier.ops]\nkind = \"log\"\nevents = [\"failed\", \"retrying\", \"changed\"]\n\
             labels = { team = \"core\" }\nmin_severity = \"warning\"\n\n\
             [notifier.app]\nkind = \"log\"\nrepos = [\"app\"]\n",
        )
        .unwrap();
        let core: BTreeMap<String, String> = [("team".into(), "core".into())].into();
        let ops = &config.notifiers["ops"].filter;
        assert!(ops.accepts(EventKind::Failed, "x", &core));
        assert!(ops.accepts(EventKind::Retrying, "x", &core), "opted in");
        assert!(
            !ops.accepts(EventKind::Changed, "x", &core),
            "below warning"
        );
        assert!(
            !ops.accepts(EventKind::Failed, "x", &BTreeMap::new()),
            "label missing"
        );
        let app = &config.notifiers["app"].filter;
        assert!(app.accepts(EventKind::Changed, "app", &BTreeMap::new()));
        assert!(!app.accepts(EventKind::Changed, "web", &BTreeMap::new()));
        assert!(
            !app.accepts(EventKind::Retrying, "app", &BTreeMap::new()),
            "retrying is opt-in"
        );
        assert!(
            app.accepts(EventKind::ConfigRejected, "", &BTreeMap::new()),
            "host events pass repo filters"
        );
    }

    #[test]
    fn email_and_webhook_settings_resolve_with_defaults() {
        let config = parse(
            "[notifier.mail]\nkind = \"email\"\nserver = \"smtps://mail.example.com\"\nfrom = \"a@example.com\"\n\
             to = [\"b@example.com\"]\nusername = \"u\"\npassword_env = \"SECRET\"\n\n\
             [notifier.hook]\nkind = \"webhook\"\nurl = \"https://h.example.com/x\"\nmethod = \"put\"\ntimeout = \"3s\"\n",
        )
        .unwrap();
        let Channel::Email(mail) = &config.notifiers["mail"].channel else {
            panic!()
        };
        assert_eq!((mail.port, mail.security), (465, SmtpSecurity::Implicit));
        assert_eq!(mail.password, Some(SecretRef::Env("SECRET".into())));
        let Channel::Webhook(hook) = &config.notifiers["hook"].channel else {
            panic!()
        };
        assert_eq!(
            (hook.method, hook.timeout),
            (HttpMethod::Put, Duration::from_secs(3))
        );
        assert_eq!(config.notifiers["hook"].delivery, Delivery::default());
    }

    #[test]
    fn secrets_in_urls_are_refused_without_being_repeated() {
        let err = parse(
            "[notifier.mail]\nkind = \"email\"\nserver = \"smtp://u:hunter2@mail.example.com\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not in the URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
