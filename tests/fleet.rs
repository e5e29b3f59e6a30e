//! Several daemons on one PostgreSQL state (`[fleet] mode = "shard"`): real
//! daemon processes, each a replica with its own checkouts, sharing a real
//! server the test starts; SIGSTOP and SIGCONT as the faults.

use crate::common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One replica's config: its own listen port, state and checkouts under
/// `root/NAME`, the shared database, and `repos` (name, URL).
struct ReplicaSpec<'a> {
    name: &'a str,
    repos: &'a [(String, String)],
    schedule: &'a str,
    lease_ttl: &'a str,
}

fn replica_config(root: &Path, url: &str, spec: &ReplicaSpec<'_>) -> (PathBuf, u16) {
    let home = root.join(spec.name);
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("db-url"), url).unwrap();
    let port = free_port();
    let secret = home.join("hook.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let mut config = ConfigFile::daemon_on(port)
        .defaults("schedule", spec.schedule)
        .store("backend", "postgres")
        .store("url_file", "db-url")
        .fleet("mode", "shard")
        .fleet("replica", spec.name)
        .fleet("lease_ttl", spec.lease_ttl)
        .receiver(&[
            ("name", "github".into()),
            ("kind", "github".into()),
            ("secret_file", secret.display().to_string().into()),
        ]);
    for (name, repo_url) in spec.repos {
        let dir = home.join(format!("c-{name}"));
        config = config.repo(Repo::new(name, repo_url, &dir).set("branch", "main"));
    }
    (config.write_in(&home), port)
}

/// A scratch database and two upstreams, `app` and `lib`, served over HTTP.
struct TwoRepos {
    pg: PostgresServer,
    url: String,
    http: GitHttpServer,
    /// Committed to while daemons and closures read the rest.
    ups: std::cell::RefCell<BTreeMap<&'static str, Upstream>>,
    root: tempfile::TempDir,
}

impl TwoRepos {
    fn new() -> TwoRepos {
        let pg = PostgresServer::start();
        let url = pg.database("fleet");
        let root = tempfile::tempdir().unwrap();
        let http = GitHttpServer::start(root.path());
        let ups = std::cell::RefCell::new(
            ["app", "lib"]
                .into_iter()
                .map(|n| (n, Upstream::new(root.path(), n)))
                .collect(),
        );
        TwoRepos {
            pg,
            url,
            http,
            ups,
            root,
        }
    }

    /// The configs (and ports) of replicas `a` and `b` for both.
    fn replicas(&self, schedule: &str, lease_ttl: &str) -> [(PathBuf, u16); 2] {
        let repos: Vec<(String, String)> = ["app", "lib"]
            .iter()
            .map(|n| (n.to_string(), self.http.url(n)))
            .collect();
        ["a", "b"].map(|name| {
            let spec = ReplicaSpec {
                name,
                repos: &repos,
                schedule,
                lease_ttl,
            };
            replica_config(self.root.path(), &self.url, &spec)
        })
    }

    /// A new commit upstream of `repo`.
    fn commit(&self, repo: &str, subject: &str) -> String {
        self.ups.borrow_mut().get_mut(repo).unwrap().commit(subject)
    }
}

/// Leases held per replica, from the database.
fn leases(pg: &PostgresServer) -> BTreeMap<String, usize> {
    pg.sql("fleet", "SELECT owner, count(*) FROM leases GROUP BY owner")
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(owner, n)| (owner.to_string(), n.parse().unwrap()))
        .collect()
}

#[test]
fn three_replicas_share_sixty_repositories_and_each_push_is_pulled_by_one() {
    let pg = PostgresServer::start();
    let url = pg.database("fleet");
    let root = tempfile::tempdir().unwrap();
    let http = GitHttpServer::start(root.path());
    let mut upstreams: Vec<(String, Upstream)> = (0..60)
        .map(|i| {
            let name = format!("r{i:02}");
            let up = Upstream::new(root.path(), &name);
            (name, up)
        })
        .collect();
    let repos: Vec<(String, String)> = upstreams
        .iter()
        .map(|(name, _)| (name.clone(), http.url(name)))
        .collect();
    let mut configs = Vec::new();
    let daemons: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let spec = ReplicaSpec {
                name,
                repos: &repos,
                schedule: "every 2s jitter 1s",
                lease_ttl: "5s",
            };
            let (config, port) = replica_config(root.path(), &url, &spec);
            configs.push(config.clone());
            Daemon::start(&config, port, &[])
        })
        .collect();

    // Whoever started first took more than its share; the shares settle
    // at 60 / 3 as it hands the excess back and the others take it.
    wait_for(
        "the leases to spread evenly",
        Duration::from_secs(60),
        || {
            let held = leases(&pg);
            held.len() == 3 && held.values().all(|&n| n == 20)
        },
    );

    // `gitpulse status` on any replica says who holds what.
    let rows = status_rows(&configs[0]);
    assert_eq!(rows.len(), 60);
    for row in &rows {
        let replica = row["state"]["replica"].as_str().unwrap_or_default();
        assert!(["a", "b", "c"].contains(&replica), "{row}");
        assert!(row["state"]["replica_since_ms"].as_u64().is_some(), "{row}");
    }
    let table = gitpulse()
        .args(["status", "--config"])
        .arg(&configs[1])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.lines().next().unwrap_or("").ends_with("REPLICA"),
        "{table}"
    );

    let started = Instant::now();
    let pushed: BTreeMap<String, String> = upstreams
        .iter_mut()
        .map(|(name, up)| (name.clone(), up.commit("pushed")))
        .collect();
    wait_for("every push pulled", Duration::from_secs(60), || {
        let good: usize = pg
            .sql(
                "fleet",
                &format!(
                    "SELECT count(*) FROM repos WHERE last_good_commit IN ({})",
                    pushed
                        .values()
                        .map(|sha| format!("'{sha}'"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            )
            .parse()
            .unwrap();
        good == 60
    });
    eprintln!("60 pushes pulled by the fleet in {:?}", started.elapsed());

    // Each new commit was pulled once, by one replica, in its own checkout
    // (updated, or cloned by a replica that took the repository up since).
    // Rows are picked by the pushed commit, not by time: a pull that began
    // just before the pushes can already fetch one.
    let rows = pg.sql(
        "fleet",
        "SELECT repo, new, replica FROM pulls
         WHERE outcome IN ('updated', 'cloned') ORDER BY repo",
    );
    let mut by_replica: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in rows.lines() {
        let parts: Vec<&str> = line.split('|').collect();
        let (repo, new, replica) = (parts[0], parts[1], parts[2]);
        if pushed.get(repo).map(String::as_str) != Some(new) {
            continue;
        }
        assert!(seen.insert(repo.to_string()), "{repo} pulled twice: {rows}");
        *by_replica.entry(replica.to_string()).or_default() += 1;
        let checkout = root.path().join(replica).join(format!("c-{repo}"));
        assert_eq!(checkout_state(&checkout).0, new, "{repo} in {replica}");
    }
    assert_eq!(seen.len(), 60, "{rows}");
    for (replica, n) in &by_replica {
        assert!(
            (16..=24).contains(n),
            "{replica} pulled {n} of 60: {by_replica:?}"
        );
    }
    for d in daemons {
        let (code, log) = d.stop_with_log();
        assert_eq!(code, 0, "{log}");
        // What it pulled last is written before its leases go: nothing it
        // records while stopping is fenced. (Before that, a lease may move
        // under a late heartbeat; the pulls above were each recorded once.)
        let stopping = log.find("stopping: waiting for running pulls").unwrap_or(0);
        let moved: Vec<&str> = log[stopping..]
            .lines()
            .filter(|l| l.contains("lease moved"))
            .collect();
        assert!(moved.is_empty(), "{moved:#?}");
    }
    // Stopping gave every lease back.
    assert_eq!(pg.sql("fleet", "SELECT count(*) FROM leases"), "0");
}

#[test]
fn a_paused_replica_loses_its_repositories_and_its_late_result_is_fenced() {
    let pg = PostgresServer::start();
    let url = pg.database("fleet");
    let root = tempfile::tempdir().unwrap();
    let http = GitHttpServer::start(root.path());
    let _slow_up = Upstream::new(root.path(), "slow");
    let _quick_up = Upstream::new(root.path(), "quick");
    // Every answer about `slow` trickles in: a pull of it is in flight for
    // seconds, long enough to pause its replica in the middle.
    let proxy = FaultProxy::start(http.addr());
    proxy.set_always(Some(Fault::Slow {
        chunk: 64,
        pause: Duration::from_millis(300),
    }));
    let repos = vec![
        ("slow".to_string(), proxy.url("slow")),
        ("quick".to_string(), http.url("quick")),
    ];
    let spec = |name| ReplicaSpec {
        name,
        repos: &repos,
        schedule: "every 1s jitter 0s",
        lease_ttl: "3s",
    };
    let (config_a, port_a) = replica_config(root.path(), &url, &spec("a"));
    let (config_b, port_b) = replica_config(root.path(), &url, &spec("b"));

    // `a` alone takes both and starts cloning `slow`.
    let a = Daemon::start(&config_a, port_a, &[]);
    wait_for("a to hold slow", Duration::from_secs(30), || {
        pg.sql("fleet", "SELECT owner FROM leases WHERE repo = 'slow'") == "a"
    });
    wait_for(
        "a's clone of slow under way",
        Duration::from_secs(30),
        || proxy.requests() > 0,
    );
    a.signal("STOP");
    let b = Daemon::start(&config_b, port_b, &[]);

    // Its lease expires; `b` takes it and records the clone.
    let both = [("a", &a), ("b", &b)];
    wait_for_with_logs(
        "b to take slow and clone it",
        Duration::from_secs(60),
        &both,
        || {
            pg.sql(
            "fleet",
            "SELECT count(*) FROM pulls WHERE repo = 'slow' AND replica = 'b' AND outcome = 'cloned'",
        ) == "1"
        },
    );
    assert_eq!(
        pg.sql("fleet", "SELECT owner FROM leases WHERE repo = 'slow'"),
        "b"
    );

    // `a` wakes up, finishes its clone, and writes nothing of it.
    a.signal("CONT");
    wait_for_with_logs(
        "a's late result to be fenced",
        Duration::from_secs(60),
        &both,
        || a.log().contains("slow is no longer this replica's"),
    );
    // (`a` may hold it again later, legitimately: then it finds its
    // checkout up to date, and tells nobody.)
    assert_eq!(
        pg.sql(
            "fleet",
            "SELECT count(*) FROM pulls WHERE repo = 'slow' AND replica = 'a' AND outcome = 'cloned'"
        ),
        "0"
    );
    assert_eq!(
        pg.sql("fleet", "SELECT count(*) FROM events WHERE repo = 'slow'"),
        "1",
        "one change told, not two"
    );
    let metrics = a.request_with("/metrics", &[]).1;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("gitpulse_fleet_fenced_writes_total{replica=\"a\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    for d in [a, b] {
        let (code, log) = d.stop_with_log();
        assert_eq!(code, 0, "{log}");
    }
}

#[test]
fn a_push_that_lands_on_one_replica_is_pulled_by_the_one_that_holds_the_repository() {
    let scene = TwoRepos::new();
    // Pulled at start, then only when pushed.
    let [(config_a, port_a), (config_b, port_b)] = scene.replicas("every 1h", "3s");
    let (pg, http) = (&scene.pg, &scene.http);
    let a = Daemon::start(&config_a, port_a, &[]);
    let b = Daemon::start(&config_b, port_b, &[]);
    // Whoever started first took both, and hands one back to the other,
    // which takes it up and clones it at once (not an hour later).
    wait_for("one lease each", Duration::from_secs(30), || {
        let held = leases(pg);
        held.get("a") == Some(&1) && held.get("b") == Some(&1)
    });
    let of_b = pg.sql("fleet", "SELECT repo FROM leases WHERE owner = 'b'");
    wait_for(
        "b's clone of its repository",
        Duration::from_secs(30),
        || {
            pg.sql(
                "fleet",
                &format!("SELECT count(*) FROM pulls WHERE repo = '{of_b}' AND replica = 'b'"),
            ) != "0"
        },
    );
    let new = scene.commit(&of_b, "pushed");

    // The push reaches `a`; `b` pulls.
    let sent = Instant::now();
    let body = github_push_of(&http.url(&of_b), &new);
    let (code, answer) = send_github(&a, &body, "s3cret", "push", "d-1");
    assert_eq!(code, 202, "{answer}");
    wait_for("b to pull the push", Duration::from_secs(30), || {
        pg.sql(
            "fleet",
            &format!("SELECT last_good_commit FROM repos WHERE name = '{of_b}'"),
        ) == new
    });
    eprintln!("a push sent to a was pulled by b in {:?}", sent.elapsed());
    assert_eq!(
        pg.sql(
            "fleet",
            &format!("SELECT replica FROM pulls WHERE repo = '{of_b}' AND outcome = 'updated'"),
        ),
        "b"
    );
    for d in [a, b] {
        let (code, log) = d.stop_with_log();
        assert_eq!(code, 0, "{log}");
    }
}

#[test]
fn when_the_leader_is_killed_another_replica_takes_over_housekeeping_and_its_repositories() {
    let scene = TwoRepos::new();
    let [(config_a, port_a), (config_b, port_b)] = scene.replicas("every 1s jitter 0s", "2s");
    let pg = &scene.pg;
    let leader = || {
        pg.sql(
            "fleet",
            "SELECT holder FROM leader WHERE role = 'housekeeping'",
        )
    };
    let a = Daemon::start(&config_a, port_a, &[]);
    wait_for("a to lead", Duration::from_secs(30), || leader() == "a");
    let b = Daemon::start(&config_b, port_b, &[]);
    let both = [("a", &a), ("b", &b)];
    wait_for_with_logs("one lease each", Duration::from_secs(30), &both, || {
        let held = leases(pg);
        held.get("a") == Some(&1) && held.get("b") == Some(&1)
    });
    let of_a = pg.sql("fleet", "SELECT repo FROM leases WHERE owner = 'a'");
    assert_eq!(b.status()["fleet"]["leader"], false);
    // b's page lists both replicas and who holds what.
    wait_for_with_logs(
        "b's page to list both replicas",
        Duration::from_secs(30),
        &both,
        || {
            let (_, page) = b.request_with("/", &[]);
            page.contains("data-replica=\"a\"") && page.contains("data-replica=\"b\"")
        },
    );
    let (code, page) = b.request_with("/", &[]);
    assert_eq!(code, 200);
    assert!(page.contains("<td class=\"replica\">a</td>"), "{page}");

    a.signal("KILL");
    wait_for_with_logs("b to lead", Duration::from_secs(30), &both, || {
        leader() == "b"
    });
    assert_eq!(b.status()["fleet"]["leader"], true);
    // a's repository goes on being pulled, by b.
    let new = scene.commit(&of_a, "after the leader died");
    wait_for_with_logs(
        "b to pull a's repository",
        Duration::from_secs(30),
        &both,
        || {
            pg.sql(
                "fleet",
                &format!("SELECT last_good_commit FROM repos WHERE name = '{of_a}'"),
            ) == new
        },
    );
    assert_eq!(
        pg.sql(
            "fleet",
            &format!("SELECT replica FROM pulls WHERE repo = '{of_a}' AND new = '{new}'"),
        ),
        "b"
    );
    let (code, log) = b.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert_eq!(leader(), "", "a replica that stops gives the lead back");
}

#[test]
fn replicas_that_all_pull_keep_every_checkout_tell_each_change_once_and_run_fleet_steps_once() {
    let pg = PostgresServer::start();
    let url = pg.database("fleet");
    let root = tempfile::tempdir().unwrap();
    let http = GitHttpServer::start(root.path());
    let mut app = Upstream::new(root.path(), "app");
    let hook = WebhookReceiver::start("hook-secret");
    let ran = root.path().join("ran");
    std::fs::create_dir(&ran).unwrap();
    let mut daemons = Vec::new();
    for name in ["a", "b", "c"] {
        let home = root.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("db-url"), &url).unwrap();
        std::fs::write(home.join("hook.secret"), "hook-secret\n").unwrap();
        let port = free_port();
        // Each step notes who ran it for which revision.
        let note = |file: &str| {
            toml::Value::from(vec![
                "sh",
                "-c",
                &format!(
                    "echo \"$WHO $GITPULSE_NEW\" >> {}",
                    ran.join(file).display()
                ),
            ])
        };
        let who = toml::Value::Table(
            [("WHO".to_string(), toml::Value::from(name))]
                .into_iter()
                .collect(),
        );
        let repo = Repo::new("app", &http.url("app"), &home.join("c-app"))
            .set("branch", "main")
            .step(&[
                ("name", "purge-cache".into()),
                ("run", note("fleet")),
                ("once", "fleet".into()),
                ("env", who.clone()),
            ])
            .step(&[
                ("name", "reload".into()),
                ("run", note("replica")),
                ("env", who),
            ]);
        let config = ConfigFile::daemon_on(port)
            .defaults("schedule", "every 1s jitter 0s")
            .store("backend", "postgres")
            .store("url_file", "db-url")
            .fleet("mode", "replicate")
            .fleet("replica", name)
            .changed_webhook(&hook.url("/events"), "hook.secret")
            .repo(repo)
            .write_in(&home);
        daemons.push((name, Daemon::start(&config, port, &[]), config));
    }
    let logs: Vec<(&str, &Daemon)> = daemons.iter().map(|(n, d, _)| (*n, d)).collect();
    let every_checkout_at = |sha: &str| {
        ["a", "b", "c"].iter().all(|n| {
            let dir = root.path().join(n).join("c-app");
            dir.join(".git").exists() && checkout_state(&dir).0 == sha
        })
    };
    let first = app.head();
    wait_for_with_logs(
        "every replica's clone",
        Duration::from_secs(30),
        &logs,
        || every_checkout_at(&first),
    );
    let new = app.commit("pushed");
    wait_for_with_logs(
        "every replica at the new commit",
        Duration::from_secs(30),
        &logs,
        || every_checkout_at(&new),
    );
    let lines = |file: &str| -> Vec<String> {
        std::fs::read_to_string(ran.join(file))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    wait_for_with_logs(
        "the steps of both revisions",
        Duration::from_secs(30),
        &logs,
        || lines("replica").len() == 6 && lines("fleet").len() == 2,
    );

    // Each replica keeps its own state of its own checkout: its status
    // says where its checkout is; the shared tables hold none of it.
    for (name, _, config) in &daemons {
        let rows = status_rows(config);
        assert_eq!(
            rows[0]["state"]["last_commit"],
            new.as_str(),
            "{name}: {rows:?}"
        );
    }
    assert_eq!(pg.sql("fleet", "SELECT count(*) FROM public.pulls"), "0");
    // A change is told once, whoever recorded it first: every replica's
    // two changes are events, and two messages stand for the six.
    wait_for_with_logs(
        "every replica's events",
        Duration::from_secs(30),
        &logs,
        || {
            pg.sql(
                "fleet",
                "SELECT count(*) FROM events WHERE kind = 'changed'",
            ) == "6"
        },
    );
    assert_eq!(
        pg.sql(
            "fleet",
            "SELECT count(*) FROM outbox WHERE kind = 'changed'"
        ),
        "2"
    );
    let told = hook.wait_for(2, Duration::from_secs(30));
    let mut news: Vec<String> = told
        .iter()
        .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m.body).ok())
        .filter_map(|v| v["new"].as_str().map(String::from))
        .collect();
    news.sort();
    let mut expected = vec![first.clone(), new.clone()];
    expected.sort();
    assert_eq!(news, expected, "{told:?}");
    // The fleet step ran once per revision, the replica step on each.
    let fleet_ran: Vec<String> = lines("fleet");
    assert!(
        fleet_ran.iter().any(|l| l.ends_with(&first))
            && fleet_ran.iter().any(|l| l.ends_with(&new)),
        "{fleet_ran:?}"
    );
    let replica_ran = lines("replica");
    for name in ["a", "b", "c"] {
        assert_eq!(
            replica_ran
                .iter()
                .filter(|l| l.starts_with(&format!("{name} ")))
                .count(),
            2,
            "{replica_ran:?}"
        );
    }
    drop(logs);
    for (_, d, _) in daemons {
        let (code, log) = d.stop_with_log();
        assert_eq!(code, 0, "{log}");
    }
}
