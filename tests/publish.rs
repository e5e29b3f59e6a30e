//! `publish = "symlink"`: each revision written whole beside DIR and DIR
//! flipped to it atomically, as git-sync does; kill -9 at any point leaves
//! DIR on a complete revision; before_publish steps gate the flip.

use crate::common::*;

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

/// The revisions written under `.c.gitpulse/worktrees` (their marks and
/// unfinished ones aside).
fn worktrees(root: &Path) -> usize {
    std::fs::read_dir(root.join(".c.gitpulse/worktrees"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
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

#[test]
fn junk_in_the_worktrees_folder_is_never_taken_for_a_revision_nor_kept() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let url = up.file_url();
    let dir = root.path().join("c");
    let symlink = ["--publish", "symlink"];
    assert_eq!(pull(&url, &dir, &symlink).code, 0);
    let first = up.head();
    let second = up.commit("second");
    // An empty directory already named for the next revision, a stray
    // file and a stray directory.
    let folder = root.path().join(".c.gitpulse/worktrees");
    std::fs::create_dir(folder.join(&second)).unwrap();
    std::fs::write(folder.join("notes.txt"), "left here").unwrap();
    std::fs::create_dir(folder.join("junk")).unwrap();

    let run = pull(&url, &dir, &symlink);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(published(&dir).1, second);
    assert_eq!(
        files_in(&dir),
        files_of(&up.bare, &second),
        "rebuilt, whole"
    );
    assert!(!folder.join("notes.txt").exists() && !folder.join("junk").exists());
    // The revision before stays for readers inside it, junk or not.
    assert!(folder.join(&first).join("README").exists());
    assert_eq!(worktrees(root.path()), 2);
}

#[test]
fn a_planted_symlink_beside_dir_is_refused_and_nothing_outside_is_touched() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(outside.join("worktrees/precious")).unwrap();
    std::fs::write(outside.join("worktrees/precious/data"), "keep me").unwrap();
    std::os::unix::fs::symlink(&outside, root.path().join(".c.gitpulse")).unwrap();

    let run = pull(
        &up.file_url(),
        &root.path().join("c"),
        &["--publish", "symlink"],
    );
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("is a symlink"), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(outside.join("worktrees/precious/data")).unwrap(),
        "keep me"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn a_relative_dir_sparse_sets_and_submodules_are_published_as_the_checkout_has_them() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    up.commit_many("docs/guide", 2, "docs");
    up.commit_many("src", 2, "src");

    // A relative DIR: nothing of the layout inside the published tree,
    // files in subdirectories published.
    let run = finish(
        pull_command(&up.file_url(), Path::new("rel"), &["--publish", "symlink"])
            .current_dir(root.path())
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let rel = root.path().join("rel");
    assert_eq!(files_in(&rel), files_of(&up.bare, &up.head()));

    // A sparse set: only what it includes.
    let sparse = root.path().join("sparse");
    let run = pull(
        &up.file_url(),
        &sparse,
        &["--publish", "symlink", "--sparse", "docs"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let shown = files_in(&sparse);
    assert!(
        shown.iter().any(|f| f.starts_with("docs/guide/")),
        "{shown:?}"
    );
    assert!(!shown.iter().any(|f| f.starts_with("src/")), "{shown:?}");
    assert!(shown.contains(&"README".to_string()), "{shown:?}");

    // A submodule: its files, as the checkout beside DIR has them.
    let lib = Upstream::new(root.path(), "lib");
    up.add_submodule(&lib.file_url(), "vendor/lib", None);
    let with_sub = root.path().join("with-sub");
    let run = pull(
        &up.file_url(),
        &with_sub,
        &[
            "--publish",
            "symlink",
            "--submodules",
            "--allow-local-submodules",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        with_sub.join("vendor/lib/README").is_file(),
        "{:?}",
        files_in(&with_sub)
    );
}

#[test]
fn a_failing_before_publish_gate_on_the_command_line_keeps_dir_on_the_old_revision() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let url = up.file_url();
    let dir = root.path().join("c");
    let allow = root.path().join("allow");
    let gate = format!("test -e '{}' && test -e README", allow.display());
    let args = [
        "--publish",
        "symlink",
        "--before-publish-shell",
        gate.as_str(),
    ];

    // Refused from the start: nothing published, exit 1.
    let run = pull(&url, &dir, &args);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("gate `test -e"), "{run:?}");
    assert!(std::fs::symlink_metadata(&dir).is_err(), "nothing at DIR");

    std::fs::write(&allow, "").unwrap();
    let run = pull(&url, &dir, &args);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    let first = up.head();
    assert_eq!(published(&dir).1, first);

    // A new revision the gate refuses: DIR stays, the pull fails; once the
    // gate passes, the next pull publishes it.
    std::fs::remove_file(&allow).unwrap();
    let second = up.commit("second");
    let run = pull(&url, &dir, &args);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("was not published"), "{run:?}");
    assert_eq!(published(&dir).1, first);
    std::fs::write(&allow, "").unwrap();
    let run = pull(&url, &dir, &args);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(published(&dir).1, second);

    // A gate needs a publication to gate.
    let run = pull(&url, &root.path().join("d"), &["--before-publish", "true"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--publish symlink"), "{run:?}");
}
