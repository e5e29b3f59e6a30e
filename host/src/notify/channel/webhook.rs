//! The webhook channel: an HTTP POST or PUT of the rendered body, signed
//! with HMAC-SHA256 when the notifier has a secret (bound to a timestamp and
//! the delivery id, so a receiver can refuse replays).

use std::io::Read as _;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::{read_secret, HttpMethod, WebhookConfig};
use crate::notify::send::{DeliveryClass, Letter, SendError};

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

/// Sends `letter` to the webhook through `agent` (kept across messages);
/// the receiver's answer.
pub(crate) fn send(
    agent: &ureq::Agent,
    hook: &WebhookConfig,
    letter: &Letter<'_>,
) -> Result<String, SendError> {
    let body = letter.body.as_bytes();
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
