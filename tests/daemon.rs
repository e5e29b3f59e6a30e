//! `gitpulse daemon` end to end: real git servers, a real daemon process,
//! commits pushed while it runs, reloads, signals, kill -9.

use crate::common::*;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

fn head_of(dir: &Path) -> Option<String> {
    if !dir.join(".git").exists() {
        return None;
    }
    let out = git(dir, &["rev-parse", "HEAD"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The kinds of `gitpulse history REPO --json`, newest first.
fn history_kinds(config: &Path, repo: &str) -> Vec<String> {
    history(config, repo)
        .iter()
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect()
}

/// The config these tests start from: a daemon on `port` pulling every
/// repo each second, with quick retries.
fn daemon_config(port: u16) -> ConfigFile {
    ConfigFile::daemon_on(port)
        .daemon("max_concurrent", 4)
        .defaults("schedule", "every 1s jitter 0s")
        .defaults("backoff_base", "50ms")
        .defaults("backoff_max", "200ms")
}

#[test]
fn pulls_several_repos_and_picks_up_new_commits_on_schedule() {
    let root = tempfile::tempdir().unwrap();
    let mut app = Upstream::new(root.path(), "app");
    let mut lib = Upstream::new(root.path(), "lib");
    let http = GitHttpServer::start(root.path());
    let daemon_git = GitDaemon::start(root.path());
    let port = free_port();
    let config = root.path().join("gitpulse.toml");
    let (app_dir, lib_dir) = (root.path().join("c-app"), root.path().join("c-lib"));
    daemon_config(port)
        .repo(Repo::new("app", &http.url("app"), &app_dir))
        .repo(Repo::new("lib", &daemon_git.url("lib"), &lib_dir))
        .write(&config);
    let d = Daemon::start(&config, port, &[]);

    wait_for("both clones", Duration::from_secs(30), || {
        head_of(&app_dir).is_some() && head_of(&lib_dir).is_some()
    });
    let (new_app, new_lib) = (app.commit("while running"), lib.commit("lib too"));
    wait_for("the new commits", Duration::from_secs(30), || {
        head_of(&app_dir).as_deref() == Some(new_app.as_str())
            && head_of(&lib_dir).as_deref() == Some(new_lib.as_str())
    });
    assert_eq!(checkout_state(&app_dir), (new_app.clone(), true));

    let out = gitpulse()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("app") && table.contains("lib") && table.contains("ago"),
        "{table}"
    );
    let kinds = history_kinds(&config, "app");
    assert!(
        kinds.iter().any(|k| k == "updated") && kinds.iter().any(|k| k == "cloned"),
        "{kinds:?}"
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn reload_adds_and_removes_repos_and_keeps_the_old_config_when_the_new_one_is_invalid() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Upstream::new(root.path(), "a");
    let b = Upstream::new(root.path(), "b");
    let port = free_port();
    let config = root.path().join("gitpulse.toml");
    let (a_dir, b_dir) = (root.path().join("c-a"), root.path().join("c-b"));
    let base = daemon_config(port).repo(Repo::new("a", &a.file_url(), &a_dir));
    base.write(&config);
    let d = Daemon::start(&config, port, &[]);
    wait_for("a cloned", Duration::from_secs(30), || {
        head_of(&a_dir).is_some()
    });

    base.clone()
        .repo(Repo::new("b", &b.file_url(), &b_dir))
        .write(&config);
    wait_for("b added and cloned", Duration::from_secs(30), || {
        head_of(&b_dir).is_some()
    });

    let invalid = base
        .clone()
        .repo(Repo::new("b", &b.file_url(), &b_dir).set("schedule", "every blue moon"));
    invalid.write(&config);
    let line = 1 + invalid
        .text()
        .lines()
        .position(|l| l.contains("every blue moon"))
        .unwrap();
    wait_for(
        "the rejection to be logged",
        Duration::from_secs(30),
        || d.log().contains("config rejected"),
    );
    assert!(
        d.log()
            .contains(&format!("gitpulse.toml:{line}: repo \"b\".schedule")),
        "{}",
        d.log()
    );
    let moved = a.commit("still served by the old config");
    wait_for(
        "a updated under the old config",
        Duration::from_secs(30),
        || head_of(&a_dir).as_deref() == Some(moved.as_str()),
    );

    daemon_config(port)
        .repo(Repo::new("b", &b.file_url(), &b_dir))
        .write(&config);
    wait_for("a removed", Duration::from_secs(30), || {
        let names: Vec<String> = d.status()["repos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["repo"].as_str().unwrap().to_string())
            .collect();
        names == ["b"]
    });
    let counters = d.status()["counters"].clone();
    assert!(counters["reloads"].as_u64().unwrap() >= 2, "{counters}");
    assert!(
        counters["reloads_rejected"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn an_invalid_config_stops_the_daemon_from_starting() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("gitpulse.toml");
    std::fs::write(
        &config,
        "[[repo]]\nname = \"x\"\nurl = \"ftp://nowhere/x\"\nschedule = \"*/5 * * * *\"\n",
    )
    .unwrap();
    let out = gitpulse()
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("gitpulse.toml:3: repo \"x\".url")
            && err.contains("gitpulse.toml:4: repo \"x\".schedule"),
        "{err}"
    );
    assert!(err.contains("not starting"), "{err}");
}

#[test]
fn kill_9_and_restart_resume_with_their_state() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let port = free_port();
    let config = root.path().join("gitpulse.toml");
    let dir = root.path().join("c");
    daemon_config(port)
        .repo(Repo::new("app", &up.file_url(), &dir))
        .write(&config);
    let mut d = Daemon::start(&config, port, &[]);
    wait_for("the clone", Duration::from_secs(30), || {
        head_of(&dir).is_some()
    });
    d.child.kill().unwrap();
    d.child.wait().unwrap();

    let new = up.commit("while the daemon was dead");
    let d = Daemon::start(&config, port, &[]);
    wait_for("the update after restart", Duration::from_secs(30), || {
        head_of(&dir).as_deref() == Some(new.as_str())
    });
    assert_eq!(checkout_state(&dir), (new.clone(), true));
    assert!(fsck_ok(&dir));
    wait_for("the state to record it", Duration::from_secs(30), || {
        d.status()["repos"][0]["state"]["last_commit"].as_str() == Some(new.as_str())
    });
    let kinds = history_kinds(&config, "app");
    assert!(
        kinds.iter().any(|k| k == "cloned") && kinds.iter().any(|k| k == "updated"),
        "state from before the kill survives: {kinds:?}"
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn sigterm_during_a_pull_exits_cleanly_and_leaves_a_consistent_checkout() {
    let served = Served::new("app");
    // ~2 MB through a slow link: the clone is still running when SIGTERM comes.
    let work = served.root.path().join("app.work");
    for i in 0..40 {
        let blob: Vec<u8> = (0..50_000u32)
            .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i * 7919) >> 11) as u8)
            .collect();
        std::fs::write(work.join(format!("blob{i}.bin")), blob).unwrap();
    }
    let mut up = served.up;
    up.commit("big");
    served.proxy.set_always(Some(Fault::Slow {
        chunk: 16 * 1024,
        pause: Duration::from_millis(40),
    }));
    let port = free_port();
    let config = served.root.path().join("gitpulse.toml");
    let dir = served.root.path().join("c");
    daemon_config(port)
        .repo(Repo::new("app", &served.proxy.url("app"), &dir))
        .write(&config);
    let d = Daemon::start(&config, port, &["--grace", "500ms"]);
    wait_for("the pack download", Duration::from_secs(30), || {
        served.proxy.requests() >= 2
    });
    let started = Instant::now();
    assert_eq!(d.stop(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped in {:?}",
        started.elapsed()
    );
    // The clone was cancelled: nothing half-done is visible, and a pull completes.
    assert!(head_of(&dir).is_none() || fsck_ok(&dir));
    served.proxy.set_always(None);
    let run = pull(&served.proxy.url("app"), &dir, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(checkout_state(&dir), (up.head(), true));
}

#[test]
fn a_host_failing_for_everyone_trips_the_breaker_and_recovers() {
    let served = Served::new("r0");
    let port = free_port();
    let mut file = daemon_config(port)
        .daemon("breaker_threshold", 5)
        .daemon("breaker_cool_down", "5s");
    for i in 0..6 {
        let name = format!("r{i}");
        if i > 0 {
            Upstream::new(served.root.path(), &name);
        }
        let dir = served.dir(&format!("c{i}"));
        file = file.repo(Repo::new(&name, &served.proxy.url(&name), &dir).set("max_attempts", 1));
    }
    served.proxy.set_always(Some(Fault::Status(503)));
    let config = file.write_in(served.root.path());
    let d = Daemon::start(&config, port, &[]);
    wait_for(
        "the breaker to hold repos back",
        Duration::from_secs(30),
        || {
            d.status()["counters"]["skipped_breaker"]
                .as_u64()
                .unwrap_or(0)
                > 0
        },
    );
    assert!(d.log().contains("circuit open"), "{}", d.log());
    let before = served.proxy.requests();
    thread::sleep(Duration::from_secs(3));
    let during = served.proxy.requests() - before;
    // Closed, six repos every second would make ~18 requests in 3 s.
    assert!(
        during <= 6,
        "an open breaker holds the host back, saw {during} requests in 3 s"
    );

    served.proxy.set_always(None);
    // The breaker cools down for 5 s, then one canary probes and the rest resume.
    wait_for("every repo to recover", Duration::from_secs(90), || {
        (0..6).all(|i| head_of(&served.dir(&format!("c{i}"))).is_some())
    });
    assert!(d.log().contains("circuit closed"), "{}", d.log());
    assert_eq!(d.stop(), 0);
}

#[test]
fn trigger_sighup_and_sigusr1() {
    let root = tempfile::tempdir().unwrap();
    let a = Upstream::new(root.path(), "a");
    let b = Upstream::new(root.path(), "b");
    let port = free_port();
    let config = root.path().join("gitpulse.toml");
    let (a_dir, b_dir) = (root.path().join("c-a"), root.path().join("c-b"));
    // Not due until January.
    daemon_config(port)
        .repo(Repo::new("a", &a.file_url(), &a_dir).set("schedule", "0 0 0 1 1 *"))
        .repo(Repo::new("b", &b.file_url(), &b_dir).set("schedule", "0 0 0 1 1 *"))
        .write(&config);
    let d = Daemon::start(&config, port, &[]);
    // Never pulled: both are cloned at start, not in January.
    wait_for("the first pulls", Duration::from_secs(30), || {
        head_of(&a_dir).is_some() && head_of(&b_dir).is_some()
    });
    let (mut a, mut b) = (a, b);
    let a_new = a.commit("for a");
    let b_old = head_of(&b_dir);
    let b_new = b.commit("for b");
    let out = gitpulse()
        .args(["trigger", "a", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("a pulled on request", Duration::from_secs(30), || {
        head_of(&a_dir).as_deref() == Some(a_new.as_str())
    });
    assert_eq!(head_of(&b_dir), b_old, "b is not due until January");
    let out = gitpulse()
        .args(["trigger", "nope", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    d.signal("HUP");
    wait_for(
        "SIGHUP to reload the config",
        Duration::from_secs(30),
        || d.status()["counters"]["reloads"].as_u64().unwrap_or(0) >= 1,
    );
    d.signal("USR1");
    wait_for("b pulled on SIGUSR1", Duration::from_secs(30), || {
        head_of(&b_dir).as_deref() == Some(b_new.as_str())
    });
    assert_eq!(d.stop(), 0);
}

/// `gitpulse ARGS… --config CONFIG` in a shell without the repos' secrets.
fn without_secrets(args: &[&str], config: &Path) -> std::process::Output {
    gitpulse()
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("APP_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn commands_that_read_state_work_without_the_secrets() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let port = free_port();
    let config = root.path().join("gitpulse.toml");
    let dir = root.path().join("c");
    daemon_config(port)
        .repo(
            Repo::new("app", &up.file_url(), &dir)
                .set("token_env", "APP_TOKEN")
                .set("schedule", "every 24h"),
        )
        .notifier(
            "hook",
            &[
                ("kind", "webhook".into()),
                ("url", "http://127.0.0.1:9/x".into()),
                ("secret_file", "absent.secret".into()),
            ],
        )
        .write(&config);
    let refused = without_secrets(&["validate"], &config);
    assert_eq!(refused.status.code(), Some(2), "validate checks secrets");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("APP_TOKEN") && err.contains("absent.secret"),
        "{err}"
    );
    std::fs::write(root.path().join("absent.secret"), "s").unwrap();
    let d = Daemon::start_with_env(&config, port, &[], &[("APP_TOKEN", "t0ken")]);
    std::fs::remove_file(root.path().join("absent.secret")).unwrap();

    let trigger = without_secrets(&["trigger", "app"], &config);
    assert!(
        trigger.status.success(),
        "{}",
        String::from_utf8_lossy(&trigger.stderr)
    );
    // The first pull ran at start; the triggered one is the second.
    wait_for("the triggered pull", Duration::from_secs(30), || {
        d.status()["counters"]["pulls"].as_u64() >= Some(2)
    });
    wait_for("its record", Duration::from_secs(30), || {
        !history_kinds(&config, "app").is_empty()
    });
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["history", "app"],
        &["outbox"],
    ] {
        let out = without_secrets(args, &config);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
    }
    // A pull that changed nothing is written within a second (batched).
    wait_for(
        "the unchanged pull in the state",
        Duration::from_secs(10),
        || {
            let out = without_secrets(&["status", "--json"], &config);
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            status[0]["state"]["last_result"] == "unchanged"
        },
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_reload_reschedules_only_the_repos_whose_settings_changed() {
    let root = tempfile::tempdir().unwrap();
    let a = Upstream::new(root.path(), "a");
    let b = Upstream::new(root.path(), "b");
    let n = Upstream::new(root.path(), "n");
    let port = free_port();
    let config = root.path().join("gitpulse.toml");
    let entry = |name: &str, up: &Upstream| {
        Repo::new(name, &up.file_url(), &root.path().join(format!("c-{name}")))
            .set("schedule", "every 24h")
    };
    daemon_config(port)
        .repo(entry("a", &a))
        .repo(entry("b", &b))
        .write(&config);
    let d = Daemon::start(&config, port, &[]);
    // A new repo at the top moves every other [[repo]] down the file.
    daemon_config(port)
        .repo(entry("n", &n))
        .repo(entry("a", &a))
        .repo(entry("b", &b))
        .write(&config);
    wait_for("the reload", Duration::from_secs(30), || {
        d.log().contains("config reloaded")
    });
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("config reloaded"))
        .unwrap_or_default();
    assert!(line.contains("changed=1"), "only `n` is new: {line}");
    assert_eq!(d.stop(), 0);
}

#[test]
fn attempt_limits_hold_for_git_protocol_pulls_running_at_once() {
    let root = tempfile::tempdir().unwrap();
    Upstream::new(root.path(), "ok");
    let git_daemon = GitDaemon::start(root.path());
    let silent = SilentServer::start();
    let port = free_port();
    let config = root.path().join("gitpulse.toml");
    let stuck = Repo::new(
        "stuck",
        &silent.git_url("stuck"),
        &root.path().join("c-stuck"),
    )
    .set("timeout", "2s")
    .set("max_attempts", 1);
    let ok = Repo::new("ok", &git_daemon.url("ok"), &root.path().join("c-ok")).set("timeout", "5m");
    daemon_config(port).repo(stuck).repo(ok).write(&config);
    let d = Daemon::start(&config, port, &[]);
    // Both run every second, so their attempts overlap again and again.
    wait_for("three stalled attempts", Duration::from_secs(60), || {
        let out = gitpulse()
            .args(["history", "stuck", "--json", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        history.as_array().is_some_and(|h| {
            h.iter()
                .filter(|e| e["kind"] == "failed" && e["class"] == "timeout")
                .count()
                >= 3
        })
    });
    assert!(head_of(&root.path().join("c-ok")).is_some(), "{}", d.log());
    let out = gitpulse()
        .args(["history", "stuck", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for attempt in history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap_or("").starts_with("attempt"))
    {
        let ms = attempt["duration_ms"].as_u64().unwrap();
        assert!(
            ms < 4_000,
            "a 2 s attempt limit held beside a 5 min one: {attempt}"
        );
    }
    assert_eq!(d.stop(), 0);
}

/// A plugin directory with the misbehaving fixture as each of `names`.
fn misbehave_plugins(root: &Path, names: &[&str]) {
    let wasm = plugins::build("misbehave-policy");
    let dir = root.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for name in names {
        std::fs::copy(&wasm, dir.join(format!("{name}.wasm"))).unwrap();
    }
}

/// A config whose repo `app` fails with 503 on every attempt and uses
/// `policy`, with plugins from `plugins/`.
fn failing_with_policy(served: &Served, port: u16, policy: impl Into<toml::Value>) -> ConfigFile {
    served.proxy.set_always(Some(Fault::Status(503)));
    daemon_config(port)
        .daemon("plugin_dir", "plugins")
        // Keep the circuit closed: these tests watch every pull.
        .daemon("breaker_threshold", 10_000)
        .repo(
            Repo::new("app", &served.url(), &served.dir("c"))
                .set("max_attempts", 2)
                .set("policy", policy),
        )
}

#[test]
fn retry_and_backoff_plugins_both_play_their_roles() {
    let served = Served::new("app");
    misbehave_plugins(served.root.path(), &["eligible", "curve"]);
    let port = free_port();
    let config = failing_with_policy(
        &served,
        port,
        table(&[("retry", "eligible"), ("backoff", "curve")]),
    )
    .plugin("eligible", &[("mode", "log".into())])
    .plugin("curve", &[("mode", "trap".into())])
    .write_in(served.root.path());
    let d = Daemon::start(&config, port, &[]);
    wait_for("both plugins called", Duration::from_secs(30), || {
        let log = d.log();
        log.contains("plugin eligible: misbehave: a warning")
            && log.contains("plugin curve (backoff) trapped")
    });
    assert!(
        !d.log().contains("plugin eligible (retry)"),
        "the retry plugin did not fault: {}",
        d.log()
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_plugins_quarantine_holds_across_pulls_until_its_file_changes() {
    let served = Served::new("app");
    misbehave_plugins(served.root.path(), &["flaky"]);
    let port = free_port();
    let config = failing_with_policy(&served, port, "flaky")
        .plugin("flaky", &[("mode", "trap".into())])
        .write_in(served.root.path());
    let d = Daemon::start(&config, port, &[]);
    let traps = |d: &Daemon| d.log().matches("plugin flaky (retry) trapped").count();
    // Two decisions per pull (two attempts): only a fault record kept across
    // pulls reaches three.
    wait_for("the quarantine", Duration::from_secs(30), || {
        d.log().contains("quarantined after 3 consecutive faults")
    });
    let pulls_then = history_kinds(&config, "app")
        .iter()
        .filter(|k| *k == "failed")
        .count();
    wait_for("three more pulls", Duration::from_secs(30), || {
        history_kinds(&config, "app")
            .iter()
            .filter(|k| *k == "failed")
            .count()
            >= pulls_then + 3
    });
    assert_eq!(traps(&d), 3, "not called while quarantined: {}", d.log());
    assert_eq!(d.log().matches("quarantined after").count(), 1);

    // A new file is a new plugin: it is called (and faults) again.
    let file = served.root.path().join("plugins/flaky.wasm");
    let mut bytes = std::fs::read(&file).unwrap();
    // A custom section at the end changes the content, not the behaviour.
    bytes.extend_from_slice(&[0, 4, 1, b'x', 0, 0]);
    std::fs::write(&file, bytes).unwrap();
    wait_for("calls to the new file", Duration::from_secs(30), || {
        traps(&d) > 3
    });
    assert_eq!(d.stop(), 0);
}

#[test]
fn an_idle_daemon_with_a_plugin_loaded_sleeps() {
    let served = Served::new("app");
    misbehave_plugins(served.root.path(), &["calm"]);
    let port = free_port();
    let config = failing_with_policy(&served, port, "calm")
        .defaults("schedule", "every 24h")
        .write_in(served.root.path());
    // Never pulled, so pulled at start; then nothing is due for a day. (A
    // trigger as well would make a second pull that may run inside the
    // measured window, or be skipped as already running.)
    let d = Daemon::start(&config, port, &[]);
    wait_for(
        "the pull decided by the plugin",
        Duration::from_secs(30),
        || history_count(&config, "app", "failed") >= 1,
    );
    let before = d.wakeups();
    thread::sleep(Duration::from_secs(2));
    let woken = d.wakeups() - before;
    // A ticker at 1 kHz would wake ~2,000 times; an idle daemon a handful.
    assert!(woken < 100, "{woken} wake-ups in 2 s of idling");
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_repo_whose_job_cannot_start_is_a_failed_pull_with_its_event() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let port = free_port();
    let token = root.path().join("app.token");
    std::fs::write(&token, "t0ken").unwrap();
    let config = daemon_config(port)
        .repo(
            Repo::new("app", &up.file_url(), &root.path().join("c"))
                .set("token_file", token.display().to_string()),
        )
        .notifier(
            "audit",
            &[
                ("kind", "log".into()),
                ("path", "audit.jsonl".into()),
                ("events", vec!["failed"].into()),
                ("digest_window", "0s".into()),
            ],
        )
        .write_in(root.path());
    // Valid at start; the token file goes away while the daemon runs.
    let d = Daemon::start(&config, port, &[]);
    std::fs::remove_file(&token).unwrap();
    let audit = root.path().join("audit.jsonl");
    wait_for("the failed event", Duration::from_secs(30), || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("\"kind\":\"failed\""))
    });
    let status = status_rows(&config);
    assert_eq!(status[0]["state"]["last_result"], "failed", "{status:?}");
    assert_eq!(status[0]["state"]["last_class"], "auth", "{status:?}");
    let out = gitpulse()
        .args(["history", "app", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(
        history.contains("could not start") && history.contains("app.token"),
        "{history}"
    );
    assert!(!history.contains("t0ken"), "{history}");
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_notify_plugin_that_sleeps_cannot_stall_the_daemon() {
    let served = Served::new("app");
    misbehave_plugins(served.root.path(), &["sleepy"]);
    let port = free_port();
    let config = failing_with_policy(&served, port, table(&[("notify", "sleepy")]))
        .plugin("sleepy", &[("mode", "sleep".into())])
        .notifier("audit", &[("kind", "log".into())])
        .write_in(served.root.path());
    let d = Daemon::start(&config, port, &[]);
    // The fixture sleeps 3 s a call and logs how long that really took; the
    // host makes its clock's pollables ready at once, so "slept 0 ms".
    wait_for("the notify plugin's call", Duration::from_secs(30), || {
        d.log().contains("misbehave: slept")
    });
    assert!(
        d.log().contains("misbehave: slept 0 ms"),
        "the plugin blocked: {}",
        d.log()
    );
    // While it keeps being called, the HTTP surface answers and pulls go on.
    let failed = |config: &Path| {
        history_kinds(config, "app")
            .iter()
            .filter(|k| *k == "failed")
            .count()
    };
    let pulls_then = failed(&config);
    for _ in 0..5 {
        assert!(d.status()["repos"].is_array());
    }
    wait_for("two more pulls", Duration::from_secs(30), || {
        failed(&config) >= pulls_then + 2
    });
    // And SIGTERM still stops it.
    assert_eq!(d.stop(), 0);
}

#[test]
fn plugins_see_their_hosts_real_retry_budget() {
    let served = Served::new("app");
    misbehave_plugins(served.root.path(), &["teller"]);
    let port = free_port();
    let config = failing_with_policy(&served, port, "teller")
        .plugin("teller", &[("mode", "budget".into())])
        .daemon("retry_budget_min", 7)
        .write_in(served.root.path());
    let d = Daemon::start(&config, port, &[]);
    // One repo, no share of pulls yet: the floor of 7 a minute, all left.
    // (A one-shot pull would say 1/2: its own attempts.)
    wait_for("the plugin's report", Duration::from_secs(30), || {
        d.log().contains("misbehave: budget")
    });
    assert!(d.log().contains("misbehave: budget 7/7"), "{}", d.log());
    assert_eq!(d.stop(), 0);
}

#[test]
fn attempt_limits_are_learnt_from_history_and_double_after_a_timeout() {
    let root = tempfile::tempdir().unwrap();
    Upstream::new(root.path(), "app");
    let http = GitHttpServer::start(root.path());
    let proxy = FaultProxy::start(http.addr());
    let port = free_port();
    let config = root.path().join("gitpulse.toml");
    let dir = root.path().join("c");
    daemon_config(port)
        .repo(
            Repo::new("app", &proxy.url("app"), &dir)
                .set("timeout", "60s")
                .set("min_timeout", "1s")
                .set("max_attempts", 2),
        )
        .write(&config);
    let daemon = Daemon::start(&config, port, &[]);
    let history = || history(&config, "app");
    // The first pull has no history: the configured ceiling.
    wait_for("three unchanged pulls", Duration::from_secs(30), || {
        history()
            .iter()
            .filter(|e| e["kind"] == "unchanged")
            .count()
            >= 3
    });
    let entries = history();
    let first = entries
        .iter()
        .rev()
        .find(|e| e["kind"] == "cloned")
        .unwrap();
    assert_eq!(
        (first["limit_ms"].as_u64(), first["limit_why"].as_str()),
        (Some(60_000), Some("ceiling"))
    );
    let learnt = entries.iter().find(|e| e["kind"] == "unchanged").unwrap();
    assert_eq!(learnt["limit_why"], "learnt", "{learnt}");

    // A silent server is given up on at the learnt limit, not the
    // minute; the retry gets twice that.
    proxy.push_times(Fault::Stall(Duration::from_secs(30)), 2);
    wait_for(
        "a pull that timed out twice",
        Duration::from_secs(60),
        || history().iter().any(|e| e["kind"] == "failed"),
    );
    let entries = history();
    let attempts: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("attempt")))
        .collect();
    let (second, first) = (attempts[0], attempts[1]);
    assert_eq!(
        (first["class"].as_str(), first["limit_why"].as_str()),
        (Some("timeout"), Some("learnt")),
        "{first}"
    );
    assert_eq!(second["limit_why"], "doubled", "{second}");
    let first_limit = first["limit_ms"].as_u64().unwrap();
    assert!(first_limit < 60_000, "{first}");
    assert_eq!(
        second["limit_ms"].as_u64(),
        Some((first_limit * 2).min(60_000))
    );
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn repositories_cloned_at_start_up_are_pulled_next_at_spread_times() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let port = free_port();
    let mut config = ConfigFile::daemon_on(port)
        .daemon("max_concurrent", 4)
        .defaults("schedule", "every 10m jitter 0s");
    for i in 0..12 {
        let dir = root.path().join(format!("c{i}"));
        config = config.repo(Repo::new(&format!("r{i}"), &up.file_url(), &dir));
    }
    let config = config.write_in(root.path());
    let d = Daemon::start(&config, port, &[]);
    let next_runs = || -> Vec<Option<u64>> {
        status_rows(&config)
            .iter()
            .map(|r| {
                let pulled = !r["state"]["last_result"].is_null();
                pulled.then(|| r["state"]["next_run_ms"].as_u64()).flatten()
            })
            .collect()
    };
    wait_for("every first pull", Duration::from_secs(60), || {
        let runs = next_runs();
        runs.len() == 12 && runs.iter().all(Option::is_some)
    });
    let runs: Vec<u64> = next_runs().into_iter().flatten().collect();
    let span = runs.iter().max().unwrap() - runs.iter().min().unwrap();
    // All cloned within seconds of each other; without spreading, every
    // next run would fall within those seconds, ten minutes later.
    assert!(
        span > 120_000,
        "next runs spread over the 10-minute period, not bunched: {span} ms apart at most"
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_server_that_speaks_only_protocol_v0_is_not_asked_for_v2_at_every_pull() {
    let served = Served::new("app");
    served.proxy.set_always(Some(Fault::OnlyV0));
    let port = free_port();
    let config = daemon_config(port)
        .repo(Repo::new("app", &served.url(), &served.dir("c")))
        .write_in(served.root.path());
    let d = Daemon::start(&config, port, &[]);
    wait_for(
        "a clone and four unchanged pulls",
        Duration::from_secs(30),
        || history_count(&config, "app", "unchanged") >= 4,
    );
    let v2: Vec<_> = served
        .proxy
        .seen()
        .into_iter()
        .filter(|s| s.git_protocol.as_deref() == Some("version=2"))
        .collect();
    // The first unchanged pull asked; the answer was no listing, so the
    // others went the protocol-v0 way at once.
    assert_eq!(v2.len(), 1, "{v2:?}");
    assert_eq!(d.stop(), 0);
}

/// Clones six repositories behind a proxy that answers slowly, with the
/// daemon's limits `max_concurrent` and `per_host`; returns the most
/// repositories the proxy answered requests for at once.
fn peak_requests_with(max_concurrent: u32, per_host: u32) -> usize {
    let root = tempfile::tempdir().unwrap();
    let http = GitHttpServer::start(root.path());
    let proxy = FaultProxy::start(http.addr());
    // Every answer trickles in: each clone holds its permits a while.
    proxy.set_always(Some(Fault::Slow {
        chunk: 256,
        pause: Duration::from_millis(25),
    }));
    let port = free_port();
    let mut config = ConfigFile::daemon_on(port)
        .daemon("max_concurrent", max_concurrent)
        .daemon("per_host", per_host)
        .defaults("schedule", "every 10m jitter 0s");
    let dirs: Vec<_> = (0..6).map(|i| root.path().join(format!("c{i}"))).collect();
    for (i, dir) in dirs.iter().enumerate() {
        Upstream::new(root.path(), &format!("r{i}"));
        config = config.repo(Repo::new(
            &format!("r{i}"),
            &proxy.url(&format!("r{i}")),
            dir,
        ));
    }
    let config = config.write_in(root.path());
    let daemon = Daemon::start(&config, port, &[]);
    wait_for("all six clones", Duration::from_secs(60), || {
        dirs.iter().all(|d| head_of(d).is_some())
    });
    assert_eq!(daemon.stop(), 0);
    proxy.peak_repositories_in_flight()
}

#[test]
fn no_more_pulls_run_at_once_than_max_concurrent() {
    // Reaching the limit shows the pulls overlapped; not passing it, that
    // the limit held for those started at once and those that waited.
    assert_eq!(peak_requests_with(2, 8), 2);
}

#[test]
fn no_more_pulls_run_at_once_on_one_host_than_per_host() {
    assert_eq!(peak_requests_with(8, 2), 2);
}
