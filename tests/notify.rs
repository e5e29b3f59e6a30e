//! Notifications end to end: a real SMTP server (aiosmtpd, STARTTLS and
//! implicit TLS with a self-signed CA), an HTTP receiver that verifies the
//! HMAC signature, a JSON-lines log; events from `gitpulse pull` and from
//! the daemon, through the durable outbox (retry, dead letter, restart,
//! digest), templates that break, and a plugin's notify role.

use crate::common::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// `config` (its notifiers) with a `[daemon]` that keeps the state beside
/// the file, written as `dir/notify.toml`.
fn notify_config(dir: &Path, config: ConfigFile) -> PathBuf {
    let path = dir.join("notify.toml");
    config.daemon("state_dir", "state").write(&path);
    path
}

/// A log notifier `name` writing to `path` (relative to the file), with
/// more settings written as TOML.
fn log_notifier(name: &str, path: &str, more: &str) -> ConfigFile {
    ConfigFile::default().notifier_toml(name, &format!("kind = \"log\"\npath = \"{path}\"\n{more}"))
}

fn pull_notifying(
    url: &str,
    dir: &Path,
    config: &Path,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Run {
    let config = config.to_str().unwrap();
    let mut args = vec![
        "--max-attempts",
        "1",
        "--notify-wait",
        "20s",
        "--notify-config",
        config,
    ];
    args.extend_from_slice(extra);
    let mut cmd = pull_command(url, dir, &args);
    cmd.envs(env.iter().copied());
    finish(cmd.output().unwrap())
}

/// The messages a `log` notifier wrote to `path` (none if it has not).
fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(json)
        .collect()
}

/// `gitpulse ARGS… --config CONFIG`.
fn with_config(args: &[&str], config: &Path) -> Run {
    finish(
        gitpulse()
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap(),
    )
}

/// `gitpulse outbox --json` (with --all when `all`).
fn outbox(config: &Path, all: bool) -> Vec<serde_json::Value> {
    let args: &[&str] = if all {
        &["outbox", "--json", "--all"]
    } else {
        &["outbox", "--json"]
    };
    let out = with_config(args, config);
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn changes_arrive_by_mail_over_starttls_with_a_self_signed_ca_and_a_login() {
    let mut served = Served::new("app");
    let smtp = SmtpServer::start(SmtpTls::StartTls, Some(("gitpulse", "mail-Pa55word")));
    let config = notify_config(
        served.root.path(),
        ConfigFile::default().notifier(
            "mail",
            &[
                ("kind", "email".into()),
                ("server", smtp.url(false).into()),
                ("starttls", "required".into()),
                ("username", "gitpulse".into()),
                ("password_env", "TEST_SMTP_PASSWORD".into()),
                ("from", "gitpulse <gitpulse@example.test>".into()),
                ("to", vec!["ops@example.test"].into()),
                ("cc", vec!["lead@example.test"].into()),
                (
                    "ca_file",
                    smtp.ca_file.as_ref().unwrap().display().to_string().into(),
                ),
                ("events", vec!["changed"].into()),
            ],
        ),
    );
    let env = [("TEST_SMTP_PASSWORD", "mail-Pa55word")];
    let dir = served.dir("app");
    let first = pull_notifying(&served.url(), &dir, &config, &env, &[]);
    assert_eq!(first.code, 0, "{first:?}");
    let sha = served.up.commit("Teach the parser about tabs");
    let second = pull_notifying(&served.url(), &dir, &config, &env, &[]);
    assert_eq!(second.code, 0, "{second:?}");

    let mails = smtp.wait_for(2, Duration::from_secs(10));
    assert_eq!(mails.len(), 2, "one mail per pull that changed something");
    let mail = &mails[1];
    assert!(mail.tls, "the session was upgraded by STARTTLS");
    assert_eq!(mail.login.as_deref(), Some("gitpulse"));
    assert_eq!(mail.mail_from, "gitpulse@example.test");
    assert_eq!(mail.rcpt_tos, ["ops@example.test", "lead@example.test"]);
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("[gitpulse] app: 1 new commit")
    );
    assert_eq!(
        mail.header("From").as_deref(),
        Some("gitpulse <gitpulse@example.test>")
    );
    assert_eq!(mail.header("Cc").as_deref(), Some("lead@example.test"));
    assert_eq!(mail.header("X-Gitpulse-Event").as_deref(), Some("changed"));
    assert!(
        mail.header("Content-Type")
            .unwrap()
            .starts_with("multipart/alternative"),
        "plain text plus HTML: {}",
        mail.raw
    );
    assert!(mail.raw.contains("text/html"), "{}", mail.raw);
    assert!(
        mail.raw
            .contains(&format!("{} Teach the parser about tabs", &sha[..10])),
        "{}",
        mail.raw
    );
    assert!(
        mail.raw.contains("2 files changed"),
        "README and a new file: {}",
        mail.raw
    );
    for run in [&first, &second] {
        assert!(!run.stdout.contains("Pa55word") && !run.stderr.contains("Pa55word"));
    }
}

#[test]
fn notify_test_sends_over_implicit_tls_and_prints_the_answer() {
    let root = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpTls::Implicit, None);
    let mail = |config: ConfigFile, name: &str, ca: Option<&Path>| {
        let mut settings = vec![
            ("kind", "email".into()),
            ("server", smtp.url(true).into()),
            ("from", "gitpulse@example.test".into()),
            ("to", vec!["ops@example.test"].into()),
        ];
        if let Some(ca) = ca {
            settings.push(("ca_file", ca.display().to_string().into()));
        }
        config.notifier(name, &settings)
    };
    let config = ConfigFile::default();
    let config = mail(config, "mail", smtp.ca_file.as_deref());
    let config = notify_config(root.path(), mail(config, "untrusted", None));
    let run = |name: &str| with_config(&["notify", "test", name], &config);

    let ok = run("mail");
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stdout.contains("250") && ok.stdout.contains("queued as gitpulse-test-1"),
        "{ok:?}"
    );
    let got = smtp.wait_for(1, Duration::from_secs(10));
    assert!(got[0].tls);
    assert!(got[0]
        .header("Subject")
        .unwrap()
        .contains("test message for notifier mail"));

    let untrusted = run("untrusted");
    assert_eq!(untrusted.code, 1, "an unknown CA is refused: {untrusted:?}");
    assert!(untrusted.stderr.contains("(tls)"), "{untrusted:?}");
    let missing = run("pager");
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("no [notifier.pager] (defined: mail, untrusted)"),
        "{missing:?}"
    );
    assert_eq!(smtp.messages().len(), 1);
}

#[test]
fn webhooks_are_signed_and_carry_failed_changed_and_recovered_events() {
    let served = Served::new("app");
    let hook = WebhookReceiver::start("hook-secret-42");
    let config = notify_config(
        served.root.path(),
        ConfigFile::default().notifier(
            "hook",
            &[
                ("kind", "webhook".into()),
                ("url", hook.url("/events").into()),
                ("secret_env", "TEST_HOOK_SECRET".into()),
                ("headers", table(&[("X-Team", "platform")])),
            ],
        ),
    );
    let env = [("TEST_HOOK_SECRET", "hook-secret-42")];
    let dir = served.dir("app");
    served.proxy.set_always(Some(Fault::Status(404)));
    let failed = pull_notifying(&served.url(), &dir, &config, &env, &[]);
    assert_eq!(failed.code, 1, "{failed:?}");
    served.proxy.set_always(None);
    let ok = pull_notifying(&served.url(), &dir, &config, &env, &[]);
    assert_eq!(ok.code, 0, "{ok:?}");

    let got = hook.wait_for(3, Duration::from_secs(10));
    assert_eq!(got.len(), 3, "{:?}", hook.deliveries());
    for d in &got {
        assert!(d.signature_ok, "every body is signed with the secret");
        assert_eq!(d.method, "POST");
        assert_eq!(d.path, "/events");
        assert_eq!(d.headers["x-team"], "platform");
        assert_eq!(d.headers["content-type"], "application/json");
    }
    let kinds: Vec<&str> = got
        .iter()
        .map(|d| d.headers["x-gitpulse-event"].as_str())
        .collect();
    assert_eq!(kinds, ["failed", "changed", "recovered"]);
    let failed_event = json(&got[0].body);
    assert_eq!(failed_event["kind"], "failed");
    assert_eq!(failed_event["severity"], "error");
    assert_eq!(failed_event["repo"]["name"], "app");
    assert_eq!(failed_event["failure"]["class"], "not-found");
    assert_eq!(failed_event["failure"]["http_status"], 404);
    let changed = json(&got[1].body);
    assert_eq!(changed["new"], served.up.head());
    assert_eq!(changed["commits"][0]["subject"], "initial commit");
    assert_eq!(
        json(&got[2].body)["attempts"],
        1,
        "one failed pull before the recovery"
    );
    let ids: std::collections::BTreeSet<&String> = got
        .iter()
        .map(|d| &d.headers["x-gitpulse-delivery"])
        .collect();
    assert_eq!(ids.len(), 3);
    for run in [&failed, &ok] {
        assert!(!run.stdout.contains("hook-secret") && !run.stderr.contains("hook-secret"));
    }
}

#[test]
fn a_rejected_message_is_dead_lettered_listed_and_can_be_requeued() {
    let served = Served::new("app");
    let hook = WebhookReceiver::start("s");
    let config = notify_config(
        served.root.path(),
        ConfigFile::default().notifier(
            "hook",
            &[
                ("kind", "webhook".into()),
                ("url", hook.url("/").into()),
                ("secret_file", "secret".into()),
            ],
        ),
    );
    std::fs::write(served.root.path().join("secret"), "s\n").unwrap();
    hook.answer(Answer::Status(400));
    let dir = served.dir("app");
    let first = pull_notifying(&served.url(), &dir, &config, &[], &[]);
    assert_eq!(
        first.code, 0,
        "a notification problem does not fail the pull: {first:?}"
    );
    assert!(first.stderr.contains("1 dead"), "{first:?}");
    assert_eq!(hook.deliveries().len(), 1, "a 400 is not retried");

    let dead = outbox(&config, false);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["state"], "dead");
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("rejected:") && error.contains("HTTP 400"),
        "a refused message is `rejected`, in delivery's words: {dead:?}"
    );
    let table = with_config(&["outbox"], &config);
    assert!(
        table.stdout.contains("dead") && table.stdout.contains("HTTP 400"),
        "{table:?}"
    );

    hook.answer(Answer::Ok);
    let id = dead[0]["id"].as_i64().unwrap().to_string();
    let retry = with_config(&["outbox", "retry", &id], &config);
    assert_eq!(retry.code, 0, "{retry:?}");
    let nothing = with_config(&["outbox", "retry", "9999"], &config);
    assert_eq!(nothing.code, 1, "{nothing:?}");
    // The next run delivers what is due, the requeued message included.
    let again = pull_notifying(&served.url(), &dir, &config, &[], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(hook.wait_for(1, Duration::from_secs(10)).len(), 1);
    assert!(outbox(&config, false).is_empty());
    assert_eq!(outbox(&config, true)[0]["state"], "delivered");
}

#[test]
fn a_broken_template_falls_back_to_the_default_and_reports_a_plugin_fault() {
    let served = Served::new("app");
    let root = served.root.path();
    std::fs::write(
        root.join("broken.hbs"),
        // A plugin variable that no plugin sets: `validate` cannot know
        // which variables plugins set, so this fails only when it renders.
        "{{repo.name}} moved to {{vars.no_such_field}}\n",
    )
    .unwrap();
    let config = notify_config(
        root,
        log_notifier(
            "audit",
            "events.jsonl",
            "templates.changed = { body = \"broken.hbs\" }",
        ),
    );
    let run = pull_notifying(&served.url(), &served.dir("app"), &config, &[], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines = log_lines(&root.join("events.jsonl"));
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["changed", "plugin-fault"], "{lines:?}");
    assert_eq!(lines[0]["subject"], "[gitpulse] app: 1 new commit");
    assert!(
        lines[0]["body"]
            .as_str()
            .unwrap()
            .contains("initial commit"),
        "the default body: {lines:?}"
    );
    let fault = lines[1]["body"].as_str().unwrap();
    assert!(
        fault.contains("no_such_field") && fault.contains("default template"),
        "{fault}"
    );
}

#[test]
fn a_pull_that_cannot_start_is_a_failed_event_as_in_the_daemon() {
    let served = Served::new("app");
    let root = served.root.path();
    let config = notify_config(root, log_notifier("audit", "events.jsonl", ""));
    let run = pull_notifying(
        &served.url(),
        &served.dir("app"),
        &config,
        &[],
        &["--token-env", "GITPULSE_TEST_NO_SUCH_VARIABLE"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    let lines = log_lines(&root.join("events.jsonl"));
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["failed"], "{lines:?}");
    let body = lines[0]["body"].as_str().unwrap();
    assert!(
        body.contains("could not start") && body.contains("GITPULSE_TEST_NO_SUCH_VARIABLE"),
        "{body}"
    );
    assert!(!served.dir("app").exists(), "nothing was pulled");
}

#[test]
fn a_template_that_would_render_for_ever_is_stopped_and_the_default_is_sent() {
    let mut served = Served::new("app");
    for n in 0..8 {
        served.up.commit(&format!("work {n}"));
    }
    let root = served.root.path();
    // Six nested loops over the nine commits: 9^6 = 531,441 iterations.
    // Mentioning `vars` keeps `validate` from trying it, as with a template
    // that only breaks when it meets a real event.
    let bomb = "{{#if vars}}{{/if}}".to_string()
        + &"{{#each @root.commits}}".repeat(6)
        + "x"
        + &"{{/each}}".repeat(6);
    std::fs::write(root.join("bomb.hbs"), bomb).unwrap();
    let config = notify_config(
        root,
        log_notifier(
            "audit",
            "events.jsonl",
            "templates.changed = { body = \"bomb.hbs\" }",
        ),
    );
    let run = pull_notifying(&served.url(), &served.dir("app"), &config, &[], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines = log_lines(&root.join("events.jsonl"));
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["changed", "plugin-fault"], "{lines:?}");
    assert!(lines[0]["body"].as_str().unwrap().contains("work 7"));
    let fault = lines[1]["body"].as_str().unwrap();
    assert!(
        fault.contains("iterations") && fault.contains("default template"),
        "{fault}"
    );
}

/// A repo whose pulls fail (503), the escalation plugin, and a config with
/// a `log` notifier writing `events.jsonl`.
fn failing_with_escalation() -> (Served, PathBuf, PathBuf) {
    let served = Served::new("app");
    let wasm = plugins::build("escalation-policy");
    let config = notify_config(
        served.root.path(),
        log_notifier("audit", "events.jsonl", "dedup_window = \"0s\""),
    );
    served.proxy.set_always(Some(Fault::Status(503)));
    (served, wasm, config)
}

#[test]
fn a_notify_plugin_suppresses_then_escalates_with_its_own_template() {
    let (served, wasm, config) = failing_with_escalation();
    let root = served.root.path();
    // The plugin keeps its count per repository name in its key-value store.
    let dir = root.join(format!(
        "app-{}-{}",
        std::process::id(),
        gitpulse::store::now_ms()
    ));
    let policy = [
        "--policy",
        wasm.to_str().unwrap(),
        "--plugin-config",
        "threshold=2",
    ];
    for _ in 0..2 {
        let run = pull_notifying(&served.url(), &dir, &config, &[], &policy);
        assert_eq!(run.code, 1, "{run:?}");
    }
    let lines = log_lines(&root.join("events.jsonl"));
    assert_eq!(lines.len(), 1, "the first failure is suppressed: {lines:?}");
    assert_eq!(lines[0]["kind"], "failed");
    let subject = lines[0]["subject"].as_str().unwrap();
    assert!(
        subject.ends_with("failed 2 times in 30 min"),
        "the plugin's template and vars: {subject}"
    );
}

#[test]
fn notifier_mistakes_are_reported_with_file_line_and_field() {
    let root = tempfile::tempdir().unwrap();
    // Broken on purpose, and its problems are named by line: written as is.
    let config = root.path().join("notify.toml");
    std::fs::write(
        &config,
        "[daemon]\nstate_dir = \"state\"\n\n[notifier.mail]\nkind = \"email\"\nserver = \"imap://mail\"\nfrom = \"gitpulse@example.test\"\nto = [\"not an address\"]\nurl = \"https://x\"\n\n\
         [notifier.hook]\nkind = \"webhook\"\nurl = \"https://hooks.example.test/x\"\nsecret_env = \"GITPULSE_TEST_UNSET_SECRET\"\nevents = [\"changed\", \"exploded\"]\n\n\
         [notifier.pager]\nkind = \"sms\"\n",
    )
    .unwrap();
    let out = with_config(&["validate"], &config);
    assert_eq!(out.code, 2, "{out:?}");
    let name = config.display().to_string();
    for expected in [
        format!("{name}:6: notifier.mail.server: `imap://mail` is not smtp://"),
        format!("{name}:4: notifier.mail.url: not a setting of email notifiers"),
        format!("{name}:8: notifier.mail.to: `not an address` is not an email address"),
        format!("{name}:14: notifier.hook.secret_env: environment variable GITPULSE_TEST_UNSET_SECRET is not set"),
        format!("{name}:15: notifier.hook.events: `exploded` is not an event kind"),
        format!("{name}:18: notifier.pager.kind: `sms`: use email, webhook or log"),
    ] {
        assert!(out.stderr.contains(&expected), "missing `{expected}` in:\n{}", out.stderr);
    }
    // `gitpulse pull --notify-config` refuses the same config before pulling.
    let root2 = tempfile::tempdir().unwrap();
    let up = Upstream::new(root2.path(), "app");
    let dir = root2.path().join("app");
    let run = pull_notifying(&up.file_url(), &dir, &config, &[], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(!dir.exists(), "no partial effect");
}

/// A daemon config with `repos` (name, url, dir), each pulled every second
/// with one attempt.
fn daemon_config(port: u16, repos: &[(String, String, PathBuf)]) -> ConfigFile {
    let mut file = ConfigFile::daemon_on(port)
        .defaults("schedule", "every 1s jitter 0s")
        .defaults("max_attempts", 1);
    for (name, url, dir) in repos {
        file = file.repo(Repo::new(name, url, dir));
    }
    file
}

/// Writes `file` into `root`, with the webhook secret beside it.
fn write_in(file: ConfigFile, root: &Path) -> PathBuf {
    std::fs::write(root.join("secret"), "k").unwrap();
    file.write_in(root)
}

/// Upstreams `r0..rN` under one served root.
fn many(served: &Served, n: usize) -> Vec<(String, String, PathBuf)> {
    (0..n)
        .map(|i| {
            let name = format!("r{i}");
            Upstream::new(served.root.path(), &name);
            let url = served.proxy.url(&name);
            (name.clone(), url, served.dir(&format!("{name}.checkout")))
        })
        .collect()
}

/// `[notifier.hook]`: a signed webhook to `url` with quick retries, and
/// `extra` settings (TOML).
fn with_hook(file: ConfigFile, url: &str, extra: &str) -> ConfigFile {
    file.notifier_toml(
        "hook",
        &format!(
            "kind = \"webhook\"\nurl = \"{url}\"\nsecret_file = \"secret\"\nretry_base = \"100ms\"\nretry_max = \"300ms\"\nmax_attempts = 200\n{extra}\n"
        ),
    )
}

/// Each accepted delivery's event, by its delivery id; fails on a repeat.
fn exactly_once(hook: &WebhookReceiver) -> Vec<serde_json::Value> {
    let accepted = hook.accepted();
    let ids: std::collections::BTreeSet<&String> = accepted
        .iter()
        .map(|d| &d.headers["x-gitpulse-delivery"])
        .collect();
    assert_eq!(ids.len(), accepted.len(), "a message arrived twice");
    accepted.iter().map(|d| json(&d.body)).collect()
}

#[test]
fn a_sink_that_is_down_for_a_while_gets_every_event_exactly_once() {
    let served = Served::new("app");
    let repos = many(&served, 3);
    let hook = WebhookReceiver::start("k");
    hook.answer(Answer::Status(503));
    let port = free_port();
    let file = with_hook(
        daemon_config(port, &repos),
        &hook.url("/"),
        "events = [\"changed\"]",
    );
    let config = write_in(file, served.root.path());
    let daemon = Daemon::start(&config, port, &[]);
    wait_for(
        "every event to fail against the sink, some more than once",
        Duration::from_secs(30),
        || {
            let pending = outbox(&config, false);
            pending.len() == 3
                && pending.iter().all(|r| r["attempts"].as_u64() >= Some(1))
                && pending.iter().any(|r| r["attempts"].as_u64() >= Some(3))
        },
    );
    assert!(hook.accepted().is_empty());
    hook.answer(Answer::Ok);
    wait_for(
        "every event, and nothing left to send",
        Duration::from_secs(30),
        || hook.accepted_count() >= 3 && outbox(&config, false).is_empty(),
    );
    let events = exactly_once(&hook);
    assert_eq!(events.len(), 3, "{events:?}\n{}", daemon.log());
    let mut names: Vec<&str> = events
        .iter()
        .map(|e| e["repo"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["r0", "r1", "r2"]);
    let rows = outbox(&config, true);
    assert!(
        rows.iter()
            .all(|r| r["state"] == "delivered" && r["attempts"].as_u64().unwrap() >= 1),
        "{rows:?}"
    );
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn a_daemon_killed_with_a_pending_outbox_delivers_after_restart() {
    let served = Served::new("app");
    let repos = many(&served, 2);
    let hook = WebhookReceiver::start("k");
    hook.answer(Answer::Stall);
    let port = free_port();
    let file = with_hook(
        daemon_config(port, &repos),
        &hook.url("/"),
        "events = [\"changed\"]\ntimeout = \"1s\"",
    );
    let config = write_in(file, served.root.path());
    let mut daemon = Daemon::start(&config, port, &[]);
    wait_for("both events to be tried", Duration::from_secs(30), || {
        outbox(&config, false)
            .iter()
            .filter(|r| r["attempts"].as_u64() >= Some(1))
            .count()
            == 2
    });
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let pending = outbox(&config, false);
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert!(pending.iter().all(|r| r["state"] == "pending"));
    let status = with_config(&["status"], &config);
    assert!(
        status.stdout.contains("notifications: 2 pending, 0 dead"),
        "{status:?}"
    );

    hook.answer(Answer::Ok);
    let daemon = Daemon::start(&config, port, &[]);
    wait_for(
        "delivery after the restart",
        Duration::from_secs(30),
        || hook.accepted_count() >= 2 && outbox(&config, false).is_empty(),
    );
    assert_eq!(exactly_once(&hook).len(), 2, "{}", daemon.log());
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn fifty_repos_failing_on_one_host_become_one_digest_and_so_does_their_recovery() {
    let served = Served::new("app");
    let repos = many(&served, 50);
    let hook = WebhookReceiver::start("k");
    let port = free_port();
    let file = daemon_config(port, &repos)
        .daemon("max_concurrent", 50)
        .daemon("per_host", 50)
        // Pulled only when triggered.
        .defaults("schedule", "every 24h");
    let file = with_hook(
        file,
        &hook.url("/"),
        "events = [\"failed\", \"recovered\"]\ndigest_window = \"4s\"",
    );
    let config = write_in(file, served.root.path());
    served.proxy.set_always(Some(Fault::Status(503)));
    let daemon = Daemon::start(&config, port, &[]);
    daemon.signal("USR1");
    wait_for(
        "the failure digest, and nothing left to send",
        Duration::from_secs(60),
        || hook.accepted_count() >= 1 && outbox(&config, false).is_empty(),
    );
    let got = hook.accepted();
    assert_eq!(got.len(), 1, "one message for fifty failures: {got:?}");
    assert_eq!(got[0].headers["x-gitpulse-event"], "digest");
    let digest = json(&got[0].body);
    assert_eq!(digest["of"], "failed");
    assert_eq!(digest["host"], "127.0.0.1");
    assert_eq!(digest["count"], 50, "{digest}");

    served.proxy.set_always(None);
    daemon.signal("USR1");
    wait_for(
        "the recovery digest, and nothing left to send",
        Duration::from_secs(90),
        || hook.accepted_count() >= 2 && outbox(&config, false).is_empty(),
    );
    let got = hook.accepted();
    assert_eq!(got.len(), 2, "{}", daemon.log());
    let digest = json(&got[1].body);
    assert_eq!(digest["of"], "recovered");
    assert_eq!(digest["count"], 50, "{digest}");
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn retrying_is_opt_in_and_comes_from_gitpulse_pull_too() {
    let served = Served::new("app");
    let root = served.root.path();
    let config = notify_config(
        root,
        log_notifier("all", "all.jsonl", "events = [\"retrying\", \"changed\"]")
            .notifier_toml("default", "kind = \"log\"\npath = \"default.jsonl\""),
    );
    served.proxy.push(Fault::Status(503));
    let run = pull_notifying(
        &served.url(),
        &served.dir("app"),
        &config,
        &[],
        &["--max-attempts", "3"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let kinds = |file: &str| -> Vec<String> {
        log_lines(&root.join(file))
            .iter()
            .map(|l| l["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kinds("all.jsonl"), ["retrying", "changed"]);
    assert_eq!(
        kinds("default.jsonl"),
        ["changed"],
        "retrying only when asked for"
    );
    let retrying = log_lines(&root.join("all.jsonl")).remove(0);
    assert_eq!(
        retrying["subject"],
        "[gitpulse] app: attempt 1 failed, retrying"
    );
    assert!(
        retrying["body"].as_str().unwrap().contains("server-error"),
        "{retrying}"
    );
}

#[test]
fn a_rejected_config_reload_is_an_event() {
    let served = Served::new("app");
    let root = served.root.path();
    let port = free_port();
    let repos = vec![("app".to_string(), served.url(), served.dir("app"))];
    let file = daemon_config(port, &repos).notifier_toml(
        "audit",
        "kind = \"log\"\npath = \"audit.jsonl\"\nevents = [\"config-rejected\"]",
    );
    let config = write_in(file.clone(), root);
    let daemon = Daemon::start(&config, port, &[]);
    file.defaults("schedule", "every now and then")
        .write(&config);
    let audit = root.join("audit.jsonl");
    wait_for(
        "the config-rejected message",
        Duration::from_secs(30),
        || !log_lines(&audit).is_empty(),
    );
    let line = log_lines(&audit).remove(0);
    assert_eq!(line["kind"], "config-rejected");
    assert_eq!(line["subject"], "[gitpulse] configuration rejected");
    let body = line["body"].as_str().unwrap();
    assert!(
        body.contains("gitpulse.toml:") && body.contains("schedule"),
        "{body}"
    );
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn starttls_required_refuses_a_server_without_it_and_opportunistic_goes_plain() {
    let root = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpTls::None, None);
    let mail = |config: ConfigFile, name: &str, starttls: &str| {
        config.notifier(
            name,
            &[
                ("kind", "email".into()),
                ("server", smtp.url(false).into()),
                ("starttls", starttls.into()),
                ("from", "gitpulse@example.test".into()),
                ("to", vec!["ops@example.test"].into()),
            ],
        )
    };
    let config = mail(ConfigFile::default(), "strict", "required");
    let config = notify_config(root.path(), mail(config, "relaxed", "opportunistic"));
    let run = |name: &str| with_config(&["notify", "test", name], &config);
    let strict = run("strict");
    assert_eq!(
        strict.code, 1,
        "no STARTTLS offered, nothing sent: {strict:?}"
    );
    assert!(
        strict.stderr.contains("does not offer STARTTLS") && strict.stderr.contains("required"),
        "{strict:?}"
    );
    assert!(smtp.messages().is_empty());
    let relaxed = run("relaxed");
    assert_eq!(relaxed.code, 0, "{relaxed:?}");
    let got = smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    assert!(!got[0].tls);
}

#[test]
fn a_rate_limited_webhook_is_retried_after_the_time_it_asks_for() {
    let served = Served::new("app");
    let hook = WebhookReceiver::start("s");
    std::fs::write(served.root.path().join("secret"), "s").unwrap();
    let config = notify_config(
        served.root.path(),
        ConfigFile::default().notifier(
            "hook",
            &[
                ("kind", "webhook".into()),
                ("url", hook.url("/").into()),
                ("secret_file", "secret".into()),
                ("retry_base", "10ms".into()),
                ("retry_max", "5s".into()),
            ],
        ),
    );
    hook.answer(Answer::RateLimited(1));
    let recover = {
        let deliveries = std::sync::Arc::new(hook);
        let watcher = deliveries.clone();
        std::thread::spawn(move || {
            wait_for("the first attempt", Duration::from_secs(20), || {
                !watcher.deliveries().is_empty()
            });
            watcher.answer(Answer::Ok);
        });
        deliveries
    };
    let run = pull_notifying(&served.url(), &served.dir("app"), &config, &[], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let all = recover.deliveries();
    assert_eq!(all.len(), 2, "one 429, then the delivery: {all:?}");
    assert!(!all[0].accepted && all[1].accepted);
    assert!(
        all[1].at.duration_since(all[0].at) >= Duration::from_millis(900),
        "Retry-After: 1 was honoured over a 10 ms backoff base"
    );
}

#[test]
fn the_daemon_asks_a_repos_notify_plugin_for_its_template() {
    let served = Served::new("app");
    let root = served.root.path();
    let plugins = root.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        plugins::build("escalation-policy"),
        plugins.join("escalation.wasm"),
    )
    .unwrap();
    let port = free_port();
    let repos = vec![("app".to_string(), served.url(), served.dir("app"))];
    let file = daemon_config(port, &repos)
        .daemon("plugin_dir", "plugins")
        .defaults("policy", table(&[("notify", "escalation")]))
        .notifier_toml(
            "audit",
            "kind = \"log\"\npath = \"audit.jsonl\"\nevents = [\"failed\"]\ndigest_window = \"0s\"",
        )
        .plugin("escalation", &[("threshold", 1.into())]);
    let config = write_in(file, root);
    served.proxy.set_always(Some(Fault::Status(503)));
    let daemon = Daemon::start(&config, port, &[]);
    let audit = root.join("audit.jsonl");
    wait_for("the plugin's message", Duration::from_secs(30), || {
        !log_lines(&audit).is_empty()
    });
    let line = log_lines(&audit).remove(0);
    assert_eq!(line["kind"], "failed");
    assert_eq!(
        line["subject"],
        "[gitpulse] app failed 1 times in 30 min",
        "{}",
        daemon.log()
    );
    assert!(
        line["body"]
            .as_str()
            .unwrap()
            .contains("keeps failing: server-error"),
        "{line}"
    );
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn a_retry_plugin_that_traps_is_a_plugin_fault_event() {
    let served = Served::new("app");
    let root = served.root.path();
    let wasm = plugins::build("misbehave-policy");
    let config = notify_config(
        root,
        log_notifier("audit", "audit.jsonl", "events = [\"plugin-fault\"]"),
    );
    served.proxy.push(Fault::Status(503));
    let policy = [
        "--policy",
        wasm.to_str().unwrap(),
        "--plugin-config",
        "mode=trap",
        "--max-attempts",
        "3",
    ];
    let run = pull_notifying(&served.url(), &served.dir("app"), &config, &[], &policy);
    assert_eq!(run.code, 0, "the built-in policy stood in: {run:?}");
    let lines = log_lines(&root.join("audit.jsonl"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "plugin-fault");
    let body = lines[0]["body"].as_str().unwrap();
    assert!(
        body.contains("trapped") && body.contains("built-in policy decided instead"),
        "{body}"
    );
}

#[test]
fn a_digest_is_rendered_once_when_accepted_and_a_broken_digest_template_is_a_plugin_fault() {
    let served = Served::new("app");
    let repos = many(&served, 3);
    let hook = WebhookReceiver::start("k");
    // The first delivery is refused: its retry must carry the same text.
    hook.answer(Answer::Status(503));
    let root = served.root.path();
    // Compiles, but strict mode refuses the unknown `nope` when rendering.
    std::fs::write(
        root.join("digest.hbs"),
        "{\"n\": {{count}}, \"x\": {{nope}}}",
    )
    .unwrap();
    let port = free_port();
    let file = daemon_config(port, &repos)
        .daemon("max_concurrent", 3)
        .defaults("schedule", "every 24h");
    let file = with_hook(
        file,
        &hook.url("/"),
        "events = [\"failed\", \"plugin-fault\"]\ndigest_window = \"2s\"\n\
         templates.digest = { body = \"digest.hbs\" }",
    );
    let config = write_in(file, root);
    served.proxy.set_always(Some(Fault::Status(503)));
    let daemon = Daemon::start(&config, port, &[]);
    daemon.signal("USR1");
    wait_for("a refused digest", Duration::from_secs(60), || {
        hook.deliveries()
            .iter()
            .any(|d| d.headers["x-gitpulse-event"] == "digest")
    });
    // Editing the template now must not change the message in flight.
    std::fs::write(root.join("digest.hbs"), "{\"edited\": true}").unwrap();
    hook.answer(Answer::Ok);
    wait_for("the digest and the fault", Duration::from_secs(60), || {
        hook.accepted_count() >= 2
    });
    let attempts: Vec<_> = hook
        .deliveries()
        .into_iter()
        .filter(|d| d.headers["x-gitpulse-event"] == "digest")
        .collect();
    assert!(attempts.len() >= 2, "refused, then retried: {attempts:?}");
    assert!(
        attempts.iter().all(|d| d.body == attempts[0].body
            && d.headers["x-gitpulse-delivery"] == attempts[0].headers["x-gitpulse-delivery"]),
        "every try sends the digest as accepted: {attempts:?}"
    );
    let digest = json(&attempts[0].body);
    assert_eq!(
        digest["kind"], "digest",
        "the default template stood in: {digest}"
    );
    assert_eq!(digest["count"], 3, "{digest}");
    let faults: Vec<_> = exactly_once(&hook)
        .into_iter()
        .filter(|e| e["kind"] == "plugin-fault")
        .collect();
    assert_eq!(faults.len(), 1, "{}", daemon.log());
    let detail = faults[0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("template for digest") && detail.contains("default template was used"),
        "{}",
        faults[0]
    );
    let rows = outbox(&config, true);
    assert!(
        rows.iter()
            .filter(|r| r["kind"] == "failed")
            .all(|r| r["state"] == "delivered"
                && r["digest_of"]
                    == attempts[0].headers["x-gitpulse-delivery"]
                        .parse::<i64>()
                        .unwrap()),
        "the members were delivered in the digest: {rows:?}"
    );
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn a_branch_rewound_upstream_is_a_change_in_reset_mode() {
    let mut served = Served::new("app");
    let config = notify_config(
        served.root.path(),
        log_notifier("audit", "audit.jsonl", "events = [\"changed\"]"),
    );
    let dir = served.dir("app");
    let first = served.up.head();
    let reset = ["--mode", "reset"];
    assert_eq!(
        pull_notifying(&served.url(), &dir, &config, &[], &reset).code,
        0
    );
    let second = served.up.commit("to be taken back");
    assert_eq!(
        pull_notifying(&served.url(), &dir, &config, &[], &reset).code,
        0
    );
    // Force-pushed backward: the branch points at the first commit again.
    git_ok(&served.up.bare, &["update-ref", "refs/heads/main", &first]);
    let run = pull_notifying(&served.url(), &dir, &config, &[], &reset);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(checkout_state(&dir).0, first);
    let lines = log_lines(&served.root.path().join("audit.jsonl"));
    assert_eq!(lines.len(), 3, "clone, update, rewind: {lines:?}");
    assert_eq!(lines[2]["kind"], "changed");
    let body = lines[2]["body"].as_str().unwrap_or_default();
    assert!(
        body.contains(&second[..10]) && body.contains(&first[..10]),
        "the rewind names where the checkout was and is: {body}"
    );
}

#[test]
fn a_commit_subject_cannot_add_keys_to_a_webhook_body() {
    let mut served = Served::new("app");
    let hook = WebhookReceiver::start("s");
    let root = served.root.path().to_path_buf();
    std::fs::write(root.join("secret"), "s\n").unwrap();
    std::fs::write(
        root.join("changed.json.hbs"),
        "{\"text\": \"{{#each commits}}{{subject}}{{/each}}\", \"repo\": \"{{repo.name}}\"}",
    )
    .unwrap();
    let config = notify_config(
        &root,
        ConfigFile::default().notifier_toml(
            "hook",
            &format!(
                "kind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"secret\"\n\
                 events = [\"changed\"]\ntemplates.changed = {{ body = \"changed.json.hbs\" }}",
                hook.url("/")
            ),
        ),
    );
    let dir = served.dir("app");
    assert_eq!(
        pull_notifying(&served.url(), &dir, &config, &[], &[]).code,
        0
    );
    let hostile = "fix\", \"admin\": true, \"x\": \"";
    served.up.commit(hostile);
    let run = pull_notifying(&served.url(), &dir, &config, &[], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let got = hook.wait_for(2, Duration::from_secs(10));
    let body = json(&got[1].body);
    assert!(body.get("admin").is_none(), "{body}");
    assert_eq!(body["text"], hostile, "{body}");
    assert_eq!(body["repo"], "app");
}

#[test]
fn two_plugins_with_one_file_name_keep_their_own_state() {
    let (served, wasm, config) = failing_with_escalation();
    let root = served.root.path();
    let state = root.join("own-state");
    for team in ["a", "b"] {
        let copy = root.join(team).join("escalation.wasm");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::copy(&wasm, &copy).unwrap();
        let policy = [
            "--policy",
            copy.to_str().unwrap(),
            "--plugin-config",
            "threshold=2",
        ];
        let env = [("XDG_STATE_HOME", state.to_str().unwrap())];
        let run = pull_notifying(&served.url(), &served.dir("app"), &config, &env, &policy);
        assert_eq!(run.code, 1, "{run:?}");
    }
    // Kept in --notify-config's state directory, where the daemon keeps
    // the stores of its plugins: one store per plugin file, whoever runs it.
    assert!(!state.exists(), "nothing in the user's own state");
    let stores: Vec<String> = std::fs::read_dir(root.join("state/plugins"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(stores.len(), 2, "one store each: {stores:?}");
    assert!(
        stores.iter().all(|s| s.starts_with("escalation-")),
        "{stores:?}"
    );
    // Each counted one failure: neither reached its threshold of two.
    assert!(log_lines(&root.join("events.jsonl")).is_empty());
}
