//! Repositories to pull from, built with the real `git` command.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs git in `dir` with a clean, deterministic environment (no user or
/// system config, fixed identity); returns the output whatever the status.
pub fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Author")
        .env("GIT_COMMITTER_EMAIL", "author@example.com")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git can be run")
}

/// Runs git and returns trimmed stdout, panicking with stderr on failure.
pub fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository `ROOT/NAME.git` with branch `main`, and a scratch
/// clone to make commits from.
pub struct Upstream {
    pub name: String,
    pub bare: PathBuf,
    work: PathBuf,
    counter: u32,
}

impl Upstream {
    /// Creates `root/name.git` with one commit on `main`.
    pub fn new(root: &Path, name: &str) -> Upstream {
        let bare = root.join(format!("{name}.git"));
        let work = root.join(format!("{name}.work"));
        git_ok(
            root,
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        git_ok(root, &["init", "-q", "-b", "main", work.to_str().unwrap()]);
        git_ok(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        // git's own auto-gc would repack in the background while the next
        // commit writes objects (a test that commits thousands of files
        // then failed at random with "unable to create temporary file").
        for repo in [&bare, &work] {
            git_ok(repo, &["config", "gc.auto", "0"]);
        }
        let mut up = Upstream {
            name: name.to_string(),
            bare,
            work,
            counter: 0,
        };
        up.commit("initial commit");
        up
    }

    /// Adds `url` as a submodule at `path` on `main` in a commit of its
    /// own, and pushes it; with `relative`, `.gitmodules` names it by this
    /// string instead (`../lib.git`), as projects on one server do.
    pub fn add_submodule(&mut self, url: &str, path: &str, relative: Option<&str>) -> String {
        let w = &self.work;
        git_ok(w, &["checkout", "-q", "main"]);
        git_ok(
            w,
            &[
                "-c",
                "protocol.file.allow=always",
                "submodule",
                "add",
                "-q",
                url,
                path,
            ],
        );
        if let Some(named) = relative {
            let key = format!("submodule.{path}.url");
            git_ok(w, &["config", "-f", ".gitmodules", &key, named]);
            git_ok(w, &["add", ".gitmodules"]);
        }
        git_ok(w, &["commit", "-qm", &format!("add submodule {path}")]);
        git_ok(w, &["push", "-q", "origin", "main"]);
        git_ok(w, &["rev-parse", "HEAD"])
    }

    /// Adds a commit on `main` (a new line in README and a new file) and
    /// pushes it; returns its full SHA.
    pub fn commit(&mut self, subject: &str) -> String {
        self.commit_on("main", subject)
    }

    /// Adds a commit on `branch` (created from the current one if new).
    pub fn commit_on(&mut self, branch: &str, subject: &str) -> String {
        self.counter += 1;
        let w = &self.work;
        git_ok(w, &["checkout", "-q", "-B", branch]);
        let readme = w.join("README");
        let mut text = std::fs::read_to_string(&readme).unwrap_or_default();
        text.push_str(&format!("{subject}\n"));
        std::fs::write(&readme, text).unwrap();
        std::fs::write(w.join(format!("file{}.txt", self.counter)), subject).unwrap();
        git_ok(w, &["add", "-A"]);
        git_ok(w, &["commit", "-q", "-m", subject]);
        git_ok(w, &["push", "-q", "-f", "origin", branch]);
        git_ok(w, &["rev-parse", "HEAD"])
    }

    /// Adds a commit on `main` that writes `content` to `path` (directories
    /// made as needed); returns its full SHA.
    pub fn commit_file(&mut self, path: &str, content: &str, subject: &str) -> String {
        let w = &self.work;
        git_ok(w, &["checkout", "-q", "main"]);
        let file = w.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, content).unwrap();
        git_ok(w, &["add", "-A"]);
        git_ok(w, &["commit", "-q", "-m", subject]);
        git_ok(w, &["push", "-q", "origin", "main"]);
        git_ok(w, &["rev-parse", "HEAD"])
    }

    /// Adds a commit on `main` that writes `files` files under `dir/`, each
    /// naming the commit (a tree big enough to take a while to write out).
    pub fn commit_many(&mut self, dir: &str, files: usize, subject: &str) -> String {
        let w = &self.work;
        git_ok(w, &["checkout", "-q", "main"]);
        let at = w.join(dir);
        std::fs::create_dir_all(&at).unwrap();
        for i in 0..files {
            std::fs::write(
                at.join(format!("f{i:04}.txt")),
                format!("{subject} {i}\n").repeat(64),
            )
            .unwrap();
        }
        git_ok(w, &["add", "-A"]);
        git_ok(w, &["commit", "-q", "-m", subject]);
        git_ok(w, &["push", "-q", "origin", "main"]);
        git_ok(w, &["rev-parse", "HEAD"])
    }

    /// Removes `path` in a commit on `main`.
    pub fn remove(&mut self, path: &str, subject: &str) -> String {
        let w = &self.work;
        git_ok(w, &["checkout", "-q", "main"]);
        git_ok(w, &["rm", "-rq", path]);
        git_ok(w, &["commit", "-q", "-m", subject]);
        git_ok(w, &["push", "-q", "origin", "main"]);
        git_ok(w, &["rev-parse", "HEAD"])
    }

    /// Replaces `main` with a commit unrelated to its history (a force push).
    pub fn rewrite_history(&mut self, subject: &str) -> String {
        let w = &self.work;
        git_ok(w, &["checkout", "-q", "--orphan", "rewritten"]);
        git_ok(w, &["rm", "-rfq", "."]);
        std::fs::write(w.join("NEW"), subject).unwrap();
        git_ok(w, &["add", "-A"]);
        git_ok(w, &["commit", "-q", "-m", subject]);
        git_ok(w, &["branch", "-f", "main", "HEAD"]);
        git_ok(w, &["checkout", "-q", "main"]);
        git_ok(w, &["push", "-q", "-f", "origin", "main"]);
        git_ok(w, &["rev-parse", "HEAD"])
    }

    /// Points tag `name` at `commit` (moving it if it exists), annotated or
    /// lightweight, and force-pushes it.
    pub fn tag(&mut self, name: &str, commit: &str, annotated: bool) {
        let w = &self.work;
        let mut args = vec!["tag", "-f"];
        if annotated {
            args.extend(["-a", "-m", name]);
        }
        args.extend([name, commit]);
        git_ok(w, &args);
        git_ok(
            w,
            &["push", "-q", "-f", "origin", &format!("refs/tags/{name}")],
        );
    }

    /// Makes `branch` the remote's default (its HEAD).
    pub fn set_default_branch(&self, branch: &str) {
        let target = format!("refs/heads/{branch}");
        git_ok(&self.bare, &["symbolic-ref", "HEAD", &target]);
    }

    /// The SHA `main` points at in the bare repository.
    pub fn head(&self) -> String {
        git_ok(&self.bare, &["rev-parse", "main"])
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }
}
