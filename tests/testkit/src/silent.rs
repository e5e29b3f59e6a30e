//! A server that takes connections and never says a word: what a stalled
//! `git daemon` (or any hung server) looks like from the client's side.

use std::net::TcpListener;

/// Listens on 127.0.0.1; the kernel completes every connection (the
/// backlog) and nothing is ever sent. Stops listening when dropped.
pub struct SilentServer {
    listener: TcpListener,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        SilentServer {
            listener: TcpListener::bind("127.0.0.1:0").expect("a loopback port"),
        }
    }

    /// `git://127.0.0.1:PORT/NAME.git`
    pub fn git_url(&self, name: &str) -> String {
        let port = self
            .listener
            .local_addr()
            .map(|a| a.port())
            .expect("a bound listener has an address");
        format!("git://127.0.0.1:{port}/{name}.git")
    }
}
