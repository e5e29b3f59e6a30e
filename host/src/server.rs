//! The daemon's HTTP face, on `[daemon] listen` (loopback unless
//! `listen_public = true`):
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /` | anyone (Host checked) | the status page (HTML) |
//! | `GET /healthz` | anyone | 200 while the scheduler loop answers |
//! | `GET /readyz` | anyone | 200 once every required repo has been pulled, else 503 with what is missing |
//! | `GET /metrics` | anyone | OpenMetrics text |
//! | `GET /v1/status` | bearer token | every repository's state (JSON) |
//! | `POST /v1/pull`, `POST /v1/repos/{name}/pull` | bearer token, JSON body | pull now |
//! | `POST /hooks/{name}` | the receiver's signature | a push: wake the repos it concerns |
//!
//! It owns HTTP concerns only: routing, the bearer token and Host checks,
//! header-read timeouts and the connection cap. What it reads and asks
//! for goes through [`Control`]; it never pulls or schedules by itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::{oneshot, Semaphore};

use crate::config::HookKind;
use crate::receiver::{self, Delivery, Verdict};
use crate::redact::Secret;

/// Connections served at once; more are closed as they arrive. Idle ones
/// cost a task and a socket each, so the cap is generous: 500 idle
/// connections leave room for health checks and the API.
pub const MAX_CONNECTIONS: usize = 1024;
/// A client must send a request's headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one peer address may hold at once: one client cannot take
/// every slot from the others (a health check, a scraper, the forges),
/// while a reverse proxy, which brings everyone's connections from one
/// address, still gets most of them.
pub const MAX_PER_PEER: usize = MAX_CONNECTIONS * 3 / 4;
/// A delivery's body must have arrived this long after its headers.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Webhook bodies held in memory at once, all deliveries together; past
/// it a delivery is answered 503 (the forges retry) before it is read.
pub const HOOK_BODY_MEMORY: usize = 32 << 20;
/// How long `/healthz` waits for the scheduler loop to answer.
const LIVENESS_WAIT: Duration = Duration::from_secs(2);

/// What the HTTP face may ask of whatever runs behind it (the daemon): the
/// server depends on this, not on the daemon. Methods that block (they read
/// the state database) are called off the async workers.
pub trait Control: Send + Sync + 'static {
    /// Whether a repository of that name is configured.
    fn has_repo(&self, name: &str) -> bool;
    /// Asks for an immediate pull of `repo`, or of every repository; the
    /// names of the repositories asked for.
    fn trigger(&self, repo: Option<&str>) -> Vec<String>;
    /// Every repository's state and the counters, as JSON. Blocks.
    fn status(&self) -> serde_json::Value;
    /// Answered by the scheduler loop when it is alive.
    fn ping(&self) -> oneshot::Receiver<()>;
    /// What readiness still waits for (empty: ready). Blocks.
    fn not_ready(&self) -> Vec<String>;
    /// The metrics, as OpenMetrics text (`openmetrics`) or Prometheus
    /// text 0.0.4. Blocks.
    fn metrics(&self, openmetrics: bool) -> String;
    /// Whether `token` is the API's bearer token (compared in constant time).
    fn token_matches(&self, token: &str) -> bool;
    /// Host names the API answers to, besides loopback and the listen
    /// address.
    fn host_names(&self) -> Vec<String>;
    /// The status page, as HTML. Blocks.
    fn page(&self) -> String;
    /// The `[[receiver]]` named `name`, with its secret read now (an
    /// error says which variable or file is missing).
    fn receiver(&self, name: &str) -> Option<Result<Receiver, String>>;
    /// The configured repositories, for matching pushes.
    fn targets(&self) -> Vec<receiver::Target>;
    /// Pull `repos` now, within the breaker; coalesced with running pulls.
    fn wake(&self, repos: &[String]);
    /// Counts a push delivery to `receiver` answered with `result`.
    fn hook_answered(&self, receiver: &str, result: &'static str);
}

/// A receiver as a delivery needs it.
pub struct Receiver {
    /// How its deliveries are signed and shaped.
    pub kind: HookKind,
    /// Its shared secret.
    pub secret: Secret,
    /// The repositories it may wake (empty: any that match).
    pub repos: Vec<String>,
    /// The largest body it reads.
    pub max_body: usize,
}

/// Redeliveries seen and each receiver's rate limit.
#[derive(Default)]
struct HookState {
    seen: receiver::Seen,
    limits: HashMap<String, receiver::RateLimit>,
}

/// What the push route shares across deliveries.
struct Hooks {
    state: Mutex<HookState>,
    /// KiB of body memory not yet reserved (see [`HOOK_BODY_MEMORY`]).
    memory: Semaphore,
}

/// Deliveries one receiver may send at once, and per minute after that.
const HOOK_BURST: u32 = 30;
const HOOK_PER_MINUTE: u32 = 120;
/// Manual pulls through the API: at once, and per minute after that.
const API_BURST: u32 = 10;
const API_PER_MINUTE: u32 = 30;

type View = Arc<dyn Control>;

/// Serves until the listener fails; runs on the caller's runtime.
pub async fn serve(listener: tokio::net::TcpListener, view: View) {
    let listen = listener.local_addr().ok();
    let manual = Arc::new(Mutex::new(receiver::RateLimit::new(
        API_BURST,
        API_PER_MINUTE,
    )));
    let pulls = Router::new()
        .route("/v1/pull", post(pull_all))
        .route("/v1/repos/{name}/pull", post(pull_one))
        .layer(middleware::from_fn_with_state(manual, rate_limited));
    // Read-only and unauthenticated (loopback by default), but behind the
    // Host check: a rebinding page must not read it.
    let page = Router::new()
        .route("/", get(page))
        .layer(middleware::from_fn_with_state(
            (view.clone(), listen),
            known_host,
        ));
    let api = Router::new()
        .route("/v1/status", get(status))
        .merge(pulls)
        .layer(middleware::from_fn_with_state(view.clone(), authorize))
        .layer(middleware::from_fn_with_state(
            (view.clone(), listen),
            known_host,
        ));
    let hooks = Arc::new(Hooks {
        state: Mutex::new(HookState::default()),
        memory: Semaphore::new(HOOK_BODY_MEMORY / 1024),
    });
    let push = Router::new()
        .route("/hooks/{name}", post(hook))
        .with_state((view.clone(), hooks));
    // Repository names and hosts: behind the Host check too, but one that
    // also takes any IP literal (a rebinding page always sends a name;
    // probes and scrapers send the pod's address).
    let probes = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(
            (view.clone(), listen),
            known_host_or_address,
        ));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .merge(probes)
        .merge(page)
        .merge(api)
        .with_state(view)
        .merge(push)
        .layer(Extension(Arc::new(Snapshots::default())));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers: Arc<Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!("HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the cap: closed at once
            continue;
        };
        let Some(peer_slot) = PeerSlot::take(&peers, peer.ip()) else {
            drop(stream); // this peer holds its share already
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = (slot, peer_slot);
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    tower::ServiceExt::oneshot(app.clone(), request.map(Body::new))
                });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            // Errors are the client's (it went away, it was too slow).
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// One of a peer's [`MAX_PER_PEER`] connections, given back on drop.
struct PeerSlot {
    peers: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    fn take(
        peers: &Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
    ) -> Option<Self> {
        let mut held = peers.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(ip).or_insert(0);
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

async fn healthz(State(view): State<View>) -> (StatusCode, &'static str) {
    match tokio::time::timeout(LIVENESS_WAIT, view.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n"),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduler loop does not answer\n",
        ),
    }
}

/// An answer computed at most once a [`FRESH_FOR`]: the unauthenticated
/// page and readiness read the state database, and a client polling them
/// in a loop must not keep that busy.
struct Snapshot<T> {
    kept: tokio::sync::Mutex<Option<(Instant, T)>>,
}

/// How long a snapshot answers for.
const FRESH_FOR: Duration = Duration::from_secs(1);

impl<T> Default for Snapshot<T> {
    fn default() -> Self {
        Snapshot {
            kept: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Clone + Send + 'static> Snapshot<T> {
    /// The kept answer while fresh, else `make`'s (run off the async
    /// workers); callers that arrive meanwhile wait for it instead of
    /// making their own.
    async fn get(
        &self,
        make: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let mut kept = self.kept.lock().await;
        if let Some((at, value)) = kept.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return Ok(value.clone());
            }
        }
        let value = tokio::task::spawn_blocking(make).await?;
        *kept = Some((Instant::now(), value.clone()));
        Ok(value)
    }
}

/// This server's snapshots of the unauthenticated answers.
#[derive(Default)]
struct Snapshots {
    ready: Snapshot<Vec<String>>,
    page: Snapshot<String>,
}

async fn readyz(
    State(view): State<View>,
    Extension(snapshots): Extension<Arc<Snapshots>>,
) -> Response {
    match snapshots.ready.get(move || view.not_ready()).await {
        Ok(missing) if missing.is_empty() => {
            (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
        }
        Ok(missing) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "waiting_for": missing })),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else
/// Prometheus text 0.0.4.
async fn metrics(State(view): State<View>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    match tokio::task::spawn_blocking(move || view.metrics(openmetrics)).await {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(e) => internal(e),
    }
}

async fn page(
    State(view): State<View>,
    Extension(snapshots): Extension<Arc<Snapshots>>,
) -> Response {
    match snapshots.page.get(move || view.page()).await {
        Ok(html) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                // Nothing on the page loads or runs anything.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                ),
            ],
            html,
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

async fn status(State(view): State<View>) -> Response {
    match tokio::task::spawn_blocking(move || view.status()).await {
        Ok(value) => Json(value).into_response(),
        Err(e) => internal(e),
    }
}

async fn pull_one(
    State(view): State<View>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = json_only(&headers) {
        return refused;
    }
    if !view.has_repo(&name) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no repository named `{name}` in the running config") })),
        )
            .into_response();
    }
    let asked = view.trigger(Some(&name));
    (StatusCode::ACCEPTED, Json(json!({ "pulling": asked }))).into_response()
}

async fn pull_all(State(view): State<View>, headers: HeaderMap) -> Response {
    if let Some(refused) = json_only(&headers) {
        return refused;
    }
    let asked = view.trigger(None);
    (StatusCode::ACCEPTED, Json(json!({ "pulling": asked }))).into_response()
}

/// A POST must say it carries JSON: a browser cannot send that type
/// cross-site without a preflight, so a hostile page cannot post a form
/// here.
fn json_only(headers: &HeaderMap) -> Option<Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    (!json).then(|| {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Json(json!({ "error": "send Content-Type: application/json" })),
        )
            .into_response()
    })
}

/// Refuses manual pulls beyond the API's rate (each may start pulls of
/// every repository).
async fn rate_limited(
    State(limit): State<Arc<Mutex<receiver::RateLimit>>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = limit
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allow(Instant::now());
    if allowed {
        next.run(request).await
    } else {
        (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({ "error": "too many manual pulls: slow down" })),
        )
            .into_response()
    }
}

/// Requires `Authorization: Bearer <token>`.
async fn authorize(State(view): State<View>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(token) if view.token_matches(token) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": "send Authorization: Bearer <token> (the daemon's api-token)" })),
        )
            .into_response(),
    }
}

/// Refuses a Host the daemon does not go by: a DNS-rebinding page reaches
/// a loopback port under its own host name.
async fn known_host(
    State((view, listen)): State<(View, Option<SocketAddr>)>,
    request: Request,
    next: Next,
) -> Response {
    let known = host_allowed(host_of(&request), listen, &view.host_names());
    only_if(known, request, next).await
}

/// Like [`known_host`], also taking any IP address as Host: a DNS
/// rebinding page reaches the port under a name, never an address, and a
/// kubelet's probe or Prometheus' scrape of a pod sends its address.
async fn known_host_or_address(
    State((view, listen)): State<(View, Option<SocketAddr>)>,
    request: Request,
    next: Next,
) -> Response {
    let host = host_of(&request);
    let known = is_address(host) || host_allowed(host, listen, &view.host_names());
    only_if(known, request, next).await
}

/// The request's Host header (empty when absent or not text).
fn host_of(request: &Request) -> &str {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Runs the request when its Host is `known`, else answers 421.
async fn only_if(known: bool, request: Request, next: Next) -> Response {
    if known {
        next.run(request).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            Json(json!({ "error": "unknown Host: add it to [daemon] host_names" })),
        )
            .into_response()
    }
}

/// Whether a Host header is an IP address (with or without a port).
fn is_address(host: &str) -> bool {
    let bare = host.trim();
    bare.parse::<SocketAddr>().is_ok()
        || bare
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
}

/// Whether a Host header names this daemon: a loopback address or
/// `localhost`, the listen address, or one of `names` (each with or
/// without a port).
fn host_allowed(host: &str, listen: Option<SocketAddr>, names: &[String]) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:8787`, `host:8787`; a bare IPv6 literal has no brackets.
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name.is_empty() {
        return false;
    }
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        if ip.is_loopback() || listen.is_some_and(|l| l.ip() == ip) {
            return true;
        }
    }
    names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

type HookView = (View, Arc<Hooks>);

/// A push delivery. Everything that needs no body is checked before a
/// byte of it is read: the receiver exists, the delivery is signed, its
/// declared length fits the receiver's `max_body_kib`, and memory for it
/// is free among all deliveries in flight. The body then must arrive
/// within [`BODY_READ_TIMEOUT`]; it is verified raw, then read and
/// matched. Only verified deliveries count against the receiver's rate.
/// The answer (202 with the repos woken, 2xx saying why nothing was)
/// goes out before any pull runs.
async fn hook(
    State((view, hooks)): State<HookView>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let answer = |code: StatusCode, result: &'static str, body: serde_json::Value| {
        view.hook_answered(&name, result);
        (code, Json(body)).into_response()
    };
    let receiver = match view.receiver(&name) {
        None => {
            return (
                StatusCode::NOT_FOUND,
                [(header::CONNECTION, "close")],
                Json(json!({ "error": format!("no receiver named `{name}`") })),
            )
                .into_response()
        }
        Some(Err(why)) => {
            tracing::error!(receiver = name, "its secret cannot be read: {why}");
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                json!({ "error": "the receiver's secret cannot be read (see the daemon's log)" }),
            );
        }
        Some(Ok(r)) => r,
    };
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    if let Err(refused) = receiver::signed(receiver.kind, &pairs) {
        return answer(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            json!({ "error": refused.to_string() }),
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || {
        answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            json!({ "error": format!(
                "the body is larger than the {} KiB this receiver reads (max_body_kib)",
                receiver.max_body / 1024
            ) }),
        )
    };
    if declared.is_some_and(|n| n > receiver.max_body as u64) {
        return too_large();
    }
    let reserve = declared.map_or(receiver.max_body, |n| n as usize);
    let kib = u32::try_from(reserve.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let Ok(_reserved) = hooks.memory.try_acquire_many(kib) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5"), (header::CONNECTION, "close")],
            Json(json!({ "error": "too many deliveries being read at once: retry shortly" })),
        )
            .into_response();
    };
    let body = match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, receiver.max_body),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) if declared.is_none() => return too_large(),
        Ok(Err(_)) => {
            return answer(
                StatusCode::BAD_REQUEST,
                "bad-payload",
                json!({ "error": "the body could not be read" }),
            )
        }
        Err(_) => {
            return answer(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                json!({ "error": format!(
                    "the body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ) }),
            )
        }
    };
    if let Err(refused) = receiver::verify(receiver.kind, &pairs, &body, receiver.secret.expose()) {
        tracing::warn!(receiver = name, "delivery refused: {refused}");
        return answer(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            json!({ "error": refused.to_string() }),
        );
    }
    let allowed = {
        let mut state = hooks.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .limits
            .entry(name.clone())
            .or_insert_with(|| receiver::RateLimit::new(HOOK_BURST, HOOK_PER_MINUTE))
            .allow(Instant::now())
    };
    if !allowed {
        return answer(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            json!({ "error": "too many deliveries: slow down" }),
        );
    }
    // A redelivery repeats its id; a replay under a new (or no) id still
    // repeats the signed body, which names the commits it moved.
    let body_key = {
        use sha2::Digest as _;
        let mut digest = sha2::Sha256::new();
        for (k, v) in &pairs {
            let k = k.to_ascii_lowercase();
            if k.ends_with("-event") || k == "x-event-key" {
                digest.update(format!("{k}: {v}\n"));
            }
        }
        digest.update(&body);
        format!("{name}/body/{}", hex::encode(digest.finalize()))
    };
    let id_key = receiver::delivery_id(&pairs).map(|id| format!("{name}/id/{id}"));
    let repeat = {
        let mut state = hooks.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let by_id = id_key.is_some_and(|k| state.seen.repeat(&k, now));
        let by_body = state.seen.repeat(&body_key, now);
        by_id || by_body
    };
    if repeat {
        return answer(
            StatusCode::OK,
            "repeat",
            json!({ "woken": [], "why": "a redelivery of a delivery already acted on" }),
        );
    }
    let push = match receiver::read(receiver.kind, &pairs, &body) {
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                "bad-payload",
                json!({ "error": e }),
            )
        }
        Ok(Delivery::Ping) => {
            return answer(
                StatusCode::OK,
                "ping",
                json!({ "woken": [], "why": "ping" }),
            )
        }
        Ok(Delivery::Other(event)) => {
            return answer(
                StatusCode::OK,
                "ignored",
                json!({ "woken": [], "why": format!("`{event}` is not a push") }),
            )
        }
        Ok(Delivery::Push(push)) => push,
    };
    let targets: Vec<receiver::Target> = view
        .targets()
        .into_iter()
        .filter(|t| receiver.repos.is_empty() || receiver.repos.contains(&t.name))
        .collect();
    match receiver::matching(&push, &targets) {
        Verdict::Wake(repos) => {
            view.wake(&repos);
            tracing::info!(receiver = name, repos = ?repos, "push: pulling now");
            answer(StatusCode::ACCEPTED, "woken", json!({ "woken": repos }))
        }
        Verdict::Ignore(why) => answer(
            StatusCode::OK,
            "ignored",
            json!({ "woken": [], "why": why }),
        ),
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_also_take_addresses_but_never_a_name_the_daemon_does_not_go_by() {
        for ok in ["10.1.2.3", "10.1.2.3:8787", "[fd00::1]:8787", "fd00::1"] {
            assert!(is_address(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8787", "10.1.2.3.nip.io", ""] {
            assert!(!is_address(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_the_daemon_goes_by() {
        let listen: Option<SocketAddr> = "10.0.0.5:8787".parse().ok();
        let names = vec!["gitpulse.internal".to_string()];
        for ok in [
            "localhost",
            "localhost:8787",
            "127.0.0.1:8787",
            "[::1]:8787",
            "::1",
            "10.0.0.5:8787",
            "GitPulse.Internal:8787",
        ] {
            assert!(host_allowed(ok, listen, &names), "{ok}");
        }
        for bad in [
            "",
            "evil.example:8787",
            "localhost.evil.example",
            "10.0.0.6",
            "gitpulse.internal.evil",
        ] {
            assert!(!host_allowed(bad, listen, &names), "{bad}");
        }
    }
}
