//! An HTTP receiver for webhooks that checks each delivery's HMAC-SHA256
//! signature itself and can be told to fail (5xx, 429 with Retry-After, or
//! stall without an answer) until told to recover.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 with a short body.
    Ok,
    /// This status (e.g. 503 or 400).
    Status(u16),
    /// 429 with `Retry-After: N` seconds.
    RateLimited(u64),
    /// Read the request and never answer: the sender's timeout fires.
    Stall,
}

/// One request that reached the receiver (a failed one too).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    /// Whether `X-Gitpulse-Signature` matched the body under the secret.
    pub signature_ok: bool,
    /// Whether the receiver accepted it (answered 2xx).
    pub accepted: bool,
    pub at: Instant,
}

struct State {
    answer: Answer,
    log: Vec<Delivery>,
}

/// A running receiver on 127.0.0.1; stopped when dropped.
pub struct WebhookReceiver {
    server: Arc<tiny_http::Server>,
    state: Arc<Mutex<State>>,
    threads: Vec<thread::JoinHandle<()>>,
    port: u16,
}

fn valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == hex
}

impl WebhookReceiver {
    /// Starts a receiver checking signatures with `secret`, answering with
    /// `workers` threads.
    pub fn start(secret: &str, workers: usize) -> WebhookReceiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("a loopback listener"));
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .expect("an IP listener");
        let state = Arc::new(Mutex::new(State {
            answer: Answer::Ok,
            log: Vec::new(),
        }));
        let threads = (0..workers.max(1))
            .map(|_| {
                let server = server.clone();
                let state = state.clone();
                let secret = secret.as_bytes().to_vec();
                thread::spawn(move || {
                    while let Ok(mut request) = server.recv() {
                        let mut body = Vec::new();
                        let _ = request.as_reader().read_to_end(&mut body);
                        let headers: HashMap<String, String> = request
                            .headers()
                            .iter()
                            .map(|h| {
                                (
                                    h.field.as_str().as_str().to_ascii_lowercase(),
                                    h.value.as_str().to_string(),
                                )
                            })
                            .collect();
                        let signature_ok = valid(
                            &secret,
                            &body,
                            headers.get("x-gitpulse-signature").map(String::as_str),
                        );
                        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                        let answer = st.answer;
                        st.log.push(Delivery {
                            method: request.method().as_str().to_string(),
                            path: request.url().to_string(),
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            signature_ok,
                            accepted: answer == Answer::Ok && signature_ok,
                            at: Instant::now(),
                        });
                        drop(st);
                        let response = match answer {
                            Answer::Ok if signature_ok => {
                                tiny_http::Response::from_string("thanks").with_status_code(200)
                            }
                            Answer::Ok => tiny_http::Response::from_string("bad signature")
                                .with_status_code(401),
                            Answer::Status(code) => tiny_http::Response::from_string("unavailable")
                                .with_status_code(code),
                            Answer::RateLimited(secs) => {
                                tiny_http::Response::from_string("slow down")
                                    .with_status_code(429)
                                    .with_header(
                                        tiny_http::Header::from_bytes(
                                            "Retry-After",
                                            secs.to_string(),
                                        )
                                        .expect("a valid header"),
                                    )
                            }
                            Answer::Stall => {
                                // Keep the connection, say nothing.
                                let _writer = request.into_writer();
                                continue;
                            }
                        };
                        let _ = request.respond(response);
                    }
                })
            })
            .collect();
        WebhookReceiver {
            server,
            state,
            threads,
            port,
        }
    }

    /// `http://127.0.0.1:PORT/PATH`
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Changes how later requests are answered.
    pub fn answer(&self, answer: Answer) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).answer = answer;
    }

    /// Every request so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .clone()
    }

    /// Accepted deliveries only.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.accepted)
            .collect()
    }

    /// How many deliveries were accepted (without copying them).
    pub fn accepted_count(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.log.iter().filter(|d| d.accepted).count()
    }

    /// Waits up to `limit` for at least `n` accepted deliveries.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Delivery> {
        let until = Instant::now() + limit;
        while self.accepted_count() < n && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
        self.accepted()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.unblock();
        for _ in 1..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
