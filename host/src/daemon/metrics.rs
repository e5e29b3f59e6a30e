//! The daemon's Prometheus metrics, served as OpenMetrics text on
//! `/metrics`.
//!
//! Two kinds live here. Counters and histograms of things that happen
//! (pulls, failed attempts, deliveries, plugin calls, push webhooks,
//! schedule lag) are updated as they happen, by the daemon. Gauges of state
//! (last success, failure streak, readiness, breakers, the outbox) are read
//! from a [`Snapshot`] at scrape time, so they cannot drift from what the
//! store and the breakers say. This module owns names, labels and
//! encoding; it reads nothing by itself.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::outcome::PullReport;
use crate::plugin::{CallObserver, Fault};

/// Pull durations, 50 ms to 10 min.
const PULL_BUCKETS: [f64; 13] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// How late a scheduled pull started, 10 ms to 10 min.
const LAG_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 600.0,
];
/// Plugin calls, 10 µs to 1 s (the CPU budget is 10 ms by default).
const PLUGIN_BUCKETS: [f64; 11] = [
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepoLabel {
    repo: String,
}

/// What a repository is and which revision it is at (value 1), as Flux's
/// `gotk_resource_info`: joined on `repo` with the other series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepoInfo {
    repo: String,
    url: String,
    r#ref: String,
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepoOutcome {
    repo: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepoClass {
    repo: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginKind {
    plugin: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifierResult {
    notifier: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiverResult {
    receiver: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabel {
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabel {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// Builds histograms with fixed buckets inside a family.
#[derive(Clone, Copy)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type Seconds = Gauge<f64, AtomicU64>;

/// The two text formats scrapers ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text`): what Prometheus
    /// asks for first.
    OpenMetrics,
    /// Prometheus text 0.0.4 (`text/plain`): what older scrapers and
    /// `promtool check metrics` read.
    Prometheus,
}

/// One repository's state as the store has it, for the gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoGauges {
    /// Its configured name.
    pub repo: String,
    /// Unix milliseconds of its last successful pull.
    pub last_success_ms: Option<u64>,
    /// Unix milliseconds of its last pull, whatever the result.
    pub last_attempt_ms: Option<u64>,
    /// Pulls in a row that failed.
    pub failures_in_row: u32,
    /// Whether its first pull has succeeded (what `/readyz` waits for).
    pub ready: bool,
    /// Its URL, redacted.
    pub url: String,
    /// What it follows (`main`, `tag v1.2`, …).
    pub follows: String,
    /// The commit it is at (empty before its first pull).
    pub revision: String,
}

/// The state read at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Every configured repository.
    pub repos: Vec<RepoGauges>,
    /// Every remote host the daemon has pulled from: open or not.
    pub breakers: Vec<(String, bool)>,
    /// Outbox messages by state (`pending`, `in-digest`, `delivered`, `dead`).
    pub outbox: Vec<(&'static str, u64)>,
    /// Age of the oldest pending message.
    pub oldest_pending: Option<Duration>,
    /// Each host's retry budget.
    pub budgets: Vec<(String, crate::policy::BudgetState)>,
    /// This replica of a fleet sharing one state, when it is one.
    pub fleet: Option<FleetGauge>,
}

/// A replica's view of its fleet, at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetGauge {
    /// This replica's name.
    pub replica: String,
    /// Replicas alive at its last heartbeat.
    pub replicas: u64,
    /// Repository leases it holds.
    pub held: u64,
    /// Its writes refused because their lease had moved.
    pub fenced: u64,
    /// Leases it took (not renewed) since start.
    pub taken: u64,
    /// Whether it does the fleet's housekeeping.
    pub leads: bool,
}

/// Everything counted while the daemon runs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pulls: Family<RepoOutcome, Counter>,
    attempt_failures: Family<RepoClass, Counter>,
    pull_duration: Family<RepoLabel, Histogram, Buckets>,
    schedule_lag: Histogram,
    plugin_calls: Family<PluginLabel, Histogram, Buckets>,
    plugin_faults: Family<PluginKind, Counter>,
    notifications: Family<NotifierResult, Counter>,
    webhook_requests: Family<ReceiverResult, Counter>,
    /// Encoding is not reentrant-safe across the two registries.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every family registered, all at zero, and `gitpulse_build_info` set.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gitpulse");
        let pulls = Family::<RepoOutcome, Counter>::default();
        registry.register(
            "pulls",
            "Pulls finished, by repository and outcome (cloned, updated, unchanged, failed)",
            pulls.clone(),
        );
        let attempt_failures = Family::<RepoClass, Counter>::default();
        registry.register(
            "pull_attempt_failures",
            "Failed attempts, by repository and failure class",
            attempt_failures.clone(),
        );
        let pull_duration = Family::new_with_constructor(Buckets(&PULL_BUCKETS));
        registry.register_with_unit(
            "pull_duration",
            "Wall time of a whole pull, retries included",
            Unit::Seconds,
            pull_duration.clone(),
        );
        let schedule_lag = Histogram::new(LAG_BUCKETS.iter().copied());
        registry.register_with_unit(
            "schedule_lag",
            "How late a scheduled pull started (waiting for a free slot included)",
            Unit::Seconds,
            schedule_lag.clone(),
        );
        let plugin_calls = Family::new_with_constructor(Buckets(&PLUGIN_BUCKETS));
        registry.register_with_unit(
            "policy_decision_duration",
            "Wall time of one plugin call (retry, backoff or notify), by plugin",
            Unit::Seconds,
            plugin_calls.clone(),
        );
        let plugin_faults = Family::<PluginKind, Counter>::default();
        registry.register(
            "plugin_faults",
            "Plugin calls that faulted, by plugin and kind (timeout, memory, trap, invalid-output)",
            plugin_faults.clone(),
        );
        let notifications = Family::<NotifierResult, Counter>::default();
        registry.register(
            "notifications",
            "Notification deliveries, by notifier and result (delivered, retrying, dead)",
            notifications.clone(),
        );
        let webhook_requests = Family::<ReceiverResult, Counter>::default();
        registry.register(
            "webhook_requests",
            "Push webhook deliveries, by receiver and result (woken, ignored, ping, repeat, unauthorized, rate-limited, too-large, timeout, bad-payload, error)",
            webhook_requests.clone(),
        );
        // A gauge at 1, not an OpenMetrics info: Prometheus' own text
        // parser (promtool, older servers) knows no `info` type.
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The running gitpulse's version (always 1)",
            build_info,
        );
        Metrics {
            registry,
            pulls,
            attempt_failures,
            pull_duration,
            schedule_lag,
            plugin_calls,
            plugin_faults,
            notifications,
            webhook_requests,
            scrape: Mutex::new(()),
        }
    }

    /// Counts a finished pull of `repo`: its outcome, its failed attempts
    /// and its duration.
    pub fn pull_finished(&self, repo: &str, report: &PullReport) {
        let outcome = report.outcome.as_str();
        self.pulls
            .get_or_create(&RepoOutcome {
                repo: repo.to_string(),
                outcome,
            })
            .inc();
        for attempt in &report.attempts {
            self.attempt_failures
                .get_or_create(&RepoClass {
                    repo: repo.to_string(),
                    class: attempt.class.as_str(),
                })
                .inc();
        }
        self.pull_duration
            .get_or_create(&RepoLabel {
                repo: repo.to_string(),
            })
            .observe(report.duration_ms as f64 / 1000.0);
    }

    /// A scheduled pull started `lag` after it was due.
    pub fn pull_started_late(&self, lag: Duration) {
        self.schedule_lag.observe(lag.as_secs_f64());
    }

    /// Deliveries of `notifier`: `delivered`, `retrying` and `dead` messages.
    pub fn delivered(&self, notifier: &str, delivered: u64, retrying: u64, dead: u64) {
        for (result, n) in [
            ("delivered", delivered),
            ("retrying", retrying),
            ("dead", dead),
        ] {
            if n > 0 {
                self.notifications
                    .get_or_create(&NotifierResult {
                        notifier: notifier.to_string(),
                        result,
                    })
                    .inc_by(n);
            }
        }
    }

    /// A push delivery to `receiver` was answered with `result`.
    pub fn webhook_request(&self, receiver: &str, result: &'static str) {
        self.webhook_requests
            .get_or_create(&ReceiverResult {
                receiver: receiver.to_string(),
                result,
            })
            .inc();
    }

    /// Everything counted plus `snapshot`'s gauges, in `format`.
    pub fn encode(&self, snapshot: &Snapshot, format: Format) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let gauges = gauges(snapshot);
        let process = process_metrics(Process::read().as_ref());
        let mut out = String::new();
        // Writing to a String cannot fail.
        match format {
            Format::OpenMetrics => {
                let _ = encode_registry(&mut out, &self.registry);
                let _ = encode_registry(&mut out, &gauges);
                let _ = encode_registry(&mut out, &process);
                let _ = encode_eof(&mut out);
            }
            Format::Prometheus => {
                let _ = prometheus_text::encode(&mut out, &self.registry);
                let _ = prometheus_text::encode(&mut out, &gauges);
                let _ = prometheus_text::encode(&mut out, &process);
            }
        }
        out
    }
}

impl CallObserver for Metrics {
    fn called(&self, plugin: &str, took: Duration, fault: Option<&Fault>) {
        self.plugin_calls
            .get_or_create(&PluginLabel {
                plugin: plugin.to_string(),
            })
            .observe(took.as_secs_f64());
        if let Some(fault) = fault {
            self.plugin_faults
                .get_or_create(&PluginKind {
                    plugin: plugin.to_string(),
                    kind: fault.kind(),
                })
                .inc();
        }
    }
}

/// The process figures every Prometheus client library exports (no
/// prefix, the standard names), read from `/proc/self` at each scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    open_fds: u64,
    start_time_seconds: f64,
}

impl Process {
    /// This process now; none where `/proc` is not Linux's.
    fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Process::parse(&stat, &boot, ticks, page, open_fds)
    }

    /// From `/proc/self/stat` and `/proc/stat`: fields after the command's
    /// closing parenthesis (which may itself hold spaces and parentheses).
    fn parse(stat: &str, boot: &str, ticks: i64, page: i64, open_fds: u64) -> Option<Process> {
        let after = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Field numbers as proc(5) counts them, from 1 (pid) and 2 (comm).
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let (ticks, page) = (ticks.max(1) as f64, page.max(1) as f64);
        let boot_time = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        Some(Process {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            resident_bytes: (field(24)? * page) as u64,
            open_fds,
            start_time_seconds: boot_time + field(22)? / ticks,
        })
    }
}

/// The process registry for one scrape (empty without `/proc`).
fn process_metrics(process: Option<&Process>) -> Registry {
    let mut registry = Registry::default();
    let Some(p) = process else {
        return registry;
    };
    let cpu = Counter::<f64, AtomicU64>::default();
    cpu.inc_by(p.cpu_seconds);
    registry.register_with_unit(
        "process_cpu",
        "User and system CPU time spent",
        Unit::Seconds,
        cpu,
    );
    let rss = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    rss.set(i64::try_from(p.resident_bytes).unwrap_or(i64::MAX));
    registry.register_with_unit(
        "process_resident_memory",
        "Resident memory size",
        Unit::Bytes,
        rss,
    );
    let fds = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    fds.set(i64::try_from(p.open_fds).unwrap_or(i64::MAX));
    registry.register("process_open_fds", "Open file descriptors", fds);
    let start = Seconds::default();
    start.set(p.start_time_seconds);
    registry.register_with_unit(
        "process_start_time",
        "Start time of the process since the unix epoch",
        Unit::Seconds,
        start,
    );
    registry
}

/// A registry of the state gauges, built for one scrape.
fn gauges(snapshot: &Snapshot) -> Registry {
    let mut registry = Registry::with_prefix("gitpulse");
    let last_success = Family::<RepoLabel, Seconds>::default();
    let last_attempt = Family::<RepoLabel, Seconds>::default();
    let failures = Family::<RepoLabel, Gauge>::default();
    let ready = Family::<RepoLabel, Gauge>::default();
    let info = Family::<RepoInfo, Gauge>::default();
    for r in &snapshot.repos {
        info.get_or_create(&RepoInfo {
            repo: r.repo.clone(),
            url: r.url.clone(),
            r#ref: r.follows.clone(),
            revision: r.revision.clone(),
        })
        .set(1);
        let label = RepoLabel {
            repo: r.repo.clone(),
        };
        if let Some(ms) = r.last_success_ms {
            last_success.get_or_create(&label).set(ms as f64 / 1000.0);
        }
        if let Some(ms) = r.last_attempt_ms {
            last_attempt.get_or_create(&label).set(ms as f64 / 1000.0);
        }
        failures
            .get_or_create(&label)
            .set(i64::from(r.failures_in_row));
        ready.get_or_create(&label).set(i64::from(r.ready));
    }
    registry.register(
        "repo_info",
        "A repository: its URL, what it follows and the revision it is at (value 1)",
        info,
    );
    registry.register(
        "last_success_timestamp_seconds",
        "When the repository's last successful pull ended (Unix time)",
        last_success,
    );
    registry.register(
        "last_attempt_timestamp_seconds",
        "When the repository's last pull ended, whatever its result (Unix time)",
        last_attempt,
    );
    registry.register(
        "consecutive_failures",
        "Pulls of the repository in a row that failed",
        failures,
    );
    registry.register(
        "repo_ready",
        "1 once the repository has been pulled successfully",
        ready,
    );
    let breakers = Family::<HostLabel, Gauge>::default();
    for (host, open) in &snapshot.breakers {
        breakers
            .get_or_create(&HostLabel { host: host.clone() })
            .set(i64::from(*open));
    }
    registry.register(
        "breaker_open",
        "1 while the host's circuit is open (its repositories held back)",
        breakers,
    );
    let allowed = Family::<HostLabel, Gauge>::default();
    let used = Family::<HostLabel, Gauge>::default();
    let denied = Family::<HostLabel, Counter>::default();
    for (host, b) in &snapshot.budgets {
        let label = HostLabel { host: host.clone() };
        allowed.get_or_create(&label).set(i64::from(b.allowed));
        used.get_or_create(&label).set(i64::from(b.retries));
        denied.get_or_create(&label).inc_by(b.denied);
    }
    registry.register(
        "retry_budget_allowed",
        "Retries the host's budget allows in the current minute",
        allowed,
    );
    registry.register(
        "retry_budget_used",
        "Retries to the host in the current minute",
        used,
    );
    registry.register(
        "retries_denied",
        "Retries the host's budget refused (the pull stopped with `budget`)",
        denied,
    );
    let outbox = Family::<StateLabel, Gauge>::default();
    for (state, n) in &snapshot.outbox {
        outbox
            .get_or_create(&StateLabel { state })
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    registry.register("outbox_messages", "Outbox messages by state", outbox);
    if let Some(f) = &snapshot.fleet {
        let label = ReplicaLabel {
            replica: f.replica.clone(),
        };
        let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let replicas = Family::<ReplicaLabel, Gauge>::default();
        replicas.get_or_create(&label).set(as_gauge(f.replicas));
        registry.register(
            "fleet_replicas",
            "Replicas of the fleet alive at this replica's last heartbeat",
            replicas,
        );
        let held = Family::<ReplicaLabel, Gauge>::default();
        held.get_or_create(&label).set(as_gauge(f.held));
        registry.register(
            "fleet_leases_held",
            "Repositories whose lease this replica holds (it alone pulls them)",
            held,
        );
        let fenced = Family::<ReplicaLabel, Counter>::default();
        fenced.get_or_create(&label).inc_by(f.fenced);
        registry.register(
            "fleet_fenced_writes",
            "Results this replica dropped because their repository's lease had moved to another",
            fenced,
        );
        let leader = Family::<ReplicaLabel, Gauge>::default();
        leader.get_or_create(&label).set(i64::from(f.leads));
        registry.register(
            "fleet_leader",
            "1 while this replica does the fleet's housekeeping (pruning)",
            leader,
        );
        let taken = Family::<ReplicaLabel, Counter>::default();
        taken.get_or_create(&label).inc_by(f.taken);
        registry.register(
            "fleet_leases_taken",
            "Leases this replica took (free, expired or given back by another)",
            taken,
        );
    }
    let oldest = Seconds::default();
    oldest.set(snapshot.oldest_pending.unwrap_or_default().as_secs_f64());
    registry.register_with_unit(
        "outbox_oldest_pending_age",
        "Age of the oldest message waiting for delivery (0 when none waits)",
        Unit::Seconds,
        oldest,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{AttemptRecord, Outcome};

    fn sample(line_start: &str, text: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn process_figures_are_read_as_proc_5_lays_them_out() {
        // A command name with spaces and a parenthesis, as /proc shows it.
        let stat = "4242 (gitpulse (x) d) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 1000000 2048 18446744073709551615";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let p = Process::parse(stat, boot, 100, 4096, 17).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.resident_bytes, 2048 * 4096);
        assert_eq!(p.open_fds, 17);
        assert_eq!(p.start_time_seconds, 1_700_000_000.0 + 123.45);
        assert_eq!(Process::parse("garbage", boot, 100, 4096, 1), None);
        // The live process reads, and exports the standard names.
        let text = {
            let mut out = String::new();
            encode_registry(&mut out, &process_metrics(Process::read().as_ref())).unwrap();
            out
        };
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(name), "{name}\n{text}");
        }
    }

    #[test]
    fn pulls_are_counted_by_outcome_and_class() {
        let m = Metrics::new();
        let mut report = PullReport::failed("u", std::path::Path::new("d"));
        report.duration_ms = 1500;
        let attempt = AttemptRecord {
            n: 1,
            class: crate::FailureClass::ServerError,
            http_status: Some(503),
            message: "HTTP 503".into(),
            delay_ms: None,
            duration_ms: 5,
            limit: None,
        };
        report.attempts = vec![attempt.clone(), attempt];
        m.pull_finished("app", &report);
        report.outcome = Outcome::Updated;
        report.attempts.truncate(1);
        m.pull_finished("app", &report);
        let text = m.encode(&Snapshot::default(), Format::OpenMetrics);
        assert_eq!(
            sample(
                "gitpulse_pulls_total{repo=\"app\",outcome=\"failed\"}",
                &text
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                "gitpulse_pulls_total{repo=\"app\",outcome=\"updated\"}",
                &text
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                "gitpulse_pull_attempt_failures_total{repo=\"app\",class=\"server-error\"}",
                &text
            ),
            Some(3.0)
        );
        assert_eq!(
            sample("gitpulse_pull_duration_seconds_sum{repo=\"app\"}", &text),
            Some(3.0)
        );
        assert_eq!(
            sample(
                "gitpulse_pull_duration_seconds_bucket{le=\"2.5\",repo=\"app\"}",
                &text
            ),
            Some(2.0)
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn gauges_come_from_the_snapshot() {
        let m = Metrics::new();
        let snapshot = Snapshot {
            repos: vec![RepoGauges {
                repo: "app".into(),
                last_success_ms: Some(1_700_000_000_500),
                last_attempt_ms: Some(1_700_000_001_000),
                failures_in_row: 2,
                ready: true,
                url: "https://git.example.com/app.git".into(),
                follows: "main".into(),
                revision: "0123456789abcdef0123456789abcdef01234567".into(),
            }],
            breakers: vec![("git.example.com".into(), true)],
            outbox: vec![("pending", 3), ("dead", 1)],
            oldest_pending: Some(Duration::from_secs(42)),
            budgets: vec![(
                "git.example.com".into(),
                crate::policy::BudgetState {
                    pulls: 50,
                    retries: 10,
                    allowed: 10,
                    denied: 7,
                },
            )],
            fleet: Some(FleetGauge {
                replica: "web-1".into(),
                replicas: 3,
                held: 20,
                fenced: 1,
                taken: 25,
                leads: true,
            }),
        };
        let text = m.encode(&snapshot, Format::OpenMetrics);
        assert_eq!(
            sample(
                "gitpulse_last_success_timestamp_seconds{repo=\"app\"}",
                &text
            ),
            Some(1_700_000_000.5)
        );
        assert_eq!(
            sample("gitpulse_consecutive_failures{repo=\"app\"}", &text),
            Some(2.0)
        );
        assert_eq!(
            sample("gitpulse_repo_ready{repo=\"app\"}", &text),
            Some(1.0)
        );
        assert_eq!(
            sample(
                "gitpulse_repo_info{repo=\"app\",url=\"https://git.example.com/app.git\",ref=\"main\",revision=\"0123456789abcdef0123456789abcdef01234567\"}",
                &text
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample("gitpulse_breaker_open{host=\"git.example.com\"}", &text),
            Some(1.0)
        );
        assert_eq!(
            sample("gitpulse_outbox_messages{state=\"pending\"}", &text),
            Some(3.0)
        );
        assert_eq!(
            sample("gitpulse_outbox_oldest_pending_age_seconds ", &text),
            Some(42.0)
        );
        assert_eq!(
            sample(
                "gitpulse_retries_denied_total{host=\"git.example.com\"}",
                &text
            ),
            Some(7.0)
        );
        for (name, value) in [
            ("gitpulse_fleet_replicas{replica=\"web-1\"}", 3.0),
            ("gitpulse_fleet_leases_held{replica=\"web-1\"}", 20.0),
            ("gitpulse_fleet_fenced_writes_total{replica=\"web-1\"}", 1.0),
            ("gitpulse_fleet_leases_taken_total{replica=\"web-1\"}", 25.0),
            ("gitpulse_fleet_leader{replica=\"web-1\"}", 1.0),
        ] {
            assert_eq!(sample(name, &text), Some(value), "{name}");
        }
        assert_eq!(text.matches("# EOF").count(), 1);
        // A daemon that is no replica of a fleet has none of these.
        let alone = m.encode(&Snapshot::default(), Format::OpenMetrics);
        assert!(!alone.contains("gitpulse_fleet_"), "{alone}");
    }

    #[test]
    fn plugin_calls_and_faults_are_counted_by_plugin() {
        let m = Metrics::new();
        m.called("gentle", Duration::from_micros(20), None);
        m.called(
            "gentle",
            Duration::from_millis(11),
            Some(&Fault::Timeout(Duration::from_millis(10))),
        );
        let text = m.encode(&Snapshot::default(), Format::OpenMetrics);
        assert_eq!(
            sample(
                "gitpulse_policy_decision_duration_seconds_count{plugin=\"gentle\"}",
                &text
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                "gitpulse_plugin_faults_total{plugin=\"gentle\",kind=\"timeout\"}",
                &text
            ),
            Some(1.0)
        );
    }
}
