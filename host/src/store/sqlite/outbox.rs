//! The outbox in SQLite: messages are rows beside the events that caused
//! them, deduplicated and held for digests as they are inserted.

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::super::outbox::*;
use super::super::{now_ms, Outbox, StoreError, StoredEvent};
use super::SqliteStore;

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

impl Outbox for SqliteStore {
    fn record_events(&self, outgoing: Vec<Outgoing>) -> Result<Vec<StoredEvent>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let stored = insert(&tx, outgoing, now_ms())?;
        tx.commit()?;
        Ok(stored)
    }

    fn due_messages(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE state = 'pending' AND next_at_ms <= ?1 ORDER BY next_at_ms, id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms as i64, limit as i64], message)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn digest_group(
        &self,
        notifier: &str,
        digest_key: &str,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE notifier = ?1 AND digest_key = ?2 AND state = 'pending' ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![notifier, digest_key], message)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT MIN(next_at_ms) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .map(|v| v.max(0) as u64))
    }

    fn accept_digest(
        &self,
        notifier: &str,
        members: &[i64],
        digest: NewDigest,
        also: Vec<Outgoing>,
    ) -> Result<OutboxMessage, StoreError> {
        let at = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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

    fn mark_delivered(&self, receipts: &[Receipt]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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

    fn mark_failed(
        &self,
        ids: &[i64],
        error: &str,
        retry_at_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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

    fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_at_ms = ?2, digest_key = NULL
             WHERE id = ?1 AND state IN ('pending', 'dead')",
            params![id, now_ms() as i64],
        )?;
        Ok(changed == 1)
    }

    fn outbox(&self, states: &[OutboxState], limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
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

    fn prune_delivered(&self, before_ms: u64) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "DELETE FROM outbox WHERE state = 'delivered' AND created_ms < ?1",
            params![before_ms as i64],
        )?)
    }

    fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let mut counts = OutboxCounts::default();
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM outbox GROUP BY state")?;
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
        counts.oldest_pending_ms = conn
            .query_row(
                "SELECT MIN(created_ms) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .map(|v| v as u64);
        Ok(counts)
    }

    fn delivery_times(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT created_ms, delivered_ms FROM outbox WHERE state = 'delivered' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
