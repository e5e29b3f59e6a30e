//! The outbox in PostgreSQL: messages are rows beside the events that
//! caused them, deduplicated and held for digests as they are inserted
//! (the same statements as SQLite's, in PostgreSQL's dialect).

use ::postgres::Row;

use super::session::Cached as _;
use super::Tx;

use super::super::outbox::*;
use super::super::{now_ms, Outbox, StoreError, StoredEvent};
use super::{count, ms, opt_ms, stored_event, uncount, unms, PostgresStore};

/// Inserts events and their messages inside `tx`. With `once_for_fleet`
/// (replicas that all pull the same repositories), a change is one message
/// for the fleet: the first replica to record it queues it, the others'
/// identical ones are recognised by their fleet key and dropped.
pub(super) fn insert(
    tx: &mut Tx<'_>,
    outgoing: Vec<Outgoing>,
    at: u64,
    once_for_fleet: bool,
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
        let row = tx.query_one(
            "INSERT INTO events (repo, at_ms, kind, payload) VALUES ($1, $2, $3, $4)
             RETURNING id, repo, at_ms, kind, payload",
            &[&repo, &ms(at), &kind, &payload],
        )?;
        let event = stored_event(&row);
        let fleet_key =
            (once_for_fleet && kind == "changed").then(|| format!("{repo}:{kind}:{dedup_key}"));
        for m in messages {
            let since = ms(at.saturating_sub(m.dedup_window_ms));
            if m.dedup_window_ms > 0 {
                let duplicate = tx.query_opt(
                    "SELECT id FROM outbox WHERE notifier = $1 AND dedup_key = $2 AND created_ms >= $3 LIMIT 1",
                    &[&m.notifier, &dedup_key, &since],
                )?;
                if duplicate.is_some() {
                    continue;
                }
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
                                     max_attempts, created_ms, next_at_ms, fleet_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                 ON CONFLICT (notifier, fleet_key) WHERE fleet_key IS NOT NULL DO NOTHING",
                &[
                    &event.id,
                    &m.notifier,
                    &kind,
                    &repo,
                    &m.subject,
                    &m.body,
                    &m.html,
                    &payload,
                    &dedup_key,
                    &digest,
                    &count(m.max_attempts),
                    &ms(at),
                    &ms(next_at),
                    &fleet_key,
                ],
            )?;
        }
        stored.push(event);
    }
    Ok(stored)
}

/// How long a delivery may take before another daemon may try the same
/// message (longer than any sender's timeouts).
pub(super) const CLAIM: std::time::Duration = std::time::Duration::from_secs(120);

const MESSAGE_COLUMNS: &str = "id, notifier, kind, repo, subject, body, html, event, digest_key, attempts, max_attempts, created_ms,
     CASE WHEN kind = 'digest' THEN (SELECT COUNT(*) FROM outbox m WHERE m.digest_of = outbox.id) ELSE 1 END";

fn message(r: &Row) -> OutboxMessage {
    OutboxMessage {
        id: r.get(0),
        notifier: r.get(1),
        kind: r.get(2),
        repo: r.get(3),
        subject: r.get(4),
        body: r.get(5),
        html: r.get(6),
        event: r.get(7),
        digest_key: r.get(8),
        attempts: uncount(r.get(9)),
        max_attempts: uncount(r.get(10)),
        created_ms: unms(r.get(11)),
        carries: unms(r.get(12)).max(1),
    }
}

impl Outbox for PostgresStore {
    fn record_events(&self, outgoing: Vec<Outgoing>) -> Result<Vec<StoredEvent>, StoreError> {
        self.write(|tx| {
            let mut kept = Vec::with_capacity(outgoing.len());
            for o in outgoing {
                match self.fence(tx, &o.event.repo) {
                    Ok(()) => kept.push(o),
                    Err(StoreError::Fenced(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            insert(tx, kept, now_ms(), self.told_once_for_fleet())
        })
    }

    /// Due messages, each claimed for [`CLAIM`]: several daemons share
    /// the outbox, and a message another one is delivering (its row
    /// locked, or claimed and not yet marked) is left to it. A daemon that
    /// dies mid-delivery leaves its claims to the others when they expire.
    fn due_messages(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows = self.client()?.query(
            "WITH picked AS (
                SELECT id FROM outbox
                WHERE state = 'pending' AND next_at_ms <= $1
                  AND (claimed_until_ms IS NULL OR claimed_until_ms < $1)
                ORDER BY next_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED
             ), claimed AS (
                UPDATE outbox SET claimed_until_ms = $3 FROM picked WHERE outbox.id = picked.id
                RETURNING outbox.*
             )
             SELECT id, notifier, kind, repo, subject, body, html, event, digest_key, attempts,
                    max_attempts, created_ms,
                    CASE WHEN kind = 'digest' THEN (SELECT COUNT(*) FROM outbox m WHERE m.digest_of = claimed.id) ELSE 1 END
             FROM claimed ORDER BY next_at_ms, id",
            &[&ms(now_ms), &(limit as i64), &ms(now_ms + CLAIM.as_millis() as u64)],
        )?;
        Ok(rows.iter().map(message).collect())
    }

    fn digest_group(
        &self,
        notifier: &str,
        digest_key: &str,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows = self.client()?.query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM outbox
                 WHERE notifier = $1 AND digest_key = $2 AND state = 'pending' ORDER BY id"
            ),
            &[&notifier, &digest_key],
        )?;
        Ok(rows.iter().map(message).collect())
    }

    fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        let row = self.client()?.query_one(
            "SELECT MIN(next_at_ms) FROM outbox WHERE state = 'pending'",
            &[],
        )?;
        Ok(opt_ms(row.get(0)))
    }

    fn accept_digest(
        &self,
        notifier: &str,
        members: &[i64],
        digest: NewDigest,
        also: Vec<Outgoing>,
    ) -> Result<OutboxMessage, StoreError> {
        let at = now_ms();
        self.write(|tx| {
            insert(tx, also, at, self.told_once_for_fleet())?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO outbox (event_id, notifier, kind, repo, subject, body, html, event, dedup_key,
                                         max_attempts, created_ms, next_at_ms)
                     VALUES (0, $1, 'digest', '', $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
                    &[
                        &notifier,
                        &digest.subject,
                        &digest.body,
                        &digest.html,
                        &digest.events,
                        &format!("digest:{}", members.first().copied().unwrap_or_default()),
                        &count(digest.max_attempts),
                        &ms(at),
                    ],
                )?
                .get(0);
            tx.execute(
                "UPDATE outbox SET state = 'in-digest', digest_of = $2
                 WHERE id = ANY($1) AND state = 'pending'",
                &[&members, &id],
            )?;
            let row = tx.query_one(
                &format!("SELECT {MESSAGE_COLUMNS} FROM outbox WHERE id = $1"),
                &[&id],
            )?;
            Ok(message(&row))
        })
    }

    fn mark_delivered(&self, receipts: &[Receipt]) -> Result<(), StoreError> {
        let at = ms(now_ms());
        self.write(|tx| {
            for r in receipts {
                tx.execute(
                    "UPDATE outbox SET state = 'delivered', delivered_ms = $2, answer = $3, last_error = NULL,
                        claimed_until_ms = NULL
                     WHERE (id = $1 AND state = 'pending') OR (digest_of = $1 AND state = 'in-digest')",
                    &[&r.id, &at, &r.answer],
                )?;
            }
            Ok(())
        })
    }

    fn mark_failed(
        &self,
        ids: &[i64],
        error: &str,
        retry_at_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut client = self.client()?;
        match retry_at_ms {
            Some(at) => client.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_at_ms = $3,
                    claimed_until_ms = NULL
                 WHERE id = ANY($1) AND state = 'pending'",
                &[&ids, &error, &ms(at)],
            )?,
            None => client.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2, state = 'dead',
                    claimed_until_ms = NULL
                 WHERE id = ANY($1) AND state = 'pending'",
                &[&ids, &error],
            )?,
        };
        Ok(())
    }

    fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        let changed = self.client()?.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_at_ms = $2, digest_key = NULL,
                claimed_until_ms = NULL
             WHERE id = $1 AND state IN ('pending', 'dead')",
            &[&id, &ms(now_ms())],
        )?;
        Ok(changed == 1)
    }

    fn outbox(&self, states: &[OutboxState], limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let rows = self.client()?.query(
            "SELECT id, notifier, kind, repo, subject, state, attempts, created_ms, next_at_ms,
                    delivered_ms, last_error, answer, digest_of
             FROM outbox WHERE state = ANY($1) ORDER BY id LIMIT $2",
            &[&names, &(limit as i64)],
        )?;
        let mut found = Vec::with_capacity(rows.len());
        for r in &rows {
            let text: &str = r.get(5);
            let Some(state) = OutboxState::parse(text) else {
                return Err(StoreError::Corrupt(format!(
                    "unknown outbox state `{text}`"
                )));
            };
            found.push(OutboxRow {
                id: r.get(0),
                notifier: r.get(1),
                kind: r.get(2),
                repo: r.get(3),
                subject: r.get(4),
                next_at_ms: (state == OutboxState::Pending).then(|| unms(r.get(8))),
                state,
                attempts: uncount(r.get(6)),
                created_ms: unms(r.get(7)),
                delivered_ms: opt_ms(r.get(9)),
                last_error: r.get(10),
                answer: r.get(11),
                digest_of: r.get(12),
            });
        }
        Ok(found)
    }

    fn prune_delivered(&self, before_ms: u64) -> Result<usize, StoreError> {
        Ok(self.client()?.execute(
            "DELETE FROM outbox WHERE state = 'delivered' AND created_ms < $1",
            &[&ms(before_ms)],
        )? as usize)
    }

    fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let mut counts = OutboxCounts::default();
        let mut client = self.client()?;
        for r in client.query("SELECT state, COUNT(*) FROM outbox GROUP BY state", &[])? {
            let n = unms(r.get(1));
            match r.get::<_, &str>(0) {
                "pending" => counts.pending = n,
                "delivered" => counts.delivered = n,
                "dead" => counts.dead = n,
                "in-digest" => counts.in_digest = n,
                _ => {}
            }
        }
        let oldest = client.query_one(
            "SELECT MIN(created_ms) FROM outbox WHERE state = 'pending'",
            &[],
        )?;
        counts.oldest_pending_ms = opt_ms(oldest.get(0));
        Ok(counts)
    }

    fn delivery_times(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let rows = self.client()?.query(
            "SELECT created_ms, delivered_ms FROM outbox WHERE state = 'delivered' ORDER BY id",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| (unms(r.get(0)), unms(r.get(1))))
            .collect())
    }
}
