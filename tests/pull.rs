//! `gitpulse pull` against real servers: clone, update, unchanged, modes,
//! branches, depth, auth, JSON output and exit codes.

use crate::common::*;
use std::time::Duration;

#[test]
fn clones_then_updates_then_reports_unchanged_over_smart_http() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let server = GitHttpServer::start(root.path());
    let dir = root.path().join("checkout");

    let run = pull(&server.url("app"), &dir, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.outcome(), "cloned");
    assert_eq!(run.new_sha(), Some(up.head().as_str()));
    assert!(run.json["old"].is_null());
    assert_eq!(checkout_state(&dir), (up.head(), true));

    let first = up.head();
    up.commit("second");
    up.commit("third");
    let run = pull(&server.url("app"), &dir, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.outcome(), "updated");
    assert_eq!(run.json["old"], first.as_str());
    assert_eq!(run.json["commits"], 2);
    assert_eq!(checkout_state(&dir), (up.head(), true));
    assert!(dir.join("file3.txt").exists());

    let run = pull(&server.url("app"), &dir, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.outcome(), "unchanged");
    assert_eq!(run.json["commits"], 0);
    assert_eq!(run.json["attempts"], serde_json::json!([]));
    assert!(fsck_ok(&dir));
}

#[test]
fn git_daemon_and_file_remotes_clone_and_update() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let daemon = GitDaemon::start(root.path());
    for (i, url) in [daemon.url("app"), up.file_url()].into_iter().enumerate() {
        let dir = root.path().join(format!("c{i}"));
        let run = pull(&url, &dir, &[]);
        assert_eq!((run.code, run.outcome()), (0, "cloned"), "{url}: {run:?}");
        up.commit(&format!("more {i}"));
        let run = pull(&url, &dir, &[]);
        assert_eq!((run.code, run.outcome()), (0, "updated"), "{url}: {run:?}");
        assert_eq!(checkout_state(&dir), (up.head(), true));
        assert!(fsck_ok(&dir));
        // The no-op check lists the remote's refs without the checkout.
        let run = pull(&url, &dir, &[]);
        assert_eq!(
            (run.code, run.outcome()),
            (0, "unchanged"),
            "{url}: {run:?}"
        );
    }
}

#[test]
fn a_no_op_pull_asks_for_the_followed_branch_alone_and_falls_back_for_v0_servers() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    // Many tags: a protocol-v0 ref advertisement lists every one of them.
    let tip = up.head();
    let tags: String = (0..2000)
        .map(|i| format!("create refs/tags/release-{i:04} {tip}\n"))
        .collect();
    let mut update = std::process::Command::new("git")
        .arg("-C")
        .arg(&up.bare)
        .args(["update-ref", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    update
        .stdin
        .take()
        .unwrap()
        .write_all(tags.as_bytes())
        .unwrap();
    assert!(update.wait().unwrap().success());
    let server = GitHttpServer::start(root.path());
    let proxy = FaultProxy::start(server.addr());
    let url = proxy.url("app");
    let dir = root.path().join("checkout");
    assert_eq!(pull(&url, &dir, &[]).outcome(), "cloned");

    proxy.clear_seen();
    let run = pull(&url, &dir, &[]);
    assert_eq!((run.code, run.outcome()), (0, "unchanged"), "{run:?}");
    // The proxy counts an answer once it has relayed all of it, which may
    // be just after the client has read it and exited.
    let relayed = |method: &'static str| {
        let proxy = &proxy;
        move || {
            proxy
                .seen()
                .iter()
                .any(|s| s.method == method && s.answer_bytes > 0)
        }
    };
    wait_for(
        "the listing's size",
        Duration::from_secs(10),
        relayed("POST"),
    );
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "one request: {seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].git_protocol.as_deref()),
        ("POST", Some("version=2")),
        "{seen:?}"
    );
    let listing = seen[0].answer_bytes;

    // A server that knows only protocol v0: the full road, same answer.
    proxy.set_always(Some(Fault::OnlyV0));
    proxy.clear_seen();
    let run = pull(&url, &dir, &[]);
    assert_eq!((run.code, run.outcome()), (0, "unchanged"), "{run:?}");
    wait_for(
        "the advertisement's size",
        Duration::from_secs(10),
        relayed("GET"),
    );
    let seen = proxy.seen();
    let advertisement = seen
        .iter()
        .find(|s| s.method == "GET")
        .map(|s| s.answer_bytes)
        .unwrap_or_else(|| panic!("the v0 advertisement: {seen:?}"));
    assert!(
        listing * 50 < advertisement,
        "the listing ({listing} bytes) is small beside the whole advertisement ({advertisement} bytes)"
    );
    proxy.set_always(None);

    // A new commit upstream, then a commit made by hand in the checkout:
    // the check sees both and leaves them to the full sync.
    up.commit("upstream moved");
    let run = pull(&url, &dir, &[]);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    git_ok(&dir, &["commit", "-q", "--allow-empty", "-m", "local"]);
    let run = pull(&url, &dir, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["diverged"], "{run:?}");
}

#[test]
fn follows_the_requested_branch() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let release = up.commit_on("release", "release only");
    let dir = root.path().join("c");
    let run = pull(&up.file_url(), &dir, &["--branch", "release"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.new_sha(), Some(release.as_str()));
    assert_eq!(
        git_ok(&dir, &["symbolic-ref", "HEAD"]),
        "refs/heads/release"
    );
    // Without --branch, an existing checkout keeps following its branch.
    let next = up.commit_on("release", "release 2");
    up.commit_on("main", "main moves too");
    let run = pull(&up.file_url(), &dir, &[]);
    assert_eq!(run.new_sha(), Some(next.as_str()), "{run:?}");
}

/// An upstream of 6 commits served over smart HTTP, cloned with depth 1
/// into `c`.
fn shallow_clone() -> (
    tempfile::TempDir,
    Upstream,
    GitHttpServer,
    std::path::PathBuf,
) {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    for i in 0..5 {
        up.commit(&format!("c{i}"));
    }
    let server = GitHttpServer::start(root.path());
    let dir = root.path().join("c");
    let run = pull(&server.url("app"), &dir, &["--depth", "1"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(git_ok(&dir, &["rev-list", "--count", "HEAD"]), "1");
    (root, up, server, dir)
}

#[test]
fn a_shallow_clone_has_only_the_requested_depth() {
    let (_root, mut up, server, dir) = shallow_clone();
    assert_eq!(git_ok(&dir, &["rev-list", "--count", "HEAD"]), "1");
    assert_eq!(
        git_ok(&dir, &["rev-parse", "--is-shallow-repository"]),
        "true"
    );
    assert!(fsck_ok(&dir));
    up.commit("after shallow");
    let run = pull(&server.url("app"), &dir, &["--depth", "1"]);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(checkout_state(&dir), (up.head(), true));
}

#[test]
fn ff_mode_refuses_local_commits_and_reset_mode_discards_them() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let dir = root.path().join("c");
    assert_eq!(pull(&up.file_url(), &dir, &[]).code, 0);
    std::fs::write(dir.join("local.txt"), "mine").unwrap();
    git_ok(&dir, &["add", "local.txt"]);
    git_ok(&dir, &["commit", "-qm", "local work"]);
    let local = git_ok(&dir, &["rev-parse", "HEAD"]);
    up.commit("upstream work");

    let run = pull(&up.file_url(), &dir, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["diverged"], "{run:?}");
    assert_eq!(run.json["reason"], "not retryable");
    assert_eq!(
        git_ok(&dir, &["rev-parse", "HEAD"]),
        local,
        "ff never moves a diverged checkout"
    );

    std::fs::write(dir.join("README"), "scribbled").unwrap();
    std::fs::write(dir.join("untracked.txt"), "stray").unwrap();
    let run = pull(&up.file_url(), &dir, &["--mode", "reset"]);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(checkout_state(&dir), (up.head(), true));
    assert!(!dir.join("untracked.txt").exists());
    assert!(!dir.join("local.txt").exists());
}

#[test]
fn reset_mode_makes_the_checkout_equal_to_an_unchanged_remote() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    up.commit("a second file");
    let dir = root.path().join("c");
    assert_eq!(pull(&up.file_url(), &dir, &["--mode", "reset"]).code, 0);
    std::fs::write(dir.join("README"), "edited by hand\n").unwrap();
    std::fs::remove_file(dir.join("file2.txt")).unwrap();
    std::fs::write(dir.join("stray.txt"), "untracked\n").unwrap();
    let run = pull(&up.file_url(), &dir, &["--mode", "reset"]);
    assert_eq!((run.code, run.outcome()), (0, "unchanged"), "{run:?}");
    assert_eq!(
        checkout_state(&dir),
        (up.head(), true),
        "clean and at the remote"
    );
    assert!(!dir.join("stray.txt").exists());
    assert!(dir.join("file2.txt").exists());
}

#[test]
fn ff_mode_refuses_to_overwrite_uncommitted_changes() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let dir = root.path().join("c");
    assert_eq!(pull(&up.file_url(), &dir, &[]).code, 0);
    let before = git_ok(&dir, &["rev-parse", "HEAD"]);
    std::fs::write(dir.join("README"), "my edit\n").unwrap();
    up.commit("touches README");
    let run = pull(&up.file_url(), &dir, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["diverged"], "{run:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("README")).unwrap(),
        "my edit\n"
    );
    assert_eq!(git_ok(&dir, &["rev-parse", "HEAD"]), before);
}

#[test]
fn a_force_push_is_diverged_in_ff_mode_and_followed_in_reset_mode() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let dir = root.path().join("c");
    assert_eq!(pull(&up.file_url(), &dir, &[]).code, 0);
    let rewritten = up.rewrite_history("rewritten");
    assert_eq!(pull(&up.file_url(), &dir, &[]).classes(), ["diverged"]);
    let run = pull(&up.file_url(), &dir, &["--mode", "reset"]);
    assert_eq!(run.new_sha(), Some(rewritten.as_str()), "{run:?}");
    assert_eq!(checkout_state(&dir), (rewritten, true));
}

#[test]
fn mirror_mode_keeps_a_bare_copy_of_every_ref() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    up.commit_on("feature", "feature work");
    git_ok(&up.bare, &["tag", "v1", "main"]);
    let server = GitHttpServer::start(root.path());
    let dir = root.path().join("mirror.git");
    let run = pull(&server.url("app"), &dir, &["--mode", "mirror"]);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert_eq!(git_ok(&dir, &["rev-parse", "--is-bare-repository"]), "true");
    let refs =
        |d: &std::path::Path| git_ok(d, &["for-each-ref", "--format=%(refname) %(objectname)"]);
    assert_eq!(refs(&dir), refs(&up.bare));

    git_ok(&up.bare, &["branch", "-D", "feature"]);
    up.commit("more");
    let run = pull(&server.url("app"), &dir, &["--mode", "mirror"]);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(refs(&dir), refs(&up.bare), "deleted branches are pruned");
    assert_eq!(
        pull(&server.url("app"), &dir, &["--mode", "mirror"]).outcome(),
        "unchanged"
    );
    assert!(fsck_ok(&dir));
}

#[test]
fn tokens_authenticate_and_never_show() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let token = "tok_9f8e7d6c5b4a";
    let server = GitHttpServer::start_with_basic_auth(root.path(), "x-access-token", token);
    let dir = root.path().join("c");

    let run = pull(&server.url("app"), &dir, &[]);
    assert_eq!(run.classes(), ["auth"], "{run:?}");
    assert_eq!(run.json["reason"], "not retryable");

    let mut cmd = gitpulse();
    cmd.args(["pull", &server.url("app")]).arg(&dir).args([
        "--json",
        "--token-env",
        "GP_TEST_TOKEN",
    ]);
    cmd.env("GP_TEST_TOKEN", token);
    let run = finish(cmd.output().unwrap());
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert_eq!(run.new_sha(), Some(up.head().as_str()));
    assert!(
        !git_ok(&dir, &["config", "--list"]).contains(token),
        "the token is not stored"
    );

    let token_file = root.path().join("token");
    std::fs::write(&token_file, "wrong-token-value\n").unwrap();
    let run = pull(
        &server.url("app"),
        &root.path().join("d"),
        &["--token-file", token_file.to_str().unwrap()],
    );
    assert_eq!(run.classes(), ["auth"], "{run:?}");
    assert!(!run.stdout.contains("wrong-token-value") && !run.stderr.contains("wrong-token-value"));

    // A password in the URL would show in `ps`: refused, and never echoed.
    let url = server
        .url("app")
        .replace("http://", &format!("http://x-access-token:{token}@"));
    let run = pull(&url, &root.path().join("e"), &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--token-env"), "{run:?}");
    assert!(!run.stderr.contains(token) && !run.stdout.contains(token));
    assert!(!root.path().join("e").exists());
}

#[test]
fn a_token_is_sent_as_the_user_the_url_names() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let token = "tok_for_deploy";
    // Like htpasswd, Gitea or Bitbucket: the user counts, not only the token.
    let server = GitHttpServer::start_with_basic_auth(root.path(), "deploy", token);
    let url = server.url("app").replace("http://", "http://deploy@");
    let mut cmd = pull_command(
        &url,
        &root.path().join("c"),
        &["--token-env", "GP_TEST_TOKEN"],
    );
    cmd.env("GP_TEST_TOKEN", token);
    let run = finish(cmd.output().unwrap());
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert_eq!(run.new_sha(), Some(up.head().as_str()));
    assert!(!run.stdout.contains(token) && !run.stderr.contains(token));
}

#[test]
fn username_goes_with_the_token_to_servers_that_check_it() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let token = "tok_for_deploy";
    let server = GitHttpServer::start_with_basic_auth(root.path(), "deploy", token);
    let run_with = |dir: &str, extra: &[&str]| {
        let mut args = vec!["--token-env", "GP_TEST_TOKEN"];
        args.extend(extra);
        let mut cmd = pull_command(&server.url("app"), &root.path().join(dir), &args);
        cmd.env("GP_TEST_TOKEN", token);
        finish(cmd.output().unwrap())
    };
    // The default user (x-access-token) is refused here.
    assert_eq!(run_with("a", &[]).classes(), ["auth"]);
    let run = run_with("b", &["--username", "deploy"]);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert_eq!(run.new_sha(), Some(up.head().as_str()));
    // Without a token there is nothing to send it with; `:` cannot be in it.
    for (extra, said) in [
        (
            &["--username", "deploy"][..],
            "add --token-env or --token-file",
        ),
        (
            &["--username", "a:b", "--token-env", "GP_TEST_TOKEN"][..],
            "cannot hold `:`",
        ),
    ] {
        let mut cmd = pull_command(&server.url("app"), &root.path().join("c"), extra);
        cmd.env("GP_TEST_TOKEN", token);
        let run = finish(cmd.output().unwrap());
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains(said), "{run:?}");
        assert!(!root.path().join("c").exists());
    }
}

#[test]
fn usage_errors_exit_2_and_touch_nothing() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");

    let run = pull(
        &up.file_url(),
        &root.path().join("a"),
        &["--token-env", "GP_SURELY_UNSET_VAR"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("GP_SURELY_UNSET_VAR"), "{run:?}");
    assert!(!root.path().join("a").exists());

    let run = pull(
        &up.file_url(),
        &root.path().join("a"),
        &["--timeout", "forever"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--timeout"), "{run:?}");

    let precious = root.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    let run = pull(&up.file_url(), &precious, &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not a git repository"), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(precious.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(std::fs::read_dir(&precious).unwrap().count(), 1);

    let run = pull(
        &up.file_url(),
        &root.path().join("a"),
        &["--backoff-base", "2m", "--backoff-max", "1s"],
    );
    assert_eq!(run.code, 2, "{run:?}");

    // Refused at once, not retried as a `connect` failure five times.
    let run = pull(&up.file_url(), &root.path().join("a"), &["--depth", "1"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not supported over file://"), "{run:?}");
    assert!(!root.path().join("a").exists());

    // A token over plain http to another machine would travel in clear.
    let mut cmd = pull_command(
        "http://git.example.com/app.git",
        &root.path().join("a"),
        &["--token-env", "GP_TEST_TOKEN"],
    );
    cmd.env("GP_TEST_TOKEN", "t0ken_in_clear");
    let run = finish(cmd.output().unwrap());
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--allow-http-token"), "{run:?}");
    assert!(!run.stderr.contains("t0ken_in_clear"));

    // A duration no clock can add is a usage error, not a panic.
    let run = pull(
        &up.file_url(),
        &root.path().join("a"),
        &["--timeout", "18446744073709551615s"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("largest accepted"), "{run:?}");
}

#[test]
fn help_documents_exit_codes_and_durations() {
    let out = gitpulse().args(["pull", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "Exit codes",
        "0  success",
        "1  the pull failed",
        "2  usage",
        "250ms",
        "--token-env",
        "--mode",
    ] {
        assert!(help.contains(needle), "missing {needle:?} in:\n{help}");
    }
}

#[test]
fn human_output_summarises_and_lists_failed_attempts() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let server = GitHttpServer::start(root.path());
    let proxy = FaultProxy::start(server.addr());
    proxy.push(Fault::Status(502));
    let dir = root.path().join("c");
    let out = gitpulse()
        .args(["pull", &proxy.url("app")])
        .arg(&dir)
        .args(["--backoff-base", "10ms"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("attempt 1 failed: server-error (HTTP 502)"),
        "{stderr}"
    );
    assert!(stderr.contains("retrying in"), "{stderr}");
    assert!(stdout.starts_with("cloned "), "{stdout}");
    up.commit("two");
    let out = gitpulse()
        .args(["pull", &proxy.url("app")])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(1 new commit)"), "{stdout}");
}

#[test]
fn submodules_are_left_alone_unless_asked() {
    let root = tempfile::tempdir().unwrap();
    let lib = Upstream::new(root.path(), "lib");
    let mut app = Upstream::new(root.path(), "app");
    app.add_submodule(&lib.file_url(), "vendor/lib", None);

    let plain = root.path().join("plain");
    assert_eq!(pull(&app.file_url(), &plain, &[]).code, 0);
    assert!(!plain.join("vendor/lib/README").exists());

    // Upstream points the submodule at this machine's files: refused.
    let refused = pull(
        &app.file_url(),
        &root.path().join("refused"),
        &["--submodules"],
    );
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("points at this machine"),
        "{refused:?}"
    );
    // Refused at once: no retry can change what upstream names.
    assert_eq!(refused.classes(), ["auth"], "{refused:?}");
    assert!(
        !root.path().join("refused").exists(),
        "nothing half-made is left"
    );

    let full = root.path().join("full");
    let run = pull(
        &app.file_url(),
        &full,
        &["--submodules", "--allow-local-submodules"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(full.join("vendor/lib/README").exists());
}

#[test]
fn a_submodule_that_cannot_be_cloned_touches_nothing_outside_dir() {
    let root = tempfile::tempdir().unwrap();
    let lib = Upstream::new(root.path(), "lib");
    let app = Upstream::new(root.path(), "app");
    let work = app.bare.parent().unwrap().join("app.work");
    let args = ["-c", "protocol.file.allow=always", "submodule", "add", "-q"];
    let out = git(
        &work,
        &[&args[..], &[lib.file_url().as_str(), "vendor/lib"]].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Then the submodule's upstream goes away.
    git_ok(
        &work,
        &[
            "config",
            "-f",
            ".gitmodules",
            "submodule.vendor/lib.url",
            "file:///nonexistent/lib.git",
        ],
    );
    git_ok(
        &work,
        &["commit", "-qam", "a submodule that cannot be cloned"],
    );
    git_ok(&work, &["push", "-q", "origin", "main"]);

    // Run from a directory holding an unrelated `vendor/lib`.
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("vendor/lib")).unwrap();
    std::fs::write(elsewhere.join("vendor/lib/keep.txt"), "not gitpulse's").unwrap();
    let mut cmd = pull_command(
        &app.file_url(),
        &root.path().join("c"),
        &[
            "--submodules",
            "--allow-local-submodules",
            "--max-attempts",
            "1",
        ],
    );
    cmd.current_dir(&elsewhere);
    let run = finish(cmd.output().unwrap());
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        std::fs::read_to_string(elsewhere.join("vendor/lib/keep.txt")).unwrap(),
        "not gitpulse's"
    );
}

#[test]
fn a_token_never_reaches_a_submodule_on_another_origin() {
    let main_root = tempfile::tempdir().unwrap();
    let other_root = tempfile::tempdir().unwrap();
    let token = "tok_only_for_main";
    let main = GitHttpServer::start_with_basic_auth(main_root.path(), "x-access-token", token);
    Upstream::new(other_root.path(), "lib");
    let other = GitHttpServer::start(other_root.path());
    // The other origin records every login it is sent.
    let spy = FaultProxy::start(other.addr());
    let app = Upstream::new(main_root.path(), "app");
    let work = app.bare.parent().unwrap().join("app.work");
    git_ok(
        &work,
        &["submodule", "add", "-q", &spy.url("lib"), "vendor/lib"],
    );
    git_ok(&work, &["commit", "-qm", "a submodule on another server"]);
    git_ok(&work, &["push", "-q", "origin", "main"]);

    let dir = main_root.path().join("c");
    let mut cmd = pull_command(
        &main.url("app"),
        &dir,
        &["--submodules", "--token-env", "GP_TEST_TOKEN"],
    );
    cmd.env("GP_TEST_TOKEN", token);
    let run = finish(cmd.output().unwrap());
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert!(
        dir.join("vendor/lib/README").exists(),
        "the submodule came, anonymously"
    );
    assert!(spy.requests() > 0);
    assert_eq!(
        spy.users_seen(),
        Vec::<String>::new(),
        "no login went to the other origin"
    );
}

#[test]
fn a_failed_clone_leaves_nothing_beside_dir() {
    let root = tempfile::tempdir().unwrap();
    Upstream::new(root.path(), "app");
    let server = GitHttpServer::start(root.path());
    let parent = root.path().join("checkouts");
    std::fs::create_dir(&parent).unwrap();
    let run = pull(&server.url("missing"), &parent.join("c"), &[]);
    assert_eq!(run.classes(), ["not-found"], "{run:?}");
    let left: Vec<String> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("gitpulse-clone"))
        .collect();
    assert!(left.is_empty(), "scratch clones left behind: {left:?}");
}

#[test]
#[cfg_attr(
    not(gitpulse_tests_as_root),
    ignore = "giving the checkout to another user needs root"
)]
fn a_checkout_owned_by_another_user_is_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let dir = root.path().join("c");
    assert_eq!(pull(&up.file_url(), &dir, &[]).code, 0);
    std::fs::write(dir.join("their-work.txt"), "uncommitted\n").unwrap();
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(chown.success());
    let run = pull(&up.file_url(), &dir, &[]);
    assert_eq!(run.code, 2, "a permanent problem, not a repair: {run:?}");
    assert!(run.stderr.contains("uid 65534"), "names the owner: {run:?}");
    assert!(dir.join("their-work.txt").exists());
    let aside: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("gitpulse-damaged"))
        .collect();
    assert!(aside.is_empty(), "nothing moved aside");
}

#[test]
fn a_deeper_depth_deepens_and_no_depth_unshallows() {
    let (root, _up, server, dir) = shallow_clone();

    let run = pull(&server.url("app"), &dir, &["--depth", "3"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        git_ok(&dir, &["rev-list", "--count", "HEAD"]),
        "3",
        "deepened"
    );

    // No depth, or depth 0: the whole history.
    let other = root.path().join("d");
    assert_eq!(pull(&server.url("app"), &other, &["--depth", "1"]).code, 0);
    for (dir, extra) in [(&dir, &[][..]), (&other, &["--depth", "0"][..])] {
        let run = pull(&server.url("app"), dir, extra);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(
            git_ok(dir, &["rev-parse", "--is-shallow-repository"]),
            "false",
            "{extra:?}: the whole history"
        );
        assert_eq!(git_ok(dir, &["rev-list", "--count", "HEAD"]), "6");
        assert!(fsck_ok(dir));
    }
}

/// The packed objects of the checkout at `dir`, in KiB (`git count-objects`).
fn packed_kib(dir: &std::path::Path) -> u64 {
    let counted = git_ok(dir, &["count-objects", "-v"]);
    counted
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| *k == "size-pack" || *k == "size")
        .map(|(_, v)| v.trim().parse::<u64>().unwrap_or(0))
        .sum()
}

#[test]
fn a_smaller_depth_shortens_the_history_and_frees_what_it_cut() {
    let (root, mut up, server, dir) = shallow_clone();
    assert_eq!(pull(&server.url("app"), &dir, &["--depth", "3"]).code, 0);
    assert_eq!(git_ok(&dir, &["rev-list", "--count", "HEAD"]), "3");

    // Back to 1: shortened as `git fetch --depth 1` would, and said so.
    let run = pull(&server.url("app"), &dir, &["--depth", "1"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(git_ok(&dir, &["rev-list", "--count", "HEAD"]), "1");
    assert!(
        run.json
            .to_string()
            .contains("history shortened to depth 1"),
        "{run:?}"
    );
    assert!(fsck_ok(&dir));
    // Updates go on from the new boundary.
    up.commit("after shortening");
    let run = pull(&server.url("app"), &dir, &["--depth", "1"]);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(checkout_state(&dir), (up.head(), true));

    // A full clone given a depth: the history it no longer keeps leaves
    // the disk too.
    let full = root.path().join("full");
    for i in 0..8 {
        up.commit_many(&format!("bulk{i}"), 40, &format!("bulk {i}"));
    }
    assert_eq!(pull(&server.url("app"), &full, &[]).code, 0);
    let before = packed_kib(&full);
    let run = pull(&server.url("app"), &full, &["--depth", "1"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(git_ok(&full, &["rev-list", "--count", "HEAD"]), "1");
    let after = packed_kib(&full);
    assert!(after < before, "{before} KiB -> {after} KiB");
    assert!(fsck_ok(&full));
}

#[test]
fn a_relative_submodule_url_under_a_file_superproject_is_resolved_as_git_does() {
    let root = tempfile::tempdir().unwrap();
    let lib = Upstream::new(root.path(), "lib");
    let mut app = Upstream::new(root.path(), "app");
    // Upstream names it relative to itself, as projects on one server do.
    app.add_submodule(&lib.file_url(), "vendor/lib", Some("../lib.git"));

    let dir = root.path().join("c");
    let run = pull(
        &app.file_url(),
        &dir,
        &["--submodules", "--allow-local-submodules"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(dir.join("vendor/lib/README").is_file());
}

#[test]
fn a_checkout_pulled_many_times_does_not_pile_up_packs() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let server = GitHttpServer::start(root.path());
    let dir = root.path().join("c");
    let packs = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join(".git/objects/pack"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            .count()
    };
    // Every fetch writes a pack; past 50 the store is collected, as `git
    // gc --auto` would.
    for i in 0..55 {
        up.commit(&format!("c{i}"));
        let run = pull(&server.url("app"), &dir, &[]);
        assert_eq!(run.code, 0, "{run:?}");
    }
    assert!(packs(&dir) < 50, "{} packs", packs(&dir));
    assert!(fsck_ok(&dir));
    assert_eq!(checkout_state(&dir), (up.head(), true));
}

/// The mode bits of `path`.
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// `gitpulse pull` run under umask 077, as a systemd unit with
/// `UMask=0077` runs it.
fn pull_under_umask_077(url: &str, dir: &std::path::Path, extra: &[&str]) -> Run {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = pull_command(url, dir, extra);
    // SAFETY: umask is async-signal-safe; it only sets the child's mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    finish(cmd.output().unwrap())
}

#[test]
fn group_write_lets_the_group_read_and_write_what_pulls_write_whatever_the_umask() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let private = root.path().join("private");
    let run = pull_under_umask_077(&up.file_url(), &private, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        mode_of(&private.join("README")) & 0o070,
        0,
        "umask 077 alone"
    );

    let shared = root.path().join("shared");
    let run = pull_under_umask_077(&up.file_url(), &shared, &["--group-write"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(mode_of(&shared.join("README")) & 0o060, 0o060);
    assert_eq!(mode_of(&shared) & 0o070, 0o070);
    assert_eq!(mode_of(&shared.join(".git/HEAD")) & 0o060, 0o060);
    // What an update writes too.
    up.commit_file("docs/new.txt", "new\n", "a new directory");
    let run = pull_under_umask_077(&up.file_url(), &shared, &["--group-write"]);
    assert_eq!(run.outcome(), "updated", "{run:?}");
    assert_eq!(mode_of(&shared.join("docs")) & 0o070, 0o070);
    assert_eq!(mode_of(&shared.join("docs/new.txt")) & 0o060, 0o060);
    // And symlink publication's worktrees.
    let published = root.path().join("published");
    let run = pull_under_umask_077(
        &up.file_url(),
        &published,
        &["--group-write", "--publish", "symlink"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(mode_of(&published.join("README")) & 0o060, 0o060);
    assert_eq!(mode_of(&published.join("docs")) & 0o070, 0o070);
}
