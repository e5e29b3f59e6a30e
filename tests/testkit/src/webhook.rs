//! An HTTP receiver for webhooks that checks each delivery's HMAC-SHA256
//! signature itself and can be told to fail (5xx, 429 with Retry-After, or
//! stall without an answer) until told to recover. It speaks HTTP with the
//! testkit's own request reader, keeping connections alive between requests.

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::http::{read_request, write_response, Listener};

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
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
    /// Whether `X-Gitpulse-Signature` matched the body and
    /// `X-Gitpulse-Signature-256` matched `TIMESTAMP.DELIVERY.BODY` under
    /// the secret.
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
    listener: Listener,
    state: Arc<Mutex<State>>,
}

fn valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    header.and_then(|h| h.strip_prefix("sha256=")) == Some(hmac_sha256_hex(secret, body).as_str())
}

/// HMAC-SHA256 of `body` under `secret`, as lower-case hex: how webhook
/// senders sign (GitHub, Gitea, Bitbucket, gitpulse's own notifier).
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Answers requests on one connection until the client closes it.
fn serve(mut stream: TcpStream, secret: &[u8], state: &Mutex<State>) {
    while let Ok(Some(request)) = read_request(&mut stream) {
        let headers: HashMap<String, String> = request
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        let signature = headers.get("x-gitpulse-signature").map(String::as_str);
        // The replay-proof signature covers TIMESTAMP.DELIVERY.BODY.
        let bound = match (
            headers.get("x-gitpulse-timestamp"),
            headers.get("x-gitpulse-delivery"),
        ) {
            (Some(ts), Some(id)) => {
                let mut message = format!("{ts}.{id}.").into_bytes();
                message.extend_from_slice(&request.body);
                message
            }
            _ => Vec::new(),
        };
        let bound_ok = !bound.is_empty()
            && valid(
                secret,
                &bound,
                headers.get("x-gitpulse-signature-256").map(String::as_str),
            );
        let signature_ok = valid(secret, &request.body, signature) && bound_ok;
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let answer = st.answer;
        st.log.push(Delivery {
            method: request.method.clone(),
            path: request.target.clone(),
            headers,
            body: String::from_utf8_lossy(&request.body).into_owned(),
            signature_ok,
            accepted: answer == Answer::Ok && signature_ok,
            at: Instant::now(),
        });
        drop(st);
        let (status, extra, body) = match answer {
            Answer::Ok if signature_ok => (200, vec![], "thanks"),
            Answer::Ok => (401, vec![], "bad signature"),
            Answer::Status(code) => (code, vec![], "unavailable"),
            Answer::RateLimited(secs) => {
                (429, vec![("Retry-After", secs.to_string())], "slow down")
            }
            Answer::Stall => {
                // Say nothing until the client gives up and closes.
                let _ = std::io::copy(&mut stream.take(u64::MAX), &mut std::io::sink());
                return;
            }
        };
        write_response(&mut stream, status, &extra, body, true);
    }
}

impl WebhookReceiver {
    /// Starts a receiver checking signatures with `secret` (one thread per
    /// connection).
    pub fn start(secret: &str) -> WebhookReceiver {
        let state = Arc::new(Mutex::new(State {
            answer: Answer::Ok,
            log: Vec::new(),
        }));
        let shared = state.clone();
        let secret = secret.as_bytes().to_vec();
        let listener = Listener::spawn(move |stream| serve(stream, &secret, &shared));
        WebhookReceiver { listener, state }
    }

    /// `http://127.0.0.1:PORT/PATH`
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}/{}",
            self.listener.addr,
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
