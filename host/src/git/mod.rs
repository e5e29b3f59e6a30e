//! One attempt at bringing a checkout up to date, through libgit2.
//!
//! This module owns everything that touches a repository: clone, fetch and
//! update ([`sync`]), the HTTP(S) transport, credentials, the per-attempt
//! time limit and cancellation, the repository lock, crash recovery, and the
//! classification of every failure into a [`FailureClass`]. It knows nothing
//! of retries or policies: it makes exactly one attempt and reports how it
//! ended. The pull loop above decides whether to try again.
//!
//! Guarantees: repository hooks never run (libgit2 has no hook support);
//! submodules are touched only when asked; credentials are sent only to the
//! URL they were given for and never appear in a [`GitFailure`].

mod classify;
mod http;
pub use http::{request_failure, status_failure};
mod journal;
mod lock;
mod modes;
mod probe;
mod publish;
mod reshape;
mod sparse;
mod ssh;
mod sync;
mod target;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use gitpulse_policy_core::FailureClass;
pub use modes::share_with_group;
pub use publish::{Layout, Publish};
pub use sparse::Sparse;
pub use sync::sync;
pub use target::{bad_ref, parse_semver, Follow};

use crate::redact::Secret;

/// Whether gitpulse can pull from `url`: https, http, ssh, git, file, or
/// scp-like `user@host:path`. The error shows the URL redacted.
pub fn check_remote_url(url: &str) -> Result<url::Url, String> {
    // Redacted only for an error: the daemon checks a URL at every pull.
    let shown = || crate::redact::url(url);
    if !url.contains("://") && url.contains(':') && url.contains('@') {
        let (user, rest) = url.split_once('@').unwrap_or_default();
        let (host, path) = rest.split_once(':').unwrap_or_default();
        return url::Url::parse(&format!("ssh://{user}@{host}/{path}"))
            .map_err(|e| format!("`{}`: {e}", shown()));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("`{}`: {e}", shown()))?;
    match parsed.scheme() {
        "http" | "https" | "ssh" | "git" | "file" => Ok(parsed),
        other => Err(format!(
            "`{}`: unsupported scheme `{other}` (use https, http, ssh, git or file)",
            shown()
        )),
    }
}

/// Whether a shallow pull of `url` is possible: libgit2's local transport
/// (`file://`) cannot fetch shallow history, and trying only fails, every
/// attempt. Refused before the pull starts, with what to do instead.
pub fn check_depth(url: &str, depth: Option<u32>) -> Result<(), String> {
    if depth.is_some() && url.starts_with("file:") {
        return Err("shallow pulls (depth) are not supported over file:// \
                    (libgit2's local transport cannot fetch shallow history); \
                    serve the repository over git://, ssh:// or http(s)://, or drop the depth"
            .into());
    }
    Ok(())
}

/// Whether a token may be sent to `url`: over https, or over plain http to
/// this machine (loopback never leaves it). Elsewhere plain http carries
/// the token in clear, so it takes `allowed` (the user said so).
pub fn check_token_transport(url: &str, allowed: bool) -> Result<(), String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Ok(());
    };
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if parsed.scheme() == "http" && !loopback && !allowed {
        return Err(format!(
            "`{}` is plain http: the token would travel in clear; use https://, \
             or allow it explicitly (allow_http_token = true)",
            crate::redact::url(url)
        ));
    }
    Ok(())
}

/// The remote's host name (`github.com`), empty for file:// and bad URLs.
pub fn remote_host(url: &str) -> String {
    check_remote_url(url)
        .ok()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_default()
}

/// Commits reachable from `new` and not from `old` in the repository at
/// `dir` (0 when it cannot be read, or `new` is behind `old`).
pub fn commits_between(dir: &std::path::Path, old: Option<&str>, new: &str) -> u64 {
    let count = || -> Result<u64, git2::Error> {
        let repo = git2::Repository::open(dir)?;
        let mut walk = repo.revwalk()?;
        walk.push(git2::Oid::from_str(new)?)?;
        if let Some(old) = old {
            walk.hide(git2::Oid::from_str(old)?)?;
        }
        Ok(walk.count() as u64)
    };
    count().unwrap_or(0)
}

/// Why `user` cannot be sent as a basic-auth user name, if it cannot.
pub fn bad_username(user: &str) -> Option<&'static str> {
    if user.is_empty() {
        Some("empty")
    } else if user.contains(':') {
        Some("a basic-auth user name cannot hold `:`")
    } else if user.chars().any(char::is_control) || user.len() > 256 {
        Some("control characters or more than 256 bytes")
    } else {
        None
    }
}

/// How the checkout follows the remote branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fast-forward only; a checkout with commits the remote lacks fails
    /// with [`FailureClass::Diverged`].
    FastForward,
    /// Make the checkout equal to the remote: local commits, changes and
    /// untracked files are discarded (ignored files are kept).
    Reset,
    /// A bare mirror of every remote ref; no worktree.
    Mirror,
}

/// Credentials for the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Anonymous, or whatever userinfo the URL carries.
    None,
    /// An HTTPS token, sent as basic auth (user: `SyncSpec::username`,
    /// else from the URL, else `x-access-token`).
    Token(Secret),
    /// An SSH private key; the host key is checked against `known_hosts`
    /// when given, else against the user's `~/.ssh/known_hosts`.
    SshKey {
        /// The private key file.
        key: PathBuf,
        /// Where the server's key must be listed.
        known_hosts: Option<PathBuf>,
    },
}

/// Where a secret comes from; the value is read each time it is needed,
/// so a rotated file is picked up without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file (surrounding whitespace dropped).
    File(PathBuf),
}

impl SecretRef {
    /// The secret now, or why it cannot be read (never the value).
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                _ => Err(format!("environment variable {var} is not set")),
            },
            SecretRef::File(path) => match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                Ok(_) => Err(format!("{} is empty", path.display())),
                Err(e) => Err(format!("{}: {e}", path.display())),
            },
        }
    }
}

/// Basic-auth credentials for every HTTP(S) URL under `url_prefix`
/// (`[[credential]]`, a repository's own token): sent to that origin and
/// prefix only, whether for the main remote or a submodule, never to
/// another origin. The most specific prefix wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginCredential {
    /// `https://git.example.com/org/`: URLs starting with it.
    pub url_prefix: String,
    /// The user (default `x-access-token`).
    pub username: Option<String>,
    /// The token or password, read at every attempt.
    pub secret: SecretRef,
}

impl OriginCredential {
    /// A remote's own token: for the origin of `url`, sent as `username`,
    /// else as the user the URL names; none for a URL without an origin.
    pub fn for_remote(url: &str, username: Option<String>, secret: SecretRef) -> Option<Self> {
        let parsed = url::Url::parse(url).ok()?;
        Some(OriginCredential {
            url_prefix: parsed.origin().ascii_serialization(),
            username: username.or_else(|| url_user(url)),
            secret,
        })
    }
}

/// The user a URL names (`https://deploy@host/…`), which servers that
/// check the user need.
pub(crate) fn url_user(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let user = parsed.username();
    (!user.is_empty()).then(|| user.to_string())
}

/// What to pull and where.
#[derive(Debug, Clone)]
pub struct SyncSpec {
    /// The remote.
    pub url: String,
    /// The checkout.
    pub dir: PathBuf,
    /// What the checkout follows: a branch (default: the one DIR has
    /// checked out, else the remote's HEAD), a tag, a commit, a semver range.
    pub follow: Follow,
    /// Shallow history of this many commits.
    pub depth: Option<u32>,
    /// Also update submodules.
    pub submodules: bool,
    /// Submodules may be cloned from this machine (`file://`, paths).
    pub local_submodules: bool,
    /// How the checkout is updated.
    pub mode: Mode,
    /// The sparse set to keep; `None`: whatever the checkout has (a sparse
    /// set made by hand is respected).
    pub sparse: Option<Sparse>,
    /// Credentials.
    pub auth: Auth,
    /// The user sent with a token, for servers that check it (Bitbucket,
    /// Gitea, htpasswd); default: the URL's user, else `x-access-token`.
    pub username: Option<String>,
    /// Credentials by URL prefix, read at each attempt (the repository's
    /// own file-based token, `[[credential]]` entries for submodules).
    pub credentials: Vec<OriginCredential>,
    /// How long to wait for another process's lock on DIR.
    pub lock_wait: Duration,
    /// Make what the pull writes readable and writable by DIR's group,
    /// whatever the process's umask (git-sync's `--group-write`): a web
    /// server in that group can serve the checkout.
    pub group_write: bool,
}

/// When a transfer counts as stalled, as git's `http.lowSpeedLimit` and
/// `http.lowSpeedTime`: fewer than `limit` bytes a second for `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowSpeed {
    /// Bytes a second.
    pub limit: u64,
    /// For this long.
    pub time: Duration,
}

impl Default for LowSpeed {
    fn default() -> Self {
        LowSpeed {
            limit: 1024,
            time: Duration::from_secs(30),
        }
    }
}

/// Bytes received over a sliding window, to tell a slow transfer that
/// moves from one that stalled. Pure: the caller gives the time.
#[derive(Debug)]
struct SpeedWindow {
    low: LowSpeed,
    start: Instant,
    at_start: u64,
    received: u64,
    stalled: bool,
}

impl SpeedWindow {
    fn new(low: LowSpeed, now: Instant) -> Self {
        SpeedWindow {
            low,
            start: now,
            at_start: 0,
            received: 0,
            stalled: false,
        }
    }

    /// `bytes` more arrived.
    fn add(&mut self, bytes: u64) {
        self.received = self.received.saturating_add(bytes);
    }

    /// A source reports its running total (libgit2's transfer progress).
    fn total(&mut self, total: u64) {
        self.received = self.received.max(total);
    }

    /// Whether the last window moved too little; a window that moved
    /// enough starts the next one.
    fn stalled(&mut self, now: Instant) -> bool {
        if self.stalled {
            return true;
        }
        let span = now.saturating_duration_since(self.start);
        if span < self.low.time {
            return false;
        }
        let wanted = (self.low.limit as f64 * span.as_secs_f64()) as u64;
        if self.received - self.at_start < wanted {
            self.stalled = true;
        } else {
            self.start = now;
            self.at_start = self.received;
        }
        self.stalled
    }
}

/// The time limit and cancellation of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptControl {
    end: Instant,
    /// True when `end` is the pull's overall deadline rather than the
    /// attempt's own timeout: running out then means "cancelled".
    end_is_deadline: bool,
    cancel: Arc<AtomicBool>,
    /// When asking for the remote's refs must be over (an HTTP ref
    /// advertisement), at the latest `end`.
    refs_end: Instant,
    /// Stall detection, shared by the clones the transport holds.
    speed: Arc<std::sync::Mutex<SpeedWindow>>,
}

impl AttemptControl {
    /// An attempt limited by `timeout`, the pull's `deadline`, and `cancel`.
    pub fn new(timeout: Duration, deadline: Option<Instant>, cancel: Arc<AtomicBool>) -> Self {
        let own_end = Instant::now() + timeout;
        match deadline {
            Some(d) if d < own_end => AttemptControl {
                end: d,
                end_is_deadline: true,
                cancel,
                refs_end: d,
                speed: Self::window(LowSpeed::default()),
            },
            _ => AttemptControl {
                end: own_end,
                end_is_deadline: false,
                cancel,
                refs_end: own_end,
                speed: Self::window(LowSpeed::default()),
            },
        }
    }

    fn window(low: LowSpeed) -> Arc<std::sync::Mutex<SpeedWindow>> {
        Arc::new(std::sync::Mutex::new(SpeedWindow::new(low, Instant::now())))
    }

    /// Gives up on a transfer slower than `low` (default 1 KiB/s for 30 s).
    pub fn with_low_speed(mut self, low: LowSpeed) -> Self {
        self.speed = Self::window(low);
        self
    }

    fn speed(&self) -> std::sync::MutexGuard<'_, SpeedWindow> {
        self.speed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `bytes` more arrived (the HTTP transport's reads).
    pub(crate) fn received(&self, bytes: u64) {
        self.speed().add(bytes);
    }

    /// libgit2's running total of received bytes.
    pub(crate) fn received_total(&self, total: u64) {
        self.speed().total(total);
    }

    /// How long a socket may stay silent: the stall window, within the
    /// time left.
    pub(crate) fn idle_limit(&self) -> Duration {
        self.remaining().min(self.speed().low.time)
    }

    /// Why a read that waited the whole stall window for a byte failed.
    pub(crate) fn silence_message(&self) -> String {
        format!(
            "stalled: the server sent nothing for {}",
            humantime::format_duration(self.speed().low.time)
        )
    }

    /// Why a timeout happened, for people.
    pub(crate) fn timeout_message(&self) -> String {
        let speed = self.speed();
        if speed.stalled {
            format!(
                "stalled: fewer than {} bytes/s for {}",
                speed.low.limit,
                humantime::format_duration(speed.low.time)
            )
        } else {
            "attempt timed out".into()
        }
    }

    /// Limits the ref advertisement to `refs` from now: a server that has
    /// not said what it has by then is given up on, whatever the
    /// attempt's whole limit.
    pub fn with_refs_limit(mut self, refs: Duration) -> Self {
        self.refs_end = self.end.min(Instant::now() + refs);
        self
    }

    /// Time left to read the remote's refs.
    pub fn refs_remaining(&self) -> Duration {
        self.refs_end.saturating_duration_since(Instant::now())
    }

    /// Time left before the attempt must stop.
    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    /// Why the attempt must stop now, if it must.
    pub fn interrupted(&self) -> Option<FailureClass> {
        if self.cancel.load(Ordering::Relaxed) {
            Some(FailureClass::Cancelled)
        } else if Instant::now() >= self.end {
            Some(if self.end_is_deadline {
                FailureClass::Cancelled
            } else {
                FailureClass::Timeout
            })
        } else if self.speed().stalled(Instant::now()) {
            Some(FailureClass::Timeout)
        } else {
            None
        }
    }
}

/// How a successful attempt changed the checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// DIR was made.
    Cloned,
    /// DIR moved to new commits.
    Updated,
    /// DIR was already current.
    Unchanged,
}

/// A successful attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// What happened to DIR.
    pub change: Change,
    /// Full SHA of the checkout's commit before, when there was one.
    pub old: Option<String>,
    /// Full SHA of the checkout after.
    pub new: String,
    /// Commits reachable from `new` that were not reachable from `old`.
    pub commits: u64,
    /// Things the user should know that did not stop the pull (a repaired
    /// repository, a recovered interrupted update).
    pub notices: Vec<String>,
}

/// A failed attempt, classified. The message is redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct GitFailure {
    /// The class (decides retries).
    pub class: FailureClass,
    /// The HTTP status, when there was one.
    pub http_status: Option<u16>,
    /// The server's Retry-After, when it sent one.
    pub retry_after: Option<Duration>,
    /// Redacted, for people.
    pub message: String,
}

/// Bad input that no retry can fix: the pull must not start.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// DIR belongs to another user.
    #[error("{path} belongs to {owner}, not to the user gitpulse runs as; refusing to touch it (run gitpulse as its owner)")]
    ForeignOwner {
        /// DIR.
        path: PathBuf,
        /// Who owns it.
        owner: String,
    },
    /// DIR exists and is not a git repository.
    #[error("{0} exists and is not a git repository; refusing to touch it")]
    NotARepository(PathBuf),
    #[error("{0} is a bare repository but --mode is not mirror")]
    /// DIR is bare but the mode is not mirror.
    UnexpectedBare(PathBuf),
    #[error("{0} has a worktree but --mode mirror expects a bare repository")]
    /// DIR has a worktree but the mode is mirror.
    UnexpectedWorktree(PathBuf),
    #[error("cannot read the SSH key {path}: {source}")]
    /// The SSH key cannot be read.
    SshKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Transfer progress, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Objects received.
    pub received_objects: usize,
    /// Objects to receive.
    pub total_objects: usize,
    /// Deltas resolved.
    pub indexed_deltas: usize,
    /// Deltas to resolve.
    pub total_deltas: usize,
    /// Bytes received.
    pub received_bytes: usize,
}

/// The outcome of one attempt.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    /// The attempt failed; the class says whether to retry.
    Failed(#[from] GitFailure),
    #[error(transparent)]
    /// The pull must not start.
    Spec(#[from] SpecError),
}

#[cfg(test)]
mod speed_tests {
    use super::*;

    const LOW: LowSpeed = LowSpeed {
        limit: 1000,
        time: Duration::from_secs(10),
    };

    #[test]
    fn a_slow_transfer_that_moves_is_not_a_stall() {
        let t0 = Instant::now();
        let mut w = SpeedWindow::new(LOW, t0);
        for second in 1..=60u64 {
            w.add(1500);
            assert!(!w.stalled(t0 + Duration::from_secs(second)), "{second}");
        }
    }

    #[test]
    fn too_few_bytes_for_the_whole_window_is_a_stall() {
        let t0 = Instant::now();
        let mut w = SpeedWindow::new(LOW, t0);
        w.total(50_000);
        assert!(
            !w.stalled(t0 + Duration::from_secs(10)),
            "the first window moved"
        );
        w.total(55_000);
        assert!(
            !w.stalled(t0 + Duration::from_secs(19)),
            "not a whole window yet"
        );
        assert!(w.stalled(t0 + Duration::from_secs(20)), "5 KB in 10 s");
        assert!(
            w.stalled(t0 + Duration::from_secs(21)),
            "a stall stays a stall"
        );
    }
}
