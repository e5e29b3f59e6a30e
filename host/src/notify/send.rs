//! Delivery of one rendered message through one notifier, by its channel
//! (`channel/`: SMTP, a signed webhook, a log line), with the connections
//! and files kept across messages.
//!
//! A delivery either returns the receiver's answer ("250 2.0.0 Ok",
//! "HTTP 200 …") or a [`SendError`] classified like a git failure, so the
//! outbox retries it with the same policy curve (Retry-After included) and
//! gives up at once on what waiting cannot fix (a refused password, a 4xx).
//! Secrets are read here, at send time, and appear in no error.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::channel;
use crate::config::{Channel, NotifierConfig};
use crate::git::FailureClass;

/// What is sent: a rendered message and what identifies it.
#[derive(Debug, Clone, Copy)]
pub struct Letter<'a> {
    /// The outbox id (receivers use it to drop repeats).
    pub delivery_id: i64,
    /// The event kind, or `digest`, or `test`.
    pub kind: &'a str,
    /// Subject (email) or nothing.
    pub subject: &'a str,
    /// The body.
    pub body: &'a str,
    /// The HTML part (email).
    pub html: Option<&'a str>,
}

/// How a delivery failed, in delivery's own words: a receiver that refuses
/// a message is not a repository that is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryClass {
    /// The receiver's name did not resolve.
    Dns,
    /// No connection (refused, reset, unreachable).
    Connect,
    /// It took too long.
    Timeout,
    /// TLS could not be set up, or the receiver's certificate was refused.
    Tls,
    /// The receiver is failing (HTTP 5xx, SMTP 4xx): it may take it later.
    Unavailable,
    /// HTTP 429: later, no sooner than it asks.
    RateLimited,
    /// Our credentials were refused (HTTP 401/403, SMTP 530/534/535) or
    /// could not be read.
    Auth,
    /// The message itself was refused (HTTP 4xx, SMTP 5xx): sending it
    /// again cannot help.
    Rejected,
    /// Writing it out failed (a log notifier's file).
    Io,
    /// Anything else.
    Other,
}

impl DeliveryClass {
    /// The name in dead letters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryClass::Dns => "dns",
            DeliveryClass::Connect => "connect",
            DeliveryClass::Timeout => "timeout",
            DeliveryClass::Tls => "tls",
            DeliveryClass::Unavailable => "unavailable",
            DeliveryClass::RateLimited => "rate-limited",
            DeliveryClass::Auth => "auth",
            DeliveryClass::Rejected => "rejected",
            DeliveryClass::Io => "io",
            DeliveryClass::Other => "other",
        }
    }

    /// Whether waiting may help (so the delivery is retried).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            DeliveryClass::Dns
                | DeliveryClass::Connect
                | DeliveryClass::Timeout
                | DeliveryClass::Unavailable
                | DeliveryClass::RateLimited
                | DeliveryClass::Io
                | DeliveryClass::Other
        )
    }

    /// The failure class whose retry curve a delivery of this class follows
    /// (the policy core's capped exponential backoff with full jitter).
    pub fn curve(self) -> FailureClass {
        match self {
            DeliveryClass::Dns => FailureClass::Dns,
            DeliveryClass::Connect => FailureClass::Connect,
            DeliveryClass::Timeout => FailureClass::Timeout,
            DeliveryClass::Tls => FailureClass::Tls,
            DeliveryClass::Unavailable => FailureClass::ServerError,
            DeliveryClass::RateLimited => FailureClass::RateLimited,
            DeliveryClass::Auth => FailureClass::Auth,
            DeliveryClass::Rejected => FailureClass::NotFound,
            DeliveryClass::Io | DeliveryClass::Other => FailureClass::Other,
        }
    }

    /// A failure classified for a git transfer (the shared HTTP code), in
    /// delivery's words.
    pub(crate) fn from_transfer(class: FailureClass) -> DeliveryClass {
        match class {
            FailureClass::Dns => DeliveryClass::Dns,
            FailureClass::Connect => DeliveryClass::Connect,
            FailureClass::Timeout | FailureClass::Cancelled => DeliveryClass::Timeout,
            FailureClass::Tls => DeliveryClass::Tls,
            FailureClass::ServerError => DeliveryClass::Unavailable,
            FailureClass::RateLimited => DeliveryClass::RateLimited,
            FailureClass::Auth => DeliveryClass::Auth,
            FailureClass::NotFound | FailureClass::RefNotFound | FailureClass::Protocol => {
                DeliveryClass::Rejected
            }
            FailureClass::DiskFull => DeliveryClass::Io,
            _ => DeliveryClass::Other,
        }
    }
}

impl std::fmt::Display for DeliveryClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// How it failed (decides retries).
    pub class: DeliveryClass,
    /// The HTTP status, when there was one.
    pub http_status: Option<u16>,
    /// The receiver's Retry-After, when it sent one.
    pub retry_after: Option<Duration>,
    /// For people; never a secret.
    pub message: String,
}

impl SendError {
    pub(crate) fn new(class: DeliveryClass, message: impl Into<String>) -> Self {
        SendError {
            class,
            http_status: None,
            retry_after: None,
            message: message.into(),
        }
    }
}

/// Senders keep connections (HTTP keep-alive) across messages.
#[derive(Default)]
pub struct Senders {
    agents: Mutex<HashMap<String, ureq::Agent>>,
    log_files: Mutex<HashMap<std::path::PathBuf, std::fs::File>>,
}

impl Senders {
    /// Sends `letter` through `notifier` now; the receiver's answer.
    pub fn send(
        &self,
        notifier: &NotifierConfig,
        letter: &Letter<'_>,
    ) -> Result<String, SendError> {
        match &notifier.channel {
            Channel::Email(email) => channel::email::send(email, letter),
            Channel::Webhook(hook) => {
                channel::webhook::send(&self.agent(&notifier.name, hook.timeout), hook, letter)
            }
            Channel::Log(log) => channel::log::send(&self.log_files, &notifier.name, log, letter),
        }
    }

    fn agent(&self, name: &str, timeout: Duration) -> ureq::Agent {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        // Keyed by the timeout too: a reload may change it.
        agents
            .entry(format!("{name}|{}", timeout.as_millis()))
            .or_insert_with(|| {
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .user_agent(concat!("gitpulse/", env!("CARGO_PKG_VERSION")))
                    .timeout_global(Some(timeout))
                    .max_redirects(0)
                    .build()
                    .into()
            })
            .clone()
    }
}
