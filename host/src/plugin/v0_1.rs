//! The generated `gitpulse:policy` bindings and the conversions between
//! them and gitpulse's own types. Nothing generated leaves this file except
//! through the conversion functions.

use std::time::Duration;

use gitpulse_policy_core::{AttemptContext, Decision, FailureClass, StopReason};

use crate::events::RepoRef;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "full-policy",
    // Host calls may stop the plugin: each is charged against its budget.
    imports: { "gitpulse:policy/host": trappable },
});

pub(crate) use self::gitpulse::policy::host::Level;
pub(crate) use self::gitpulse::policy::types as wit;
pub(crate) use exports::gitpulse::policy::{backoff, notify, retry};

/// The host's limits, as the plugin is told them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    /// Attempts before the host gives up.
    pub max_attempts: u32,
    /// The longest delay the host allows.
    pub max_delay: Duration,
}

impl From<FailureClass> for wit::FailureClass {
    fn from(class: FailureClass) -> Self {
        use wit::FailureClass as W;
        match class {
            FailureClass::Dns => W::Dns,
            FailureClass::Connect => W::Connect,
            FailureClass::Timeout => W::Timeout,
            FailureClass::Tls => W::Tls,
            FailureClass::ServerError => W::ServerError,
            FailureClass::RateLimited => W::RateLimited,
            FailureClass::Auth => W::Auth,
            FailureClass::NotFound => W::NotFound,
            FailureClass::RefNotFound => W::RefNotFound,
            FailureClass::Protocol => W::Protocol,
            FailureClass::CorruptRepo => W::CorruptRepo,
            FailureClass::LockHeld => W::LockHeld,
            FailureClass::DiskFull => W::DiskFull,
            FailureClass::Diverged => W::Diverged,
            FailureClass::Cancelled => W::Cancelled,
            FailureClass::Other => W::Other,
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

pub(crate) fn context_to_wit(
    ctx: &AttemptContext,
    message: &str,
    repo: &RepoRef,
    told: &Told,
) -> wit::AttemptContext {
    let mut wit_ctx = context_base(repo, told);
    wit_ctx.failure.message = message.to_string();
    refresh_context(&mut wit_ctx, ctx, told);
    wit_ctx
}

/// A context whose repository part is filled in: it stays the same over a
/// policy's decisions, so a policy builds it once and [`refresh_context`]s
/// it for each attempt instead of copying every string each time.
pub(crate) fn context_base(repo: &RepoRef, told: &Told) -> wit::AttemptContext {
    wit::AttemptContext {
        max_attempts: told.max_attempts,
        max_delay_ms: millis(told.max_delay),
        repo: wit::Repo {
            name: repo.name().to_string(),
            url: repo.url().to_string(),
            remote_host: repo.remote_host().to_string(),
            branch: repo.branch().to_string(),
            labels: repo
                .labels()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
        ..EMPTY_CONTEXT
    }
}

/// A context with nothing in it (allocates nothing).
pub(crate) const EMPTY_CONTEXT: wit::AttemptContext = wit::AttemptContext {
    attempt: 0,
    failure: wit::FailureDetail {
        class: wit::FailureClass::Other,
        http_status: None,
        retry_after_ms: None,
        git_code: None,
        message: String::new(),
    },
    elapsed_ms: 0,
    remaining_ms: None,
    previous_delay_ms: None,
    max_attempts: 0,
    max_delay_ms: 0,
    repo: wit::Repo {
        name: String::new(),
        url: String::new(),
        remote_host: String::new(),
        branch: String::new(),
        labels: Vec::new(),
    },
    budget: wit::Budget {
        remaining: 0,
        capacity: 0,
    },
};

/// Sets everything in `wit_ctx` that changes from one attempt to the next
/// but the failure's message.
pub(crate) fn refresh_context(
    wit_ctx: &mut wit::AttemptContext,
    ctx: &AttemptContext,
    told: &Told,
) {
    wit_ctx.attempt = ctx.attempt;
    wit_ctx.failure.class = ctx.class.into();
    wit_ctx.failure.http_status = ctx.http_status;
    wit_ctx.failure.retry_after_ms = ctx.retry_after.map(millis);
    wit_ctx.elapsed_ms = millis(ctx.elapsed);
    wit_ctx.remaining_ms = ctx.remaining.map(millis);
    wit_ctx.previous_delay_ms = ctx.previous_delay.map(millis);
    // A one-shot pull has the whole of its attempts; the daemon replaces
    // this with its host's real budget (`note_budget`).
    wit_ctx.budget = wit::Budget {
        remaining: told.max_attempts.saturating_sub(ctx.attempt),
        capacity: told.max_attempts,
    };
}

/// The longest policy text accepted in a stop reason.
pub(crate) const MAX_REASON: usize = 512;
/// The longest per-attempt timeout a plugin may ask for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A plugin's decision as the host's, or why it is unacceptable.
pub(crate) fn decision_from_wit(d: wit::Decision, told: &Told) -> Result<Decision, String> {
    match d {
        wit::Decision::Retry(r) => {
            let delay = Duration::from_millis(r.delay_ms);
            if delay > told.max_delay {
                return Err(format!(
                    "asked to wait {}, beyond the cap of {}",
                    humantime::format_duration(delay),
                    humantime::format_duration(told.max_delay)
                ));
            }
            let timeout = r.timeout_ms.map(Duration::from_millis);
            if let Some(t) = timeout {
                if t.is_zero() || t > MAX_TIMEOUT {
                    return Err(format!(
                        "asked for an attempt timeout of {} ms",
                        r.timeout_ms.unwrap_or(0)
                    ));
                }
            }
            Ok(Decision::RetryAfter { delay, timeout })
        }
        wit::Decision::Stop(reason) => Ok(Decision::Stop(match reason {
            wit::StopReason::NotRetryable => StopReason::NotRetryable,
            wit::StopReason::AttemptsExhausted => StopReason::AttemptsExhausted,
            wit::StopReason::Deadline => StopReason::Deadline,
            wit::StopReason::Budget => StopReason::Budget,
            wit::StopReason::Policy(text) => {
                if text.len() > MAX_REASON {
                    return Err(format!(
                        "returned a {}-byte stop reason (limit {MAX_REASON})",
                        text.len()
                    ));
                }
                StopReason::Policy(text)
            }
        })),
    }
}

/// A notify plugin's answer, in the host's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyChoice {
    /// Send nothing; the reason is logged.
    Suppress(String),
    /// Send it, maybe with the plugin's template and variables.
    Send {
        /// The plugin's own (subject, body) templates; none: the host's.
        template: Option<(String, String)>,
        /// Extra variables, `vars.NAME` in templates.
        vars: Vec<(String, String)>,
    },
}

impl From<&crate::events::Event> for wit::Event {
    fn from(e: &crate::events::Event) -> Self {
        use crate::events::EventKind as K;
        let kind = match e.kind {
            K::Changed => wit::EventKind::Changed,
            K::Failed => wit::EventKind::Failed,
            K::Recovered => wit::EventKind::Recovered,
            K::Retrying => wit::EventKind::Retrying,
            K::PluginFault => wit::EventKind::PluginFault,
            K::ConfigRejected => wit::EventKind::ConfigRejected,
            // Contract 0.x has no step kind: plugins see a failure (its class
            // `other`, the step's status and output in the message). A kind of
            // its own waits for the next WIT version.
            K::StepFailed => wit::EventKind::Failed,
        };
        wit::Event {
            kind,
            repo: wit::Repo {
                name: e.repo.name().to_owned(),
                url: e.repo.url().to_owned(),
                remote_host: e.repo.remote_host().to_owned(),
                branch: e.repo.branch().to_owned(),
                labels: e
                    .repo
                    .labels()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
            old: e.old.clone(),
            new: e.new.clone(),
            commits: e
                .commits
                .iter()
                .map(|c| wit::Commit {
                    sha: c.sha.clone(),
                    author: c.author.clone(),
                    subject: c.subject.clone(),
                })
                .collect(),
            failure: e.failure.as_ref().map(|f| wit::FailureDetail {
                class: f.class.into(),
                http_status: f.http_status,
                retry_after_ms: None,
                git_code: None,
                message: f.message.clone(),
            }),
            attempts: e.attempts,
            at_ms: e.at_ms,
        }
    }
}

pub(crate) fn channel_to_wit(name: &str, kind: &str) -> wit::Channel {
    wit::Channel {
        name: name.to_string(),
        kind: match kind {
            "email" => wit::ChannelKind::Email,
            "webhook" => wit::ChannelKind::Webhook,
            _ => wit::ChannelKind::Log,
        },
    }
}

impl From<wit::NotifyChoice> for NotifyChoice {
    fn from(c: wit::NotifyChoice) -> Self {
        match c {
            wit::NotifyChoice::Suppress(reason) => NotifyChoice::Suppress(reason),
            wit::NotifyChoice::Send(m) => NotifyChoice::Send {
                template: m.template.map(|t| (t.subject, t.body)),
                vars: m.vars,
            },
        }
    }
}
