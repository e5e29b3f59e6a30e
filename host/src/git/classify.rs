//! Turning a libgit2 error into a [`FailureClass`], once.
//!
//! Precise facts win over message matching: an interrupted attempt is a
//! timeout or a cancellation whatever libgit2 says; a failure the HTTP
//! transport recorded carries its status and Retry-After. Only then are
//! libgit2's error class, code and message consulted.

use git2::{ErrorClass, ErrorCode};

use super::{AttemptControl, FailureClass, GitFailure};
use crate::redact::{self, Secret};

/// The longest message tail kept; the end of a libgit2 message is the part
/// that says what went wrong.
const TAIL: usize = 240;

pub(crate) fn classify(
    err: &git2::Error,
    transport_failure: Option<GitFailure>,
    control: &AttemptControl,
    secrets: &[&Secret],
) -> GitFailure {
    if let Some(class) = control.interrupted() {
        if matches!(err.code(), ErrorCode::User | ErrorCode::Timeout)
            || matches!(err.class(), ErrorClass::Net | ErrorClass::Callback)
            || transport_failure.is_some()
        {
            return GitFailure {
                class,
                http_status: None,
                retry_after: None,
                message: if class == FailureClass::Timeout {
                    control.timeout_message()
                } else {
                    "cancelled".into()
                },
            };
        }
    }
    if let Some(failure) = transport_failure {
        return GitFailure {
            message: tail(&redact::text(&failure.message, secrets)),
            ..failure
        };
    }
    let message = redact::text(err.message(), secrets);
    let (class, http_status) = class_of(err, &message);
    GitFailure {
        class,
        http_status,
        retry_after: None,
        message: tail(&message),
    }
}

/// The class of an HTTP error status, whoever saw it (libgit2's message or
/// our transport).
pub(crate) fn class_for_status(status: u16) -> FailureClass {
    match status {
        401 | 403 | 407 => FailureClass::Auth,
        404 | 410 => FailureClass::NotFound,
        429 => FailureClass::RateLimited,
        500..=599 => FailureClass::ServerError,
        _ => FailureClass::Protocol,
    }
}

fn class_of(err: &git2::Error, message: &str) -> (FailureClass, Option<u16>) {
    let lower = message.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    if let Some(status) = http_status(&lower) {
        return (class_for_status(status), Some(status));
    }
    let class = match (err.class(), err.code()) {
        (_, ErrorCode::Auth) => FailureClass::Auth,
        (_, ErrorCode::Certificate) => FailureClass::Tls,
        (_, ErrorCode::Locked) => FailureClass::LockHeld,
        (_, ErrorCode::Timeout) => FailureClass::Timeout,
        (_, ErrorCode::User) => FailureClass::Cancelled,
        _ if has("no space left") || has("disk quota") => FailureClass::DiskFull,
        _ if has("failed to resolve address") || has("could not resolve") => FailureClass::Dns,
        (ErrorClass::Ssh, _) if has("authentication") || has("publickey") => FailureClass::Auth,
        (ErrorClass::Ssh, _) if has("host key") || has("hostkey") || has("known_hosts") => {
            FailureClass::Tls
        }
        (ErrorClass::Ssl, _) => FailureClass::Tls,
        _ if has("failed to connect")
            || has("connection refused")
            || has("connection reset")
            || has("broken pipe") =>
        {
            FailureClass::Connect
        }
        (ErrorClass::Reference, ErrorCode::NotFound) => FailureClass::RefNotFound,
        _ if has("could not find repository")
            || has("failed to resolve path")
            || has("not appear to be a git repository")
            || has("repository not found")
            || has("not exported")
            || has("no such repository") =>
        {
            FailureClass::NotFound
        }
        (ErrorClass::Checkout, _) | (_, ErrorCode::Conflict) => FailureClass::Diverged,
        (ErrorClass::Odb | ErrorClass::Object | ErrorClass::Zlib | ErrorClass::Sha1, _) => {
            FailureClass::CorruptRepo
        }
        _ if has("corrupt") || has("object not found") || has("missing object") => {
            FailureClass::CorruptRepo
        }
        (ErrorClass::Indexer | ErrorClass::FetchHead, _) => FailureClass::Protocol,
        _ if has("early eof")
            || has("unexpected eof")
            || has("could not read from remote")
            || has("invalid packet")
            || has("pack")
            || has("protocol")
            || has("malformed") =>
        {
            FailureClass::Protocol
        }
        (ErrorClass::Net, _) => FailureClass::Connect,
        (ErrorClass::Os, _) if has("timed out") => FailureClass::Timeout,
        _ => FailureClass::Other,
    };
    (class, None)
}

/// The status in libgit2's `unexpected http status code: 503`.
fn http_status(lower: &str) -> Option<u16> {
    let rest = &lower[lower.find("http status code: ")? + "http status code: ".len()..];
    rest.get(..3)?.parse().ok()
}

fn tail(message: &str) -> String {
    let trimmed = message.trim();
    if trimmed.len() <= TAIL {
        return trimmed.to_string();
    }
    let mut start = trimmed.len() - TAIL;
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &trimmed[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn control() -> AttemptControl {
        AttemptControl::new(Duration::from_secs(60), None, Arc::new(Default::default()))
    }

    fn err(class: ErrorClass, code: ErrorCode, msg: &str) -> git2::Error {
        git2::Error::new(code, class, msg)
    }

    #[test]
    fn libgit2_messages_map_to_classes() {
        let cases = [
            (
                ErrorClass::Http,
                ErrorCode::GenericError,
                "unexpected http status code: 503",
                FailureClass::ServerError,
            ),
            (
                ErrorClass::Http,
                ErrorCode::GenericError,
                "unexpected http status code: 429",
                FailureClass::RateLimited,
            ),
            (
                ErrorClass::Http,
                ErrorCode::GenericError,
                "unexpected http status code: 404",
                FailureClass::NotFound,
            ),
            (
                ErrorClass::Http,
                ErrorCode::Auth,
                "authentication required",
                FailureClass::Auth,
            ),
            (
                ErrorClass::Net,
                ErrorCode::Timeout,
                "timed out",
                FailureClass::Timeout,
            ),
            (
                ErrorClass::Net,
                ErrorCode::GenericError,
                "failed to resolve address for x.invalid",
                FailureClass::Dns,
            ),
            (
                ErrorClass::Os,
                ErrorCode::GenericError,
                "failed to connect to 127.0.0.1: Connection refused",
                FailureClass::Connect,
            ),
            (
                ErrorClass::Net,
                ErrorCode::GenericError,
                "early EOF",
                FailureClass::Protocol,
            ),
            (
                ErrorClass::Odb,
                ErrorCode::NotFound,
                "object not found - no match for id",
                FailureClass::CorruptRepo,
            ),
            (
                ErrorClass::Os,
                ErrorCode::GenericError,
                "failed to write: No space left on device",
                FailureClass::DiskFull,
            ),
            (
                ErrorClass::Checkout,
                ErrorCode::Conflict,
                "1 conflict prevents checkout",
                FailureClass::Diverged,
            ),
            (
                ErrorClass::Os,
                ErrorCode::Locked,
                "failed to lock file",
                FailureClass::LockHeld,
            ),
            (
                ErrorClass::Callback,
                ErrorCode::User,
                "user cancelled",
                FailureClass::Cancelled,
            ),
            (
                ErrorClass::Invalid,
                ErrorCode::GenericError,
                "something odd",
                FailureClass::Other,
            ),
        ];
        for (class, code, msg, want) in cases {
            let got = classify(&err(class, code, msg), None, &control(), &[]);
            assert_eq!(got.class, want, "{msg}");
        }
    }

    #[test]
    fn http_status_is_kept() {
        let got = classify(
            &err(
                ErrorClass::Http,
                ErrorCode::GenericError,
                "unexpected http status code: 502",
            ),
            None,
            &control(),
            &[],
        );
        assert_eq!(
            (got.class, got.http_status),
            (FailureClass::ServerError, Some(502))
        );
    }

    #[test]
    fn an_expired_attempt_is_a_timeout_whatever_libgit2_says() {
        let expired = AttemptControl::new(Duration::ZERO, None, Arc::new(Default::default()));
        let got = classify(
            &err(ErrorClass::Net, ErrorCode::User, "user cancelled"),
            None,
            &expired,
            &[],
        );
        assert_eq!(got.class, FailureClass::Timeout);
    }

    #[test]
    fn secrets_are_scrubbed_and_long_messages_keep_their_tail() {
        let token = Secret::new("sekrit-token");
        let long = format!("{} failed for https://u:sekrit-token@h/x", "x".repeat(500));
        let got = classify(
            &err(ErrorClass::Net, ErrorCode::GenericError, &long),
            None,
            &control(),
            &[&token],
        );
        assert!(!got.message.contains("sekrit"), "{}", got.message);
        assert!(got.message.ends_with("https://***@h/x"), "{}", got.message);
        assert!(got.message.chars().count() <= TAIL + 1);
    }
}
