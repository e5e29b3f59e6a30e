//! What a checkout follows and how it is shaped: `--ref` (tags, commits,
//! HEAD), `--semver`, against real git servers, as git-sync and Flux
//! users rely on.

use crate::common::*;

use std::time::Duration;

/// HEAD is detached at `sha`, and the worktree is clean.
fn detached_at(dir: &std::path::Path, sha: &str) {
    assert_eq!(checkout_state(dir), (sha.to_string(), true));
    let symbolic = git(dir, &["symbolic-ref", "-q", "HEAD"]);
    assert!(!symbolic.status.success(), "HEAD should be detached");
}

#[test]
fn tags_are_checked_out_and_a_moved_tag_is_followed_forward_or_in_reset_mode() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let server = GitHttpServer::start(root.path());
    let url = server.url("app");
    let first = up.head();
    let second = up.commit("second");
    up.tag("v1", &first, true);
    up.tag("stable", &second, false);
    let dir = root.path().join("c");

    // An annotated tag: HEAD at its commit, not at the tag object.
    let run = pull(&url, &dir, &["--ref", "v1"]);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert_eq!(run.new_sha(), Some(first.as_str()));
    detached_at(&dir, &first);
    assert!(!dir.join("file2.txt").exists());

    // Upstream moves the tag forward: followed in ff mode.
    up.tag("v1", &second, true);
    let run = pull(&url, &dir, &["--ref", "v1"]);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    detached_at(&dir, &second);
    assert_eq!(pull(&url, &dir, &["--ref", "v1"]).outcome(), "unchanged");

    // Moved back: ff refuses and leaves the checkout; reset follows it.
    up.tag("v1", &first, true);
    let run = pull(&url, &dir, &["--ref", "v1"]);
    assert_eq!(run.classes(), ["diverged"], "{run:?}");
    assert!(run.stderr.contains("tag `v1` moved upstream"), "{run:?}");
    detached_at(&dir, &second);
    let run = pull(&url, &dir, &["--ref", "v1", "--mode", "reset"]);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(run.json["old"], second.as_str());
    detached_at(&dir, &first);

    // A lightweight tag, and back to following a branch.
    let run = pull(&url, &dir, &["--ref", "stable"]);
    assert_eq!(run.new_sha(), Some(second.as_str()), "{run:?}");
    detached_at(&dir, &second);
    let third = up.commit("third");
    let run = pull(&url, &dir, &["--branch", "main"]);
    assert_eq!(run.new_sha(), Some(third.as_str()), "{run:?}");
    assert_eq!(git_ok(&dir, &["symbolic-ref", "HEAD"]), "refs/heads/main");
    assert!(fsck_ok(&dir));
}

#[test]
fn a_pinned_commit_stays_put_and_can_be_repinned_to_known_and_unknown_commits() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let daemon = GitDaemon::start(root.path());
    let url = daemon.url("app");
    let first = up.head();
    let second = up.commit("second");
    up.commit("third");
    let dir = root.path().join("c");

    // An unambiguous prefix of a commit that is no branch's tip.
    let run = pull(&url, &dir, &["--ref", &first[..10]]);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    detached_at(&dir, &first);

    // Upstream moves; the pin does not, and a pin the checkout has needs no
    // server: it holds even with the server gone.
    let fourth = up.commit("fourth");
    let run = pull(&url, &dir, &["--ref", &first[..10]]);
    assert_eq!(run.outcome(), "unchanged", "{run:?}");
    let run = pull("git://127.0.0.1:9/none", &dir, &["--ref", &first]);
    assert_eq!(run.outcome(), "unchanged", "{run:?}");

    // Re-pinned to a commit the checkout already has, then to one it does not.
    let run = pull(&url, &dir, &["--ref", &second]);
    assert_eq!(
        (run.outcome(), run.json["commits"].as_u64()),
        ("updated", Some(1))
    );
    detached_at(&dir, &second);
    let run = pull(&url, &dir, &["--ref", &fourth]);
    assert_eq!(run.outcome(), "updated", "{run:?}");
    detached_at(&dir, &fourth);

    // A commit nobody has: ref-not-found, exit 1, the checkout unmoved.
    let run = pull(&url, &dir, &["--ref", "0123456789abcdef0123"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["ref-not-found"], "{run:?}");
    assert!(
        run.stderr
            .contains("commit `0123456789abcdef0123` not found"),
        "{run:?}"
    );
    detached_at(&dir, &fourth);
}

#[test]
fn head_follows_the_remotes_default_branch_when_it_changes() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let dir = root.path().join("c");
    let run = pull(&up.file_url(), &dir, &["--ref", "HEAD"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(git_ok(&dir, &["symbolic-ref", "HEAD"]), "refs/heads/main");

    let trunk = up.commit_on("trunk", "the new default");
    up.set_default_branch("trunk");
    let run = pull(&up.file_url(), &dir, &["--ref", "HEAD"]);
    assert_eq!(
        (run.outcome(), run.new_sha()),
        ("updated", Some(trunk.as_str())),
        "{run:?}"
    );
    assert_eq!(git_ok(&dir, &["symbolic-ref", "HEAD"]), "refs/heads/trunk");
    // Without --ref HEAD the checkout keeps its branch: trunk now.
    up.commit_on("main", "main moves on");
    assert_eq!(pull(&up.file_url(), &dir, &[]).outcome(), "unchanged");
}

#[test]
fn semver_checks_out_the_highest_matching_tag_and_moves_up_with_releases() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let server = GitHttpServer::start(root.path());
    let url = server.url("app");
    let mut shas = Vec::new();
    for tag in ["v1.0.0", "v1.2.0", "v1.10.0", "v2.0.0", "v1.11.0-rc.1"] {
        let sha = up.commit(tag);
        up.tag(tag, &sha, tag.contains('2'));
        shas.push(sha);
    }
    let dir = root.path().join("c");
    // v1.10.0 beats v1.2.0 (versions, not strings); the rc is left out.
    let run = pull(&url, &dir, &["--semver", ">=1.2, <2", "--branch", "main"]);
    assert_eq!(run.new_sha(), Some(shas[2].as_str()), "{run:?}");
    detached_at(&dir, &shas[2]);

    let sha = up.commit("1.10.1");
    up.tag("1.10.1", &sha, false);
    let run = pull(&url, &dir, &["--semver", ">=1.2, <2"]);
    assert_eq!(
        (run.outcome(), run.new_sha()),
        ("updated", Some(sha.as_str())),
        "{run:?}"
    );

    let run = pull(&url, &dir, &["--semver", ">=3"]);
    assert_eq!(
        (run.code, run.classes()),
        (1, vec!["ref-not-found".to_string()])
    );
    assert!(
        run.stderr
            .contains("no tag on the remote matches semver `>=3`"),
        "{run:?}"
    );
    detached_at(&dir, &sha);
}

#[test]
fn a_missing_ref_publishes_nothing_and_bad_refs_are_usage_errors() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let dir = root.path().join("c");
    let run = pull(&up.file_url(), &dir, &["--ref", "no-such-tag"]);
    assert_eq!(
        (run.code, run.classes()),
        (1, vec!["ref-not-found".to_string()]),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("ref `no-such-tag` not found"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("main"),
        "the error lists what exists: {run:?}"
    );
    assert!(!dir.exists(), "nothing published");

    for (args, says) in [
        (vec!["--ref", "a..b"], "--ref: `a..b`"),
        (vec!["--semver", "one point two"], "--semver"),
        (
            vec!["--ref", "v1", "--mode", "mirror"],
            "a mirror takes every ref",
        ),
    ] {
        let run = pull(&up.file_url(), &dir, &args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(says), "{args:?}: {run:?}");
        assert!(!dir.exists());
    }
}

#[test]
fn submodules_get_their_own_origins_credentials_and_a_rotated_password_file_is_read_again() {
    let root = tempfile::tempdir().unwrap();
    let (a_root, b_root) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir_all(&a_root).unwrap();
    std::fs::create_dir_all(&b_root).unwrap();
    let a = GitHttpServer::start_with_basic_auth(&a_root, "alice", "token-for-a-only");
    let b = GitHttpServer::start_with_basic_auth(&b_root, "bob", "password-for-b-only");
    // Each origin records every login it is sent.
    let (a_spy, b_spy) = (FaultProxy::start(a.addr()), FaultProxy::start(b.addr()));
    Upstream::new(&b_root, "lib");
    let app = Upstream::new(&a_root, "app");
    let work = app.bare.parent().unwrap().join("app.work");
    // Upstream names the submodule without credentials, as it should.
    git_ok(
        &work,
        &[
            "-c",
            "protocol.allow=always",
            "-c",
            &format!(
                "http.extraHeader=Authorization: Basic {}",
                base64_of("bob:password-for-b-only")
            ),
            "submodule",
            "add",
            "-q",
            &b_spy.url("lib"),
            "vendor/lib",
        ],
    );
    git_ok(&work, &["commit", "-qm", "a submodule on another server"]);
    git_ok(&work, &["push", "-q", "origin", "main"]);

    let token_file = root.path().join("a.token");
    std::fs::write(&token_file, "a-stale-token\n").unwrap();
    let password_file = root.path().join("b.password");
    std::fs::write(&password_file, "password-for-b-only\n").unwrap();
    let port = free_port();
    let dir = root.path().join("c");
    let mut config = ConfigFile::daemon_on(port)
        .defaults("schedule", "every 1s jitter 0s")
        .defaults("backoff_base", "50ms")
        .defaults("backoff_max", "100ms")
        .defaults("max_attempts", 1)
        .repo(
            Repo::new("app", &a_spy.url("app"), &dir)
                .set("submodules", true)
                .set("token_file", token_file.display().to_string())
                .set("username", "alice"),
        )
        .text();
    config.push_str(&format!(
        "\n[[credential]]\nurl_prefix = \"http://{}/\"\nusername = \"bob\"\npassword_file = \"{}\"\n",
        b_spy.addr(),
        password_file.display()
    ));
    let config_path = root.path().join("gitpulse.toml");
    std::fs::write(&config_path, config).unwrap();
    let daemon = Daemon::start(&config_path, port, &[]);

    // The stale token fails; the rotated file is read at the next attempt.
    wait_for("a refused pull", Duration::from_secs(30), || {
        daemon.log().contains("pull failed")
    });
    assert!(!dir.exists());
    std::fs::write(&token_file, "token-for-a-only\n").unwrap();
    wait_for(
        "the clone with its submodule",
        Duration::from_secs(30),
        || dir.join("vendor/lib/README").exists(),
    );
    assert_eq!(daemon.stop(), 0);
    let logins = |spy: &FaultProxy| {
        let mut users = spy.users_seen();
        users.dedup();
        users
    };
    assert_eq!(logins(&a_spy), ["alice"], "only alice's login went to a");
    assert_eq!(logins(&b_spy), ["bob"], "only bob's login went to b");
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// `git status --porcelain` is empty: git agrees with the checkout.
fn git_agrees(dir: &std::path::Path) {
    let status = git_ok(dir, &["status", "--porcelain"]);
    assert_eq!(status, "", "git status in {}", dir.display());
}

#[test]
fn sparse_checkouts_are_kept_across_updates_changed_with_the_setting_and_made_by_hand_respected() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    for (path, text) in [
        ("docs/a.md", "a\n"),
        ("charts/Chart.yaml", "chart\n"),
        ("charts/app/values.yaml", "app\n"),
        ("charts/other/values.yaml", "other\n"),
        ("src/main.rs", "fn main() {}\n"),
    ] {
        up.commit_file(path, text, &format!("add {path}"));
    }
    let server = GitHttpServer::start(root.path());
    let url = server.url("app");
    let dir = root.path().join("c");
    let cone = ["--sparse", "docs/", "--sparse", "charts/app"];

    let run = pull(&url, &dir, &cone);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    for present in [
        "README",
        "docs/a.md",
        "charts/Chart.yaml",
        "charts/app/values.yaml",
    ] {
        assert!(dir.join(present).exists(), "{present}");
    }
    for absent in ["src", "charts/other"] {
        assert!(!dir.join(absent).exists(), "{absent}");
    }
    git_agrees(&dir);
    assert_eq!(
        git_ok(&dir, &["sparse-checkout", "list"]),
        "charts/app\ndocs"
    );

    // Updates keep the set; a change outside it stays outside.
    up.commit_file("src/main.rs", "fn main() { run() }\n", "src moves");
    let docs = up.commit_file("docs/a.md", "a, revised\n", "docs move");
    let run = pull(&url, &dir, &cone);
    assert_eq!(
        (run.outcome(), run.new_sha()),
        ("updated", Some(docs.as_str())),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("docs/a.md")).unwrap(),
        "a, revised\n"
    );
    assert!(!dir.join("src").exists());
    git_agrees(&dir);

    // A new setting applies at once, even with nothing new upstream.
    let run = pull(&url, &dir, &["--sparse", "src"]);
    assert_eq!((run.code, run.outcome()), (0, "unchanged"), "{run:?}");
    assert!(dir.join("src/main.rs").exists() && !dir.join("docs").exists());
    git_agrees(&dir);
    let run = pull(
        &url,
        &dir,
        &["--sparse-pattern", "/*", "--sparse-pattern", "!/charts/"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(dir.join("docs/a.md").exists() && !dir.join("charts").exists());
    assert_eq!(
        git_ok(&dir, &["config", "core.sparseCheckoutCone"]),
        "false"
    );
    git_agrees(&dir);

    // Made sparse by hand with git: respected, not refused as diverged.
    git_ok(&dir, &["sparse-checkout", "set", "--cone", "docs"]);
    let docs = up.commit_file("docs/b.md", "b\n", "more docs");
    let run = pull(&url, &dir, &[]);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(run.new_sha(), Some(docs.as_str()));
    assert!(dir.join("docs/b.md").exists() && !dir.join("src").exists());
    git_agrees(&dir);
    // Reset mode does not mistake the absent files for local deletions.
    let run = pull(&url, &dir, &["--mode", "reset"]);
    assert_eq!(run.outcome(), "unchanged", "{run:?}");
    assert!(run.json.get("notices").is_none(), "{run:?}");
    assert!(!dir.join("src").exists());
    assert!(fsck_ok(&dir));
}
