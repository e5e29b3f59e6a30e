//! Running the real `gitpulse` binary from end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub use gitpulse_testkit::*;

/// What a process printed: stdout, then stderr.
pub fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a checker the tests rely on (promtool, hadolint, actionlint …)
/// from the repository's root, with `stdin` fed to it: whether it passed,
/// and what it said. `hint` says where the tool comes from when missing.
pub fn check_with(program: &str, args: &[&str], stdin: Option<&str>, hint: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} ({hint})"));
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), said(&out))
}

/// What `gitpulse ARGS --config CONFIG` prints as a JSON array.
fn json_rows(args: &[&str], config: &Path) -> Vec<serde_json::Value> {
    let out = gitpulse()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", said(&out)));
    rows.as_array().cloned().unwrap_or_default()
}

/// `gitpulse history REPO --json` for `config`, newest first.
pub fn history(config: &Path, repo: &str) -> Vec<serde_json::Value> {
    json_rows(&["history", repo, "--json", "--limit", "500"], config)
}

/// `gitpulse status --json` for `config`: one row per repository.
pub fn status_rows(config: &Path) -> Vec<serde_json::Value> {
    json_rows(&["status", "--json"], config)
}

/// How many entries of `repo`'s history have this `kind`.
pub fn history_count(config: &Path, repo: &str, kind: &str) -> usize {
    history(config, repo)
        .iter()
        .filter(|e| e["kind"] == kind)
        .count()
}

/// The binary under test.
pub fn gitpulse() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitpulse"));
    // Keep the user's own caches and plugin state out of the tests.
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gitpulse-home");
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GITPULSE_CACHE_DIR", scratch.join("cache"))
        .env("XDG_STATE_HOME", scratch.join("state"))
        // Nor the user's own config (the hooks read it) or trust records.
        .env("XDG_CONFIG_HOME", scratch.join("config"));
    cmd
}

/// What one `gitpulse pull --json` run produced.
pub struct Run {
    pub code: i32,
    pub json: serde_json::Value,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn outcome(&self) -> &str {
        self.json["outcome"].as_str().unwrap_or("<none>")
    }

    /// The failure classes of the attempts, in order.
    pub fn classes(&self) -> Vec<String> {
        self.json["attempts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x["class"].as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn new_sha(&self) -> Option<&str> {
        self.json["new"].as_str()
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `gitpulse pull URL DIR --json` with fast retry settings plus `extra`.
pub fn pull(url: &str, dir: &Path, extra: &[&str]) -> Run {
    finish(
        pull_command(url, dir, extra)
            .output()
            .expect("gitpulse runs"),
    )
}

/// The command [`pull`] runs, for callers that add to it (environment).
pub fn pull_command(url: &str, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = gitpulse();
    cmd.args(["pull", url])
        .arg(dir)
        .args([
            "--json",
            "--backoff-base",
            "50ms",
            "--backoff-max",
            "200ms",
            "--timeout",
            "20s",
            "--seed",
            "7",
        ])
        .args(extra);
    cmd
}

pub fn finish(out: Output) -> Run {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    Run {
        code: out.status.code().unwrap_or(-1),
        json,
        stdout,
        stderr,
    }
}

/// The commit a checkout's HEAD points at, and whether its worktree is clean.
pub fn checkout_state(dir: &Path) -> (String, bool) {
    let head = git_ok(dir, &["rev-parse", "HEAD"]);
    let status = git_ok(dir, &["status", "--porcelain"]);
    (head, status.is_empty())
}

/// `git fsck --full` passes.
pub fn fsck_ok(dir: &Path) -> bool {
    git(dir, &["fsck", "--full", "--no-progress"])
        .status
        .success()
}

pub const SHORT: Duration = Duration::from_millis(300);

/// A daemon process started by the test; killed if still running when dropped.
pub struct Daemon {
    pub child: Child,
    log: PathBuf,
    pub port: u16,
    /// Where the daemon writes its API token (per its config).
    pub token_file: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, port: u16, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(config, port, extra, &[])
    }

    /// Like [`Daemon::start`], with `env` set for the daemon alone.
    pub fn start_with_env(
        config: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = config.with_extension(format!("log{}", std::process::id() ^ port as u32));
        let child = gitpulse()
            .args(["daemon", "--config"])
            .arg(config)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let token_file = gitpulse::config::load(config)
            .map(|c| c.daemon.api_token_file())
            .unwrap_or_default();
        let mut daemon = Daemon {
            child,
            log,
            port,
            token_file,
        };
        wait_for("the daemon to listen", Duration::from_secs(30), || {
            assert!(
                daemon.child.try_wait().unwrap().is_none(),
                "daemon exited early:\n{}",
                daemon.log()
            );
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        daemon
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Times the daemon's threads went to sleep and were woken so far
    /// (voluntary context switches, summed over its threads).
    pub fn wakeups(&self) -> u64 {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .map(|dir| {
                dir.filter_map(|t| t.ok())
                    .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
                    .flat_map(|status| {
                        status
                            .lines()
                            .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                            .filter_map(|n| n.trim().parse::<u64>().ok())
                            .collect::<Vec<_>>()
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGTERM, then the exit code and all the daemon logged.
    pub fn stop_with_log(self) -> (i32, String) {
        let log = self.log.clone();
        let code = self.stop();
        (code, std::fs::read_to_string(log).unwrap_or_default())
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> i32 {
        self.signal("TERM");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < until,
                "daemon did not stop:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /v1/status` with the daemon's token.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.request("GET", "/v1/status", Some(&self.token()), None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `GET path` with extra `headers`: `(status, body)`.
    pub fn request_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut r = agent().get(&format!("http://127.0.0.1:{}{path}", self.port));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let mut response = r.call().unwrap();
        let code = response.status().as_u16();
        (
            code,
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    }

    /// `POST path` with `headers` and `body` as is: `(status, body)`.
    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
        let mut r = agent().post(&format!("http://127.0.0.1:{}{path}", self.port));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let mut response = r.send(body).unwrap();
        let code = response.status().as_u16();
        (
            code,
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    }

    /// The API token the daemon wrote.
    pub fn token(&self) -> String {
        std::fs::read_to_string(&self.token_file)
            .unwrap()
            .trim()
            .to_string()
    }

    /// A request to the daemon: `(status, body)`. `token` goes in as a
    /// bearer token; `json` is sent as the body with a JSON content type.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        json: Option<&str>,
    ) -> (u16, String) {
        let agent = agent();
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut response = match method {
            "GET" => {
                let mut r = agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match json {
                    Some(body) => r.content_type("application/json").send(body),
                    None => r.send_empty(),
                }
            }
        }
        .unwrap();
        let code = response.status().as_u16();
        (
            code,
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    }
}

/// An HTTP client that returns every status as an answer, not an error.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`wait_for`], showing what each of `daemons` logged when it times
/// out (several daemons at once: which one did what is the question).
pub fn wait_for_with_logs(
    what: &str,
    limit: Duration,
    daemons: &[(&str, &Daemon)],
    mut done: impl FnMut() -> bool,
) {
    let until = Instant::now() + limit;
    while !done() {
        if Instant::now() >= until {
            let logs: Vec<String> = daemons
                .iter()
                .map(|(name, d)| format!("--- {name}:\n{}", d.log()))
                .collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A GitHub push of main that moved it to `after`.
pub fn github_push_of(url: &str, after: &str) -> String {
    serde_json::json!({
        "ref": "refs/heads/main",
        "after": after,
        "deleted": false,
        "repository": { "clone_url": url, "default_branch": "main" },
    })
    .to_string()
}

/// Sends a GitHub push signed with `secret` as delivery `id`.
pub fn send_github(d: &Daemon, body: &str, secret: &str, event: &str, id: &str) -> (u16, String) {
    let signature = format!(
        "sha256={}",
        hmac_sha256_hex(secret.as_bytes(), body.as_bytes())
    );
    d.post_raw(
        "/hooks/github",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", id),
            ("X-Hub-Signature-256", &signature),
        ],
        body.as_bytes(),
    )
}
