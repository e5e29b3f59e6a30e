//! Notifications through the durable outbox to a local webhook receiver:
//! events per second and latency from the pull result being recorded to the
//! receiver's 200, in one run with the floor they sit on — the same signed
//! POSTs sent in a plain loop with no outbox (git has no counterpart).
//!
//! Each event is a `changed` pull result recorded with `Store::record_pull`
//! (events, rendering and the outbox row in one SQLite transaction), then
//! delivered by `notify::deliver_due` (the daemon's sender) on another
//! thread. Two runs: a burst of N results at once (throughput; latency then
//! includes the queue: the recording loop holds the store most of the time)
//! and a paced run at R results per second (latency at a steady load).
//! `GITPULSE_BENCH_EVENTS` (10,000), `GITPULSE_BENCH_RATE` (2,000/s).

// A benchmark: a panic is how it fails, and it has no API to document.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitpulse::config::Config;
use gitpulse::events::{self, RepoRef};
use gitpulse::notify::{self, Audience, Letter, Router, Senders};
use gitpulse::outcome::{Outcome, PullReport};
use gitpulse::store::{Outbox as _, SqliteStore, State as _};
use gitpulse_testkit::WebhookReceiver;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn config(dir: &Path, url: &str) -> Config {
    std::fs::write(dir.join("secret"), "bench-secret").unwrap();
    let text = format!(
        "[daemon]\nstate_dir = \"state\"\n\n[notifier.hook]\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_file = \"secret\"\n\
         dedup_window = \"0s\"\ndigest_window = \"0s\"\n"
    );
    gitpulse::config::parse(&dir.join("gitpulse.toml"), &text, &|_| None).unwrap()
}

fn report(i: u64) -> PullReport {
    PullReport {
        url: format!("https://git.example.com/team/r{}.git", i % 1000),
        dir: format!("r{}", i % 1000),
        outcome: Outcome::Updated,
        old: Some(format!("{:040x}", i)),
        new: Some(format!("{:040x}", i + 1)),
        commits: 1,
        attempts: Vec::new(),
        duration_ms: 5,
        reason: None,
        notices: Vec::new(),
        plugin_faults: Vec::new(),
        limit: None,
        learnt: None,
    }
}

struct Measured {
    events: u64,
    /// Until the last pull result was recorded.
    recorded_seconds: f64,
    seconds: f64,
    latencies_ms: Vec<u64>,
}

/// Records `n` pull results (at `rate` per second, or all at once) while a
/// sender delivers; returns when all are delivered.
fn through_outbox(n: u64, rate: Option<u64>) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start("bench-secret");
    let config = config(dir.path(), &receiver.url("/hook"));
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (store, config, done) = (store.clone(), config.clone(), done.clone());
        std::thread::spawn(move || {
            let senders = Senders::default();
            while !done.load(Ordering::SeqCst) {
                let stats = notify::deliver_due(store.as_ref(), &config, &senders, 500).unwrap();
                if stats.delivered == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let loader = |_: &str| -> Result<gitpulse::plugin::Plugin, gitpulse::plugin::LoadError> {
        unreachable!("no plugin in this benchmark")
    };
    let router = Router::new(&config, &loader);
    let start = Instant::now();
    for i in 0..n {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let r = report(i);
        let repo = RepoRef::new(&r.dir, &r.url, Some("main"), Default::default());
        let at = gitpulse::store::now_ms();
        // As `job::record` does: read the streak, render unlocked, write.
        let previous = store.failures_in_row(&r.dir).unwrap();
        let outgoing = router.outgoing(
            events::for_pull(&repo, &r, previous, None, at),
            &Audience::ALL,
        );
        store
            .record_pull(&r.dir, &r, None, None, previous, outgoing, &[])
            .unwrap();
    }
    let recorded_seconds = start.elapsed().as_secs_f64();
    while receiver.accepted_count() < n as usize {
        std::thread::sleep(Duration::from_millis(2));
    }
    let seconds = start.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    assert!(receiver.deliveries().iter().all(|d| d.signature_ok));
    let mut latencies_ms: Vec<u64> = store
        .delivery_times()
        .unwrap()
        .into_iter()
        .map(|(created, delivered)| delivered.saturating_sub(created))
        .collect();
    latencies_ms.sort_unstable();
    Measured {
        events: n,
        recorded_seconds,
        seconds,
        latencies_ms,
    }
}

/// The same number of signed POSTs of the same bodies, sent in a loop.
fn raw_posts(n: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start("bench-secret");
    let config = config(dir.path(), &receiver.url("/hook"));
    let notifier = &config.notifiers["hook"];
    let senders = Senders::default();
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            let r = report(i);
            let repo = RepoRef::new(&r.dir, &r.url, Some("main"), Default::default());
            serde_json::to_string(&events::for_pull(&repo, &r, 0, None, 1)[0]).unwrap()
        })
        .collect();
    let start = Instant::now();
    for (i, body) in bodies.iter().enumerate() {
        let letter = Letter {
            delivery_id: i as i64,
            kind: "changed",
            subject: "",
            body,
            html: None,
        };
        senders.send(notifier, &letter).unwrap();
    }
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(receiver.accepted_count(), n as usize);
    seconds
}

fn main() {
    let n = env_or("GITPULSE_BENCH_EVENTS", 10_000);
    let rate = env_or("GITPULSE_BENCH_RATE", 2000);
    println!(
        "notifications: {n} `changed` events to a local webhook receiver (signed, keep-alive)\n"
    );
    let raw = raw_posts(n);
    let burst = through_outbox(n, None);
    let paced_n = (rate * 10).min(n);
    let paced = through_outbox(paced_n, Some(rate));
    println!(
        "{:<34} {:>9} {:>11} {:>11} {:>9} {:>9} {:>9}",
        "run", "events", "recorded/s", "events/s", "p50 ms", "p99 ms", "max ms"
    );
    let raw_rate = n as f64 / raw;
    println!(
        "{:<34} {:>9} {:>11} {:>11.0} {:>9} {:>9} {:>9}",
        "plain POST loop (no outbox)", n, "-", raw_rate, "-", "-", "-"
    );
    for (name, m) in [
        ("outbox, burst".to_string(), &burst),
        (format!("outbox, paced at {rate}/s"), &paced),
    ] {
        println!(
            "{:<34} {:>9} {:>11.0} {:>11.0} {:>9} {:>9} {:>9}",
            name,
            m.events,
            m.events as f64 / m.recorded_seconds,
            m.events as f64 / m.seconds,
            percentile(&m.latencies_ms, 0.5),
            percentile(&m.latencies_ms, 0.99),
            m.latencies_ms.last().copied().unwrap_or(0)
        );
    }
    println!(
        "\nburst throughput vs the plain loop: ratio {:.2}",
        (burst.events as f64 / burst.seconds) / raw_rate
    );
}
