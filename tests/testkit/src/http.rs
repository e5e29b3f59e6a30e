//! A smart-HTTP git server: a small HTTP/1.1 front end that runs the real
//! `git http-backend` CGI for each request, one thread per connection,
//! `Connection: close` (a benchmark's server may answer ref listings
//! itself: [`GitHttpServer::start_listing_in_process`]).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use base64::Engine as _;

/// One parsed request, body included.
#[derive(Clone)]
pub(crate) struct Request {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request exactly as received (head and body as they were framed).
    pub raw: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request; `None` when the peer closed without sending one.
pub(crate) fn read_request(stream: &mut TcpStream) -> io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut raw = Vec::new();
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    raw.extend_from_slice(line.as_bytes());
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        raw.extend_from_slice(line.as_bytes());
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((n, v)) = trimmed.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
        raw.extend_from_slice(&body);
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            raw.extend_from_slice(line.as_bytes());
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            raw.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
        raw,
    }))
}

/// Writes a complete small response and closes.
pub(crate) fn respond(stream: &mut TcpStream, status: u16, extra: &[(&str, String)], body: &str) {
    write_response(stream, status, extra, body, false);
}

/// Writes a complete small response; `keep_alive` leaves the connection
/// open for the client's next request.
pub(crate) fn write_response(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(&str, String)],
    body: &str,
    keep_alive: bool,
) {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    ));
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.flush();
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Accepts connections on a background thread until dropped.
pub(crate) struct Listener {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Listener {
    pub fn spawn(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let handle = handle.clone();
                thread::spawn(move || handle(stream));
            }
        });
        Listener {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves every repository under a root directory over smart HTTP.
pub struct GitHttpServer {
    listener: Listener,
    requests: Arc<AtomicUsize>,
}

impl GitHttpServer {
    /// Serves `root` (repositories at `root/NAME.git`) anonymously.
    pub fn start(root: &Path) -> GitHttpServer {
        Self::start_inner(root.to_path_buf(), None)
    }

    /// Serves `root`, answering 401 unless the request carries basic auth
    /// with exactly `user` and `password`.
    pub fn start_with_basic_auth(root: &Path, user: &str, password: &str) -> GitHttpServer {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        Self::start_inner(root.to_path_buf(), Some(expected))
    }

    /// Serves `root` anonymously, answering protocol-v2 `ls-refs` requests
    /// itself instead of through a `git http-backend` process each (see
    /// the `listing` module): for benchmarks that poll thousands of
    /// repositories, where a process per request is what would be measured.
    pub fn start_listing_in_process(root: &Path) -> GitHttpServer {
        Self::start_with(root.to_path_buf(), None, true)
    }

    fn start_inner(root: PathBuf, auth: Option<String>) -> GitHttpServer {
        Self::start_with(root, auth, false)
    }

    fn start_with(root: PathBuf, auth: Option<String>, list_in_process: bool) -> GitHttpServer {
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let listener = Listener::spawn(move |mut stream| loop {
            let Ok(Some(req)) = read_request(&mut stream) else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            if let Some(expected) = &auth {
                if req.header("authorization") != Some(expected.as_str()) {
                    respond(
                        &mut stream,
                        401,
                        &[("WWW-Authenticate", "Basic realm=\"git\"".into())],
                        "authentication required\n",
                    );
                    return;
                }
            }
            // A listing answered here keeps the connection for the
            // client's next request; git's CGI answers end with the connection.
            if list_in_process && answer_listing(&root, &req, &mut stream) {
                continue;
            }
            serve_cgi(&root, req, &mut stream);
            return;
        });
        GitHttpServer { listener, requests }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.addr
    }

    /// `http://127.0.0.1:PORT/NAME.git`
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.listener.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Answers `req` when it is a protocol-v2 `ls-refs` for a repository
/// under `root`, keeping the connection open as a hosting service's front
/// end does; `false` leaves it to `git http-backend`.
fn answer_listing(root: &Path, req: &Request, stream: &mut TcpStream) -> bool {
    let v2 = req
        .header("git-protocol")
        .is_some_and(|p| p.split(':').any(|v| v == "version=2"));
    let Some(repo) = req.target.strip_suffix("/git-upload-pack") else {
        return false;
    };
    let repo = repo.trim_start_matches('/');
    if req.method != "POST" || !v2 || repo.split('/').any(|c| c == ".." || c.is_empty()) {
        return false;
    }
    let Some(answer) = crate::listing::ls_refs(&root.join(repo), &req.body) else {
        return false;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-result\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
        answer.len()
    );
    let mut whole = head.into_bytes();
    whole.extend_from_slice(&answer);
    let _ = stream.write_all(&whole);
    let _ = stream.flush();
    true
}

fn serve_cgi(root: &Path, req: Request, stream: &mut TcpStream) {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(ct) = req.header("content-type") {
        cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(p) = req.header("git-protocol") {
        cmd.env("GIT_PROTOCOL", p);
    }
    if let Some(enc) = req.header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    let Ok(mut child) = cmd.spawn() else {
        respond(stream, 500, &[], "cannot run git http-backend\n");
        return;
    };
    let mut stdin = child.stdin.take();
    let body = req.body;
    let writer = thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.write_all(&body);
        }
        drop(stdin);
    });
    let Some(stdout) = child.stdout.take() else {
        return;
    };
    let mut out = BufReader::new(stdout);
    let mut status = 200u16;
    let mut headers = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        match out.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some(v) = trimmed.strip_prefix("Status:") {
            status = v
                .trim()
                .split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(500);
        } else {
            headers.push_str(trimmed);
            headers.push_str("\r\n");
        }
    }
    let head = format!(
        "HTTP/1.1 {status} {}\r\n{headers}Connection: close\r\n\r\n",
        reason(status)
    );
    if stream.write_all(head.as_bytes()).is_ok() {
        let _ = io::copy(&mut out, stream);
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = writer.join();
    let _ = child.wait();
}

/// Serves the files under a root directory over plain HTTP GET (a release
/// download server's stand-in), and remembers which paths were asked for.
pub struct FileServer {
    listener: Listener,
    asked: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FileServer {
    /// Serves `root`: `GET /a/b` answers `root/a/b`, 404 for anything else
    /// (no directory listings, nothing outside `root`).
    pub fn start(root: &Path) -> FileServer {
        let root = root.to_path_buf();
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = asked.clone();
        let listener = Listener::spawn(move |mut stream| {
            let Ok(Some(req)) = read_request(&mut stream) else {
                return;
            };
            let path = req.target.split('?').next().unwrap_or("").to_string();
            seen.lock().unwrap().push(path.clone());
            let relative = path.trim_start_matches('/');
            let inside = !relative
                .split('/')
                .any(|part| part == ".." || part.is_empty());
            match std::fs::read(root.join(relative)) {
                Ok(body) if inside && req.method == "GET" => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                    let _ = stream.flush();
                }
                _ => respond(&mut stream, 404, &[], "not found\n"),
            }
        });
        FileServer { listener, asked }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.listener.addr)
    }

    /// The paths asked for so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}
