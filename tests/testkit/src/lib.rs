//! Real local git servers, a fault-injecting proxy and repository fixtures
//! for gitpulse's end-to-end tests, benchmarks and quickstart.
//!
//! Everything binds 127.0.0.1 only, runs on background threads or child
//! processes owned by a value, and stops when that value is dropped.
//!
//! - [`ConfigFile`], [`Repo`]: gitpulse config files built in code.
//! - [`Upstream`]: a bare repository plus a scratch clone to commit from.
//! - [`GitHttpServer`]: smart HTTP through the real `git http-backend` CGI.
//! - [`FaultProxy`]: sits in front of a server and, request by request,
//!   answers 5xx, 429 with Retry-After, 401, 404, resets the connection,
//!   stalls, or truncates the pack.
//! - [`GitDaemon`]: the real `git daemon` for `git://`.
//! - [`SilentServer`]: accepts connections and never answers (a stall).
//! - [`Sshd`]: a real OpenSSH server for `ssh://`.
//! - [`plugins::build`]: the workspace's plugin crates as components.
//! - [`SmtpServer`]: a real SMTP server (aiosmtpd), plain, STARTTLS or
//!   implicit TLS with a self-signed CA, keeping every message.
//! - [`PostgresServer`]: a real PostgreSQL cluster (initdb) with password
//!   authentication, one empty database per test.
//! - [`WebhookReceiver`]: an HTTP receiver that verifies signatures and can
//!   fail on command.

// Test code: a panic is how it fails, and its helpers need no API docs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod certs;
mod config;
mod daemon;
mod fixture;
mod http;
mod listing;
pub mod plugins;
mod postgres;
mod proxy;
mod silent;
mod smtp;
mod sshd;
mod webhook;

pub use config::{table, ConfigFile, Repo};
pub use daemon::GitDaemon;
pub use fixture::{git, git_ok, Upstream};
pub use http::{FileServer, GitHttpServer};
pub use postgres::{PostgresServer, POSTGRES_PASSWORD};
pub use proxy::{Fault, FaultProxy, Seen};
pub use silent::SilentServer;
pub use smtp::{Mail, SmtpServer, SmtpTls};
pub use sshd::Sshd;
pub use webhook::{hmac_sha256_hex, Answer, Delivery, WebhookReceiver};

/// A loopback port that was free a moment ago (for servers that cannot be
/// handed a listening socket, like `git daemon`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A TCP connection to 127.0.0.1:`port` from another loopback address,
/// `127.0.0.N`: a second client, as the server sees it (the whole of
/// 127.0.0.0/8 is this machine).
pub fn connect_from(n: u8, port: u16) -> std::io::Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let from = std::net::SocketAddr::from(([127, 0, 0, n], 0));
    socket.bind(&from.into())?;
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.connect_timeout(&to.into(), std::time::Duration::from_secs(5))?;
    Ok(socket.into())
}

/// The usual scene of an end-to-end test: a scratch directory holding one
/// upstream repository, served over smart HTTP behind a fault proxy.
pub struct Served {
    pub root: tempfile::TempDir,
    pub up: Upstream,
    pub server: GitHttpServer,
    pub proxy: FaultProxy,
}

impl Served {
    /// Upstream `name` at `root/name.git`, reachable at `proxy.url(name)`.
    pub fn new(name: &str) -> Served {
        let root = tempfile::tempdir().expect("a scratch directory");
        let up = Upstream::new(root.path(), name);
        let server = GitHttpServer::start(root.path());
        let proxy = FaultProxy::start(server.addr());
        Served {
            root,
            up,
            server,
            proxy,
        }
    }

    /// The URL of the upstream through the proxy.
    pub fn url(&self) -> String {
        self.proxy.url(&self.up.name)
    }

    /// A path for a checkout inside the scratch directory.
    pub fn dir(&self, name: &str) -> std::path::PathBuf {
        self.root.path().join(name)
    }
}
