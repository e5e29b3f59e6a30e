//! The daemon's sender: delivers the outbox at once when messages are
//! queued, when the next retry or digest falls due, and every few seconds
//! regardless; prunes delivered messages and old history hourly. Every
//! pass runs on a blocking thread (SQLite, SMTP, HTTP).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::Shared;
use crate::{notify, store};

/// Delivers the outbox: at once when messages are queued, when the next
/// retry or digest falls due, and every few seconds regardless.
pub(super) async fn send_loop(shared: Arc<Shared>, stop: CancellationToken) {
    const BATCH: usize = 500;
    /// Delivered messages are kept this long (for `gitpulse outbox --all`).
    const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);
    let mut last_prune: Option<Instant> = None;
    while !stop.is_cancelled() {
        let job = shared.clone();
        let prune = last_prune.is_none_or(|at| at.elapsed() > Duration::from_secs(3600));
        if prune {
            last_prune = Some(Instant::now());
        }
        let pass = tokio::task::spawn_blocking(move || {
            let config = job.config();
            // In a fleet, one replica prunes for all.
            let leads = job.store.fleet().is_none_or(|f| f.leads());
            if prune && leads {
                let now = store::now_ms();
                let before = now.saturating_sub(KEEP_DELIVERED.as_millis() as u64);
                job.store.prune_delivered(before)?;
                let before = now.saturating_sub(config.daemon.retention.as_millis() as u64);
                let gone = job.store.prune_history(before)?;
                if gone > 0 {
                    info!(rows = gone, "pruned history older than the retention");
                }
            }
            let mut stats = notify::DeliveryStats::default();
            for (notifier, s) in
                notify::deliver_due_by_notifier(job.store.as_ref(), &config, &job.senders, BATCH)?
            {
                job.metrics
                    .delivered(&notifier, s.delivered, s.retrying, s.dead);
                stats.delivered += s.delivered;
                stats.retrying += s.retrying;
                stats.dead += s.dead;
            }
            let next = job.store.next_due_ms()?;
            Ok::<_, store::StoreError>((stats, next))
        })
        .await;
        let wait = match pass {
            Ok(Ok((stats, _))) if stats.delivered + stats.retrying + stats.dead >= BATCH as u64 => {
                continue; // more may be due right now
            }
            Ok(Ok((_, next))) => next
                .map(|at| Duration::from_millis(at.saturating_sub(store::now_ms())))
                .unwrap_or(Duration::from_secs(5))
                .min(Duration::from_secs(5)),
            Ok(Err(e)) => {
                error!("outbox: {e}");
                Duration::from_secs(5)
            }
            Err(e) => {
                error!("outbox sender failed: {e}");
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = shared.outbox_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
