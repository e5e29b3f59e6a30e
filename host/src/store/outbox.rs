//! The notification outbox: rendered messages waiting for delivery, in the
//! same SQLite file as the pulls that caused them.
//!
//! A message is *accepted* when its row commits (with the pull result that
//! caused it). From then on it is `pending` until a sender marks it
//! `delivered`, or `dead` with the reason after its attempts run out; a
//! crash in between leaves it pending, so it is sent after a restart.
//! Delivery is at least once: a crash after the receiver answered and
//! before the row is marked sends it again, with the same delivery id.
//!
//! Floods are kept down here, where every message passes: a message equal
//! to one accepted within the notifier's dedup window is not queued, and
//! messages with a digest key (failures and recoveries, per host) wait out
//! the digest window so a sender can collect them into one. A digest is a
//! message of its own, rendered once and accepted in one transaction with
//! its members (which wait `in-digest` until it is delivered), so its
//! retries send the same text whatever the config says by then.

use serde::Serialize;

/// A rendered message for one notifier, before it is queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The notifier it is for.
    pub notifier: String,
    /// Rendered subject.
    pub subject: String,
    /// Rendered body.
    pub body: String,
    /// Rendered HTML part.
    pub html: Option<String>,
    /// Deliveries before it is dead-lettered.
    pub max_attempts: u32,
    /// Not queued if an identical message was accepted this recently.
    pub dedup_window_ms: u64,
    /// How long a digestible message waits for others like it; zero sends
    /// at once.
    pub digest_window_ms: u64,
}

/// An event as the store keeps it. Opaque here: the store knows no event
/// semantics; `events` decides the kind, the keys and the JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// The repository's name.
    pub repo: String,
    /// The event kind's name.
    pub kind: String,
    /// The event's JSON (what templates and digests read).
    pub payload: String,
    /// Messages of one notifier with equal keys, within its dedup window,
    /// are one message.
    pub dedup_key: String,
    /// Messages of one notifier with the same key may become one digest.
    pub digest_key: Option<String>,
}

/// An event and its messages, recorded together.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The event.
    pub event: EventRow,
    /// Its messages, one per notifier that takes it.
    pub messages: Vec<NewMessage>,
}

/// A queued message, as a sender sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Its id, also the `X-Gitpulse-Delivery` header.
    pub id: i64,
    /// The notifier.
    pub notifier: String,
    /// The event kind, or `digest`.
    pub kind: String,
    /// The repository.
    pub repo: String,
    /// Rendered subject.
    pub subject: String,
    /// Rendered body.
    pub body: String,
    /// Rendered HTML part.
    pub html: Option<String>,
    /// The event's JSON (what digests are built from).
    pub event: String,
    /// Its digest key, while it may still be folded.
    pub digest_key: Option<String>,
    /// Failed deliveries so far.
    pub attempts: u32,
    /// Deliveries before it is dead-lettered.
    pub max_attempts: u32,
    /// When it was accepted.
    pub created_ms: u64,
    /// How many accepted messages this delivery carries: a digest's
    /// members, else 1.
    pub carries: u64,
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutboxState {
    /// Waiting for delivery (or for its digest window, or a retry).
    Pending,
    /// Folded into a digest message that is not delivered yet.
    InDigest,
    /// Delivered (a digest's members too).
    Delivered,
    /// Given up on, with the reason; `gitpulse outbox retry` requeues it.
    Dead,
}

impl OutboxState {
    /// The name `gitpulse outbox` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::InDigest => "in-digest",
            OutboxState::Delivered => "delivered",
            OutboxState::Dead => "dead",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<OutboxState> {
        [
            OutboxState::Pending,
            OutboxState::InDigest,
            OutboxState::Delivered,
            OutboxState::Dead,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for OutboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A digest, rendered, before it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDigest {
    /// Rendered subject.
    pub subject: String,
    /// Rendered body.
    pub body: String,
    /// Rendered HTML part.
    pub html: Option<String>,
    /// The events it tells of, as JSON.
    pub events: String,
    /// Deliveries before it is dead-lettered.
    pub max_attempts: u32,
}

/// A row of `gitpulse outbox`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRow {
    /// Its id.
    pub id: i64,
    /// The notifier.
    pub notifier: String,
    /// The event kind, or `digest`.
    pub kind: String,
    /// The repository.
    pub repo: String,
    /// Rendered subject.
    pub subject: String,
    /// Where it is in its life.
    pub state: OutboxState,
    /// Failed deliveries so far.
    pub attempts: u32,
    /// When it was accepted.
    pub created_ms: u64,
    /// When it is tried next (pending only).
    pub next_at_ms: Option<u64>,
    /// When it was delivered.
    pub delivered_ms: Option<u64>,
    /// The last failure (pending) or why it was given up (dead).
    pub last_error: Option<String>,
    /// What the receiver answered.
    pub answer: Option<String>,
    /// Delivered inside the digest message with this id.
    pub digest_of: Option<i64>,
}

/// One delivery: the message that went out (a digest takes its members
/// along) and what the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message that went out.
    pub id: i64,
    /// The receiver's answer.
    pub answer: String,
}

/// Counts of messages by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxCounts {
    /// Waiting.
    pub pending: u64,
    /// Delivered.
    pub delivered: u64,
    /// Given up on.
    pub dead: u64,
    /// Waiting inside a digest that has not gone out yet.
    pub in_digest: u64,
    /// Unix milliseconds when the oldest pending message was queued.
    pub oldest_pending_ms: Option<u64>,
}
