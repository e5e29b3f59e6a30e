//! One job, whichever way it starts: `gitpulse pull` and the daemon run
//! the same `Job`, so a repository's publication gate, its retries, its
//! history and its plugin's key-value state come out the same. Each test
//! runs the same thing both ways against one config and compares.

use crate::common::*;

use std::path::Path;
use std::time::Duration;

/// The commit DIR (a symlink publication) shows.
fn published(dir: &Path) -> String {
    let target = std::fs::read_link(dir).unwrap();
    target.file_name().unwrap().to_string_lossy().into_owned()
}

/// The `log` notifier's messages about `repo` (their subjects name it), as
/// their kinds.
fn kinds_told(log: &Path, repo: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["subject"].as_str().unwrap_or_default().contains(repo))
        .map(|line| line["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A history row as it would be for any repository pulled the same way:
/// no times, no durations.
fn shape(row: &serde_json::Value) -> (String, String, String) {
    let text = |key: &str| row[key].as_str().unwrap_or_default().to_string();
    let detail = text("detail");
    // A gate's refusal names the step; a failed attempt its server.
    let detail = detail.split(':').next().unwrap_or_default().to_string();
    (text("kind"), text("class"), detail)
}

#[test]
fn a_gate_and_a_retry_are_recorded_alike_through_pull_and_the_daemon() {
    let mut served = Served::new("app");
    let root = served.root.path();
    let port = free_port();
    let gate = "test ! -e FREEZE";
    let config = root.join("gitpulse.toml");
    let by_daemon = root.join("viadaemon");
    let by_pull = root.join("viapull");
    ConfigFile::daemon_on(port)
        .defaults("schedule", "every 1h")
        .notifier_toml(
            "audit",
            "kind = \"log\"\npath = \"events.jsonl\"\ndedup_window = \"0s\"\n\
             events = [\"retrying\", \"step-failed\", \"failed\"]\n",
        )
        .repo(
            Repo::new("viadaemon", &served.url(), &by_daemon)
                .set("publish", "symlink")
                .set("max_attempts", 3)
                .set("backoff_base", "100ms")
                .step(&[
                    ("name", gate.into()),
                    ("run", gate.into()),
                    ("shell", true.into()),
                    ("before_publish", true.into()),
                ]),
        )
        .write(&config);
    let pull_args = [
        "--publish",
        "symlink",
        "--before-publish-shell",
        gate,
        "--max-attempts",
        "3",
        "--backoff-base",
        "100ms",
        "--notify-config",
        config.to_str().unwrap(),
    ];
    let first = served.up.head();
    let run = pull(&served.url(), &by_pull, &pull_args);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    let daemon = Daemon::start(&config, port, &[]);
    wait_for("the daemon's first pull", Duration::from_secs(30), || {
        history_count(&config, "viadaemon", "cloned") == 1
    });

    // A frozen revision, and one failed request before it is fetched.
    served.up.commit_file("FREEZE", "until Monday\n", "freeze");
    served.proxy.push(Fault::Status(503));
    let run = pull(&served.url(), &by_pull, &pull_args);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("was not published"), "{run:?}");
    served.proxy.push(Fault::Status(503));
    let asked = gitpulse()
        .args(["trigger", "viadaemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(asked.status.success(), "{}", said(&asked));
    wait_for("the daemon's gated pull", Duration::from_secs(30), || {
        history_count(&config, "viadaemon", "unchanged") == 1
    });
    let log = root.join("events.jsonl");
    wait_for("the daemon's messages", Duration::from_secs(30), || {
        kinds_told(&log, "viadaemon").len() == 2
    });
    assert_eq!(daemon.stop(), 0);

    // DIR stays on the revision it had, both ways.
    assert_eq!(published(&by_pull), first);
    assert_eq!(published(&by_daemon), first);
    // The retry was told while the pull ran, the gate afterwards: the same
    // messages in the same order.
    let told = kinds_told(&log, "viapull");
    assert_eq!(told, ["retrying", "step-failed"], "{told:?}");
    assert_eq!(told, kinds_told(&log, "viadaemon"));
    // And the same history.
    let rows = |repo: &str| -> Vec<_> { history(&config, repo).iter().map(shape).collect() };
    assert_eq!(rows("viapull"), rows("viadaemon"));
}

#[test]
fn a_plugin_keeps_one_store_whether_pull_or_the_daemon_runs_it() {
    let served = Served::new("app");
    let root = served.root.path();
    let port = free_port();
    let plugins = root.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let wasm = plugins.join("escalation.wasm");
    std::fs::copy(plugins::build("escalation-policy"), &wasm).unwrap();
    let config = root.join("gitpulse.toml");
    let dir = root.join("app");
    ConfigFile::daemon_on(port)
        .daemon("plugin_dir", "plugins")
        .defaults("schedule", "every 1h")
        .notifier_toml(
            "audit",
            "kind = \"log\"\npath = \"events.jsonl\"\ndedup_window = \"0s\"\n\
             digest_window = \"0s\"\n",
        )
        .plugin("escalation", &[("threshold", 2.into())])
        .repo(
            Repo::new("app", &served.url(), &dir)
                .set("max_attempts", 1)
                .set("policy", "escalation"),
        )
        .write(&config);
    served.proxy.set_always(Some(Fault::Status(503)));

    // The plugin counts the first failure, from the command line: below
    // its threshold, nobody is told.
    let run = pull(
        &served.url(),
        &dir,
        &[
            "--max-attempts",
            "1",
            "--policy",
            wasm.to_str().unwrap(),
            "--plugin-config",
            "threshold=2",
            "--notify-config",
            config.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let log = root.join("events.jsonl");
    assert!(kinds_told(&log, "app").is_empty());

    // The daemon's first failure of the repository is the plugin's second.
    // (Its checkout was never made: it pulls at start.)
    let daemon = Daemon::start(&config, port, &[]);
    wait_for("the escalation", Duration::from_secs(30), || {
        !kinds_told(&log, "app").is_empty()
    });
    assert_eq!(daemon.stop(), 0);
    assert_eq!(kinds_told(&log, "app"), ["failed"]);
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(line.contains("failed 2 times in 30 min"), "{line}");
}
