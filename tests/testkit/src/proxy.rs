//! A fault-injecting HTTP proxy: every connection carries one request; the
//! proxy either forwards it to the real server or applies the next queued
//! [`Fault`] that fits it.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{read_request, respond, Listener, Request};

/// What the proxy does to one request instead of forwarding it cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (503, 500, 401, 404 …) and a short body.
    Status(u16),
    /// Answer 429 with `Retry-After: SECS`.
    RateLimited { retry_after_secs: u64 },
    /// Reset the TCP connection (RST) without answering.
    Reset,
    /// Hold the connection open and silent this long, then close it.
    Stall(Duration),
    /// Forward a pack request but cut the response body after this many
    /// bytes. Applies only to `POST …/git-upload-pack`.
    TruncatePack { keep_bytes: usize },
    /// Forward a pack request, relay this many bytes of the answer, then
    /// send nothing more, holding the connection open for `hold`: a
    /// transfer that stops dead. Applies only to `POST …/git-upload-pack`.
    FreezePack { keep_bytes: usize, hold: Duration },
    /// Forward, but relay the answer `chunk` bytes at a time with a `pause`
    /// between chunks (a slow link, to catch a transfer in the middle).
    Slow { chunk: usize, pause: Duration },
    /// Forward without the `Git-Protocol` header, as a server (or a proxy
    /// in front of one) that knows only protocol v0.
    OnlyV0,
}

impl Fault {
    fn fits(&self, req: &Request) -> bool {
        match self {
            Fault::TruncatePack { .. } | Fault::FreezePack { .. } => {
                req.method == "POST" && req.target.ends_with("git-upload-pack")
            }
            _ => true,
        }
    }
}

#[derive(Default)]
struct Plan {
    queue: VecDeque<Fault>,
    always: Option<Fault>,
    /// The basic-auth user of every request that carried one, in order.
    users: Vec<String>,
    /// Every request, in order.
    seen: Vec<Seen>,
}

/// A request the proxy received, and how much it relayed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The `Git-Protocol` header, if sent.
    pub git_protocol: Option<String>,
    /// Bytes of the answer relayed to the client (head and body), once
    /// it was relayed.
    pub answer_bytes: u64,
}

/// The user of a `Basic` Authorization header.
fn basic_user(req: &Request) -> Option<String> {
    use base64::Engine as _;
    let encoded = req.header("Authorization")?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(
        text.split_once(':')
            .map_or(text.clone(), |(user, _)| user.to_string()),
    )
}

/// A proxy in front of one server.
pub struct FaultProxy {
    listener: Listener,
    plan: Arc<Mutex<Plan>>,
    requests: Arc<AtomicUsize>,
    faults_applied: Arc<AtomicUsize>,
    /// Repositories with a request being answered now.
    in_flight: Arc<Mutex<InFlight>>,
}

impl FaultProxy {
    /// Proxies to the HTTP server at `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let plan = Arc::new(Mutex::new(Plan::default()));
        let requests = Arc::new(AtomicUsize::new(0));
        let faults_applied = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let (p, r, f) = (plan.clone(), requests.clone(), faults_applied.clone());
        let busy = in_flight.clone();
        let listener = Listener::spawn(move |mut client| {
            let Ok(Some(req)) = read_request(&mut client) else {
                return;
            };
            r.fetch_add(1, Ordering::SeqCst);
            let answering = Answering::start(busy.clone(), &req);
            let (fault, index) = {
                let mut plan = p.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(user) = basic_user(&req) {
                    plan.users.push(user);
                }
                plan.seen.push(Seen {
                    method: req.method.clone(),
                    target: req.target.clone(),
                    git_protocol: req.header("Git-Protocol").map(String::from),
                    answer_bytes: 0,
                });
                let index = plan.seen.len() - 1;
                let fault = match plan.queue.iter().position(|fault| fault.fits(&req)) {
                    Some(i) => plan.queue.remove(i),
                    None => plan.always.clone().filter(|fault| fault.fits(&req)),
                };
                (fault, index)
            };
            if fault.is_some() {
                f.fetch_add(1, Ordering::SeqCst);
            }
            let relayed = handle(&mut client, req, fault, upstream, &answering);
            answering.finish();
            p.lock().unwrap_or_else(|e| e.into_inner()).seen[index].answer_bytes = relayed;
            // Closed only now: a client reading to the end of the answer
            // sees it after the proxy has stopped counting it.
            drop(client);
        });
        FaultProxy {
            listener,
            plan,
            requests,
            faults_applied,
            in_flight,
        }
    }

    /// Queues `fault` for the next request it fits.
    pub fn push(&self, fault: Fault) {
        self.push_times(fault, 1);
    }

    /// Queues `fault` for the next `n` requests it fits.
    pub fn push_times(&self, fault: Fault, n: usize) {
        let mut plan = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..n {
            plan.queue.push_back(fault.clone());
        }
    }

    /// Applies `fault` to every request once the queue is empty (`None`
    /// forwards cleanly again).
    pub fn set_always(&self, fault: Option<Fault>) {
        self.plan.lock().unwrap_or_else(|e| e.into_inner()).always = fault;
    }

    /// The basic-auth user of every request that carried credentials: who
    /// sent this origin a login it should never have had.
    pub fn users_seen(&self) -> Vec<String> {
        self.plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .users
            .clone()
    }

    /// Every request so far, with the size of its answer.
    pub fn seen(&self) -> Vec<Seen> {
        self.plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear_seen(&self) {
        self.plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .clear();
    }

    /// `http://127.0.0.1:PORT/NAME.git` through the proxy.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.listener.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.addr
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The most repositories it was answering requests for at one time.
    pub fn peak_repositories_in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peak
    }

    /// Faults applied so far.
    pub fn faults_applied(&self) -> usize {
        self.faults_applied.load(Ordering::SeqCst)
    }
}

/// Repositories with requests being answered, by how many, and the most
/// there ever were at once.
#[derive(Default)]
struct InFlight {
    busy: HashMap<String, usize>,
    peak: usize,
}

/// One request counted in [`InFlight`] under its repository (the first
/// segment of its path) until [`Answering::finish`].
struct Answering {
    in_flight: Arc<Mutex<InFlight>>,
    repo: String,
    finished: std::cell::Cell<bool>,
}

impl Answering {
    fn start(in_flight: Arc<Mutex<InFlight>>, req: &Request) -> Answering {
        let path = req.target.trim_start_matches('/');
        let repo = path.split('/').next().unwrap_or_default().to_string();
        {
            let mut counted = in_flight.lock().unwrap_or_else(|e| e.into_inner());
            *counted.busy.entry(repo.clone()).or_default() += 1;
            counted.peak = counted.peak.max(counted.busy.len());
        }
        Answering {
            in_flight,
            repo,
            finished: std::cell::Cell::new(false),
        }
    }

    /// Stops counting the request (once, whoever calls first).
    fn finish(&self) {
        if self.finished.replace(true) {
            return;
        }
        let mut counted = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counted.busy.get_mut(&self.repo) {
            *n -= 1;
            if *n == 0 {
                counted.busy.remove(&self.repo);
            }
        }
    }
}

/// Answers `req` as `fault` says; returns the bytes relayed from upstream.
/// A slow answer stops being counted in `answering` before its last chunk.
fn handle(
    client: &mut TcpStream,
    req: Request,
    fault: Option<Fault>,
    upstream: SocketAddr,
    answering: &Answering,
) -> u64 {
    match fault {
        Some(Fault::Status(status)) => respond(client, status, &[], "injected fault\n"),
        Some(Fault::RateLimited { retry_after_secs }) => respond(
            client,
            429,
            &[("Retry-After", retry_after_secs.to_string())],
            "slow down\n",
        ),
        Some(Fault::OnlyV0) => {
            let mut v0 = req.clone();
            v0.raw = without_header(&req.raw, "git-protocol");
            return forward(client, &v0, upstream, None).unwrap_or(0);
        }
        Some(Fault::Reset) => {
            // The caller's close then resets the connection.
            let _ = socket2::SockRef::from(&*client).set_linger(Some(Duration::ZERO));
        }
        Some(Fault::Stall(d)) => {
            let until = Instant::now() + d;
            while Instant::now() < until {
                thread::sleep(Duration::from_millis(20));
            }
        }
        Some(Fault::TruncatePack { keep_bytes }) => {
            return forward(client, &req, upstream, Some(keep_bytes)).unwrap_or(0);
        }
        Some(Fault::FreezePack { keep_bytes, hold }) => {
            let relayed = forward(client, &req, upstream, Some(keep_bytes)).unwrap_or(0);
            let until = Instant::now() + hold;
            while Instant::now() < until {
                thread::sleep(Duration::from_millis(20));
            }
            return relayed;
        }
        Some(Fault::Slow { chunk, pause }) => {
            let _ = forward_slowly(client, &req, upstream, chunk.max(1), pause, answering);
        }
        None => return forward(client, &req, upstream, None).unwrap_or(0),
    }
    0
}

/// `raw` (a whole request) without the header `name` (lower case).
fn without_header(raw: &[u8], name: &str) -> Vec<u8> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 4);
    let (head, body) = raw.split_at(split);
    let head = String::from_utf8_lossy(head);
    let kept: String = head
        .split_inclusive("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with(&format!("{name}:")))
        .collect();
    [kept.as_bytes(), body].concat()
}

/// Sends `req` upstream and relays the answer, cutting the body after
/// `limit` bytes when given.
fn forward(
    client: &mut TcpStream,
    req: &Request,
    upstream: SocketAddr,
    limit: Option<usize>,
) -> io::Result<u64> {
    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(Duration::from_secs(60)))?;
    server.write_all(&req.raw)?;
    let Some(limit) = limit else {
        let relayed = io::copy(&mut server, client)?;
        client.flush()?;
        return Ok(relayed);
    };
    // Relay the head untouched, then only `limit` body bytes.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if server.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    client.write_all(&head)?;
    let relayed = io::copy(&mut (&mut server).take(limit as u64), client)?;
    client.flush()?;
    Ok(head.len() as u64 + relayed)
}

/// Relays the answer `chunk` bytes at a time, pausing before each. Reads
/// one chunk ahead, so `answering` is finished before the last one goes
/// out.
fn forward_slowly(
    client: &mut TcpStream,
    req: &Request,
    upstream: SocketAddr,
    chunk: usize,
    pause: Duration,
    answering: &Answering,
) -> io::Result<()> {
    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(Duration::from_secs(60)))?;
    server.write_all(&req.raw)?;
    let mut read_chunk = || -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; chunk];
        let n = server.read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    };
    let mut pending = read_chunk()?;
    while !pending.is_empty() {
        let next = read_chunk()?;
        thread::sleep(pause);
        if next.is_empty() {
            answering.finish();
        }
        client.write_all(&pending)?;
        pending = next;
    }
    answering.finish();
    client.flush()
}
