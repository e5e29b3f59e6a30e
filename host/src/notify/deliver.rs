//! Sending what is due in the outbox: one pass, many notifiers at once.
//!
//! Each notifier's due messages go out in order on their own thread, so a
//! mail server that hangs does not hold back a webhook. A failed delivery is
//! retried on the policy's curve (capped exponential backoff with full
//! jitter, Retry-After honoured up to the cap, no retry for what waiting
//! cannot fix) and dead-lettered with its reason when the policy stops.
//! A due message with a digest key takes every pending message with the
//! same key along, as one digest, once there are `digest_min` of them: the
//! digest is rendered then and accepted as a message of its own.
//!
//! Successes are recorded in batches (up to [`RECEIPT_BATCH`] or
//! [`RECEIPT_DELAY`]): one SQLite commit per message cost four fifths of the
//! throughput. A crash before a batch is recorded sends those messages
//! again, with the same `X-Gitpulse-Delivery` id.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gitpulse_policy_core::{decide, AttemptContext, Backoff, Decision};
use tracing::{debug, warn};

use super::send::{Letter, Senders};
use crate::config::{Config, NotifierConfig};
use crate::store::{now_ms, NewDigest, OutboxMessage, Receipt, Storage, StoreError};

/// Deliveries recorded per commit, at most.
pub const RECEIPT_BATCH: usize = 64;
/// How long a delivery may wait to be recorded, at most.
pub const RECEIPT_DELAY: Duration = Duration::from_millis(50);

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Messages delivered (a digest counts every message in it).
    pub delivered: u64,
    /// Deliveries that failed and will be retried.
    pub retrying: u64,
    /// Messages given up on.
    pub dead: u64,
}

impl DeliveryStats {
    fn add(&mut self, other: DeliveryStats) {
        self.delivered += other.delivered;
        self.retrying += other.retrying;
        self.dead += other.dead;
    }
}

/// Delivers every message due now (at most `batch` of them). Blocks.
pub fn deliver_due(
    store: &dyn Storage,
    config: &Config,
    senders: &Senders,
    batch: usize,
) -> Result<DeliveryStats, StoreError> {
    let mut stats = DeliveryStats::default();
    for (_, s) in deliver_due_by_notifier(store, config, senders, batch)? {
        stats.add(s);
    }
    Ok(stats)
}

/// [`deliver_due`], with what happened counted per notifier (for metrics).
pub fn deliver_due_by_notifier(
    store: &dyn Storage,
    config: &Config,
    senders: &Senders,
    batch: usize,
) -> Result<Vec<(String, DeliveryStats)>, StoreError> {
    let due = store.due_messages(now_ms(), batch)?;
    let mut by_notifier: BTreeMap<String, Vec<OutboxMessage>> = BTreeMap::new();
    for m in due {
        by_notifier.entry(m.notifier.clone()).or_default().push(m);
    }
    let results: Vec<(String, Result<DeliveryStats, StoreError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = by_notifier
            .into_iter()
            .map(|(name, messages)| {
                let notifier = config.notifiers.get(&name);
                let handle = scope.spawn({
                    let name = name.clone();
                    move || deliver_all(store, notifier, &name, messages, senders)
                });
                (name, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                (
                    name,
                    h.join().unwrap_or_else(|_| Ok(DeliveryStats::default())),
                )
            })
            .collect()
    });
    results
        .into_iter()
        .map(|(name, r)| r.map(|stats| (name, stats)))
        .collect()
}

fn deliver_all(
    store: &dyn Storage,
    notifier: Option<&NotifierConfig>,
    name: &str,
    messages: Vec<OutboxMessage>,
    senders: &Senders,
) -> Result<DeliveryStats, StoreError> {
    let mut stats = DeliveryStats::default();
    let Some(n) = notifier else {
        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
        store.mark_failed(
            &ids,
            &format!("notifier {name} is no longer configured"),
            None,
        )?;
        stats.dead += ids.len() as u64;
        return Ok(stats);
    };
    let mut done = std::collections::HashSet::new();
    let mut receipts: Vec<Receipt> = Vec::new();
    let mut oldest_receipt = Instant::now();
    let flush = |receipts: &mut Vec<Receipt>| -> Result<(), StoreError> {
        if !receipts.is_empty() {
            store.mark_delivered(receipts)?;
            receipts.clear();
        }
        Ok(())
    };
    for m in &messages {
        if done.contains(&m.id) {
            continue; // went out in a digest
        }
        let mut m = m.clone();
        if let Some(key) = m.digest_key.clone() {
            let group = store.digest_group(name, &key)?;
            if group.len() >= n.delivery.digest_min as usize {
                done.extend(group.iter().map(|g| g.id));
                m = accept_digest(store, n, &key, &group)?;
            }
        }
        let letter = Letter {
            delivery_id: m.id,
            kind: &m.kind,
            subject: &m.subject,
            body: &m.body,
            html: m.html.as_deref(),
        };
        let carries = m.carries;
        match senders.send(n, &letter) {
            Ok(answer) => {
                debug!(
                    notifier = name,
                    id = m.id,
                    messages = carries,
                    "delivered: {answer}"
                );
                stats.delivered += carries;
                if receipts.is_empty() {
                    oldest_receipt = Instant::now();
                }
                receipts.push(Receipt { id: m.id, answer });
                if receipts.len() >= RECEIPT_BATCH || oldest_receipt.elapsed() >= RECEIPT_DELAY {
                    flush(&mut receipts)?;
                }
            }
            Err(e) => {
                let attempt = m.attempts + 1;
                let ctx = AttemptContext {
                    attempt,
                    class: e.class.curve(),
                    http_status: e.http_status,
                    retry_after: e.retry_after,
                    elapsed: Duration::from_millis(now_ms().saturating_sub(m.created_ms)),
                    remaining: None,
                    previous_delay: None,
                };
                let backoff = Backoff {
                    base: n.delivery.retry_base,
                    max: n.delivery.retry_max,
                };
                match decide(&ctx, &backoff, m.max_attempts, fastrand::u64(..)) {
                    Decision::RetryAfter { delay, .. } => {
                        let at = now_ms() + delay.as_millis() as u64;
                        debug!(
                            notifier = name,
                            id = m.id,
                            "delivery failed, retry in {delay:?}: {e}"
                        );
                        store.mark_failed(
                            &[m.id],
                            &format!("{}: {e}", e.class.as_str()),
                            Some(at),
                        )?;
                        stats.retrying += carries;
                        // Later messages to a receiver that just failed would
                        // fail too; they wait for the next pass.
                        if e.class.is_transient() {
                            break;
                        }
                    }
                    Decision::Stop(reason) => {
                        let why = format!("{}: {e} (gave up: {reason})", e.class.as_str());
                        warn!(notifier = name, id = m.id, "message dead-lettered: {why}");
                        store.mark_failed(&[m.id], &why, None)?;
                        stats.dead += carries;
                    }
                }
            }
        }
    }
    flush(&mut receipts)?;
    Ok(stats)
}

/// Renders the digest of `group` (outside the store's lock) and accepts it
/// with its members; a digest template that fails is replaced by the
/// default and raises a `plugin-fault` event, as for any message.
fn accept_digest(
    store: &dyn Storage,
    n: &NotifierConfig,
    key: &str,
    group: &[OutboxMessage],
) -> Result<OutboxMessage, StoreError> {
    let (kind, host) = key.split_once('@').unwrap_or(("failed", ""));
    let events: Vec<String> = group.iter().map(|g| g.event.clone()).collect();
    let (digest, fault) = super::render_digest(n, kind, host, &events);
    let also = match fault {
        None => Vec::new(),
        Some(detail) => {
            warn!(notifier = n.name, "{detail}");
            super::fault_outgoing(n, detail)
        }
    };
    let ids: Vec<i64> = group.iter().map(|g| g.id).collect();
    let max_attempts = group.iter().map(|g| g.max_attempts).max().unwrap_or(1);
    let new = NewDigest {
        subject: digest.subject,
        body: digest.body,
        html: digest.html,
        events: format!("[{}]", events.join(",")),
        max_attempts,
    };
    store.accept_digest(&n.name, &ids, new, also)
}

#[cfg(test)]
mod tests {
    use crate::store::Outbox as _;
    use std::path::Path;

    use super::*;
    use crate::events::{Event, EventKind, Failure, RepoRef};
    use crate::git::FailureClass;
    use crate::notify::{Audience, Router};
    use crate::store::OutboxState;

    /// A config with one `log` notifier writing to `path`, and `extra`.
    fn config(path: &Path, extra: &str) -> Config {
        let text = format!(
            "[notifier.audit]\nkind = \"log\"\npath = \"{}\"\nretry_base = \"1ms\"\nretry_max = \"1ms\"\n{extra}\n",
            path.display()
        );
        crate::config::parse(Path::new("/nonexistent/g.toml"), &text, &|_| None).unwrap()
    }

    fn failed(repo: &str) -> Event {
        let mut e = Event::new(
            EventKind::Failed,
            RepoRef::new(repo, "https://h.example/x.git", None, Default::default()),
            now_ms(),
        );
        e.failure = Some(Failure {
            class: FailureClass::ServerError,
            http_status: Some(503),
            message: "HTTP 503".into(),
        });
        e
    }

    /// Records `events` as a pull would, through the router.
    fn accept(store: &dyn Storage, config: &Config, events: Vec<Event>) {
        let none = |_: &str| -> Result<crate::plugin::Plugin, crate::plugin::LoadError> {
            unreachable!("no plugin here")
        };
        let outgoing = Router::new(config, &none).outgoing(events, &Audience::ALL);
        store.record_events(outgoing).unwrap();
    }

    /// Passes until nothing is due (a digest window of a millisecond or a
    /// retry a millisecond away included), at most `passes` times.
    fn deliver(store: &dyn Storage, config: &Config, passes: usize) -> DeliveryStats {
        let senders = Senders::default();
        let mut total = DeliveryStats::default();
        for _ in 0..passes {
            let next = store.next_due_ms().unwrap();
            let Some(next) = next else { break };
            while now_ms() < next {
                std::thread::yield_now();
            }
            total.add(deliver_due(store, config, &senders, 100).unwrap());
        }
        total
    }

    fn store() -> (tempfile::TempDir, crate::store::MemoryStore) {
        (
            tempfile::tempdir().unwrap(),
            crate::store::MemoryStore::new(),
        )
    }

    #[test]
    fn due_messages_are_sent_and_marked_delivered() {
        let (dir, store) = store();
        let file = dir.path().join("audit.jsonl");
        let config = config(&file, "digest_window = \"0s\"");
        accept(&store, &config, vec![failed("app")]);
        let stats = deliver(&store, &config, 3);
        assert_eq!((stats.delivered, stats.retrying, stats.dead), (1, 0, 0));
        let lines = std::fs::read_to_string(&file).unwrap();
        assert_eq!(lines.lines().count(), 1);
        assert!(lines.contains("\"kind\":\"failed\""), "{lines}");
        let delivered = store.outbox(&[OutboxState::Delivered], 10).unwrap();
        assert_eq!(delivered.len(), 1);
        assert!(delivered[0]
            .answer
            .as_deref()
            .unwrap_or("")
            .contains("appended"));
    }

    #[test]
    fn a_failing_delivery_is_retried_then_dead_lettered_with_its_reason() {
        let (dir, store) = store();
        let file = dir.path().join("missing-dir/audit.jsonl");
        let config = config(&file, "digest_window = \"0s\"\nmax_attempts = 2");
        accept(&store, &config, vec![failed("app")]);
        let first = deliver(&store, &config, 1);
        assert_eq!((first.retrying, first.dead), (1, 0), "retried first");
        let second = deliver(&store, &config, 1);
        assert_eq!(second.dead, 1, "then given up on");
        let dead = store.outbox(&[OutboxState::Dead], 10).unwrap();
        assert_eq!(dead[0].attempts, 2);
        let why = dead[0].last_error.as_deref().unwrap_or("");
        assert!(why.starts_with("io:") && why.contains("gave up"), "{why}");
    }

    #[test]
    fn failures_on_one_host_go_out_as_one_digest() {
        let (dir, store) = store();
        let file = dir.path().join("audit.jsonl");
        let config = config(&file, "digest_window = \"1ms\"\ndigest_min = 3");
        accept(&store, &config, vec![failed("a"), failed("b"), failed("c")]);
        let stats = deliver(&store, &config, 3);
        assert_eq!(stats.delivered, 3, "a digest counts every message in it");
        let lines = std::fs::read_to_string(&file).unwrap();
        assert_eq!(lines.lines().count(), 1, "{lines}");
        assert!(lines.contains("\"kind\":\"digest\""), "{lines}");
        let rows = store.outbox(&[OutboxState::Delivered], 10).unwrap();
        let digest = rows.iter().find(|r| r.kind == "digest").unwrap();
        assert_eq!(
            rows.iter()
                .filter(|r| r.digest_of == Some(digest.id))
                .count(),
            3
        );
    }

    #[test]
    fn fewer_than_digest_min_go_out_one_by_one() {
        let (dir, store) = store();
        let file = dir.path().join("audit.jsonl");
        let config = config(&file, "digest_window = \"1ms\"\ndigest_min = 3");
        accept(&store, &config, vec![failed("a"), failed("b")]);
        deliver(&store, &config, 3);
        let lines = std::fs::read_to_string(&file).unwrap();
        assert_eq!(lines.lines().count(), 2, "{lines}");
        assert!(!lines.contains("\"kind\":\"digest\""), "{lines}");
    }
}
