//! For plugin authors: scaffold a plugin crate, smoke-check a component,
//! replay a failure trace through it.
//!
//! The scaffold is self-contained: it vendors this gitpulse's SDK, policy
//! core and WIT contract, so it builds as is with nothing but the public
//! crate registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gitpulse_policy_core::{AttemptContext, Decision, FailureClass};

use crate::events::{Commit, Event, EventKind, RepoRef};
use crate::plugin::{CallContext, NotifyChoice, Plugin, Told};
use crate::policy::WasmPolicy;
use crate::policy::{clamp, Limits, RetryPolicy};

/// Which roles a scaffolded plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decides whether and when to retry.
    Retry,
    /// Chooses the delay curve only.
    Backoff,
    /// Shapes notifications.
    Notify,
    /// Every role.
    Full,
}

impl Role {
    fn feature(self) -> &'static str {
        match self {
            Role::Retry => "retry",
            Role::Backoff => "backoff",
            Role::Notify => "notify",
            Role::Full => "full",
        }
    }
}

#[derive(Debug, thiserror::Error)]
/// Why a plugin crate could not be scaffolded.
pub enum ScaffoldError {
    #[error("plugin name `{0}`: use lowercase letters, digits and dashes, starting with a letter")]
    /// The name is not a crate name.
    BadName(String),
    #[error("{0} already exists; pick another name or directory")]
    /// The directory exists.
    Exists(PathBuf),
    #[error("writing {path}: {source}")]
    /// A file could not be written.
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

const WIT: &str = include_str!("../../wit/policy.wit");
const SDK_MANIFEST: &str = include_str!("../../plugins/sdk/Cargo.toml");
const SDK_FILES: [(&str, &str); 4] = [
    ("src/lib.rs", include_str!("../../plugins/sdk/src/lib.rs")),
    ("src/host.rs", include_str!("../../plugins/sdk/src/host.rs")),
    (
        "src/helpers.rs",
        include_str!("../../plugins/sdk/src/helpers.rs"),
    ),
    (
        "src/testing.rs",
        include_str!("../../plugins/sdk/src/testing.rs"),
    ),
];
const CORE_MANIFEST: &str = include_str!("../../plugins/policy-core/Cargo.toml");
const CORE_LIB: &str = include_str!("../../plugins/policy-core/src/lib.rs");

/// Writes a new plugin crate `dir/name` implementing `role`; returns its path.
/// Nothing is written if the name is invalid or the directory exists.
pub fn scaffold(name: &str, dir: &Path, role: Role) -> Result<PathBuf, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let standalone = |manifest: &str| {
        manifest
            .replace("edition.workspace = true", "edition = \"2021\"")
            .replace("license.workspace = true", "license = \"Apache-2.0\"")
            // The workspace's lints stay with the workspace.
            .replace("\n[lints]\nworkspace = true\n", "\n")
    };
    let mut files: Vec<(PathBuf, String)> = vec![
        ("Cargo.toml".into(), plugin_manifest(name, role)),
        ("src/lib.rs".into(), plugin_source(role)),
        ("wit/policy.wit".into(), WIT.to_string()),
        ("README.md".into(), plugin_readme(name, role)),
        (".gitignore".into(), "target/\n".into()),
        (
            "vendor/gitpulse-plugin-sdk/Cargo.toml".into(),
            standalone(SDK_MANIFEST).replace("../policy-core", "../gitpulse-policy-core"),
        ),
        (
            "vendor/gitpulse-policy-core/Cargo.toml".into(),
            standalone(CORE_MANIFEST),
        ),
        (
            "vendor/gitpulse-policy-core/src/lib.rs".into(),
            CORE_LIB.to_string(),
        ),
    ];
    for (file, text) in SDK_FILES {
        files.push((
            PathBuf::from("vendor/gitpulse-plugin-sdk").join(file),
            text.to_string(),
        ));
    }
    // Write beside, then rename: a failed scaffold leaves nothing behind.
    let scratch = dir.join(format!(".{name}.scaffold-{}", std::process::id()));
    let result = (|| {
        for (file, text) in &files {
            let path = scratch.join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| ScaffoldError::Write {
                    path: parent.into(),
                    source,
                })?;
            }
            std::fs::write(&path, text).map_err(|source| ScaffoldError::Write {
                path: path.clone(),
                source,
            })?;
        }
        std::fs::rename(&scratch, &root).map_err(|source| ScaffoldError::Write {
            path: root.clone(),
            source,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result.map(|_| root)
}

fn plugin_manifest(name: &str, role: Role) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
gitpulse-plugin-sdk = {{ path = "vendor/gitpulse-plugin-sdk", features = ["{feature}"] }}

[profile.release]
opt-level = "s"
lto = true
strip = true
codegen-units = 1

# A standalone crate, even when created inside another workspace.
[workspace]
"#,
        feature = role.feature()
    )
}

fn plugin_source(role: Role) -> String {
    let retry = r#"
impl retry::Guest for Policy {
    /// Called after every failed attempt.
    fn decide(ctx: AttemptContext) -> Decision {
        if helpers::is_permanent(ctx.failure.class) {
            return Decision::Stop(StopReason::NotRetryable);
        }
        if ctx.attempt >= ctx.max_attempts {
            return Decision::Stop(StopReason::AttemptsExhausted);
        }
        let base = helpers::setting("base_ms", 1000u64);
        let ceiling = helpers::ceiling_ms(base, ctx.max_delay_ms, ctx.attempt);
        let delay = helpers::full_jitter(ceiling).max(ctx.failure.retry_after_ms.unwrap_or(0));
        Decision::Retry(RetryAfter { delay_ms: delay.min(ctx.max_delay_ms), timeout_ms: None })
    }
}
"#;
    let backoff = r#"
impl backoff::Guest for Policy {
    /// The wait before the next attempt, when the host decided to retry.
    fn delay_ms(ctx: AttemptContext) -> u64 {
        let base = helpers::setting("base_ms", 1000u64);
        helpers::equal_jitter(helpers::ceiling_ms(base, ctx.max_delay_ms, ctx.attempt))
    }
}
"#;
    let notify = r#"
impl notify::Guest for Policy {
    /// Which message (if any) to send for an event on a channel.
    fn choose(event: Event, _channel: Channel) -> NotifyChoice {
        if event.kind == EventKind::Retrying {
            return NotifyChoice::Suppress("retries are not worth a message".into());
        }
        NotifyChoice::Send(Message { template: None, vars: vec![] })
    }
}
"#;
    let (mut uses, mut body, mut tests) = (Vec::new(), String::new(), String::new());
    if matches!(role, Role::Retry | Role::Full) {
        uses.push("retry");
        body.push_str(retry);
        tests.push_str(
            r#"
    #[test]
    fn permanent_failures_stop() {
        let d = Harness::new().run(|| <Policy as retry::Guest>::decide(context(FailureClass::Auth, 1)));
        assert_eq!(d, Decision::Stop(StopReason::NotRetryable));
    }
"#,
        );
    }
    if matches!(role, Role::Backoff | Role::Full) {
        uses.push("backoff");
        body.push_str(backoff);
        tests.push_str(
            r#"
    #[test]
    fn delays_grow_and_stay_capped() {
        let d = Harness::new().seed(1).run(|| <Policy as backoff::Guest>::delay_ms(context(FailureClass::Timeout, 3)));
        assert!((2000..=4000).contains(&d), "{d}");
    }
"#,
        );
    }
    if matches!(role, Role::Notify | Role::Full) {
        uses.push("notify");
        body.push_str(notify);
    }
    format!(
        r#"//! A gitpulse policy plugin. Build: `cargo build --release --target wasm32-wasip2`,
//! then try it: `gitpulse plugin check target/wasm32-wasip2/release/*.wasm`.

#[allow(unused_imports)]
use gitpulse_plugin_sdk::types::*;
use gitpulse_plugin_sdk::{{export, helpers, {uses}}};

pub struct Policy;
{body}
export!(Policy);

#[cfg(test)]
mod tests {{
    #[allow(unused_imports)]
    use super::*;
    #[allow(unused_imports)]
    use gitpulse_plugin_sdk::testing::{{context, Harness}};
{tests}}}
"#,
        uses = uses.join(", ")
    )
}

fn plugin_readme(name: &str, role: Role) -> String {
    format!(
        "# {name}\n\nA gitpulse policy plugin ({} role).\n\n```sh\nrustup target add wasm32-wasip2\ncargo test                                         # native unit tests\ncargo build --release --target wasm32-wasip2\ngitpulse plugin check target/wasm32-wasip2/release/{}.wasm\ngitpulse plugin simulate target/wasm32-wasip2/release/{}.wasm --classes server-error,server-error,timeout\ngitpulse pull URL DIR --policy target/wasm32-wasip2/release/{}.wasm\n```\n\nSettings come from `--plugin-config key=value` (or `[plugin.NAME]` in the daemon config) and are read with `helpers::setting`.\n",
        role.feature(),
        name.replace('-', "_"),
        name.replace('-', "_"),
        name.replace('-', "_")
    )
}

/// One failure of a trace to replay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct TraceStep {
    /// The failure class, by name.
    pub class: String,
    #[serde(default)]
    /// The HTTP status, if any.
    pub http_status: Option<u16>,
    #[serde(default)]
    /// The server's Retry-After, if any.
    pub retry_after_ms: Option<u64>,
    #[serde(default)]
    /// The failure message, if any.
    pub message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
/// Why a trace cannot be replayed.
pub enum TraceError {
    #[error("{path}:{line}: {reason}")]
    /// A line of a trace file is not understood.
    Line {
        /// The file.
        path: String,
        /// Its line.
        line: usize,
        /// Why.
        reason: String,
    },
    #[error("{0}")]
    /// `--classes` names something that is not a class.
    Classes(String),
    #[error("the trace is empty")]
    /// The trace is empty.
    Empty,
}

/// Parses a JSON-lines trace (`{"class":"server-error","http_status":503}`
/// per line; blank lines and `#` comments skipped).
pub fn parse_trace(path: &str, text: &str) -> Result<Vec<TraceStep>, TraceError> {
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_text = line.trim();
        if line_text.is_empty() || line_text.starts_with('#') {
            continue;
        }
        let step: TraceStep = serde_json::from_str(line_text).map_err(|e| TraceError::Line {
            path: path.into(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        step.class
            .parse::<FailureClass>()
            .map_err(|e| TraceError::Line {
                path: path.into(),
                line: i + 1,
                reason: e.to_string(),
            })?;
        steps.push(step);
    }
    if steps.is_empty() {
        return Err(TraceError::Empty);
    }
    Ok(steps)
}

/// `server-error,server-error,timeout` as a trace.
pub fn classes_trace(list: &str) -> Result<Vec<TraceStep>, TraceError> {
    let mut steps = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        name.parse::<FailureClass>()
            .map_err(|e| TraceError::Classes(e.to_string()))?;
        steps.push(TraceStep {
            class: name.into(),
            http_status: None,
            retry_after_ms: None,
            message: None,
        });
    }
    if steps.is_empty() {
        return Err(TraceError::Empty);
    }
    Ok(steps)
}

/// One decision of a replay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// Which attempt.
    pub attempt: u32,
    /// Its failure class.
    pub class: String,
    /// `retry` or `stop`.
    pub decision: String,
    /// How long the policy waits before the next one.
    pub delay_ms: Option<u64>,
    /// Why it stopped, or the fault that made the built-in decide.
    pub note: Option<String>,
    /// Simulated time at which the next attempt starts.
    pub at_ms: u64,
}

/// Replays `trace` through `policy` (a plugin, with the built-in standing
/// in where it lacks the role or faults), attempt by attempt, until a stop or the end of the trace.
/// Time is simulated: no real waiting.
pub fn simulate(policy: &mut WasmPolicy, trace: &[TraceStep], told: Told) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut elapsed = Duration::ZERO;
    let mut previous = None;
    for (i, step) in trace.iter().enumerate() {
        let class: FailureClass = step.class.parse().unwrap_or(FailureClass::Other);
        let ctx = AttemptContext {
            attempt: i as u32 + 1,
            class,
            http_status: step.http_status,
            retry_after: step.retry_after_ms.map(Duration::from_millis),
            elapsed,
            remaining: None,
            previous_delay: previous,
        };
        // The same path a pull takes: plugin where it has the role, built-in
        // otherwise or on a fault, then the host's clamp.
        policy.note_failure_message(step.message.as_deref().unwrap_or(""));
        let limits = Limits {
            max_attempts: told.max_attempts,
            max_delay: told.max_delay,
            remaining: None,
        };
        let decision = clamp(policy.decide(&ctx), &ctx, &limits);
        let notices = policy.take_notices();
        let fault_note = (!notices.is_empty()).then(|| notices.join("; "));
        match decision {
            Decision::RetryAfter { delay, .. } => {
                elapsed += delay;
                previous = Some(delay);
                steps.push(Step {
                    attempt: ctx.attempt,
                    class: step.class.clone(),
                    decision: "retry".into(),
                    delay_ms: Some(delay.as_millis() as u64),
                    note: fault_note,
                    at_ms: elapsed.as_millis() as u64,
                });
            }
            Decision::Stop(reason) => {
                steps.push(Step {
                    attempt: ctx.attempt,
                    class: step.class.clone(),
                    decision: "stop".into(),
                    delay_ms: None,
                    note: Some(
                        fault_note
                            .map(|f| format!("{reason} ({f})"))
                            .unwrap_or_else(|| reason.to_string()),
                    ),
                    at_ms: elapsed.as_millis() as u64,
                });
                break;
            }
        }
    }
    steps
}

/// The timeline as a table, then the delay curve as a horizontal bar chart.
pub fn render_timeline(steps: &[Step]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7}  {:<14} {:<8} {:>10} {:>11}  note",
        "attempt", "class", "decision", "delay", "next at"
    );
    for s in steps {
        let _ = writeln!(
            out,
            "{:>7}  {:<14} {:<8} {:>10} {:>11}  {}",
            s.attempt,
            s.class,
            s.decision,
            s.delay_ms
                .map(|d| format!("{d} ms"))
                .unwrap_or_else(|| "-".into()),
            if s.decision == "retry" {
                format!("{:.1} s", s.at_ms as f64 / 1000.0)
            } else {
                "-".into()
            },
            s.note.as_deref().unwrap_or("")
        );
    }
    let delays: Vec<(u32, u64)> = steps
        .iter()
        .filter_map(|s| s.delay_ms.map(|d| (s.attempt, d)))
        .collect();
    if let Some(max) = delays.iter().map(|(_, d)| *d).max() {
        const WIDTH: u64 = 50;
        let _ = writeln!(out, "\ndelay curve (each # ≈ {} ms)", (max / WIDTH).max(1));
        for (attempt, d) in delays {
            let bar = if max == 0 {
                0
            } else {
                (d * WIDTH).div_ceil(max)
            };
            let _ = writeln!(
                out,
                "{attempt:>3} | {:<50} {d} ms",
                "#".repeat(bar as usize)
            );
        }
    }
    out
}

/// The outcome of `gitpulse plugin check`.
#[derive(Debug, Clone, Default)]
pub struct SmokeReport {
    /// Plugin calls made.
    pub calls: usize,
    /// Faults, with what was asked.
    pub faults: Vec<String>,
    /// What each role answered, for people.
    pub lines: Vec<String>,
    /// The templates the plugin asked to send with, for the caller to
    /// render (rendering is the notifier's business, not the plugin host's).
    pub templates: Vec<SmokeTemplate>,
}

/// A template a notify plugin chose during the smoke trace.
#[derive(Debug, Clone)]
pub struct SmokeTemplate {
    /// The event kind it was chosen for.
    pub kind: EventKind,
    /// The channel it was chosen for (`email`, `webhook`, `log`).
    pub channel: &'static str,
    /// Its subject template.
    pub subject: String,
    /// Its body template.
    pub body: String,
    /// The variables the plugin passed with it.
    pub vars: Vec<(String, String)>,
}

/// Calls every role the plugin exports on a fixed trace: each failure class
/// at attempts 1 and 3, and one event of each kind on each channel.
pub fn smoke(plugin: &mut Plugin, told: Told) -> SmokeReport {
    let mut report = SmokeReport::default();
    let repo = RepoRef::new(
        "smoke",
        "https://git.example.com/smoke.git",
        Some("main"),
        [("team".to_string(), "platform".to_string())].into(),
    );
    for class in FailureClass::ALL {
        for attempt in [1, 3] {
            let ctx = AttemptContext {
                attempt,
                class,
                http_status: None,
                retry_after: None,
                elapsed: Duration::from_secs(attempt as u64),
                remaining: None,
                previous_delay: None,
            };
            let wit_ctx = CallContext::for_attempt(&ctx, "smoke test", &repo, &told);
            if plugin.roles.retry {
                report.calls += 1;
                match plugin.decide(&wit_ctx, &told) {
                    Ok(d) if attempt == 1 => report
                        .lines
                        .push(format!("retry   {class:<14} → {}", describe(&d))),
                    Ok(_) => {}
                    Err(f) => report
                        .faults
                        .push(format!("retry.decide({class}, attempt {attempt}): {f}")),
                }
            }
            if plugin.roles.backoff {
                report.calls += 1;
                if let Err(f) = plugin.delay(&wit_ctx, &told) {
                    report
                        .faults
                        .push(format!("backoff.delay-ms({class}, attempt {attempt}): {f}"));
                }
            }
        }
    }
    if plugin.roles.notify {
        let mut event = Event::new(EventKind::Changed, repo.clone(), 1_700_000_000_000);
        event.old = Some("1".repeat(40));
        event.new = Some("2".repeat(40));
        event.commits = vec![Commit {
            sha: "2".repeat(40),
            author: "Ada".into(),
            subject: "Fix the thing".into(),
        }];
        for kind in EventKind::ALL {
            event.kind = kind;
            for channel in ["email", "webhook", "log"] {
                report.calls += 1;
                let label = format!("{kind} on {channel}");
                match plugin.notify(&event, "smoke", channel) {
                    Ok(choice) => {
                        report.lines.push(format!(
                            "notify  {label:<22} → {}",
                            describe_choice(&choice)
                        ));
                        if let NotifyChoice::Send {
                            template: Some((subject, body)),
                            vars,
                        } = choice
                        {
                            report.templates.push(SmokeTemplate {
                                kind,
                                channel,
                                subject,
                                body,
                                vars,
                            });
                        }
                    }
                    Err(f) => report.faults.push(format!("notify.choose({label}): {f}")),
                }
            }
        }
    }
    report
}

/// A notify choice in a few words.
fn describe_choice(choice: &NotifyChoice) -> String {
    match choice {
        NotifyChoice::Suppress(reason) => format!("suppress ({reason})"),
        NotifyChoice::Send { template, vars } => match template {
            Some((subject, _)) => format!(
                "send own template \"{}\" (+{} vars)",
                subject.chars().take(40).collect::<String>(),
                vars.len()
            ),
            None => format!("send default template (+{} vars)", vars.len()),
        },
    }
}

fn describe(d: &Decision) -> String {
    match d {
        Decision::RetryAfter { delay, .. } => format!("retry after {} ms", delay.as_millis()),
        Decision::Stop(reason) => format!("stop ({reason})"),
    }
}

/// `key=value` pairs into settings; the error names the bad pair.
pub fn parse_settings(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| format!("--plugin-config `{p}`: expected KEY=VALUE"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_parse_and_point_at_bad_lines() {
        let steps = parse_trace("t.jsonl", "# comment\n{\"class\":\"server-error\",\"http_status\":503}\n\n{\"class\":\"timeout\"}\n").unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].http_status, Some(503));
        let err = parse_trace(
            "t.jsonl",
            "{\"class\":\"timeout\"}\n{\"class\":\"teapot\"}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("t.jsonl:2:") && err.contains("teapot"),
            "{err}"
        );
        assert!(classes_trace("server-error, nope")
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    #[test]
    fn the_plot_scales_bars_to_the_longest_delay() {
        let steps = vec![
            Step {
                attempt: 1,
                class: "timeout".into(),
                decision: "retry".into(),
                delay_ms: Some(100),
                note: None,
                at_ms: 100,
            },
            Step {
                attempt: 2,
                class: "timeout".into(),
                decision: "retry".into(),
                delay_ms: Some(1000),
                note: None,
                at_ms: 1100,
            },
            Step {
                attempt: 3,
                class: "auth".into(),
                decision: "stop".into(),
                delay_ms: None,
                note: Some("not retryable".into()),
                at_ms: 1100,
            },
        ];
        let text = render_timeline(&steps);
        assert!(
            text.contains(&format!("  2 | {} 1000 ms", "#".repeat(50))),
            "{text}"
        );
        assert!(
            text.contains(&format!("  1 | {:<50} 100 ms", "#".repeat(5))),
            "{text}"
        );
        assert!(text.contains("not retryable"));
    }

    #[test]
    fn scaffold_refuses_bad_names_and_existing_dirs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            scaffold("Bad Name", dir.path(), Role::Retry),
            Err(ScaffoldError::BadName(_))
        ));
        let made = scaffold("my-policy", dir.path(), Role::Full).unwrap();
        assert!(made.join("vendor/gitpulse-plugin-sdk/src/lib.rs").exists());
        assert!(std::fs::read_to_string(made.join("src/lib.rs"))
            .unwrap()
            .contains("impl notify::Guest"));
        assert!(matches!(
            scaffold("my-policy", dir.path(), Role::Retry),
            Err(ScaffoldError::Exists(_))
        ));
    }

    #[test]
    fn settings_must_be_key_value() {
        assert_eq!(
            parse_settings(&["a=1".into(), "b=x=y".into()]).unwrap()["b"],
            "x=y"
        );
        assert!(parse_settings(&["novalue".into()])
            .unwrap_err()
            .contains("novalue"));
    }
}
