//! gitpulse as a GitHub Actions step: `gitpulse pull` with
//! `GITHUB_ACTIONS=true` writes outputs, a step summary and workflow
//! commands.

mod common;
use common::*;

use std::path::Path;
use std::process::Output;

/// `gitpulse pull URL DIR` as Actions runs it, with its output and summary
/// files in `files`.
fn pull_in_actions(
    url: &str,
    dir: &Path,
    files: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    gitpulse()
        .args(["pull", url])
        .arg(dir)
        .args([
            "--backoff-base",
            "50ms",
            "--backoff-max",
            "200ms",
            "--seed",
            "7",
        ])
        .args(extra)
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", files.join("output"))
        .env("GITHUB_STEP_SUMMARY", files.join("summary.md"))
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The outputs written to `$GITHUB_OUTPUT` so far (the last value of each).
fn outputs(files: &Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(files.join("output")).unwrap_or_default();
    let mut found = std::collections::BTreeMap::new();
    let mut lines = text.lines();
    while let Some(head) = lines.next() {
        let (name, delimiter) = head.split_once("<<").expect("name<<DELIMITER");
        let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delimiter).collect();
        found.insert(name.to_string(), value.join("\n"));
    }
    found
}

#[test]
fn a_pull_in_actions_writes_outputs_summary_and_commands() {
    let mut served = Served::new("app");
    served.proxy.push_times(Fault::Status(503), 1);
    let files = tempfile::tempdir().unwrap();
    let dir = served.dir("c");
    let token = "tok-Actions-8c1f2a";
    let out = pull_in_actions(
        &served.url(),
        &dir,
        files.path(),
        &["--token-env", "PULL_TOKEN", "--allow-http-token"],
        &[("PULL_TOKEN", token)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().next(),
        Some(format!("::add-mask::{token}").as_str()),
        "the mask comes first: {stdout}"
    );
    assert!(
        stdout.contains("::group::Attempt 1 failed: server-error (HTTP 503)"),
        "{stdout}"
    );
    assert!(stdout.contains("::endgroup::"), "{stdout}");
    assert!(
        stdout.contains("::warning title=Attempt 1 failed%3A server-error (HTTP 503)::"),
        "{stdout}"
    );
    let o = outputs(files.path());
    let head = git_ok(&dir, &["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(o["commit"], head);
    assert_eq!(o["previous-commit"], "");
    assert_eq!(o["changed"], "true");
    assert_eq!(o["attempts"], "2");
    assert_eq!(o["outcome"], "cloned");
    assert!(o["duration-ms"].parse::<u64>().is_ok());
    let summary = std::fs::read_to_string(files.path().join("summary.md")).unwrap();
    assert!(
        summary.starts_with("### gitpulse pull: cloned"),
        "{summary}"
    );
    assert!(summary.contains("| 1 | server-error | 503 |"), "{summary}");
    assert!(
        !summary.contains(token)
            && !std::fs::read_to_string(files.path().join("output"))
                .unwrap()
                .contains(token)
    );

    // An update: the new commit, the previous one, the changed files.
    // (A commit of the fixture edits README and adds fileN.txt.)
    let new = served.up.commit("add notes");
    let out = pull_in_actions(&served.url(), &dir, files.path(), &[], &[]);
    assert!(out.status.success());
    let o = outputs(files.path());
    assert_eq!(o["commit"], new);
    assert_eq!(o["previous-commit"], head);
    assert_eq!(o["commits"], "1");
    assert_eq!(o["changed-files"], "README\nfile2.txt");
    let summary = std::fs::read_to_string(files.path().join("summary.md")).unwrap();
    assert!(summary.contains("add notes"), "{summary}");

    // Nothing new: changed is false.
    let out = pull_in_actions(
        &served.url(),
        &dir,
        files.path(),
        &["--no-step-summary"],
        &[],
    );
    assert!(out.status.success());
    assert_eq!(outputs(files.path())["changed"], "false");
}

#[test]
fn a_failed_pull_in_actions_is_an_error_annotation() {
    let served = Served::new("app");
    served.proxy.set_always(Some(Fault::Status(503)));
    let files = tempfile::tempdir().unwrap();
    let out = pull_in_actions(
        &served.url(),
        &served.dir("c"),
        files.path(),
        &["--max-attempts", "2"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("::error title=gitpulse pull failed::server-error"),
        "{stdout}"
    );
    assert_eq!(outputs(files.path())["outcome"], "failed");
}
