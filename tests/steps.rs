//! Commands that run on change: `gitpulse pull --step` in CI and
//! `[[repo.step]]` in the daemon (paths, failures told and retried, owed
//! steps surviving kill -9 and coalescing to the newest revision).

use crate::common::*;

use std::path::Path;
use std::time::Duration;

use toml::Value;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The step entries of `gitpulse history REPO --json`, oldest first:
/// (kind, class, detail).
fn step_history(config: &Path, repo: &str) -> Vec<(String, Option<String>, String)> {
    let mut steps: Vec<_> = history(config, repo)
        .iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("step ")))
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["class"].as_str().map(String::from),
                e["detail"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    steps.reverse();
    steps
}

#[test]
fn pull_steps_run_on_change_with_the_revision_and_a_failing_step_fails_the_pull() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let dir = root.path().join("c");
    let log = root.path().join("steps.log");
    let script = format!(
        "printf '%s|%s|%s|%s\\n' \"$GITPULSE_OLD\" \"$GITPULSE_NEW\" \"$(cat \"$GITPULSE_CHANGED_FILES\" | tr '\\n' ,)\" \"$(pwd)\" >> '{}'",
        log.display()
    );
    let step = [
        "--step",
        "/bin/sh",
        "--step-arg",
        "-c",
        "--step-arg",
        &script,
    ];

    let run = pull(&up.file_url(), &dir, &step);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert_eq!(run.json["steps"][0]["status"], "succeeded", "{run:?}");
    let first = up.head();
    let cwd = dir.canonicalize().unwrap();
    assert_eq!(
        lines(&log),
        [format!("|{first}|README,file1.txt,|{}", cwd.display())]
    );

    assert_eq!(pull(&up.file_url(), &dir, &step).outcome(), "unchanged");
    assert_eq!(lines(&log).len(), 1, "no change, no step");

    let second = up.commit("second");
    let run = pull(&up.file_url(), &dir, &step);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(
        lines(&log)[1],
        format!("{first}|{second}|README,file2.txt,|{}", cwd.display())
    );
    assert!(
        !cwd.join(".git/gitpulse-changed-files").exists(),
        "the list is removed after the steps"
    );

    // A failing step: exit 1, its status and output on stderr and in JSON.
    up.commit("third");
    let run = pull(
        &up.file_url(),
        &dir,
        &["--step-shell", "echo boom; exit 7", "--step-shell", "true"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.outcome(), "updated");
    assert_eq!(run.json["steps"][0]["status"], "failed");
    assert_eq!(run.json["steps"][0]["exit_code"], 7);
    assert_eq!(run.json["steps"][0]["output"], "boom");
    assert_eq!(run.json["steps"][1]["status"], "succeeded");
    assert!(
        run.stderr
            .contains("step `echo boom; exit 7` failed (exit 7)")
            && run.stderr.contains("| boom"),
        "{run:?}"
    );

    // A step past its limit is killed.
    up.commit("fourth");
    let run = pull(
        &up.file_url(),
        &dir,
        &["--step-shell", "sleep 20", "--step-timeout", "300ms"],
    );
    assert_eq!(
        (run.code, run.json["steps"][0]["status"].as_str()),
        (1, Some("timeout"))
    );

    // An argument with no step before it is a usage error.
    let run = pull(&up.file_url(), &dir, &["--step-arg", "x", "--step", "true"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("follows no --step"), "{run:?}");
}

/// A daemon config pulling every second with quick retries, its state
/// beside the file.
fn daemon_config(port: u16) -> ConfigFile {
    ConfigFile::daemon_on(port)
        .defaults("schedule", "every 1s jitter 0s")
        .defaults("backoff_base", "50ms")
        .defaults("backoff_max", "200ms")
}

#[test]
fn daemon_steps_follow_their_paths_and_a_failure_is_told_then_retried() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let http = GitHttpServer::start(root.path());
    let port = free_port();
    let dir = root.path().join("c");
    let conf_log = root.path().join("conf.log");
    let flaky_log = root.path().join("flaky.log");
    let flag = root.path().join("flag");
    let config = root.path().join("gitpulse.toml");
    let conf = format!("echo \"$GITPULSE_NEW\" >> '{}'", conf_log.display());
    let flaky = format!(
        "test -e '{}' || {{ echo not yet; exit 3; }}; echo \"$GITPULSE_NEW\" >> '{}'",
        flag.display(),
        flaky_log.display()
    );
    let repo = Repo::new("app", &http.url("app"), &dir)
        .set("max_attempts", 50)
        .step(&[
            ("name", "conf".into()),
            (
                "run",
                Value::Array(vec!["/bin/sh".into(), "-c".into(), conf.into()]),
            ),
            ("paths", Value::Array(vec!["conf/**".into()])),
        ])
        .step(&[
            ("name", "flaky".into()),
            ("run", flaky.into()),
            ("shell", true.into()),
            ("timeout", "10s".into()),
        ]);
    daemon_config(port).repo(repo).write(&config);
    let daemon = Daemon::start(&config, port, &[]);

    // The clone touches no conf/: `conf` is skipped; `flaky` fails, is
    // told once (step-failed), and is tried again on the curve.
    wait_for("flaky to fail twice", Duration::from_secs(30), || {
        step_history(&config, "app")
            .iter()
            .filter(|(k, c, _)| k == "step flaky" && c.as_deref() == Some("failed"))
            .count()
            >= 2
    });
    let history = step_history(&config, "app");
    assert!(
        history
            .iter()
            .any(|(k, c, d)| k == "step conf" && c.is_none() && d.starts_with("skipped")),
        "{history:?}"
    );
    let failed = history.iter().find(|(k, _, _)| k == "step flaky").unwrap();
    assert!(
        failed.2.contains("(exit 3)") && failed.2.contains("not yet"),
        "{failed:?}"
    );
    let log = daemon.log();
    let told = log
        .lines()
        .filter(|l| l.contains("step-failed") && l.contains("event"))
        .count();
    assert_eq!(told, 1, "one step-failed per revision:\n{log}");
    assert!(lines(&conf_log).is_empty());

    std::fs::write(&flag, "").unwrap();
    let first = up.head();
    wait_for("flaky to succeed", Duration::from_secs(30), || {
        lines(&flaky_log) == [first.clone()]
    });

    // A change under conf/ runs `conf`; one elsewhere does not.
    let conf_change = up.commit_file("conf/site.conf", "listen 80;\n", "conf change");
    wait_for("conf to run", Duration::from_secs(30), || {
        lines(&conf_log) == [conf_change.clone()]
    });
    let other = up.commit("docs only");
    wait_for(
        "flaky to see the docs change",
        Duration::from_secs(30),
        || lines(&flaky_log).last() == Some(&other),
    );
    assert_eq!(
        lines(&conf_log),
        [conf_change],
        "conf ran for a docs change"
    );
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn an_owed_step_survives_kill_9_runs_once_at_restart_and_coalesces_to_the_newest_revision() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let http = GitHttpServer::start(root.path());
    let port = free_port();
    let dir = root.path().join("c");
    let log = root.path().join("deploy.log");
    let pid_file = root.path().join("deploy.pid");
    let hang = root.path().join("hang");
    std::fs::write(&hang, "").unwrap();
    let config = root.path().join("gitpulse.toml");
    // Logs the range it deploys; hangs while `hang` exists.
    let deploy = format!(
        "echo $$ > '{}'; echo \"$GITPULSE_OLD..$GITPULSE_NEW\" >> '{}'; while [ -e '{}' ]; do sleep 0.05; done",
        pid_file.display(),
        log.display(),
        hang.display()
    );
    let repo = Repo::new("app", &http.url("app"), &dir).step(&[
        ("name", "deploy".into()),
        ("run", deploy.into()),
        ("shell", true.into()),
    ]);
    daemon_config(port).repo(repo).write(&config);
    let mut daemon = Daemon::start(&config, port, &[]);
    wait_for("the step to start", Duration::from_secs(30), || {
        lines(&log).len() == 1 && pid_file.exists()
    });
    // The daemon dies in the middle of the step (and the step with it).
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let pgid = std::fs::read_to_string(&pid_file).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", pgid.trim())])
        .status();
    std::fs::remove_file(&hang).unwrap();

    // Two revisions arrive while it is down: one run, for the newest, from
    // where the unfinished one started (a clone: no old).
    up.commit("second");
    let newest = up.commit("third");
    let daemon = Daemon::start(&config, port, &[]);
    wait_for("the owed step to run", Duration::from_secs(30), || {
        lines(&log).len() == 2
    });
    assert_eq!(lines(&log)[1], format!("..{newest}"));
    // Done means done: more pulls, no more runs.
    let unchanged = || history_count(&config, "app", "unchanged");
    let before = unchanged();
    wait_for("three more pulls", Duration::from_secs(30), || {
        unchanged() >= before + 3
    });
    assert_eq!(lines(&log).len(), 2, "{:?}", lines(&log));
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn a_slow_step_holds_back_no_other_pull_to_its_host() {
    let root = tempfile::tempdir().unwrap();
    let _a = Upstream::new(root.path(), "a");
    let mut b = Upstream::new(root.path(), "b");
    let http = GitHttpServer::start(root.path());
    let port = free_port();
    let (started, ended) = (root.path().join("started"), root.path().join("ended"));
    let slow = format!(
        "touch '{}'; sleep 8; touch '{}'",
        started.display(),
        ended.display()
    );
    let config = root.path().join("gitpulse.toml");
    // One pull at a time, one per host: a step that held its pull's
    // permits would hold back every other pull.
    daemon_config(port)
        .daemon("max_concurrent", 1)
        .daemon("per_host", 1)
        .repo(
            Repo::new("a", &http.url("a"), &root.path().join("ca")).step(&[
                ("name", "slow".into()),
                ("run", slow.into()),
                ("shell", true.into()),
                ("timeout", "30s".into()),
            ]),
        )
        .repo(Repo::new("b", &http.url("b"), &root.path().join("cb")))
        .write(&config);
    let daemon = Daemon::start(&config, port, &[]);

    wait_for("a's step to start", Duration::from_secs(30), || {
        started.exists()
    });
    let new = b.commit("while a's step runs");
    let cb = root.path().join("cb");
    wait_for("b to pull the new commit", Duration::from_secs(30), || {
        cb.join(".git").exists()
            && git(&cb, &["rev-parse", "HEAD"])
                .stdout
                .starts_with(new.as_bytes())
    });
    assert!(!ended.exists(), "b waited for a's step to end");
    wait_for("a's step to end", Duration::from_secs(30), || {
        ended.exists()
    });
    assert_eq!(daemon.stop(), 0);
}
