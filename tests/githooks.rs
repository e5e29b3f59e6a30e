//! `gitpulse hook …` in a developer's own repository, driven by the real
//! `git`: install, chain, refuse core.hooksPath, fail open, uninstall; and
//! the changes a `git pull`, `checkout`, `rebase` and `commit --amend`
//! record.

use crate::common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// An upstream, a developer's clone `dev` of it, and a config whose repo
/// `dev` is that clone, with a log notifier writing `events.jsonl`.
struct Scene {
    root: tempfile::TempDir,
    up: Upstream,
    dev: PathBuf,
    config: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let root = tempfile::tempdir().unwrap();
        let up = Upstream::new(root.path(), "up");
        let dev = root.path().join("dev");
        git_ok(root.path(), &["clone", "-q", &up.file_url(), "dev"]);
        let config = ConfigFile::default()
            .daemon("state_dir", "state")
            .repo(Repo::new("dev", &up.file_url(), &dev))
            .notifier(
                "audit",
                &[("kind", "log".into()), ("path", "events.jsonl".into())],
            )
            .write_in(root.path());
        Scene {
            root,
            up,
            dev,
            config,
        }
    }

    /// `git ARGS` in the developer's clone, as a person would run it, with
    /// the config in GITPULSE_CONFIG (plus `env`).
    fn git(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        std::process::Command::new("git")
            .args(["-c", "user.name=Dev", "-c", "user.email=dev@example.com"])
            .args(args)
            .current_dir(&self.dev)
            .env("GITPULSE_CONFIG", &self.config)
            // The shims' gitpulse must not find the user's own config.
            .env("XDG_CONFIG_HOME", self.root.path().join("xdg-config"))
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn git_ok(&self, args: &[&str]) -> Output {
        let out = self.git(args, &[]);
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn hook(&self, args: &[&str]) -> Output {
        gitpulse()
            .arg("hook")
            .args(args)
            .current_dir(&self.dev)
            .output()
            .unwrap()
    }

    /// The changes recorded so far (`updated` rows of the history), oldest
    /// first: (old, new) prefixes are not kept there, so just the count.
    fn recorded(&self) -> usize {
        let out = gitpulse()
            .args(["history", "dev", "--json", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        history
            .as_array()
            .map(|a| a.iter().filter(|e| e["kind"] == "updated").count())
            .unwrap_or(0)
    }

    fn head(&self) -> String {
        git_ok(&self.dev, &["rev-parse", "HEAD"]).trim().to_string()
    }

    fn hooks_dir(&self) -> PathBuf {
        self.dev.join(".git/hooks")
    }
}

#[test]
fn pulls_checkouts_rebases_and_amends_record_exactly_their_changes() {
    let mut s = Scene::new();
    let out = s.hook(&["install"]);
    assert!(out.status.success(), "{}", said(&out));

    // Already up to date: nothing.
    s.git_ok(&["pull", "-q", "--ff-only"]);
    assert_eq!(s.recorded(), 0);

    // A fast-forward pull: one change, delivered by the detached sender.
    let new = s.up.commit("upstream work");
    s.git_ok(&["pull", "-q", "--ff-only"]);
    assert_eq!(s.head(), new);
    assert_eq!(s.recorded(), 1);
    let log = s.root.path().join("events.jsonl");
    wait_for(
        "the changed event delivered",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|t| t.contains("\"changed\"") && t.contains("upstream work"))
        },
    );

    // `pull --rebase` without local commits (git fast-forwards): one.
    s.up.commit("upstream again");
    s.git_ok(&["pull", "-q", "--rebase"]);
    assert_eq!(s.recorded(), 2);

    // A rebase over upstream with a local commit: one change, not two.
    s.git_ok(&["commit", "-q", "--allow-empty", "-m", "local work"]);
    s.up.commit("more upstream work");
    s.git_ok(&["pull", "-q", "--rebase"]);
    assert_eq!(s.recorded(), 3);

    // A branch checkout at the same commit: nothing; at another commit: one.
    s.git_ok(&["checkout", "-q", "-b", "topic"]);
    assert_eq!(s.recorded(), 3);
    s.git_ok(&["checkout", "-q", "HEAD~1"]);
    assert_eq!(s.recorded(), 4);
    s.git_ok(&["checkout", "-q", "topic"]);
    assert_eq!(s.recorded(), 5, "back again is a change too");

    // A file checkout: nothing. An amend: one.
    s.git_ok(&["checkout", "-q", "HEAD", "--", "README"]);
    assert_eq!(s.recorded(), 5);
    s.git_ok(&[
        "commit",
        "-q",
        "--allow-empty",
        "--amend",
        "-m",
        "local work, amended",
    ]);
    assert_eq!(s.recorded(), 6);
}

#[test]
fn a_foreign_hook_is_chained_with_its_arguments_and_stdin_and_restored_byte_for_byte() {
    let s = Scene::new();
    let seen = s.root.path().join("seen");
    let theirs = format!(
        "#!/bin/sh\n# someone's hook\necho \"args: $*\" >> '{0}'\ncat >> '{0}'\nexit 3\n",
        seen.display()
    );
    for name in ["post-rewrite", "post-checkout"] {
        let path = s.hooks_dir().join(name);
        std::fs::write(&path, &theirs).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    let out = s.hook(&["install"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("post-rewrite: installed; the hook that was there runs first"),
        "{}",
        said(&out)
    );
    let status = said(&s.hook(&["status"]));
    assert!(
        status.contains("post-rewrite") && status.contains("running the previous hook first"),
        "{status}"
    );
    // Reinstalling changes nothing.
    let again = s.hook(&["install"]);
    assert!(
        said(&again).contains("post-rewrite: updated"),
        "{}",
        said(&again)
    );

    // An amend: their hook gets git's argument and stdin; ours records.
    let before = s.head();
    s.git_ok(&["commit", "-q", "--allow-empty", "--amend", "-m", "amended"]);
    let got = std::fs::read_to_string(&seen).unwrap();
    assert!(got.contains("args: amend"), "{got}");
    assert!(
        got.contains(&format!("{before} {}", s.head())),
        "their stdin: {got}"
    );
    assert_eq!(s.recorded(), 1);
    // post-checkout exits with their hook's status (3): git fails the
    // checkout's exit code as it would without gitpulse (other hooks: 0).
    let out = s.git(&["checkout", "-q", "-b", "b2", "HEAD~0"], &[]);
    assert!(!out.status.success(), "{}", said(&out));

    let out = s.hook(&["uninstall"]);
    assert!(out.status.success(), "{}", said(&out));
    for name in ["post-rewrite", "post-checkout"] {
        let path = s.hooks_dir().join(name);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            theirs,
            "{name}: byte for byte"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o750
        );
    }
    assert!(
        !s.hooks_dir().join("post-merge").exists(),
        "ours alone is gone"
    );
    assert!(std::fs::read_dir(s.hooks_dir())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().contains("gitpulse")));
}

#[test]
fn core_hooks_path_is_refused_with_the_ways_out_unless_asked() {
    let s = Scene::new();
    s.git_ok(&["config", "core.hooksPath", ".husky"]);
    let out = s.hook(&["install"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    let refusal = said(&out);
    assert!(
        refusal.contains("core.hooksPath is set to .husky (local config"),
        "{refusal}"
    );
    assert!(
        refusal.contains("--into-hooks-path") && refusal.contains("--unset core.hooksPath"),
        "{refusal}"
    );
    assert!(
        !s.hooks_dir().join("post-merge").exists(),
        "nothing installed"
    );

    let out = s.hook(&["install", "--into-hooks-path"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(githook_is_ours(&s.dev.join(".husky/post-merge")));
    assert_eq!(
        git_ok(&s.dev, &["config", "core.hooksPath"]).trim(),
        ".husky",
        "another tool's setting is left alone"
    );

    // Set globally (a home of its own): refused too, naming the scope.
    let home = s.root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join(".gitconfig"),
        "[core]\n\thooksPath = /somewhere/hooks\n",
    )
    .unwrap();
    let other = s.root.path().join("other");
    git_ok(s.root.path(), &["init", "-q", "other"]);
    let out = gitpulse()
        .args(["hook", "install", "--repo"])
        .arg(&other)
        .env("GIT_CONFIG_GLOBAL", home.join(".gitconfig"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(said(&out).contains("(global config"), "{}", said(&out));
}

fn githook_is_ours(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("# gitpulse-hook-shim"))
}

#[test]
fn a_linked_worktree_shares_the_repositorys_hooks() {
    let s = Scene::new();
    git_ok(&s.dev, &["worktree", "add", "-q", "../wt"]);
    let wt = s.root.path().join("wt");
    let out = gitpulse()
        .args(["hook", "install", "--repo"])
        .arg(&wt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", said(&out));
    // `.git` in a worktree is a file; the hooks live in the common dir.
    assert!(wt.join(".git").is_file());
    assert!(githook_is_ours(&s.hooks_dir().join("post-checkout")));
    let status = gitpulse()
        .args(["hook", "status", "--repo"])
        .arg(&wt)
        .output()
        .unwrap();
    assert!(
        said(&status).contains("post-checkout          gitpulse"),
        "{}",
        said(&status)
    );
}

#[test]
fn hooks_fail_open_and_can_be_turned_off() {
    let mut s = Scene::new();
    assert!(s.hook(&["install"]).status.success());
    s.up.commit("one");

    // Off: nothing recorded.
    let out = s.git(&["pull", "-q", "--ff-only"], &[("GITPULSE_HOOKS", "0")]);
    assert!(out.status.success());
    assert_eq!(s.recorded(), 0);

    // A broken config: git succeeds, one line says why.
    s.up.commit("two");
    let broken = s.root.path().join("broken.toml");
    std::fs::write(&broken, "[[repo]\n").unwrap();
    let out = s.git(
        &["pull", "-q", "--ff-only"],
        &[("GITPULSE_CONFIG", broken.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", said(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("gitpulse")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("ignored"), "{stderr}");

    // gitpulse gone: the shim's own binary path is stale and PATH lacks it.
    s.up.commit("three");
    let shim = s.hooks_dir().join("post-merge");
    let text_now = std::fs::read_to_string(&shim).unwrap();
    let stale = text_now.replace(env!("CARGO_BIN_EXE_gitpulse"), "/nonexistent/gitpulse");
    std::fs::write(&shim, stale).unwrap();
    let out = s.git(&["pull", "-q", "--ff-only"], &[("PATH", "/usr/bin:/bin")]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gitpulse: not found"),
        "{}",
        said(&out)
    );

    // Nothing configured at all: the hook does nothing, quietly.
    let quiet = gitpulse()
        .args(["hook", "run", "post-merge", "0"])
        .current_dir(&s.dev)
        .env_remove("GITPULSE_CONFIG")
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty() && quiet.stdout.is_empty());
}

/// A hostile upstream ships a `.gitpulse.toml` whose log notifier appends
/// to the developer's `~/.bashrc` and whose mail notifier would read their
/// ssh key. The developer has gitpulse's shims in a global core.hooksPath,
/// so a plain `git clone` and `git pull` run them. Nothing may be written
/// or read outside the clone until the developer trusts the file, and even
/// then only what their own config allows.
#[test]
fn a_cloned_repositorys_config_is_used_only_once_trusted_and_only_inside_it() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let bashrc = home.join(".bashrc");
    std::fs::write(&bashrc, "# mine\n").unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), "PRIVATE KEY\n").unwrap();
    let hooks = home.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let gitconfig = home.join(".gitconfig");
    std::fs::write(
        &gitconfig,
        format!(
            "[core]\n\thooksPath = {}\n[user]\n\tname = Dev\n\temail = dev@example.com\n",
            hooks.display()
        ),
    )
    .unwrap();
    // As the developer's shell would run things: their HOME, their global
    // git config, no GITPULSE_CONFIG.
    let as_dev = |program: &str, dir: &Path, args: &[&str]| {
        let mut c = if program == "gitpulse" {
            gitpulse()
        } else {
            std::process::Command::new(program)
        };
        c.args(args)
            .current_dir(dir)
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("GITPULSE_CONFIG")
            .env("GIT_CONFIG_GLOBAL", &gitconfig)
            .output()
            .unwrap()
    };

    let mut up = Upstream::new(root.path(), "up");
    let hostile = format!(
        "[[repo]]\nname = \"x\"\nurl = \"https://example.com/x.git\"\ndir = \".\"\nnotifiers = [\"audit\", \"mail\"]\n\n\
         [notifier.audit]\nkind = \"log\"\npath = \"{bashrc}\"\n\n\
         [notifier.mail]\nkind = \"email\"\nserver = \"smtp://127.0.0.1:9\"\nfrom = \"a@example.com\"\n\
         to = [\"b@example.com\"]\nusername = \"u\"\npassword_file = \"{key}\"\n",
        bashrc = bashrc.display(),
        key = home.join(".ssh/id_ed25519").display()
    );
    up.commit_file(".gitpulse.toml", &hostile, "config");

    // The shims go into the global hooks directory, as a developer does.
    let scratch = root.path().join("scratch");
    git_ok(root.path(), &["init", "-q", "scratch"]);
    let out = as_dev(
        "gitpulse",
        &scratch,
        &["hook", "install", "--into-hooks-path"],
    );
    assert!(out.status.success(), "{}", said(&out));
    assert!(hooks.join("post-merge").is_file());

    // Clone (post-checkout runs) and pull a new commit (post-merge runs).
    let out = as_dev("git", root.path(), &["clone", "-q", &up.file_url(), "dev"]);
    assert!(out.status.success(), "{}", said(&out));
    let dev = root.path().join("dev");
    up.commit("more");
    let out = as_dev("git", &dev, &["pull", "-q", "--ff-only"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("not trusted"),
        "the hook says why it did nothing: {}",
        said(&out)
    );
    assert_eq!(std::fs::read_to_string(&bashrc).unwrap(), "# mine\n");
    assert!(!dev.join("gitpulse-state").exists(), "no state was written");

    // Trusted, it still may not reach the developer's files.
    let out = as_dev("gitpulse", &dev, &["hook", "trust"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("notifier.audit.path"), "{}", said(&out));
    up.commit("again");
    let out = as_dev("git", &dev, &["pull", "-q", "--ff-only"]);
    assert!(out.status.success(), "{}", said(&out));
    let told = said(&out);
    assert!(
        told.contains("notifier.audit.path") && told.contains("notifier.mail.password_file"),
        "{told}"
    );
    assert_eq!(std::fs::read_to_string(&bashrc).unwrap(), "# mine\n");
    assert!(!dev.join("gitpulse-state").exists());

    // Upstream changes the file to one that stays inside the clone: the
    // old trust does not carry over …
    up.commit_file(
        ".gitpulse.toml",
        "[[repo]]\nname = \"x\"\nurl = \"https://example.com/x.git\"\ndir = \".\"\nnotifiers = [\"audit\"]\n\n\
         [notifier.audit]\nkind = \"log\"\npath = \"events.jsonl\"\n",
        "benign",
    );
    let out = as_dev("git", &dev, &["pull", "-q", "--ff-only"]);
    assert!(
        said(&out).contains("changed since it was trusted"),
        "{}",
        said(&out)
    );
    assert!(!dev.join("events.jsonl").exists());

    // … until the developer trusts it again; then the next change is told.
    let out = as_dev("gitpulse", &dev, &["hook", "trust"]);
    assert!(out.status.success(), "{}", said(&out));
    let status = as_dev("gitpulse", &dev, &["hook", "status"]);
    assert!(
        said(&status).contains(".gitpulse.toml         trusted"),
        "{}",
        said(&status)
    );
    up.commit("told");
    let out = as_dev("git", &dev, &["pull", "-q", "--ff-only"]);
    assert!(out.status.success(), "{}", said(&out));
    wait_for(
        "the change logged inside the clone",
        Duration::from_secs(30),
        || std::fs::read_to_string(dev.join("events.jsonl")).is_ok_and(|t| t.contains("told")),
    );
    assert_eq!(std::fs::read_to_string(&bashrc).unwrap(), "# mine\n");
    // The trust record lives outside the worktree.
    assert!(home.join(".config/gitpulse/trusted").is_file());

    // A symlink inside the clone does not lead out of it either.
    std::os::unix::fs::symlink(&bashrc, dev.join("events.jsonl.link")).unwrap();
    std::fs::write(
        dev.join(".gitpulse.toml"),
        "[[repo]]\nname = \"x\"\nurl = \"https://example.com/x.git\"\ndir = \".\"\nnotifiers = [\"audit\"]\n\n\
         [notifier.audit]\nkind = \"log\"\npath = \"events.jsonl.link\"\n",
    )
    .unwrap();
    assert!(as_dev("gitpulse", &dev, &["hook", "trust"])
        .status
        .success());
    let out = as_dev("gitpulse", &dev, &["hook", "run", "post-merge", "0"]);
    assert!(said(&out).contains("notifier.audit.path"), "{}", said(&out));
    assert_eq!(std::fs::read_to_string(&bashrc).unwrap(), "# mine\n");
}
