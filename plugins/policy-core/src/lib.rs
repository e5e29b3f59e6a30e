//! The standard gitpulse retry policy, as pure code.
//!
//! This crate owns the vocabulary that the git layer and every policy share —
//! the closed set of [`FailureClass`]es, the [`AttemptContext`] a policy is
//! asked about, and the [`Decision`] it answers — plus the standard policy
//! itself ([`decide`]). It does no I/O, reads no clock and draws no random
//! numbers: time arrives as durations in the context and randomness as a
//! `u64` argument. That is what lets the host link it natively as the
//! built-in policy and the standard WebAssembly plugin compile the very same
//! code, and it is what makes a decision reproducible in a test.
//!
//! It does not own limits enforcement (the host clamps whatever a policy
//! says) nor the git error classification (the host's `git` module does that).
//!
//! ```
//! use std::time::Duration;
//! use gitpulse_policy_core::{decide, AttemptContext, Backoff, Decision, FailureClass};
//!
//! let backoff = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) };
//! let ctx = AttemptContext::first(FailureClass::ServerError);
//! match decide(&ctx, &backoff, 5, 0x1234_5678) {
//!     Decision::RetryAfter { delay, .. } => assert!(delay <= Duration::from_secs(1)),
//!     Decision::Stop(reason) => panic!("a 5xx is transient, got {reason:?}"),
//! }
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why a git operation failed, classified once by the host's git layer.
///
/// The set is closed and shared with the WIT contract; policies match on it
/// instead of parsing error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureClass {
    /// The remote host name could not be resolved.
    Dns,
    /// The connection was refused, reset or dropped.
    Connect,
    /// An attempt exceeded its time limit (including a stalled server).
    Timeout,
    /// The TLS handshake or certificate verification failed.
    Tls,
    /// The server answered 5xx.
    ServerError,
    /// The server answered 429.
    RateLimited,
    /// Credentials were missing or refused (401, 403, a bad key).
    Auth,
    /// The repository does not exist (404, a missing path).
    NotFound,
    /// The repository exists but the requested branch does not.
    RefNotFound,
    /// The server spoke something that is not the git protocol, or the
    /// stream ended early (a truncated pack).
    Protocol,
    /// The local or remote object database is damaged.
    CorruptRepo,
    /// Another process holds a lock on the checkout.
    LockHeld,
    /// The disk is full or over quota.
    DiskFull,
    /// The checkout has commits the remote does not (fast-forward impossible).
    Diverged,
    /// The operation was stopped by a signal or by the overall deadline.
    Cancelled,
    /// Anything else.
    Other,
}

impl FailureClass {
    /// Every class, in declaration order.
    pub const ALL: [FailureClass; 16] = [
        FailureClass::Dns,
        FailureClass::Connect,
        FailureClass::Timeout,
        FailureClass::Tls,
        FailureClass::ServerError,
        FailureClass::RateLimited,
        FailureClass::Auth,
        FailureClass::NotFound,
        FailureClass::RefNotFound,
        FailureClass::Protocol,
        FailureClass::CorruptRepo,
        FailureClass::LockHeld,
        FailureClass::DiskFull,
        FailureClass::Diverged,
        FailureClass::Cancelled,
        FailureClass::Other,
    ];

    /// The kebab-case name used in JSON output, traces and the WIT contract.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureClass::Dns => "dns",
            FailureClass::Connect => "connect",
            FailureClass::Timeout => "timeout",
            FailureClass::Tls => "tls",
            FailureClass::ServerError => "server-error",
            FailureClass::RateLimited => "rate-limited",
            FailureClass::Auth => "auth",
            FailureClass::NotFound => "not-found",
            FailureClass::RefNotFound => "ref-not-found",
            FailureClass::Protocol => "protocol",
            FailureClass::CorruptRepo => "corrupt-repo",
            FailureClass::LockHeld => "lock-held",
            FailureClass::DiskFull => "disk-full",
            FailureClass::Diverged => "diverged",
            FailureClass::Cancelled => "cancelled",
            FailureClass::Other => "other",
        }
    }

    /// Whether the standard policy considers the class worth retrying.
    ///
    /// Transient: the same request may well succeed later. Not transient:
    /// credentials, missing repositories or branches, diverged history, TLS
    /// verification, a full disk and an explicit cancellation — retrying those
    /// only delays the error a person has to act on.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            FailureClass::Dns
                | FailureClass::Connect
                | FailureClass::Timeout
                | FailureClass::ServerError
                | FailureClass::RateLimited
                | FailureClass::Protocol
                | FailureClass::CorruptRepo
                | FailureClass::LockHeld
                | FailureClass::Other
        )
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error returned when a string names no [`FailureClass`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownClass(pub String);

impl fmt::Display for UnknownClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<&str> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
        write!(
            f,
            "unknown failure class `{}` (known: {})",
            self.0,
            known.join(", ")
        )
    }
}

impl std::error::Error for UnknownClass {}

impl FromStr for FailureClass {
    type Err = UnknownClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailureClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownClass(s.to_string()))
    }
}

/// What a policy knows about the attempt that just failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptContext {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// How it failed (decides whether it is worth retrying).
    pub class: FailureClass,
    /// The HTTP status, when the failure came from an HTTP response.
    pub http_status: Option<u16>,
    /// The server's Retry-After, when it sent one.
    pub retry_after: Option<Duration>,
    /// Time since the first attempt started.
    pub elapsed: Duration,
    /// Time left before the overall deadline, when there is one.
    pub remaining: Option<Duration>,
    /// The delay chosen before this attempt (none before the first).
    pub previous_delay: Option<Duration>,
}

impl AttemptContext {
    /// The context of a first attempt that failed with `class` at once.
    pub fn first(class: FailureClass) -> Self {
        AttemptContext {
            attempt: 1,
            class,
            http_status: None,
            retry_after: None,
            elapsed: Duration::ZERO,
            remaining: None,
            previous_delay: None,
        }
    }
}

/// The capped exponential curve: attempt n may wait up to `base * 2^(n-1)`,
/// never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The ceiling of the delay after failed attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let factor = 1u64 << exponent;
        let millis = (self.base.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(millis).min(self.max)
    }

    /// Full jitter: a uniformly random delay in `[0, ceiling]`.
    pub fn full_jitter(&self, attempt: u32, random: u64) -> Duration {
        scale(self.ceiling(attempt), random)
    }
}

/// `random` mapped uniformly onto `[0, max]`, at millisecond resolution.
pub fn scale(max: Duration, random: u64) -> Duration {
    let millis = max.as_millis() as u64;
    if millis == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(random % (millis + 1))
}

/// Why a pull stops retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The failure class is not worth retrying.
    NotRetryable,
    /// The maximum number of attempts was used.
    AttemptsExhausted,
    /// The next attempt could not start before the overall deadline.
    Deadline,
    /// The retry budget for the remote host is spent.
    Budget,
    /// A policy's own reason, in its own words.
    Policy(String),
    /// The user interrupted the pull (a signal). Only the host says this.
    Cancelled,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::NotRetryable => f.write_str("not retryable"),
            StopReason::AttemptsExhausted => f.write_str("attempts exhausted"),
            StopReason::Deadline => f.write_str("deadline reached"),
            StopReason::Budget => f.write_str("retry budget spent"),
            StopReason::Policy(text) => write!(f, "policy: {text}"),
            StopReason::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// A policy's answer after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Try again after `delay`; `timeout` overrides the next attempt's limit.
    RetryAfter {
        /// How long to wait.
        delay: Duration,
        /// The next attempt's time limit, when the policy sets one.
        timeout: Option<Duration>,
    },
    /// Give up, for this reason.
    Stop(StopReason),
}

/// The standard policy.
///
/// Stops on non-transient classes and after `max_attempts`; otherwise waits a
/// full-jitter delay on the capped exponential curve, never less than the
/// server's Retry-After (itself capped at `backoff.max`), and stops instead
/// when that wait would run past the overall deadline.
pub fn decide(ctx: &AttemptContext, backoff: &Backoff, max_attempts: u32, random: u64) -> Decision {
    if !ctx.class.is_transient() {
        return Decision::Stop(StopReason::NotRetryable);
    }
    if ctx.attempt >= max_attempts {
        return Decision::Stop(StopReason::AttemptsExhausted);
    }
    let mut delay = backoff.full_jitter(ctx.attempt, random);
    if let Some(hint) = ctx.retry_after {
        delay = delay.max(hint.min(backoff.max));
    }
    if let Some(remaining) = ctx.remaining {
        if delay >= remaining {
            return Decision::Stop(StopReason::Deadline);
        }
    }
    Decision::RetryAfter {
        delay,
        timeout: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    fn ctx(attempt: u32, class: FailureClass) -> AttemptContext {
        AttemptContext {
            attempt,
            ..AttemptContext::first(class)
        }
    }

    #[test]
    fn class_names_round_trip() {
        for class in FailureClass::ALL {
            assert_eq!(class.as_str().parse::<FailureClass>(), Ok(class));
        }
        let err = "teapot".parse::<FailureClass>().unwrap_err();
        assert!(err.to_string().contains("server-error"), "{err}");
    }

    #[test]
    fn never_retries_what_a_person_must_fix() {
        for class in [
            FailureClass::Auth,
            FailureClass::NotFound,
            FailureClass::RefNotFound,
            FailureClass::Diverged,
        ] {
            assert_eq!(
                decide(&ctx(1, class), &BACKOFF, 5, 7),
                Decision::Stop(StopReason::NotRetryable),
                "{class}"
            );
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let ceilings: Vec<u64> = (1..=8).map(|n| BACKOFF.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(BACKOFF.ceiling(u32::MAX), BACKOFF.max);
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let mut seen = std::collections::BTreeSet::new();
        for random in 0..2000u64 {
            let d = BACKOFF.full_jitter(4, random.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            assert!(d <= Duration::from_secs(8));
            seen.insert(d.as_millis() / 1000);
        }
        // Every whole second below the 8 s ceiling is hit.
        assert_eq!(seen.len(), 8, "delays should cover 0..8 s: {seen:?}");
    }

    #[test]
    fn stops_after_max_attempts() {
        assert!(matches!(
            decide(&ctx(4, FailureClass::Timeout), &BACKOFF, 5, 1),
            Decision::RetryAfter { .. }
        ));
        assert_eq!(
            decide(&ctx(5, FailureClass::Timeout), &BACKOFF, 5, 1),
            Decision::Stop(StopReason::AttemptsExhausted)
        );
    }

    #[test]
    fn honours_retry_after_up_to_the_cap() {
        let mut c = ctx(1, FailureClass::RateLimited);
        c.retry_after = Some(Duration::from_secs(7));
        assert_eq!(
            decide(&c, &BACKOFF, 5, 0),
            Decision::RetryAfter {
                delay: Duration::from_secs(7),
                timeout: None
            }
        );
        c.retry_after = Some(Duration::from_secs(3600));
        assert_eq!(
            decide(&c, &BACKOFF, 5, 0),
            Decision::RetryAfter {
                delay: BACKOFF.max,
                timeout: None
            }
        );
    }

    #[test]
    fn stops_when_the_wait_would_pass_the_deadline() {
        let mut c = ctx(3, FailureClass::ServerError);
        c.remaining = Some(Duration::from_millis(10));
        // random chosen so the jittered delay is well above 10 ms
        assert_eq!(
            decide(&c, &BACKOFF, 5, 3999),
            Decision::Stop(StopReason::Deadline)
        );
    }
}
