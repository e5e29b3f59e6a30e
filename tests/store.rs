//! The state in PostgreSQL (`[store] backend = "postgres"`): a real server
//! the test starts (initdb, password authentication on 127.0.0.1), the real
//! daemon and the commands that read its state.

use crate::common::*;

use std::path::Path;
use std::time::Duration;

use gitpulse_testkit::{PostgresServer, POSTGRES_PASSWORD};

/// `gitpulse COMMAND --config CONFIG` with `env` set (a name with no value:
/// removed): its exit code and all it said.
fn run(command: &str, config: &Path, env: &[(&str, Option<&str>)]) -> (Option<i32>, String) {
    let mut cmd = gitpulse();
    cmd.args([command, "--config"]).arg(config);
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    let out = cmd.output().unwrap();
    (out.status.code(), said(&out))
}

/// A daemon's config in `home` whose state is the database at `url` (kept
/// in `db-url` beside it), pulling every second.
fn on_postgres(home: &Path, port: u16, url: &str) -> ConfigFile {
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(home.join("db-url"), url).unwrap();
    ConfigFile::daemon_on(port)
        .defaults("schedule", "every 1s jitter 0s")
        .store("backend", "postgres")
        .store("url_file", "db-url")
}

#[test]
fn a_daemon_on_postgres_records_there_and_its_commands_read_it_back() {
    let pg = PostgresServer::start();
    let url = pg.database("gitpulse");
    let root = tempfile::tempdir().unwrap();
    let mut app = Upstream::new(root.path(), "app");
    let http = GitHttpServer::start(root.path());
    let port = free_port();
    let dir = root.path().join("c-app");
    let config = on_postgres(root.path(), port, &url)
        .repo(Repo::new("app", &http.url("app"), &dir))
        .write_in(root.path());

    // validate reaches the server and says where, changing nothing.
    let (code, text) = run("validate", &config, &[]);
    assert_eq!(code, Some(0), "{text}");
    let target = format!("postgres://gitpulse@127.0.0.1:{}/gitpulse", pg.port());
    assert!(text.contains(&format!("state: {target} (empty")), "{text}");
    assert!(!text.contains(POSTGRES_PASSWORD), "{text}");
    assert_eq!(
        pg.sql("gitpulse", "SELECT to_regclass('pulls') IS NULL"),
        "t"
    );

    let d = Daemon::start(&config, port, &[]);
    let count = |sql: &str| pg.sql("gitpulse", sql);
    wait_for(
        "the clone recorded in PostgreSQL",
        Duration::from_secs(30),
        || count("SELECT count(*) FROM pulls WHERE repo = 'app' AND outcome = 'cloned'") == "1",
    );
    let new = app.commit("second");
    wait_for("the new commit recorded", Duration::from_secs(30), || {
        count("SELECT last_good_commit FROM repos WHERE name = 'app'") == new
    });
    assert!(
        !root.path().join("state/state.db").exists(),
        "no SQLite state is made beside it"
    );

    // The commands that read state read it from the database.
    let kinds: Vec<String> = history(&config, "app")
        .iter()
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect();
    assert!(
        kinds.iter().any(|k| k == "updated") && kinds.iter().any(|k| k == "cloned"),
        "{kinds:?}"
    );
    let rows = status_rows(&config);
    let app_row = rows.iter().find(|r| r["repo"] == "app").unwrap();
    assert_eq!(app_row["state"]["last_commit"], new.as_str(), "{app_row}");

    let (code, log) = d.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains(POSTGRES_PASSWORD), "{log}");

    // A restarted daemon goes on from what the database holds: the
    // checkout is not cloned again.
    let d = Daemon::start(&config, port, &[]);
    let newest = app.commit("third");
    wait_for("the third commit recorded", Duration::from_secs(30), || {
        count("SELECT last_good_commit FROM repos WHERE name = 'app'") == newest
    });
    assert_eq!(
        count("SELECT count(*) FROM pulls WHERE repo = 'app' AND outcome = 'cloned'"),
        "1"
    );
    let (code, log) = d.stop_with_log();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn a_database_that_refuses_or_is_missing_is_named_and_the_password_never_shown() {
    let pg = PostgresServer::start();
    let good = pg.database("gitpulse");
    let root = tempfile::tempdir().unwrap();
    let _app = Upstream::new(root.path(), "app");
    let port = free_port();
    let dir = root.path().join("c-app");
    let repo = || Repo::new("app", "https://git.example.com/app.git", &dir);
    let target = format!("postgres://gitpulse@127.0.0.1:{}/gitpulse", pg.port());

    // A wrong password, from the environment this time.
    let config = root.path().join("gitpulse.toml");
    ConfigFile::daemon_on(port)
        .store("backend", "postgres")
        .store("url_env", "GITPULSE_TEST_DATABASE_URL")
        .repo(repo())
        .write(&config);
    let wrong = good.replace(POSTGRES_PASSWORD, "Wr0ng-pa55word");
    for command in ["validate", "daemon"] {
        let (code, text) = run(
            command,
            &config,
            &[("GITPULSE_TEST_DATABASE_URL", Some(&wrong))],
        );
        assert_eq!(code, Some(1), "{command}: {text}");
        assert!(text.contains(&target), "{command}: {text}");
        assert!(
            text.contains("password authentication failed"),
            "{command}: {text}"
        );
        assert!(!text.contains("Wr0ng-pa55word"), "{command}: {text}");
    }

    // The variable unset: a problem at the line that names it.
    let (code, text) = run("validate", &config, &[("GITPULSE_TEST_DATABASE_URL", None)]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("store.url_env") && text.contains("GITPULSE_TEST_DATABASE_URL is not set"),
        "{text}"
    );

    // A password pasted into the file itself is refused as an unknown key
    // and not repeated.
    std::fs::write(
        &config,
        format!(
            "{}\n[store]\nbackend = \"postgres\"\nurl = \"{good}\"\n",
            ConfigFile::daemon_on(port).repo(repo()).text()
        ),
    )
    .unwrap();
    let (code, text) = run("validate", &config, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("store.url"), "{text}");
    assert!(text.contains("unknown key"), "{text}");
    assert!(!text.contains(POSTGRES_PASSWORD), "{text}");
    assert_eq!(
        pg.sql("gitpulse", "SELECT to_regclass('pulls') IS NULL"),
        "t"
    );
}

#[test]
fn a_second_daemon_without_a_fleet_is_refused_on_the_same_database() {
    let pg = PostgresServer::start();
    let url = pg.database("gitpulse");
    let root = tempfile::tempdir().unwrap();
    let _app = Upstream::new(root.path(), "app");
    let http = GitHttpServer::start(root.path());
    // Two daemons on one host: each its own name, port and checkouts.
    let config_of = |name: &str| {
        let home = root.path().join(name);
        let port = free_port();
        let repo = Repo::new("app", &http.url("app"), &home.join("c-app"));
        let config = on_postgres(&home, port, &url)
            .fleet("replica", name)
            .repo(repo)
            .write_in(&home);
        (config, port)
    };
    let (first, first_port) = config_of("first");
    let (second, port) = config_of("second");
    let d = Daemon::start(&first, first_port, &[]);

    let (code, text) = run("daemon", &second, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("another daemon (first, solo") && text.contains("the same [fleet] mode"),
        "{text}"
    );

    // Once the first has stopped, the database is free for another.
    let (code, log) = d.stop_with_log();
    assert_eq!(code, 0, "{log}");
    let d = Daemon::start(&second, port, &[]);
    let (code, log) = d.stop_with_log();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn the_database_restarted_between_pulls_loses_nothing_and_tells_each_change_once() {
    let mut pg = PostgresServer::start();
    let url = pg.database("gitpulse");
    let root = tempfile::tempdir().unwrap();
    let mut app = Upstream::new(root.path(), "app");
    let http = GitHttpServer::start(root.path());
    let hook = WebhookReceiver::start("hook-secret");
    std::fs::write(root.path().join("hook.secret"), "hook-secret\n").unwrap();
    let port = free_port();
    // Connections are waited for a second at most: an outage longer than
    // that is the job's to wait out.
    let config = on_postgres(root.path(), port, &url)
        .store("connect_timeout", "1s")
        .changed_webhook(&hook.url("/events"), "hook.secret")
        .repo(
            Repo::new("app", &http.url("app"), &root.path().join("c-app"))
                .set("notifiers", vec!["hook"]),
        )
        .write_in(root.path());
    let d = Daemon::start(&config, port, &[]);
    let recorded = |pg: &PostgresServer| {
        pg.sql(
            "gitpulse",
            "SELECT last_good_commit FROM repos WHERE name = 'app'",
        )
    };
    wait_for("the clone recorded", Duration::from_secs(30), || {
        !recorded(&pg).is_empty()
    });

    // A commit pulled while the server is down: the pull's result waits for
    // it to come back.
    pg.stop();
    let during = app.commit("while the database restarts");
    let dir = root.path().join("c-app");
    wait_for_with_logs(
        "the checkout to move",
        Duration::from_secs(30),
        &[("daemon", &d)],
        || checkout_state(&dir).0 == during,
    );
    wait_for(
        "the daemon to wait for the database",
        Duration::from_secs(30),
        || d.log().contains("recording the pull") && d.log().contains("trying again in"),
    );
    pg.start_again();
    wait_for(
        "the pull made while it was down recorded",
        Duration::from_secs(60),
        || recorded(&pg) == during,
    );
    let after = app.commit("after");
    wait_for("the next one recorded", Duration::from_secs(30), || {
        recorded(&pg) == after
    });

    // Every change told once: the clone, the one pulled during the
    // restart, the one after.
    let told = hook.wait_for(3, Duration::from_secs(30));
    let mut news: Vec<String> = told
        .iter()
        .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m.body).ok())
        .filter_map(|v| v["new"].as_str().map(String::from))
        .collect();
    news.sort();
    news.dedup();
    assert_eq!(news.len(), 3, "{told:?}");
    assert!(news.contains(&during) && news.contains(&after), "{news:?}");
    assert_eq!(hook.accepted_count(), 3, "{:?}", hook.deliveries());
    let (code, log) = d.stop_with_log();
    assert_eq!(code, 0, "{log}");
}
