//! Delivery of one rendered message through one notifier: SMTP (lettre),
//! an HTTP webhook signed with HMAC-SHA256 (ureq), or a log line.
//!
//! A delivery either returns the receiver's answer ("250 2.0.0 Ok",
//! "HTTP 200 …") or a [`SendError`] classified like a git failure, so the
//! outbox retries it with the same policy curve (Retry-After included) and
//! gives up at once on what waiting cannot fix (a refused password, a 4xx).
//! Secrets are read here, at send time, and appear in no error.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::{
    read_secret, Channel, EmailConfig, HttpMethod, LogConfig, NotifierConfig, SmtpSecurity,
    WebhookConfig,
};
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
    fn from_transfer(class: FailureClass) -> DeliveryClass {
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
    fn new(class: DeliveryClass, message: impl Into<String>) -> Self {
        SendError {
            class,
            http_status: None,
            retry_after: None,
            message: message.into(),
        }
    }
}

/// The `X-Gitpulse-Signature-256` value: `sha256=<hex>` of the HMAC-SHA256
/// of `TIMESTAMP.DELIVERY.BODY`.
pub fn signed(secret: &[u8], timestamp: &str, delivery: i64, body: &[u8]) -> String {
    let mut message = format!("{timestamp}.{delivery}.").into_bytes();
    message.extend_from_slice(body);
    signature(secret, &message)
}

/// The signature header value for `body`: `sha256=<hex of HMAC-SHA256>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex = hex::encode(digest);
    format!("sha256={hex}")
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
            Channel::Email(email) => send_email(email, letter),
            Channel::Webhook(hook) => self.send_webhook(&notifier.name, hook, letter),
            Channel::Log(log) => self.send_log(&notifier.name, log, letter),
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

    fn send_webhook(
        &self,
        name: &str,
        hook: &WebhookConfig,
        letter: &Letter<'_>,
    ) -> Result<String, SendError> {
        let body = letter.body.as_bytes();
        let agent = self.agent(name, hook.timeout);
        let mut req = match hook.method {
            HttpMethod::Put => agent.put(&hook.url),
            HttpMethod::Post => agent.post(&hook.url),
        };
        req = req
            .header("Content-Type", "application/json")
            .header("X-Gitpulse-Event", letter.kind)
            .header("X-Gitpulse-Delivery", letter.delivery_id.to_string());
        if let Some(secret) = &hook.secret {
            let secret = read_secret(secret).map_err(|e| SendError::new(DeliveryClass::Auth, e))?;
            let key = secret.expose().as_bytes();
            let timestamp = (crate::model::now_ms() / 1000).to_string();
            req = req
                // Body only: kept for receivers written against it.
                .header("X-Gitpulse-Signature", signature(key, body))
                // Bound to the moment and the delivery: a receiver that
                // checks the timestamp's age and drops repeated delivery
                // ids cannot be replayed.
                .header("X-Gitpulse-Timestamp", &timestamp)
                .header(
                    "X-Gitpulse-Signature-256",
                    signed(key, &timestamp, letter.delivery_id, body),
                );
        }
        for (k, v) in &hook.headers {
            req = req.header(k, v);
        }
        // The URL is left out of every message: webhook URLs often carry a token.
        let response = req.send(body).map_err(|e| {
            let f = crate::git::request_failure(e, None);
            SendError::new(DeliveryClass::from_transfer(f.class), f.message)
        })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut text = String::new();
        let _ = response
            .into_body()
            .into_reader()
            .take(512)
            .read_to_string(&mut text);
        let text = text.trim().replace(['\r', '\n'], " ");
        let answer = format!(
            "HTTP {status}{}{text}",
            if text.is_empty() { "" } else { " " }
        );
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        let f = crate::git::status_failure(status, &headers);
        // A 4xx other than a timeout, a rate limit or a refused credential
        // is a message the receiver will never accept.
        let class = match status {
            408 => DeliveryClass::Timeout,
            429 => DeliveryClass::RateLimited,
            401 | 403 => DeliveryClass::Auth,
            400..=499 => DeliveryClass::Rejected,
            _ => DeliveryClass::from_transfer(f.class),
        };
        Err(SendError {
            class,
            http_status: Some(status),
            retry_after: f.retry_after,
            message: answer,
        })
    }

    fn send_log(
        &self,
        name: &str,
        log: &LogConfig,
        letter: &Letter<'_>,
    ) -> Result<String, SendError> {
        let line = serde_json::json!({
            "notifier": name,
            "delivery": letter.delivery_id,
            "kind": letter.kind,
            "subject": letter.subject,
            "body": letter.body,
        });
        match &log.path {
            None => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", letter.subject)
                    .and_then(|_| out.flush())
                    .map_err(|e| SendError::new(DeliveryClass::Io, format!("stdout: {e}")))?;
                Ok("written to stdout".into())
            }
            Some(path) => {
                let mut files = self.log_files.lock().unwrap_or_else(|p| p.into_inner());
                let file = match files.entry(path.clone()) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => v.insert(
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)
                            .map_err(|e| io_error(path, e))?,
                    ),
                };
                // One write per line, so concurrent writers never interleave.
                file.write_all(format!("{line}\n").as_bytes())
                    .and_then(|_| file.sync_data())
                    .map_err(|e| io_error(path, e))?;
                Ok(format!("appended to {}", path.display()))
            }
        }
    }
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> SendError {
    SendError::new(DeliveryClass::Io, format!("{}: {e}", path.display()))
}

/// Adds `X-Gitpulse-Event` and `X-Gitpulse-Delivery` to mail.
mod headers {
    use lettre::message::header::{Header, HeaderName, HeaderValue};

    macro_rules! text_header {
        ($ty:ident, $name:literal) => {
            #[derive(Debug, Clone)]
            pub struct $ty(pub String);
            impl Header for $ty {
                fn name() -> HeaderName {
                    HeaderName::new_from_ascii_str($name)
                }
                fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
                    Ok($ty(s.to_string()))
                }
                fn display(&self) -> HeaderValue {
                    HeaderValue::new(Self::name(), self.0.clone())
                }
            }
        };
    }
    text_header!(Event, "X-Gitpulse-Event");
    text_header!(Delivery, "X-Gitpulse-Delivery");
}

fn send_email(email: &EmailConfig, letter: &Letter<'_>) -> Result<String, SendError> {
    use lettre::message::{Mailbox, MultiPart};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{Message, SmtpTransport, Transport};

    let bad_address = |what: &str, a: &str| {
        SendError::new(
            DeliveryClass::Rejected,
            format!("{what}: `{a}` is not an email address"),
        )
    };
    let mut builder = Message::builder()
        .from(
            email
                .from
                .parse::<Mailbox>()
                .map_err(|_| bad_address("from", &email.from))?,
        )
        .subject(letter.subject)
        .header(headers::Event(letter.kind.to_string()))
        .header(headers::Delivery(letter.delivery_id.to_string()));
    for to in &email.to {
        builder = builder.to(to.parse().map_err(|_| bad_address("to", to))?);
    }
    for cc in &email.cc {
        builder = builder.cc(cc.parse().map_err(|_| bad_address("cc", cc))?);
    }
    let message = match letter.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            letter.body.to_string(),
            html.to_string(),
        )),
        None => builder.body(letter.body.to_string()),
    }
    .map_err(|e| {
        SendError::new(
            DeliveryClass::Rejected,
            format!("building the message: {e}"),
        )
    })?;

    let tls_error = |e: lettre::transport::smtp::Error| {
        SendError::new(DeliveryClass::Tls, format!("TLS setup: {e}"))
    };
    let tls = if email.security == SmtpSecurity::Plain {
        Tls::None
    } else {
        let mut params = TlsParameters::builder(email.host.clone());
        if let Some(ca) = &email.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                SendError::new(DeliveryClass::Tls, format!("{}: {e}", ca.display()))
            })?;
            let cert = Certificate::from_pem(&pem).map_err(tls_error)?;
            params = params.add_root_certificate(cert);
        }
        let params = params.build_rustls().map_err(tls_error)?;
        match email.security {
            SmtpSecurity::Implicit => Tls::Wrapper(params),
            SmtpSecurity::StartTlsRequired => Tls::Required(params),
            _ => Tls::Opportunistic(params),
        }
    };
    let mut transport = SmtpTransport::builder_dangerous(&email.host)
        .port(email.port)
        .tls(tls)
        .timeout(Some(email.timeout));
    let required = email.security == SmtpSecurity::StartTlsRequired;
    let smtp_error = |e: lettre::transport::smtp::Error| {
        let mut failure = smtp_error(e);
        // lettre says "internal client error" when the server offers no
        // STARTTLS and TLS is required: say what happened and what to do.
        if required && failure.message.contains("internal client") {
            failure.message = "the server does not offer STARTTLS and this notifier has \
                               starttls = \"required\": nothing was sent; use smtps:// if \
                               the server speaks TLS from the start"
                .into();
        }
        failure
    };
    if let (Some(user), Some(password)) = (&email.username, &email.password) {
        let password = read_secret(password).map_err(|e| SendError::new(DeliveryClass::Auth, e))?;
        transport = transport.credentials(Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    let response = transport.build().send(&message).map_err(smtp_error)?;
    Ok(format!(
        "{} {}",
        response.code(),
        response.message().collect::<Vec<_>>().join(" ")
    ))
}

fn smtp_error(e: lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(|c| c.to_string());
    let text = e.to_string().to_ascii_lowercase();
    // With implicit TLS a refused certificate surfaces as a network error.
    let tls_text = ["certificate", "handshake", "tls"]
        .iter()
        .any(|w| text.contains(w));
    let class = if e.is_timeout() {
        DeliveryClass::Timeout
    } else if e.is_tls() || (tls_text && e.status().is_none()) {
        DeliveryClass::Tls
    } else if e.is_transient() {
        DeliveryClass::Unavailable
    } else if e.is_permanent() {
        match code.as_deref() {
            Some("530" | "534" | "535") => DeliveryClass::Auth,
            _ => DeliveryClass::Rejected,
        }
    } else {
        DeliveryClass::Connect
    };
    // lettre's text can quote the server, never our password.
    SendError::new(class, format!("SMTP: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_signature_covers_timestamp_delivery_and_body() {
        let bound = signed(b"k", "1700000000", 42, b"{}");
        assert_eq!(bound, signature(b"k", b"1700000000.42.{}"));
        assert_ne!(
            bound,
            signed(b"k", "1700000001", 42, b"{}"),
            "a replay later differs"
        );
        assert_ne!(bound, signed(b"k", "1700000000", 43, b"{}"));
    }

    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
