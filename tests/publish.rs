//! `publish = "symlink"`: each revision written whole beside DIR and DIR
//! flipped to it atomically, as git-sync does; kill -9 at any point leaves
//! DIR on a complete revision; before_publish steps gate the flip.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where DIR points (relative to its parent) and the commit it names.
fn published(dir: &Path) -> (PathBuf, String) {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    assert!(
        meta.file_type().is_symlink(),
        "{} is not a symlink",
        dir.display()
    );
    let target = std::fs::read_link(dir).unwrap();
    let sha = target.file_name().unwrap().to_string_lossy().into_owned();
    (dir.parent().unwrap().join(&target), sha)
}

/// The files of `sha` in `bare`, sorted.
fn files_of(bare: &Path, sha: &str) -> Vec<String> {
    let listed = git_ok(bare, &["ls-tree", "-r", "--name-only", sha]);
    let mut files: Vec<String> = listed.lines().map(String::from).collect();
    files.sort();
    files
}

/// The files under `dir`, relative, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn worktrees(root: &Path) -> usize {
    std::fs::read_dir(root.join(".c.gitpulse/worktrees"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn symlink_publication_flips_keeps_a_reader_s_worktree_and_switches_both_ways() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let http = GitHttpServer::start(root.path());
    let url = http.url("app");
    let dir = root.path().join("c");
    let symlink = ["--publish", "symlink"];

    let run = pull(&url, &dir, &symlink);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    let (first_tree, sha) = published(&dir);
    assert_eq!(sha, up.head());
    assert_eq!(
        files_in(&dir),
        files_of(&up.bare, &sha),
        "DIR shows the whole revision"
    );
    assert!(!dir.join(".git").exists(), "a published tree is files only");
    assert_eq!(pull(&url, &dir, &symlink).outcome(), "unchanged");

    // A reader inside the old tree keeps it while DIR moves on.
    let second = up.commit("second");
    let run = pull(&url, &dir, &symlink);
    assert_eq!(
        (run.outcome(), run.json["commits"].as_u64()),
        ("updated", Some(1)),
        "{run:?}"
    );
    assert_eq!(run.json["old"], sha.as_str());
    assert_eq!(published(&dir).1, second);
    assert!(dir.join("file2.txt").exists());
    assert!(first_tree.join("README").exists() && !first_tree.join("file2.txt").exists());
    assert_eq!(worktrees(root.path()), 2);
    // keep_worktrees = 1: the one before the previous goes.
    let third = up.commit("third");
    assert_eq!(pull(&url, &dir, &symlink).outcome(), "updated");
    assert_eq!(published(&dir).1, third);
    assert!(!first_tree.exists());
    assert_eq!(worktrees(root.path()), 2);

    // Back to in place: DIR is the checkout again, the rest is gone.
    let run = pull(&url, &dir, &[]);
    assert_eq!((run.code, run.outcome()), (0, "unchanged"), "{run:?}");
    assert!(!std::fs::symlink_metadata(&dir)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(checkout_state(&dir), (third.clone(), true));
    assert!(!root.path().join(".c.gitpulse").exists());

    // And an in-place checkout switched to symlinks keeps its history.
    let fourth = up.commit("fourth");
    let run = pull(&url, &dir, &symlink);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(run.json["old"], third.as_str());
    assert_eq!(published(&dir).1, fourth);
    assert!(fsck_ok(&root.path().join(".c.gitpulse/repo")));

    let run = pull(&url, &dir, &["--publish", "symlink", "--mode", "mirror"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn kill_9_at_any_point_leaves_dir_on_a_complete_revision() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let dir = root.path().join("c");
    let url = up.file_url();
    assert_eq!(pull(&url, &dir, &["--publish", "symlink"]).code, 0);
    let mut rng = 0x9e37_79b9_u64;
    for round in 0..8 {
        up.commit_many("data", 400, &format!("round {round}"));
        let mut child = pull_command(&url, &dir, &["--publish", "symlink"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // A pseudo-random point in the pull (fault injection by process
        // control): 0 to 150 ms in.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 150));
        let _ = child.kill();
        child.wait().unwrap();
        let (tree, sha) = published(&dir);
        assert_eq!(
            files_in(&tree),
            files_of(&up.bare, &sha),
            "round {round}: DIR points at an incomplete revision"
        );
    }
    // The next pull finishes the job.
    let run = pull(&url, &dir, &["--publish", "symlink"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(published(&dir).1, up.head());
    assert_eq!(files_in(&dir), files_of(&up.bare, &up.head()));
}

#[test]
fn a_failing_before_publish_step_keeps_the_old_revision_published() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let http = GitHttpServer::start(root.path());
    let port = free_port();
    let dir = root.path().join("c");
    let seen = root.path().join("after.log");
    let config = root.path().join("gitpulse.toml");
    let repo = Repo::new("app", &http.url("app"), &dir)
        .set("publish", "symlink")
        .step(&[
            ("name", "check".into()),
            (
                "run",
                "test ! -e BAD || { echo BAD is present in $(pwd); exit 4; }".into(),
            ),
            ("shell", true.into()),
            ("before_publish", true.into()),
        ])
        .step(&[
            ("name", "after".into()),
            (
                "run",
                format!("readlink \"$GITPULSE_DIR\" >> '{}'", seen.display()).into(),
            ),
            ("shell", true.into()),
        ]);
    ConfigFile::daemon_on(port)
        .defaults("schedule", "every 1s jitter 0s")
        .repo(repo)
        .write(&config);
    let daemon = Daemon::start(&config, port, &[]);
    let first = up.head();
    wait_for("the first revision", Duration::from_secs(30), || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.contains(&first))
    });

    let bad = up.commit_file("BAD", "no\n", "a bad revision");
    wait_for("the gate to refuse it", Duration::from_secs(30), || {
        daemon.log().lines().any(|l| l.contains("step-failed"))
    });
    assert_eq!(published(&dir).1, first, "the old revision stays");
    assert!(!std::fs::read_to_string(&seen).unwrap().contains(&bad));

    let good = up.remove("BAD", "fixed");
    wait_for("the fixed revision", Duration::from_secs(30), || {
        published(&dir).1 == good
    });
    wait_for("the after step", Duration::from_secs(30), || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.contains(&good))
    });
    assert_eq!(daemon.stop(), 0);
}
