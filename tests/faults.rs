//! Every failure class this machine can produce, through real servers and a
//! fault-injecting proxy: how it is classified, whether it is retried, and
//! that the pull recovers when the fault goes away.

use crate::common::*;
use std::time::Duration;

fn setup() -> Served {
    Served::new("app")
}

trait Checkout {
    fn checkout(&self) -> std::path::PathBuf;
    fn pull(&self, extra: &[&str]) -> Run;
}

impl Checkout for Served {
    fn checkout(&self) -> std::path::PathBuf {
        self.dir("checkout")
    }
    fn pull(&self, extra: &[&str]) -> Run {
        pull(&self.url(), &self.checkout(), extra)
    }
}

#[test]
fn server_errors_are_retried_until_the_server_recovers() {
    let s = setup();
    s.proxy.push_times(Fault::Status(503), 2);
    let run = s.pull(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.outcome(), "cloned");
    assert_eq!(run.classes(), ["server-error", "server-error"], "{run:?}");
    assert_eq!(run.json["attempts"][0]["http_status"], 503);
    assert!(run.json["attempts"][1]["delay_ms"].as_u64().is_some());
    assert_eq!(checkout_state(&s.checkout()), (s.up.head(), true));
}

#[test]
fn a_server_that_stays_down_exhausts_the_attempts() {
    let s = setup();
    s.proxy.set_always(Some(Fault::Status(500)));
    let run = s.pull(&["--max-attempts", "3"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.outcome(), "failed");
    assert_eq!(run.classes(), ["server-error"; 3], "{run:?}");
    assert_eq!(run.json["reason"], "attempts exhausted");
    assert!(run.json["attempts"][2]["delay_ms"].is_null());
    assert!(run.json["new"].is_null());
    assert!(
        !s.checkout().exists(),
        "a failed clone leaves nothing behind"
    );
    assert_eq!(s.proxy.requests(), 3);
}

#[test]
fn rate_limiting_waits_at_least_retry_after() {
    let s = setup();
    s.proxy.push(Fault::RateLimited {
        retry_after_secs: 1,
    });
    let run = s.pull(&["--backoff-max", "5s"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.classes(), ["rate-limited"], "{run:?}");
    assert_eq!(run.json["attempts"][0]["http_status"], 429);
    let delay = run.json["attempts"][0]["delay_ms"].as_u64().unwrap();
    assert!(delay >= 1000, "Retry-After: 1 honoured, got {delay} ms");
}

#[test]
fn auth_and_not_found_are_never_retried() {
    for (status, class) in [(401, "auth"), (403, "auth"), (404, "not-found")] {
        let s = setup();
        s.proxy.set_always(Some(Fault::Status(status)));
        let run = s.pull(&[]);
        assert_eq!(run.code, 1, "{run:?}");
        assert_eq!(run.classes(), [class], "HTTP {status}");
        assert_eq!(run.json["attempts"][0]["http_status"], status);
        assert_eq!(run.json["reason"], "not retryable");
        assert_eq!(
            s.proxy.requests(),
            1,
            "exactly one request for HTTP {status}"
        );
    }
}

#[test]
fn a_reset_connection_is_retried() {
    let s = setup();
    s.proxy.push(Fault::Reset);
    let run = s.pull(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.classes(), ["connect"], "{run:?}");
}

#[test]
fn a_stalled_server_times_out_and_the_retry_succeeds() {
    let s = setup();
    s.proxy.push(Fault::Stall(Duration::from_secs(20)));
    let run = s.pull(&["--timeout", "1s"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.classes(), ["timeout"], "{run:?}");
    assert!(
        run.json["duration_ms"].as_u64().unwrap() < 15_000,
        "the stall did not hang the pull"
    );
}

#[test]
fn a_trickling_server_is_a_stall_long_before_the_attempt_limit() {
    let s = setup();
    s.proxy.push(Fault::Slow {
        chunk: 16,
        pause: Duration::from_millis(500),
    });
    let run = s.pull(&[
        "--timeout",
        "60s",
        "--low-speed-limit",
        "1000",
        "--low-speed-time",
        "2s",
    ]);
    assert_eq!(run.code, 0, "the retry, at full speed, succeeds: {run:?}");
    assert_eq!(run.classes(), ["timeout"], "{run:?}");
    let message = run.json["attempts"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("stalled: fewer than 1000 bytes/s for 2s"),
        "{run:?}"
    );
    assert_eq!(run.json["attempts"][0]["limit"]["total"], 60_000, "{run:?}");
}

#[test]
fn a_truncated_pack_is_a_protocol_failure_and_leaves_no_damage() {
    let mut s = setup();
    // Enough history that the pack is larger than what the proxy lets through.
    for i in 0..20 {
        s.up.commit(&format!("commit {i}"));
    }
    s.proxy.push(Fault::TruncatePack { keep_bytes: 300 });
    let run = s.pull(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.classes(), ["protocol"], "{run:?}");
    assert!(fsck_ok(&s.checkout()));
    assert_eq!(checkout_state(&s.checkout()), (s.up.head(), true));
}

#[test]
fn a_pack_that_stops_dead_is_a_stall_after_the_low_speed_time_not_the_attempt_timeout() {
    let mut s = setup();
    for i in 0..20 {
        s.up.commit(&format!("commit {i}"));
    }
    // 300 bytes of the pack, then silence on an open connection for a
    // minute: without a read timeout only the 2-minute attempt limit (or
    // the proxy giving up) would end it.
    s.proxy.push(Fault::FreezePack {
        keep_bytes: 300,
        hold: Duration::from_secs(60),
    });
    let run = s.pull(&[
        "--max-attempts",
        "1",
        "--low-speed-time",
        "2s",
        "--timeout",
        "120s",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["timeout"], "{run:?}");
    let message = run.json["attempts"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains("stalled"), "{run:?}");
}

#[test]
fn the_overall_deadline_cancels_a_stalled_attempt() {
    let s = setup();
    s.proxy
        .set_always(Some(Fault::Stall(Duration::from_secs(20))));
    let run = s.pull(&["--timeout", "10s", "--deadline", "1s"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["cancelled"], "{run:?}");
    assert_eq!(run.json["reason"], "deadline reached");
}

#[test]
fn connection_refused_is_connect() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let run = pull(
        &format!("http://127.0.0.1:{port}/app.git"),
        &root.path().join("d"),
        &["--max-attempts", "2"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["connect", "connect"], "{run:?}");
}

#[test]
fn an_unresolvable_host_is_dns() {
    let root = tempfile::tempdir().unwrap();
    let run = pull(
        "http://no-such-host.invalid/app.git",
        &root.path().join("d"),
        &["--max-attempts", "1"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["dns"], "{run:?}");
}

#[test]
fn https_to_a_plain_http_server_is_tls() {
    let s = setup();
    let url = s.proxy.url("app").replace("http://", "https://");
    let run = pull(&url, &s.checkout(), &["--max-attempts", "1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["tls"], "{run:?}");
}

#[test]
fn a_missing_branch_is_ref_not_found_and_names_the_branches() {
    let s = setup();
    let run = s.pull(&["--branch", "nope"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["ref-not-found"], "{run:?}");
    let msg = run.json["attempts"][0]["message"].as_str().unwrap();
    assert!(msg.contains("nope") && msg.contains("main"), "{msg}");
}

#[test]
fn missing_repositories_are_not_found_on_every_transport() {
    let root = tempfile::tempdir().unwrap();
    let _up = Upstream::new(root.path(), "app");
    let daemon = GitDaemon::start(root.path());
    let server = GitHttpServer::start(root.path());
    let missing_file = format!("file://{}/missing.git", root.path().display());
    for url in [daemon.url("missing"), server.url("missing"), missing_file] {
        let run = pull(&url, &root.path().join("d"), &[]);
        assert_eq!(run.code, 1, "{url}: {run:?}");
        assert_eq!(run.classes(), ["not-found"], "{url}: {run:?}");
    }
}

#[test]
fn a_damaged_upstream_is_corrupt_repo() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    // Remove the loose object of the tip commit's tree.
    let tree = git_ok(&up.bare, &["rev-parse", "main^{tree}"]);
    std::fs::remove_file(up.bare.join("objects").join(&tree[..2]).join(&tree[2..])).unwrap();
    let run = pull(
        &up.file_url(),
        &root.path().join("d"),
        &["--max-attempts", "1"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["corrupt-repo"], "{run:?}");
}

#[test]
fn a_git_lock_held_by_someone_else_is_lock_held_and_left_alone() {
    let s = setup();
    assert_eq!(s.pull(&[]).code, 0);
    let lock = s.checkout().join(".git/index.lock");
    std::fs::write(&lock, "").unwrap();
    let run = s.pull(&["--max-attempts", "2"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["lock-held", "lock-held"], "{run:?}");
    assert!(lock.exists(), "another process's lock is never deleted");
    std::fs::remove_file(&lock).unwrap();
    assert_eq!(s.pull(&[]).code, 0);
}

#[test]
#[cfg_attr(
    not(gitpulse_tests_as_root),
    ignore = "mounting the 1 MiB tmpfs it fills needs root"
)]
fn a_full_disk_is_disk_full() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    // ~2 MB of incompressible content: more than the 1 MiB filesystem below.
    let blob: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(up.bare.parent().unwrap().join("app.work/blob.bin"), &blob).unwrap();
    up.commit("big blob");
    let small = root.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(mounted, "mounting a 1 MiB tmpfs (as root) failed");
    let run = pull(&up.file_url(), &small.join("d"), &["--max-attempts", "1"]);
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["disk-full"], "{run:?}");
}
