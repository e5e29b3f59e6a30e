//! The daemon polling many tiny repositories on a local smart-HTTP server,
//! against the same polling done by a loop of `git fetch` processes, in one
//! run: average CPU (% of one core), peak RSS, and how late each scheduled
//! pull started.
//!
//! Defaults follow the target scenario: 1,000 repositories, each polled every
//! 60 s, for 5 minutes per contender (`GITPULSE_BENCH_REPOS`,
//! `GITPULSE_BENCH_PERIOD_SECS`, `GITPULSE_BENCH_SECS`;
//! `GITPULSE_BENCH_SKIP_GIT=1` measures the daemon alone, for profiling
//! runs that need no ratio). `GITPULSE_BENCH_STORES` lists the daemons to
//! measure, each on the same repositories: `sqlite` (the default),
//! `postgres` (one daemon on a PostgreSQL server the bench starts) and
//! `postgres-N` (a fleet of N replicas in shard mode on it); for
//! PostgreSQL the server's CPU is measured too and counted in, and its
//! transactions per pull are shown. Concurrency limits
//! are set high so they do not hold pulls back. Measuring starts once every
//! repository has been cloned and one period has passed. The server
//! answers ref listings in its own process and the rest through
//! `git http-backend`. Targets: for 1,000 repositories ≤ 1 % of one
//! core and ≤ 150 MB RSS; for 10,000 ≤ 10 % and ≤ 200 MB; p99 start lag
//! ≤ 1 s for both.

// A benchmark: a panic is how it fails, and it has no API to document.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gitpulse_testkit::{free_port, GitHttpServer, PostgresServer, Upstream};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clock_ticks()
}

/// Peak RSS of `pid`, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Result {
    name: String,
    cpu_pct: f64,
    rss_mb: f64,
    pulls: usize,
    lags: Vec<u64>,
    /// For PostgreSQL: the server's share of `cpu_pct`, and its
    /// transactions per pull.
    database: Option<(f64, f64)>,
    /// For a fleet: claims that asked the database, in µs, sorted.
    claims: Vec<u64>,
}

/// Where a measured daemon keeps its state.
#[derive(Clone, Copy)]
enum Store {
    Sqlite,
    /// A PostgreSQL server, shared by this many replicas.
    Postgres(usize),
}

impl Store {
    fn parse(text: &str) -> Store {
        match text.trim() {
            "sqlite" => Store::Sqlite,
            "postgres" => Store::Postgres(1),
            other => match other.strip_prefix("postgres-").and_then(|n| n.parse().ok()) {
                Some(n) if n >= 1 => Store::Postgres(n),
                _ => {
                    panic!("GITPULSE_BENCH_STORES: `{other}` is not sqlite, postgres or postgres-N")
                }
            },
        }
    }

    fn name(self) -> String {
        match self {
            Store::Sqlite => "gitpulse daemon (SQLite)".into(),
            Store::Postgres(1) => "gitpulse daemon (PostgreSQL)".into(),
            Store::Postgres(n) => format!("gitpulse fleet of {n} (PostgreSQL, shard)"),
        }
    }
}

/// utime + stime of the PostgreSQL server and all its backends.
fn postgres_cpu_seconds(postmaster: u32) -> f64 {
    let mut total = cpu_seconds(postmaster);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let ppid: Option<u32> = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(postmaster) {
            total += cpu_seconds(pid);
        }
    }
    total
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let repos = env_or("GITPULSE_BENCH_REPOS", 1000) as usize;
    let period = env_or("GITPULSE_BENCH_PERIOD_SECS", 60);
    let secs = env_or("GITPULSE_BENCH_SECS", 300);
    let root = tempfile::tempdir().unwrap();
    let seed = Upstream::new(root.path(), "seed");
    for i in 0..repos {
        let status = Command::new("cp")
            .arg("-r")
            .arg(&seed.bare)
            .arg(root.path().join(format!("r{i}.git")))
            .status()
            .unwrap();
        assert!(status.success());
    }
    // Ref listings are answered in the server's process, as a hosting
    // service's front end does: with a `git http-backend` process per
    // listing, 10,000 repositories measured this machine's process spawns.
    let server = GitHttpServer::start_listing_in_process(root.path());
    eprintln!(
        "{repos} repositories on {}, each polled every {period} s, {secs} s per contender",
        server.addr()
    );

    let stores: Vec<Store> = std::env::var("GITPULSE_BENCH_STORES")
        .unwrap_or_else(|_| "sqlite".into())
        .split(',')
        .map(Store::parse)
        .collect();
    let daemons: Vec<Result> = stores
        .iter()
        .enumerate()
        .map(|(n, store)| {
            let run = root.path().join(format!("run-{n}"));
            std::fs::create_dir_all(&run).unwrap();
            run_daemon(&run, &server, *store, repos, period, secs)
        })
        .collect();
    let daemon = &daemons[0];
    let skip_git = std::env::var_os("GITPULSE_BENCH_SKIP_GIT").is_some_and(|v| v == "1");
    let git = match skip_git {
        true => None,
        false => Some(run_git_loop(
            &root.path().join("run-0"),
            repos,
            period,
            secs,
        )),
    };

    println!();
    println!("{repos} tiny repositories, each polled every {period} s, measured for {secs} s after the clones and one period to settle; local smart-HTTP server (ref listings in process, everything else through git http-backend)");
    println!();
    println!(
        "| contender | avg CPU (% of one core) | CPU per pull | of it the database | DB transactions per pull | peak RSS | pulls | start lag p50 | p99 | max |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in daemons.iter().chain(&git) {
        let mut lags = r.lags.clone();
        lags.sort_unstable();
        let per_pull = |pct: f64| pct / 100.0 * secs as f64 * 1000.0 / r.pulls.max(1) as f64;
        let (db_cpu, db_tx) = match r.database {
            Some((pct, tx)) => (format!("{:.2} ms", per_pull(pct)), format!("{tx:.1}")),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {} | {:.2} % | {:.2} ms | {db_cpu} | {db_tx} | {:.1} MB | {} | {} ms | {} ms | {} ms |",
            r.name,
            r.cpu_pct,
            per_pull(r.cpu_pct),
            r.rss_mb,
            r.pulls,
            percentile(&lags, 0.5),
            percentile(&lags, 0.99),
            lags.last().copied().unwrap_or(0)
        );
    }
    println!();
    let (cpu_target, rss_target) = if repos >= 10_000 {
        (10.0, 200.0)
    } else {
        (1.0, 150.0)
    };
    let mark = |ok: bool| if ok { "✓" } else { "✗" };
    let mut lags = daemon.lags.clone();
    lags.sort_unstable();
    println!(
        "targets for the daemon: CPU ≤ {cpu_target} % {}, RSS ≤ {rss_target} MB {}, p99 lag ≤ 1000 ms {}; CPU ratio to git {:.3}; git's RSS is the largest single git process",
        mark(daemon.cpu_pct <= cpu_target),
        mark(daemon.rss_mb <= rss_target),
        mark(percentile(&lags, 0.99) <= 1000),
        git.as_ref().map_or(f64::NAN, |git| daemon.cpu_pct / git.cpu_pct.max(f64::MIN_POSITIVE)),
    );
    for r in daemons.iter().filter(|r| !r.claims.is_empty()) {
        println!(
            "{}: a claim that asks the database takes p50 {} µs, p99 {} µs (1,000 claims while the fleet ran)",
            r.name,
            percentile(&r.claims, 0.5),
            percentile(&r.claims, 0.99),
        );
    }
    for other in &daemons[1..] {
        let per_pull = |r: &Result| r.cpu_pct / r.pulls.max(1) as f64;
        let mut lags = other.lags.clone();
        lags.sort_unstable();
        println!(
            "{}: CPU per pull {:.2}× the first's; p99 lag ≤ 1000 ms {}",
            other.name,
            per_pull(other) / per_pull(daemon).max(f64::MIN_POSITIVE),
            mark(percentile(&lags, 0.99) <= 1000),
        );
    }
}

/// Runs `store`'s daemons (one, or a fleet's replicas) in `root` until they
/// have cloned every repository and one period passed, then measures `secs`.
fn run_daemon(
    root: &Path,
    server: &GitHttpServer,
    store: Store,
    repos: usize,
    period: u64,
    secs: u64,
) -> Result {
    let postgres = match store {
        Store::Postgres(_) => Some(PostgresServer::start()),
        Store::Sqlite => None,
    };
    let url = postgres.as_ref().map(|pg| pg.database("bench"));
    let replicas = match store {
        Store::Postgres(n) => n,
        Store::Sqlite => 1,
    };
    let mut children = Vec::new();
    for n in 0..replicas {
        let home = root.join(format!("replica-{n}"));
        std::fs::create_dir_all(&home).unwrap();
        let port = free_port();
        let mut config = format!(
            "[daemon]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\nmax_concurrent = 256\nper_host = 256\n\n[defaults]\nschedule = \"every {period}s\"\n\n"
        );
        if let Some(url) = &url {
            std::fs::write(home.join("db-url"), url).unwrap();
            config += "[store]\nbackend = \"postgres\"\nurl_file = \"db-url\"\n\n";
            config += &format!("[fleet]\nreplica = \"bench-{n}\"\n");
            if replicas > 1 {
                config += "mode = \"shard\"\n";
            }
            config += "\n";
        }
        for i in 0..repos {
            config += &format!(
                "[[repo]]\nname = \"r{i}\"\nurl = \"{}\"\ndir = \"../checkouts/r{i}\"\n\n",
                server.url(&format!("r{i}"))
            );
        }
        let path = home.join("gitpulse.toml");
        std::fs::write(&path, config).unwrap();
        // A fleet's replicas share one checkout directory here (one host):
        // a repository is pulled by one of them at a time.
        let child = Command::new(env!("CARGO_BIN_EXE_gitpulse"))
            .args(["daemon", "--config"])
            .arg(&path)
            .env("GITPULSE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        children.push(child);
    }
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let cpu_now = || -> (f64, f64) {
        let daemons: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
        let database = postgres
            .as_ref()
            .map_or(0.0, |pg| postgres_cpu_seconds(pg.pid()));
        (daemons + database, database)
    };
    let transactions = || -> f64 {
        postgres.as_ref().map_or(0.0, |pg| {
            pg.sql(
                "bench",
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'bench'",
            )
            .parse()
            .unwrap_or(0.0)
        })
    };
    // Warm-up: the daemons clone every repository at once (the git loop
    // below starts from those clones) and spread their next pulls over the
    // period, so all are measured polling.
    let warm_up = Instant::now();
    while (0..repos).any(|i| !root.join(format!("checkouts/r{i}/.git")).exists()) {
        for child in &mut children {
            assert!(child.try_wait().unwrap().is_none(), "a daemon exited early");
        }
        assert!(
            warm_up.elapsed() < Duration::from_secs(1800),
            "the first clones took more than 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "{}: every repository cloned in {:.0} s",
        store.name(),
        warm_up.elapsed().as_secs_f64()
    );
    // One period to settle: the pulls that fell due while the last clones
    // ran are caught up before the steady state is measured.
    std::thread::sleep(Duration::from_secs(period));
    let (start_cpu, start_db_cpu) = cpu_now();
    eprintln!("warm-up (first pull of every repository): {start_cpu:.1} s of CPU");
    let start_tx = transactions();
    let started = Instant::now();
    let started_ms = gitpulse::store::now_ms();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        for child in &mut children {
            assert!(child.try_wait().unwrap().is_none(), "a daemon exited early");
        }
    }
    let (end_cpu, end_db_cpu) = cpu_now();
    let tx = transactions() - start_tx;
    let rss = pids.iter().map(|p| peak_rss_mb(*p)).fold(0.0, f64::max);
    let elapsed = started.elapsed().as_secs_f64();
    // While the fleet still runs: how long a claim that asks the database
    // takes (a push or trigger for a repository another replica holds, or
    // the take-over of an orphan), from a replica that holds nothing.
    let claims = match (&url, replicas > 1) {
        (Some(url), true) => claim_latencies(url, repos),
        _ => Vec::new(),
    };
    for (pid, mut child) in pids.iter().zip(children) {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = child.wait();
    }
    let state: Box<dyn gitpulse::store::Storage> = match &url {
        None => Box::new(
            gitpulse::store::SqliteStore::open(&root.join("replica-0/state/state.db")).unwrap(),
        ),
        Some(url) => Box::new(
            gitpulse::store::PostgresStore::connect(&gitpulse::store::Connect {
                url: gitpulse::redact::Secret::new(url.clone()),
                pool_size: 1,
                connect_timeout: Duration::from_secs(10),
                ca_file: None,
            })
            .unwrap(),
        ),
    };
    // Lags of the measured window only (the warm-up's clones came first).
    let mut lags = state.start_lags_since(started_ms).unwrap();
    lags.sort_unstable();
    let pulls = lags.len();
    Result {
        name: store.name(),
        cpu_pct: (end_cpu - start_cpu) / elapsed * 100.0,
        rss_mb: rss,
        pulls,
        lags,
        database: postgres.as_ref().map(|_| {
            (
                (end_db_cpu - start_db_cpu) / elapsed * 100.0,
                tx / pulls.max(1) as f64,
            )
        }),
        claims,
    }
}

/// Microseconds each of 1,000 claims took, sorted: asked for now (no
/// share, so the database is asked) by a replica that joined nothing, for
/// repositories the fleet holds.
fn claim_latencies(url: &str, repos: usize) -> Vec<u64> {
    use gitpulse::store::{FleetMode, Replica, State as _};
    let store = gitpulse::store::PostgresStore::connect(&gitpulse::store::Connect {
        url: gitpulse::redact::Secret::new(url),
        pool_size: 1,
        connect_timeout: Duration::from_secs(10),
        ca_file: None,
    })
    .unwrap()
    .as_replica(Replica {
        name: "bench-probe".into(),
        mode: FleetMode::Shard,
        lease_ttl: Duration::from_secs(15),
    });
    let fleet = store.fleet().unwrap();
    let mut took: Vec<u64> = (0..1000)
        .map(|i| {
            let repo = format!("r{}", (i * 7919) % repos);
            let at = Instant::now();
            fleet.claim(&repo, None).unwrap();
            at.elapsed().as_micros() as u64
        })
        .collect();
    took.sort_unstable();
    took
}

/// The same polling as a shell loop would do it: at each repository's due
/// time, run `git fetch` in its checkout (concurrently, unlimited).
fn run_git_loop(root: &Path, repos: usize, period: u64, secs: u64) -> Result {
    let period = Duration::from_secs(period);
    let started = Instant::now();
    let lags = Arc::new(Mutex::new(Vec::new()));
    let peak_rss_kb = Arc::new(Mutex::new(0i64));
    let cpu = Arc::new(Mutex::new(0f64));
    // Due times: spread over the first period like the daemon's first runs.
    let mut due: Vec<(Instant, usize)> = (0..repos)
        .map(|i| (started + period * i as u32 / repos as u32, i))
        .collect();
    let mut reapers = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        due.sort_by_key(|(t, _)| *t);
        let (at, i) = due[0];
        let now = Instant::now();
        if at > now {
            std::thread::sleep((at - now).min(Duration::from_millis(50)));
            continue;
        }
        lags.lock().unwrap().push((now - at).as_millis() as u64);
        due[0].0 = at + period;
        let dir = root.join(format!("checkouts/r{i}"));
        // Reaped by wait4 in the thread below, which also reads its rusage.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(["fetch", "-q", "origin"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (peak, cpu) = (peak_rss_kb.clone(), cpu.clone());
        reapers.push(std::thread::spawn(move || {
            let mut status = 0;
            // SAFETY: rusage is plain data; wait4 fills it for our own child.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
            let used = usage.ru_utime.tv_sec as f64
                + usage.ru_utime.tv_usec as f64 / 1e6
                + usage.ru_stime.tv_sec as f64
                + usage.ru_stime.tv_usec as f64 / 1e6;
            *cpu.lock().unwrap() += used;
            let mut p = peak.lock().unwrap();
            *p = (*p).max(usage.ru_maxrss);
        }));
        reapers.retain(|r| !r.is_finished());
    }
    for r in reapers {
        let _ = r.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let lags = lags.lock().unwrap().clone();
    let cpu = *cpu.lock().unwrap();
    let rss = *peak_rss_kb.lock().unwrap() as f64 / 1024.0;
    Result {
        name: "loop of `git fetch`".into(),
        cpu_pct: cpu / elapsed * 100.0,
        rss_mb: rss,
        pulls: lags.len(),
        lags,
        database: None,
        claims: Vec::new(),
    }
}
