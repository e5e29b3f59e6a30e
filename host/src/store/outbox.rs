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

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::Serialize;

use super::{now_ms, Store, StoreError, StoredEvent};

/// The outbox as first released (version 1 of the store's schema).
pub(super) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL,
        notifier TEXT NOT NULL,
        kind TEXT NOT NULL,
        repo TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        html TEXT,
        event TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        digest_key TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        next_at_ms INTEGER NOT NULL,
        delivered_ms INTEGER,
        last_error TEXT,
        answer TEXT,
        digest_of INTEGER
    );
    CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at_ms);
    CREATE INDEX IF NOT EXISTS outbox_dedup ON outbox (notifier, dedup_key, created_ms);
    CREATE INDEX IF NOT EXISTS outbox_digest ON outbox (notifier, digest_key, state);
";

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

    fn parse(text: &str) -> Option<OutboxState> {
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

/// Inserts events and their messages inside `tx`.
pub(super) fn insert(
    tx: &Transaction<'_>,
    outgoing: Vec<Outgoing>,
    at: u64,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut stored = Vec::new();
    for Outgoing { event, messages } in outgoing {
        let EventRow {
            repo,
            kind,
            payload,
            dedup_key,
            digest_key,
        } = event;
        tx.execute(
            "INSERT INTO events (repo, at_ms, kind, payload) VALUES (?1, ?2, ?3, ?4)",
            params![repo, at as i64, kind, payload],
        )?;
        let event_id = tx.last_insert_rowid();
        for m in messages {
            let since = at.saturating_sub(m.dedup_window_ms) as i64;
            let duplicate: Option<i64> = tx
                .query_row(
                    "SELECT id FROM outbox WHERE notifier = ?1 AND dedup_key = ?2 AND created_ms >= ?3 LIMIT 1",
                    params![m.notifier, dedup_key, since],
                    |r| r.get(0),
                )
                .optional()?;
            if m.dedup_window_ms > 0 && duplicate.is_some() {
                continue;
            }
            let digest = digest_key.as_ref().filter(|_| m.digest_window_ms > 0);
            let next_at = at
                + if digest.is_some() {
                    m.digest_window_ms
                } else {
                    0
                };
            tx.execute(
                "INSERT INTO outbox (event_id, notifier, kind, repo, subject, body, html, event, dedup_key, digest_key,
                                     max_attempts, created_ms, next_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    event_id,
                    m.notifier,
                    kind,
                    repo,
                    m.subject,
                    m.body,
                    m.html,
                    payload,
                    dedup_key,
                    digest,
                    m.max_attempts,
                    at as i64,
                    next_at as i64
                ],
            )?;
        }
        stored.push(StoredEvent {
            id: event_id,
            repo,
            at_ms: at,
            kind,
            payload,
        });
    }
    Ok(stored)
}

const MESSAGE_COLUMNS: &str = "id, notifier, kind, repo, subject, body, html, event, digest_key, attempts, max_attempts, created_ms,
     CASE WHEN kind = 'digest' THEN (SELECT COUNT(*) FROM outbox m WHERE m.digest_of = outbox.id) ELSE 1 END";

fn message(r: &Row<'_>) -> rusqlite::Result<OutboxMessage> {
    Ok(OutboxMessage {
        id: r.get(0)?,
        notifier: r.get(1)?,
        kind: r.get(2)?,
        repo: r.get(3)?,
        subject: r.get(4)?,
        body: r.get(5)?,
        html: r.get(6)?,
        event: r.get(7)?,
        digest_key: r.get(8)?,
        attempts: r.get(9)?,
        max_attempts: r.get(10)?,
        created_ms: r.get::<_, i64>(11)? as u64,
        carries: r.get::<_, i64>(12)?.max(1) as u64,
    })
}

impl Store {
    /// Pending messages due at `now_ms`, oldest first.
    pub fn due_messages(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE state = 'pending' AND next_at_ms <= ?1 ORDER BY next_at_ms, id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms as i64, limit as i64], message)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every pending message of `notifier` with `digest_key`, due or not.
    pub fn digest_group(
        &self,
        notifier: &str,
        digest_key: &str,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE notifier = ?1 AND digest_key = ?2 AND state = 'pending' ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![notifier, digest_key], message)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the earliest pending message falls due.
    pub fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT MIN(next_at_ms) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .map(|v| v.max(0) as u64))
    }

    /// Accepts `digest` of the pending messages `members` of `notifier`,
    /// with `also` (a fault in rendering it), in one transaction: the
    /// digest is due at once and the members wait in it. Returns the
    /// digest as a sender sees it.
    pub fn accept_digest(
        &mut self,
        notifier: &str,
        members: &[i64],
        digest: NewDigest,
        also: Vec<Outgoing>,
    ) -> Result<OutboxMessage, StoreError> {
        let at = now_ms();
        let tx = self.conn.transaction()?;
        insert(&tx, also, at)?;
        tx.execute(
            "INSERT INTO outbox (event_id, notifier, kind, repo, subject, body, html, event, dedup_key,
                                 max_attempts, created_ms, next_at_ms)
             VALUES (0, ?1, 'digest', '', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                notifier,
                digest.subject,
                digest.body,
                digest.html,
                digest.events,
                format!("digest:{}", members.first().copied().unwrap_or_default()),
                digest.max_attempts,
                at as i64
            ],
        )?;
        let id = tx.last_insert_rowid();
        {
            let mut fold = tx.prepare_cached(
                "UPDATE outbox SET state = 'in-digest', digest_of = ?2 WHERE id = ?1 AND state = 'pending'",
            )?;
            for member in members {
                fold.execute(params![member, id])?;
            }
        }
        let message = tx.query_row(
            &format!("SELECT {MESSAGE_COLUMNS} FROM outbox WHERE id = ?1"),
            params![id],
            message,
        )?;
        tx.commit()?;
        Ok(message)
    }

    /// Marks deliveries done (a digest's members with it), in one
    /// transaction.
    pub fn mark_delivered(&mut self, receipts: &[Receipt]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let at = now_ms() as i64;
        {
            let mut update = tx.prepare_cached(
                "UPDATE outbox SET state = 'delivered', delivered_ms = ?2, answer = ?3, last_error = NULL
                 WHERE (id = ?1 AND state = 'pending') OR (digest_of = ?1 AND state = 'in-digest')",
            )?;
            for r in receipts {
                update.execute(params![r.id, at, r.answer])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a failed delivery of `ids`: retried at `retry_at_ms`, or
    /// dead-lettered with `error` as the reason when that is none.
    pub fn mark_failed(
        &mut self,
        ids: &[i64],
        error: &str,
        retry_at_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for id in ids {
            match retry_at_ms {
                Some(at) => tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_at_ms = ?3 WHERE id = ?1 AND state = 'pending'",
                    params![id, error, at as i64],
                )?,
                None => tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, state = 'dead' WHERE id = ?1 AND state = 'pending'",
                    params![id, error],
                )?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    /// Puts a dead (or pending) message back in the queue, due now, with its
    /// attempts reset and on its own (out of any digest: someone asked for
    /// this message). False if there is no such message or it was delivered.
    pub fn requeue(&mut self, id: i64) -> Result<bool, StoreError> {
        let changed = self.conn.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_at_ms = ?2, digest_key = NULL
             WHERE id = ?1 AND state IN ('pending', 'dead')",
            params![id, now_ms() as i64],
        )?;
        Ok(changed == 1)
    }

    /// Messages in `states`, oldest first.
    pub fn outbox(
        &self,
        states: &[OutboxState],
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, notifier, kind, repo, subject, state, attempts, created_ms, next_at_ms, delivered_ms, last_error, answer, digest_of
             FROM outbox WHERE state IN (SELECT value FROM json_each(?1)) ORDER BY id LIMIT ?2",
        )?;
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let states = serde_json::to_string(&states).unwrap_or_default();
        let rows = stmt.query_map(params![states, limit as i64], |r| {
            let text: String = r.get(5)?;
            let state = OutboxState::parse(&text).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    5,
                    rusqlite::types::Type::Text,
                    format!("unknown outbox state `{text}`").into(),
                )
            })?;
            Ok(OutboxRow {
                id: r.get(0)?,
                notifier: r.get(1)?,
                kind: r.get(2)?,
                repo: r.get(3)?,
                subject: r.get(4)?,
                next_at_ms: (state == OutboxState::Pending)
                    .then(|| r.get::<_, i64>(8))
                    .transpose()?
                    .map(|v| v as u64),
                state,
                attempts: r.get(6)?,
                created_ms: r.get::<_, i64>(7)? as u64,
                delivered_ms: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
                last_error: r.get(10)?,
                answer: r.get(11)?,
                digest_of: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets delivered messages created before `before_ms` (dead and
    /// pending ones stay until someone acts on them). Returns how many.
    pub fn prune_delivered(&mut self, before_ms: u64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM outbox WHERE state = 'delivered' AND created_ms < ?1",
            params![before_ms as i64],
        )?)
    }

    /// How many messages are in each state.
    pub fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let mut counts = OutboxCounts::default();
        let mut stmt = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM outbox GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (state, n) = row?;
            match state.as_str() {
                "pending" => counts.pending = n as u64,
                "delivered" => counts.delivered = n as u64,
                "dead" => counts.dead = n as u64,
                "in-digest" => counts.in_digest = n as u64,
                _ => {}
            }
        }
        counts.oldest_pending_ms = self
            .conn
            .query_row(
                "SELECT MIN(created_ms) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .map(|v| v as u64);
        Ok(counts)
    }

    /// (created, delivered) times of delivered messages, for benchmarks.
    pub fn delivery_times(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT created_ms, delivered_ms FROM outbox WHERE state = 'delivered' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventKind, RepoRef};

    fn failed(repo: &str) -> Event {
        let mut e = Event::new(
            EventKind::Failed,
            RepoRef::new(repo, "https://h.example/x.git", None, Default::default()),
            1,
        );
        e.failure = Some(crate::events::Failure {
            class: crate::git::FailureClass::ServerError,
            http_status: Some(503),
            message: "HTTP 503".into(),
        });
        e
    }

    fn message(digest_window_ms: u64) -> NewMessage {
        NewMessage {
            notifier: "ops".into(),
            subject: "s".into(),
            body: "b".into(),
            html: None,
            max_attempts: 2,
            dedup_window_ms: 60_000,
            digest_window_ms,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn identical_messages_within_the_window_are_queued_once() {
        let (_d, mut store) = store();
        for _ in 0..3 {
            store
                .record_events(vec![Outgoing {
                    event: failed("a").row(),
                    messages: vec![message(0)],
                }])
                .unwrap();
        }
        store
            .record_events(vec![Outgoing {
                event: failed("b").row(),
                messages: vec![message(0)],
            }])
            .unwrap();
        assert_eq!(store.outbox_counts().unwrap().pending, 2);
        assert_eq!(
            store.events_after(0).unwrap().len(),
            4,
            "every event is recorded"
        );
    }

    #[test]
    fn failed_deliveries_retry_then_die_and_can_be_requeued() {
        let (_d, mut store) = store();
        store
            .record_events(vec![Outgoing {
                event: failed("a").row(),
                messages: vec![message(0)],
            }])
            .unwrap();
        let due = store.due_messages(now_ms(), 10).unwrap();
        assert_eq!(due.len(), 1);
        store
            .mark_failed(&[due[0].id], "HTTP 503", Some(now_ms() + 60_000))
            .unwrap();
        assert!(
            store.due_messages(now_ms(), 10).unwrap().is_empty(),
            "not due before its retry time"
        );
        store
            .mark_failed(&[due[0].id], "HTTP 400: bad payload", None)
            .unwrap();
        let dead = store.outbox(&[OutboxState::Dead], 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 400: bad payload"));
        assert!(store.requeue(dead[0].id).unwrap());
        let due = store.due_messages(now_ms(), 10).unwrap();
        assert_eq!(due[0].attempts, 0);
        store
            .mark_delivered(&[Receipt {
                id: due[0].id,
                answer: "200 OK".into(),
            }])
            .unwrap();
        assert!(
            !store.requeue(due[0].id).unwrap(),
            "a delivered message stays delivered"
        );
        assert_eq!(store.outbox_counts().unwrap().delivered, 1);
    }

    #[test]
    fn digestible_messages_wait_and_group_by_host() {
        let (_d, mut store) = store();
        for repo in ["a", "b", "c"] {
            store
                .record_events(vec![Outgoing {
                    event: failed(repo).row(),
                    messages: vec![message(30_000)],
                }])
                .unwrap();
        }
        assert!(
            store.due_messages(now_ms(), 10).unwrap().is_empty(),
            "held for the digest window"
        );
        let group = store.digest_group("ops", "failed@h.example").unwrap();
        assert_eq!(group.len(), 3);
        let ids: Vec<i64> = group.iter().map(|m| m.id).collect();
        let digest = NewDigest {
            subject: "3 repositories failed".into(),
            body: "a, b, c".into(),
            html: None,
            events: "[]".into(),
            max_attempts: 2,
        };
        let accepted = store
            .accept_digest("ops", &ids, digest, Vec::new())
            .unwrap();
        assert_eq!(accepted.kind, "digest");
        assert_eq!(accepted.carries, 3);
        assert_eq!(accepted.subject, "3 repositories failed");
        let due = store.due_messages(now_ms(), 10).unwrap();
        assert_eq!(
            due,
            std::slice::from_ref(&accepted),
            "only the digest is due; its members wait in it"
        );
        let counts = store.outbox_counts().unwrap();
        assert_eq!((counts.pending, counts.delivered), (1, 0));
        store
            .mark_delivered(&[Receipt {
                id: accepted.id,
                answer: "250 OK".into(),
            }])
            .unwrap();
        let rows = store.outbox(&[OutboxState::Delivered], 10).unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows
            .iter()
            .filter(|r| r.id != accepted.id)
            .all(|r| r.digest_of == Some(accepted.id)));
    }
}
