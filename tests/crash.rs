//! Crash safety and exclusion: kill -9 during a clone and during an update,
//! then the next pull completes cleanly; two pulls of one DIR never overlap.

use crate::common::*;
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn spawn_pull(url: &str, dir: &Path, extra: &[&str]) -> Child {
    gitpulse()
        .args(["pull", url])
        .arg(dir)
        .args(["--json", "--backoff-base", "50ms", "--backoff-max", "200ms"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Writes `n` files of pseudo-random (incompressible) content into the
/// upstream's scratch clone and commits them.
fn commit_files(up: &mut Upstream, n: usize, size: usize, salt: u32) -> String {
    let work = up.bare.parent().unwrap().join(format!("{}.work", up.name));
    let dir = work.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let mut x = salt.wrapping_mul(2_654_435_761).wrapping_add(1);
    for i in 0..n {
        let content: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        std::fs::write(dir.join(format!("f{i:05}.bin")), content).unwrap();
    }
    up.commit(&format!("rewrite {n} files ({salt})"))
}

fn assert_consistent(dir: &Path, up: &Upstream) {
    assert!(fsck_ok(dir), "git fsck fails in {}", dir.display());
    assert_eq!(
        checkout_state(dir),
        (up.head(), true),
        "HEAD and worktree match upstream"
    );
    assert!(!dir.join(".git/gitpulse-intent").exists());
    assert!(!dir.join(".git/index.lock").exists());
}

#[test]
fn a_clone_killed_midway_leaves_no_checkout_and_the_next_pull_completes() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    commit_files(&mut up, 40, 50_000, 1); // ~2 MB of pack
    let server = GitHttpServer::start(root.path());
    let proxy = FaultProxy::start(server.addr());
    proxy.set_always(Some(Fault::Slow {
        chunk: 32 * 1024,
        pause: Duration::from_millis(25),
    }));
    let dir = root.path().join("checkout");

    let mut child = spawn_pull(&proxy.url("app"), &dir, &[]);
    wait_for("the pack download", Duration::from_secs(20), || {
        proxy.requests() >= 2
    });
    thread::sleep(Duration::from_millis(400));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the clone was still running"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!dir.exists(), "a half-done clone is never visible at DIR");

    proxy.set_always(None);
    let run = pull(&proxy.url("app"), &dir, &[]);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert_consistent(&dir, &up);
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("gitpulse-clone"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the dead clone's scratch directory was swept"
    );
}

#[test]
fn updates_killed_at_any_moment_are_finished_by_the_next_pull() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    commit_files(&mut up, 1500, 600, 0);
    let dir = root.path().join("checkout");
    assert_eq!(pull(&up.file_url(), &dir, &[]).code, 0);

    let mut killed_while_running = 0;
    for (round, delay_ms) in [2u64, 8, 15, 25, 40, 60, 90, 130].into_iter().enumerate() {
        commit_files(&mut up, 1500, 600, round as u32 + 10);
        let mut child = spawn_pull(&up.file_url(), &dir, &[]);
        thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            killed_while_running += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();

        let run = pull(&up.file_url(), &dir, &[]);
        assert_eq!(
            run.code, 0,
            "round {round} (kill after {delay_ms} ms): {run:?}"
        );
        assert_consistent(&dir, &up);
    }
    assert!(
        killed_while_running >= 4,
        "only {killed_while_running} kills landed mid-update"
    );
}

#[test]
fn a_damaged_checkout_is_recloned_beside_and_swapped_in() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let dir = root.path().join("checkout");
    assert_eq!(pull(&up.file_url(), &dir, &[]).code, 0);
    // Lose every object: HEAD now names a commit that is not there.
    std::fs::remove_dir_all(dir.join(".git/objects")).unwrap();
    std::fs::create_dir_all(dir.join(".git/objects/pack")).unwrap();
    up.commit("after the damage");
    let run = pull(&up.file_url(), &dir, &[]);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert!(run.stderr.contains("damaged"), "{run:?}");
    assert_consistent(&dir, &up);
    let kept = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains("gitpulse-damaged"));
    assert!(kept, "the damaged copy is kept for inspection");
}

#[test]
fn two_pulls_of_one_dir_never_overlap() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    commit_files(&mut up, 40, 50_000, 3);
    let server = GitHttpServer::start(root.path());
    let proxy = FaultProxy::start(server.addr());
    proxy.set_always(Some(Fault::Slow {
        chunk: 64 * 1024,
        pause: Duration::from_millis(25),
    }));
    let dir = root.path().join("checkout");

    let first = spawn_pull(&proxy.url("app"), &dir, &[]);
    wait_for("the first pull to start", Duration::from_secs(20), || {
        proxy.requests() >= 1
    });

    // An impatient second pull gives up with lock-held …
    let run = pull(
        &proxy.url("app"),
        &dir,
        &["--lock-wait", "200ms", "--max-attempts", "1"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["lock-held"], "{run:?}");

    // … a patient one waits its turn and finds the work done.
    let second = spawn_pull(&proxy.url("app"), &dir, &["--lock-wait", "60s"]);
    let first = finish(first.wait_with_output().unwrap());
    let second = finish(second.wait_with_output().unwrap());
    assert_eq!((first.code, first.outcome()), (0, "cloned"), "{first:?}");
    assert_eq!(
        (second.code, second.outcome()),
        (0, "unchanged"),
        "{second:?}"
    );
    assert_consistent(&dir, &up);
}

#[test]
fn ctrl_c_cancels_a_stalled_pull_promptly() {
    let root = tempfile::tempdir().unwrap();
    let _up = Upstream::new(root.path(), "app");
    let server = GitHttpServer::start(root.path());
    let proxy = FaultProxy::start(server.addr());
    proxy.set_always(Some(Fault::Stall(Duration::from_secs(30))));
    let dir = root.path().join("checkout");
    let child = spawn_pull(&proxy.url("app"), &dir, &["--timeout", "60s"]);
    wait_for("the request to stall", Duration::from_secs(10), || {
        proxy.requests() >= 1
    });
    let started = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let run = finish(child.wait_with_output().unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.json["reason"], "cancelled", "{run:?}");
    assert!(!dir.exists());
}

#[test]
fn recovery_finishes_only_what_the_update_was_changing() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    std::fs::write(root.path().join("app.work/notes.txt"), "shared notes\n").unwrap();
    up.commit("a file the next update leaves alone");
    let dir = root.path().join("checkout");
    assert_eq!(pull(&up.file_url(), &dir, &[]).code, 0);
    let target = up.commit("adds a file");
    // The state a gitpulse killed mid-checkout leaves: the target fetched,
    // its intent journaled, the branch not moved yet.
    git_ok(&dir, &["fetch", "-q", "origin"]);
    std::fs::write(
        dir.join(".git/gitpulse-intent"),
        format!("checkout {target} refs/heads/main\n"),
    )
    .unwrap();
    // Meanwhile the user edits a file the update does not touch.
    std::fs::write(dir.join("notes.txt"), "my own notes\n").unwrap();

    let run = pull(&up.file_url(), &dir, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(git_ok(&dir, &["rev-parse", "HEAD"]), target);
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "my own notes\n",
        "an edit the update did not touch survives recovery"
    );
    assert!(!dir.join(".git/gitpulse-intent").exists());
}

#[test]
fn damaged_copies_moved_aside_are_kept_a_week_then_removed() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let dir = root.path().join("checkout");
    let (old, recent) = (
        root.path().join(".checkout.gitpulse-damaged-1700000000-1"),
        root.path().join(".checkout.gitpulse-damaged-1800000000-2"),
    );
    for aside in [&old, &recent] {
        std::fs::create_dir_all(aside.join(".git")).unwrap();
    }
    let age = |path: &std::path::Path, ago: &str| {
        let touched = std::process::Command::new("touch")
            .args(["-d", ago])
            .arg(path)
            .status()
            .unwrap();
        assert!(touched.success());
    };
    age(&old, "10 days ago");
    assert_eq!(pull(&up.file_url(), &dir, &[]).code, 0);
    assert!(!old.exists(), "older than a week: removed");
    assert!(recent.exists(), "still kept for inspection");
    // Later pulls find it in the lock file's ledger, not by listing.
    age(&recent, "8 days ago");
    assert_eq!(pull(&up.file_url(), &dir, &[]).code, 0);
    assert!(!recent.exists(), "a week old now: removed");
}
