//! gitpulse's own smart-HTTP(S) transport for libgit2.
//!
//! libgit2's built-in HTTP transport reports a failed request only as a
//! message (`unexpected http status code: 503`) and hides the response
//! headers, so a policy could never honour `Retry-After`. This transport
//! (registered once per process for `http://` and `https://`) speaks the
//! stateless smart protocol through `ureq` and records exactly how a request
//! failed — status, `Retry-After`, timeout, reset, TLS — in the
//! [`HttpSession`] of the attempt, where the classifier reads it.
//!
//! The session is handed over through a thread-local because libgit2 creates
//! transports from a global registry; `sync` runs an attempt on one thread
//! and installs the session for exactly that call ([`with_session`]).
//!
//! It does not own credentials policy (the caller gives them) and never logs
//! them: requests are built from a URL whose userinfo was stripped.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};

use super::{AttemptControl, FailureClass, GitFailure};
use crate::redact::Secret;

/// Redirects followed for one request, as git's `http.followRedirects`
/// allows (initial requests only in git; any here, within this bound).
const MAX_REDIRECTS: u32 = 5;

const USER_AGENT: &str = concat!("git/2.0 (gitpulse/", env!("CARGO_PKG_VERSION"), ")");

/// Basic-auth credentials for one remote, and the origin (scheme, host,
/// port) they belong to: they are never sent anywhere else — not to a
/// submodule's server, not to another port, not over a downgrade to http.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub user: String,
    pub password: Secret,
    pub origin: String,
    /// Only URLs that start with this (at least the origin).
    pub prefix: String,
}

/// `scheme://host:port` of `url` (the port spelled out), if it has one.
pub(crate) fn origin(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    match parsed.origin() {
        url::Origin::Tuple(scheme, host, port) => Some(format!("{scheme}://{host}:{port}")),
        url::Origin::Opaque(_) => None,
    }
}

/// Everything the transport needs for the requests of one attempt, and the
/// record of how the last one failed.
pub(crate) struct HttpSession {
    credentials: Vec<Credentials>,
    control: AttemptControl,
    agent: ureq::Agent,
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    /// Set once the server asked for credentials, so later requests of the
    /// attempt send them at once instead of earning another 401.
    send_auth: bool,
    failure: Option<GitFailure>,
}

impl HttpSession {
    pub(crate) fn new(credentials: Vec<Credentials>, control: AttemptControl) -> Arc<Self> {
        // One agent per process: building one (TLS roots included) costs
        // more than a no-op pull itself.
        static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
        let agent = AGENT
            .get_or_init(|| {
                let config = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .user_agent(USER_AGENT)
                    .max_redirects(MAX_REDIRECTS)
                    .build();
                ureq::Agent::with_parts(
                    config,
                    ureq::unversioned::transport::DefaultConnector::default(),
                    CachingResolver::default(),
                )
            })
            .clone();
        Arc::new(HttpSession {
            credentials,
            control,
            agent,
            state: Mutex::new(SessionState::default()),
        })
    }

    /// How the last request of this attempt failed, if the transport saw it.
    pub(crate) fn failure(&self) -> Option<GitFailure> {
        self.lock().failure.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        // A panic while holding the lock cannot leave the state inconsistent
        // (two plain fields), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, failure: GitFailure) -> io::Error {
        let err = io::Error::other(failure.message.clone());
        self.lock().failure = Some(failure);
        err
    }
}

/// How long a host name's addresses are reused.
const RESOLVED_FOR: Duration = Duration::from_secs(30);

/// Host names resolved as ureq does, but kept for [`RESOLVED_FOR`], and IP
/// literals taken as they are. ureq's own resolver starts a thread for
/// every lookup (to bound it by the request's timeout), literal addresses
/// included: with thousands of polls a minute, that thread cost more than
/// the rest of a no-op pull. A failed lookup is never kept.
#[derive(Debug, Default)]
struct CachingResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    resolved: Mutex<std::collections::HashMap<String, (std::time::Instant, ResolvedSocketAddrs)>>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let Some(authority) = uri.authority() else {
            return self.inner.resolve(uri, config, timeout);
        };
        let port = authority
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            let mut addrs = self.inner.empty();
            addrs.push(std::net::SocketAddr::new(ip, port));
            return Ok(addrs);
        }
        let key = format!("{host}:{port}");
        let now = std::time::Instant::now();
        let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        resolved.retain(|_, (at, _)| now.duration_since(*at) < RESOLVED_FOR);
        if let Some((_, addrs)) = resolved.get(&key) {
            return Ok(addrs.clone());
        }
        drop(resolved);
        let addrs = self.inner.resolve(uri, config, timeout)?;
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (now, addrs.clone()));
        Ok(addrs)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<HttpSession>>> = const { RefCell::new(None) };
}

/// Runs `f` with `session` serving every HTTP request libgit2 makes on this
/// thread.
pub(crate) fn with_session<T>(session: Arc<HttpSession>, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Arc<HttpSession>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|c| c.borrow_mut().replace(session));
    let _reset = Reset(previous);
    f()
}

/// Makes this transport libgit2's for http and https, once per process.
/// Called before libgit2 is first asked to reach a remote, not sooner:
/// registering initialises libgit2, which a no-op pull over HTTP never
/// needs.
pub(crate) fn register() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        for scheme in ["http", "https"] {
            // SAFETY: registration happens once, before any transport of this
            // process is created, and the factory is 'static and thread-safe.
            let result = unsafe {
                git2::transport::register(scheme, |remote| {
                    let session = CURRENT.with(|c| c.borrow().clone());
                    Transport::smart(remote, true, HttpTransport { session })
                })
            };
            if let Err(err) = result {
                // Only possible if something else registered the scheme first;
                // libgit2's own transport then serves it.
                eprintln!("gitpulse: could not register the {scheme} transport: {err}");
            }
        }
    });
}

struct HttpTransport {
    session: Option<Arc<HttpSession>>,
}

impl SmartSubtransport for HttpTransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let session = match &self.session {
            Some(s) => s.clone(),
            None => HttpSession::new(
                Vec::new(),
                AttemptControl::new(Duration::from_secs(120), None, Arc::new(Default::default())),
            ),
        };
        let request = match action {
            Service::UploadPackLs => Request::Advertisement,
            Service::UploadPack => Request::UploadPack,
            Service::ReceivePackLs | Service::ReceivePack => {
                return Err(git2::Error::from_str("gitpulse never pushes"));
            }
        };
        Ok(Box::new(HttpStream::new(session, url, request)))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// The most a protocol-v2 command's answer may be: a ref listing of a
/// prefix is small, and a hostile server must not fill memory.
const MAX_V2_ANSWER: u64 = 16 << 20;

/// Sends one protocol-v2 command (`body`, pkt-lines) to the repository at
/// `url` in a single request, with the session's credentials and limits,
/// and returns the answer. A failure is classified as for libgit2's
/// requests; the answer is not checked here.
pub(crate) fn v2_command(
    session: Arc<HttpSession>,
    url: &str,
    body: &[u8],
) -> Result<Vec<u8>, GitFailure> {
    let mut stream = HttpStream::new(session.clone(), url, Request::LsRefs);
    stream.request.extend_from_slice(body);
    let mut answer = Vec::new();
    let read = (&mut stream)
        .take(MAX_V2_ANSWER + 1)
        .read_to_end(&mut answer);
    if let Err(err) = read {
        return Err(session.failure().unwrap_or_else(|| GitFailure {
            class: FailureClass::Protocol,
            http_status: None,
            retry_after: None,
            message: err.to_string(),
        }));
    }
    if answer.len() as u64 > MAX_V2_ANSWER {
        return Err(GitFailure {
            class: FailureClass::Protocol,
            http_status: None,
            retry_after: None,
            message: format!("the server's ref listing is larger than {MAX_V2_ANSWER} bytes"),
        });
    }
    Ok(answer)
}

/// Whether `prefix` covers `url`: the same origin, and `url`'s path under
/// the prefix's (path segments compared whole: `/org` does not cover
/// `/organisation`). Returns how specific the prefix is.
pub(crate) fn covers(prefix: &str, url: &str) -> Option<usize> {
    let (prefix, url) = (url::Url::parse(prefix).ok()?, url::Url::parse(url).ok()?);
    if prefix.origin() != url.origin() {
        return None;
    }
    let want = prefix.path().trim_end_matches('/');
    let path = url.path();
    let under = path == want || path.starts_with(&format!("{want}/"));
    under.then_some(want.len())
}

/// `url` without userinfo, and the userinfo as credentials.
fn split_userinfo(url: &str) -> (String, Option<Credentials>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_string(), None);
    };
    let user = percent_decode(parsed.username());
    let password = parsed.password().map(percent_decode);
    if user.is_empty() && password.is_none() {
        return (url.to_string(), None);
    }
    // Cannot fail for http(s) URLs, which always have a host.
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    let credentials = match password {
        Some(password) => Credentials {
            user,
            password: Secret::new(password),
            origin: origin(url).unwrap_or_default(),
            prefix: String::new(),
        },
        // `https://TOKEN@host/…`: the lone userinfo is the token.
        None => Credentials {
            user: "x-access-token".into(),
            password: Secret::new(user),
            origin: origin(url).unwrap_or_default(),
            prefix: String::new(),
        },
    };
    (parsed.to_string(), Some(credentials))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The requests gitpulse makes (all of `git-upload-pack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// `GET info/refs`: the protocol-v0 ref advertisement.
    Advertisement,
    /// `POST git-upload-pack`: the pack negotiation.
    UploadPack,
    /// `POST git-upload-pack` with `Git-Protocol: version=2`: one
    /// `ls-refs` command, no capability advertisement first.
    LsRefs,
}

impl Request {
    fn is_post(self) -> bool {
        self != Request::Advertisement
    }
}

struct HttpStream {
    session: Arc<HttpSession>,
    credentials: Option<Credentials>,
    url: String,
    request_kind: Request,
    request: Vec<u8>,
    response: Option<ureq::BodyReader<'static>>,
}

impl HttpStream {
    /// A request to the repository at `url` (its userinfo, if any, becomes
    /// its credentials unless configured ones cover it).
    fn new(session: Arc<HttpSession>, url: &str, request_kind: Request) -> HttpStream {
        let (clean_url, url_credentials) = split_userinfo(url);
        // The configured credentials go to their own origin only; a URL
        // that names its own (a submodule's, written by upstream) keeps them.
        let own = session
            .credentials
            .iter()
            .filter(|c| origin(url).as_deref() == Some(c.origin.as_str()))
            .filter_map(|c| covers(&c.prefix, &clean_url).map(|depth| (depth, c)))
            .max_by_key(|(depth, _)| *depth)
            .map(|(_, c)| c.clone());
        let suffix = match request_kind {
            Request::Advertisement => "/info/refs?service=git-upload-pack",
            Request::UploadPack | Request::LsRefs => "/git-upload-pack",
        };
        HttpStream {
            session,
            credentials: own.or(url_credentials),
            url: format!("{}{}", clean_url.trim_end_matches('/'), suffix),
            request_kind,
            request: Vec::new(),
            response: None,
        }
    }

    fn send(&mut self) -> io::Result<ureq::BodyReader<'static>> {
        let session = self.session.clone();
        let mut with_auth = session.lock().send_auth;
        let mut redirects = 0;
        loop {
            // Redirects from https are followed here, not by ureq, so one
            // that leads to plain http is refused before it is requested.
            let https = self.url.starts_with("https://");
            let follow = if https { 0 } else { MAX_REDIRECTS };
            if let Some(class) = session.control.interrupted() {
                return Err(session.record(interrupted(class, &session.control)));
            }
            let auth = match (&self.credentials, with_auth) {
                (Some(c), true) => Some(basic_auth(c)),
                _ => None,
            };
            let result = if self.request_kind.is_post() {
                let mut req = session
                    .agent
                    .post(&self.url)
                    .header("Content-Type", "application/x-git-upload-pack-request")
                    .header("Accept", "application/x-git-upload-pack-result");
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                // Listing refs is the ref advertisement of protocol v2:
                // bounded like it, by what it has taken before.
                let limit = match self.request_kind {
                    Request::LsRefs => {
                        req = req.header("Git-Protocol", "version=2");
                        session.control.refs_remaining()
                    }
                    _ => session.control.remaining(),
                };
                // A server silent for the stall window has stalled, even
                // when no byte comes to run the low-speed check.
                req.config()
                    .timeout_global(Some(limit))
                    .timeout_per_read(Some(session.control.idle_limit()))
                    .max_redirects(follow)
                    .max_redirects_will_error(false)
                    .build()
                    .send(&self.request[..])
            } else {
                let mut req = session.agent.get(&self.url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                // The ref advertisement: bounded by what such a request
                // has taken before (the learnt limit), not the whole attempt.
                req.config()
                    .timeout_global(Some(session.control.refs_remaining()))
                    .timeout_per_read(Some(session.control.idle_limit()))
                    .max_redirects(follow)
                    .max_redirects_will_error(false)
                    .build()
                    .call()
            };
            let response = match result {
                Ok(r) => r,
                Err(err) => {
                    let mut failure = request_failure(err, Some(&session.control));
                    if self.url.starts_with("https://") && failure.class == FailureClass::Protocol {
                        // The connection ended or spoke garbage before any
                        // HTTP answer: the TLS handshake did not happen.
                        failure.class = FailureClass::Tls;
                        failure.message = format!("TLS handshake failed ({})", failure.message);
                    }
                    return Err(session.record(failure));
                }
            };
            let status = response.status().as_u16();
            if https && (300..400).contains(&status) && status != 304 {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok());
                match redirect(&self.url, location, redirects) {
                    Redirect::Follow { to, same_origin } => {
                        // Credentials stay with their own origin.
                        if !same_origin {
                            self.credentials = None;
                            with_auth = false;
                        }
                        self.url = to;
                        redirects += 1;
                        continue;
                    }
                    Redirect::Downgrade(to) => {
                        return Err(session.record(GitFailure {
                            class: FailureClass::Tls,
                            http_status: Some(status),
                            retry_after: None,
                            message: format!(
                                "refused a redirect from https to {to} (a downgrade); use the final https URL"
                            ),
                        }));
                    }
                    Redirect::Stop => {
                        return Err(session.record(status_failure(status, response.headers())));
                    }
                }
            }
            if status == 401 && !with_auth && self.credentials.is_some() {
                with_auth = true;
                session.lock().send_auth = true;
                continue;
            }
            if status != 200 {
                return Err(session.record(status_failure(status, response.headers())));
            }
            let expected = match self.request_kind.is_post() {
                true => "application/x-git-upload-pack-result",
                false => "application/x-git-upload-pack-advertisement",
            };
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if !content_type.starts_with(expected) {
                return Err(session.record(GitFailure {
                    class: FailureClass::Protocol,
                    http_status: Some(status),
                    retry_after: None,
                    message: format!(
                        "not a git smart-HTTP server: expected content-type {expected}, got `{content_type}`"
                    ),
                }));
            }
            return Ok(response.into_body().into_reader());
        }
    }
}

/// What to do with a redirect answered to a request for `from` (https),
/// after `followed` others.
#[derive(Debug, PartialEq, Eq)]
enum Redirect {
    /// Request `to`; credentials go along only to the same origin.
    Follow { to: String, same_origin: bool },
    /// Refused: it leads off https (the redacted URL).
    Downgrade(String),
    /// No usable `Location`, or too many redirects: the status is the
    /// answer.
    Stop,
}

fn redirect(from: &str, location: Option<&str>, followed: u32) -> Redirect {
    let next = location.and_then(|l| url::Url::parse(from).ok()?.join(l).ok());
    match next {
        Some(_) if followed >= MAX_REDIRECTS => Redirect::Stop,
        Some(next) if next.scheme() != "https" => {
            Redirect::Downgrade(crate::redact::url(next.as_str()))
        }
        Some(next) => Redirect::Follow {
            same_origin: origin(next.as_str()) == origin(from),
            to: next.to_string(),
        },
        None => Redirect::Stop,
    }
}

fn basic_auth(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.user, c.password.expose());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn interrupted(class: FailureClass, control: &AttemptControl) -> GitFailure {
    GitFailure {
        class,
        http_status: None,
        retry_after: None,
        message: match class {
            FailureClass::Timeout => control.timeout_message(),
            _ => "cancelled".into(),
        },
    }
}

/// An HTTP answer other than success, classified (Retry-After included).
/// Webhook delivery uses it too, so both speak of failures alike.
pub fn status_failure(status: u16, headers: &ureq::http::HeaderMap) -> GitFailure {
    let class = super::classify::class_for_status(status);
    let retry_after = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let message = match status {
        401 | 403 => format!("HTTP {status}: credentials missing or refused"),
        404 => "HTTP 404: repository not found".to_string(),
        _ => format!("HTTP {status}"),
    };
    GitFailure {
        class,
        http_status: Some(status),
        retry_after,
        message,
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A request that got no HTTP answer, classified. `control` tells a
/// timeout from a cancelled or out-of-time attempt, when there is one.
pub fn request_failure(err: ureq::Error, control: Option<&AttemptControl>) -> GitFailure {
    let (class, message) = match &err {
        ureq::Error::Timeout(ureq::Timeout::PerRead) => (
            control
                .and_then(AttemptControl::interrupted)
                .filter(|c| *c == FailureClass::Cancelled)
                .unwrap_or(FailureClass::Timeout),
            match control {
                Some(c) => c.silence_message(),
                None => "stalled: the server sent nothing".to_string(),
            },
        ),
        ureq::Error::Timeout(_) => (
            control
                .and_then(AttemptControl::interrupted)
                .unwrap_or(FailureClass::Timeout),
            "timed out waiting for the server".to_string(),
        ),
        ureq::Error::HostNotFound => (
            FailureClass::Dns,
            "failed to resolve the host name".to_string(),
        ),
        ureq::Error::ConnectionFailed => (FailureClass::Connect, "failed to connect".to_string()),
        ureq::Error::Tls(m) => (FailureClass::Tls, format!("TLS error: {m}")),
        ureq::Error::Rustls(e) => (FailureClass::Tls, format!("TLS error: {e}")),
        ureq::Error::Pem(e) => (FailureClass::Tls, format!("TLS certificate error: {e}")),
        ureq::Error::Io(e) if is_dns_failure(e) => (
            FailureClass::Dns,
            format!("failed to resolve the host name: {e}"),
        ),
        ureq::Error::Io(e) => (io_class(e, control), format!("network error: {e}")),
        ureq::Error::Protocol(e) => (FailureClass::Protocol, format!("HTTP protocol error: {e}")),
        other => (FailureClass::Other, other.to_string()),
    };
    GitFailure {
        class,
        http_status: None,
        retry_after: None,
        message,
    }
}

/// std's resolver reports through `io::Error` with getaddrinfo's text.
fn is_dns_failure(e: &io::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("lookup address")
        || text.contains("name or service not known")
        || text.contains("name resolution")
        || text.contains("no address associated")
}

fn io_class(e: &io::Error, control: Option<&AttemptControl>) -> FailureClass {
    use io::ErrorKind::*;
    match e.kind() {
        TimedOut | WouldBlock => control
            .and_then(AttemptControl::interrupted)
            .unwrap_or(FailureClass::Timeout),
        ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected
        | AddrNotAvailable | HostUnreachable | NetworkUnreachable => FailureClass::Connect,
        UnexpectedEof | InvalidData => FailureClass::Protocol,
        _ => FailureClass::Other,
    }
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.response.is_none() {
            let reader = self.send()?;
            self.response = Some(reader);
        }
        if let Some(class) = self.session.control.interrupted() {
            return Err(self
                .session
                .record(interrupted(class, &self.session.control)));
        }
        let Some(reader) = self.response.as_mut() else {
            return Ok(0);
        };
        match reader.read(buf) {
            Ok(n) => {
                self.session.control.received(n as u64);
                Ok(n)
            }
            Err(e)
                if e.kind() == io::ErrorKind::TimedOut
                    && self.session.control.interrupted().is_none() =>
            {
                // Time was left: the per-read limit, a server gone silent.
                let failure = GitFailure {
                    class: FailureClass::Timeout,
                    http_status: None,
                    retry_after: None,
                    message: format!(
                        "while receiving: {}",
                        self.session.control.silence_message()
                    ),
                };
                Err(self.session.record(failure))
            }
            Err(e) => {
                let failure = request_failure(ureq::Error::from(e), Some(&self.session.control));
                let failure = GitFailure {
                    message: format!("while receiving: {}", failure.message),
                    ..failure
                };
                Err(self.session.record(failure))
            }
        }
    }
}

impl Write for HttpStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // Stateless RPC: the whole request is sent on the first read.
        self.request.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_from_https_stay_on_https_and_credentials_stay_home() {
        let from = "https://git.example.com/o/r.git/info/refs?service=git-upload-pack";
        assert_eq!(
            redirect(from, Some("/mirror/r.git/info/refs"), 0),
            Redirect::Follow {
                to: "https://git.example.com/mirror/r.git/info/refs".into(),
                same_origin: true
            }
        );
        assert_eq!(
            redirect(from, Some("https://cdn.example.net/r.git"), 0),
            Redirect::Follow {
                to: "https://cdn.example.net/r.git".into(),
                same_origin: false
            }
        );
        assert_eq!(
            redirect(from, Some("http://user:pw@git.example.com/r.git"), 0),
            Redirect::Downgrade("http://***@git.example.com/r.git".into())
        );
        assert_eq!(
            redirect(from, Some("https://a/b"), MAX_REDIRECTS),
            Redirect::Stop
        );
        assert_eq!(redirect(from, None, 0), Redirect::Stop);
    }

    #[test]
    fn a_prefix_covers_its_own_origin_and_path_only() {
        let org = "https://git.example.com/org/";
        assert_eq!(
            covers(org, "https://git.example.com/org/app.git/info/refs"),
            Some(4)
        );
        assert!(covers(org, "https://git.example.com:443/org/app.git").is_some());
        assert_eq!(
            covers(org, "https://git.example.com/organisation/app.git"),
            None
        );
        assert_eq!(covers(org, "http://git.example.com/org/app.git"), None);
        assert_eq!(
            covers(org, "https://git.example.com:8443/org/app.git"),
            None
        );
        assert_eq!(covers(org, "https://evil.example.com/org/app.git"), None);
        assert_eq!(
            covers("https://git.example.com", "https://git.example.com/x"),
            Some(0)
        );
    }

    #[test]
    fn userinfo_becomes_credentials_and_leaves_the_url() {
        let (url, creds) = split_userinfo("https://bob:s%40cret@example.com/r.git");
        assert_eq!(url, "https://example.com/r.git");
        let creds = creds.unwrap();
        assert_eq!(creds.user, "bob");
        assert_eq!(creds.password.expose(), "s@cret");

        let (_, creds) = split_userinfo("https://tok123@example.com/r.git");
        let creds = creds.unwrap();
        assert_eq!(creds.user, "x-access-token");
        assert_eq!(creds.password.expose(), "tok123");

        assert!(split_userinfo("https://example.com/r").1.is_none());
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn statuses_map_to_classes() {
        let h = ureq::http::HeaderMap::new();
        assert_eq!(status_failure(401, &h).class, FailureClass::Auth);
        assert_eq!(status_failure(404, &h).class, FailureClass::NotFound);
        assert_eq!(status_failure(429, &h).class, FailureClass::RateLimited);
        assert_eq!(status_failure(503, &h).class, FailureClass::ServerError);
        assert_eq!(status_failure(503, &h).http_status, Some(503));
    }
}
