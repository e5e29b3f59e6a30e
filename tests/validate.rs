//! `gitpulse validate --config F`: a good file passes; a bad one gets every
//! problem at once, each with file:line and field, and exit code 2.

use crate::common::*;

use gitpulse_testkit::plugins;

fn validate(config: &std::path::Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = gitpulse();
    cmd.args(["validate", "--config"]).arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn plugin_dir(root: &std::path::Path) -> std::path::PathBuf {
    let dir = root.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for (package, name) in [
        ("retry-after-policy", "retry-after"),
        ("escalation-policy", "escalation"),
        ("wrong-version-policy", "future"),
    ] {
        std::fs::copy(plugins::build(package), dir.join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

#[test]
fn a_good_config_validates() {
    let root = tempfile::tempdir().unwrap();
    plugin_dir(root.path());
    std::fs::write(root.path().join("token"), "t0k\n").unwrap();
    let config = root.path().join("gitpulse.toml");
    std::fs::write(
        &config,
        r#"
[daemon]
plugin_dir = "plugins"

[defaults]
schedule = "every 30s"
notifiers = ["ops"]

[[repo]]
name = "app"
url = "https://git.example.com/app.git"
token_env = "GP_VALIDATE_TOKEN"
policy = { retry = "retry-after", notify = "escalation" }

[[repo]]
name = "docs"
url = "git://git.example.com/docs.git"
token_file = "token"
schedule = "0 */5 * * * *"

[plugin.retry-after]
base_ms = 500

[notifier.ops]
kind = "log"
"#,
    )
    .unwrap();
    let (code, out, err) = validate(&config, &[("GP_VALIDATE_TOKEN", "secret")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok — 2 repos, 1 plugin setting, 1 notifier"),
        "{out}"
    );
}

#[test]
fn a_bad_config_gets_every_problem_with_file_line_and_field() {
    let root = tempfile::tempdir().unwrap();
    plugin_dir(root.path());
    let config = root.path().join("gitpulse.toml");
    std::fs::write(
        &config,
        r#"[daemon]
plugin_dir = "plugins"

[[repo]]
name = "app"
url = "https://git.example.com/app.git"
schedule = "every fortnight"
token_env = "GP_SURELY_UNSET"

[[repo]]
name = "docs"
url = "https://git.example.com/docs.git"
token_file = "missing-token"
notifiers = ["pager"]
"#,
    )
    .unwrap();
    let (code, out, err) = validate(&config, &[]);
    assert_eq!(code, 2, "{out}{err}");
    let file = config.display().to_string();
    for needle in [
        format!("{file}:7: repo \"app\".schedule:"),
        format!(
            "{file}:8: repo \"app\".token_env: environment variable GP_SURELY_UNSET is not set"
        ),
        format!("{file}:13: repo \"docs\".token_file:"),
        format!("{file}:14: repo \"docs\".notifiers: no [notifier.pager] is defined"),
        "4 problems found".to_string(),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn plugins_must_load_and_play_their_role() {
    let root = tempfile::tempdir().unwrap();
    plugin_dir(root.path());
    let config = root.path().join("gitpulse.toml");
    std::fs::write(
        &config,
        r#"[daemon]
plugin_dir = "plugins"

[[repo]]
name = "app"
url = "https://git.example.com/app.git"
policy = { retry = "escalation" }

[[repo]]
name = "docs"
url = "https://git.example.com/docs.git"
policy = "future"

[[repo]]
name = "web"
url = "https://git.example.com/web.git"
policy = "absent"
"#,
    )
    .unwrap();
    let (code, out, err) = validate(&config, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(":17: repo \"web\".policy: no plugin"), "{err}");
    // Plugin loading runs once the file itself is valid:
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("policy = \"absent\"", ""),
    )
    .unwrap();
    let (code, _, err) = validate(&config, &[]);
    assert_eq!(code, 2);
    assert!(err.contains(":4: repo \"app\".policy: plugin `escalation` does not export the retry role (it exports: notify)"), "{err}");
    assert!(
        err.contains(":9: repo \"docs\".policy:") && err.contains("gitpulse:policy@0.2.0"),
        "{err}"
    );
}

/// A config with repo `app` (labelled team = platform) and notifier `name`
/// whose settings are `toml`, written in `root`.
fn with_notifier(root: &std::path::Path, name: &str, toml: &str) -> std::path::PathBuf {
    ConfigFile::default()
        .repo(
            Repo::new("app", "https://git.example.com/app.git", &root.join("c"))
                .set("labels", table(&[("team", "platform")])),
        )
        .notifier_toml(name, toml)
        .write_in(root)
}

#[test]
fn templates_with_partials_are_refused_before_they_can_recurse() {
    let root = tempfile::tempdir().unwrap();
    let body = root.path().join("failed.hbs");
    // Two inline partials that include each other overflow the stack.
    std::fs::write(
        &body,
        "{{#*inline \"a\"}}{{> b}}{{/inline}}{{#*inline \"b\"}}{{> a}}{{/inline}}{{> a}}",
    )
    .unwrap();
    let config = with_notifier(
        root.path(),
        "audit",
        &format!(
            "kind = \"log\"\ntemplates.failed = {{ body = \"{}\" }}",
            body.display()
        ),
    );
    let (code, _, err) = validate(&config, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("notifier.audit.templates.failed.body") && err.contains("partials"),
        "{err}"
    );
}

#[test]
fn templates_are_rendered_with_a_sample_event_of_their_kind() {
    let root = tempfile::tempdir().unwrap();
    // Compiles, but a webhook body built like this is not JSON: the commit
    // subject lands unquoted. Caught now, not at the first real change.
    let unquoted = root.path().join("changed.hbs");
    std::fs::write(&unquoted, "{\"subject\": {{commits.0.subject}}}").unwrap();
    // Compiles, but `json` without an argument fails when it renders.
    let broken = root.path().join("failed.hbs");
    std::fs::write(&broken, "{{json}}").unwrap();
    // Fine: values in a webhook template are escaped as JSON strings, and a
    // label the config's repos carry is there (rendering is strict).
    let good = root.path().join("recovered.hbs");
    std::fs::write(
        &good,
        "{\"subject\": \"{{repo.name}} {{failure.message}} {{repo.labels.team}}\"}",
    )
    .unwrap();
    let config = with_notifier(
        root.path(),
        "hook",
        &format!(
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\
             templates.changed = {{ body = \"{}\" }}\n\
             templates.failed = {{ body = \"{}\" }}\n\
             templates.recovered = {{ body = \"{}\" }}",
            unquoted.display(),
            broken.display(),
            good.display()
        ),
    );
    let (code, _, err) = validate(&config, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("notifier.hook.templates.changed: rendering a sample changed event")
            && err.contains("not JSON"),
        "{err}"
    );
    assert!(
        err.contains("notifier.hook.templates.failed: rendering a sample failed event"),
        "{err}"
    );
    assert!(!err.contains("templates.recovered"), "{err}");
}

#[test]
fn the_git_sync_example_config_validates() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/configs/gitsync.toml");
    let (code, out, err) = validate(&example, &[("GITPULSE_EXAMPLE_TOKEN", "x")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok — 3 repos"), "{out}");
}

#[test]
fn every_misspelt_key_is_reported_at_once_with_the_key_it_was_meant_to_be() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("gitpulse.toml");
    std::fs::write(
        &config,
        "[daemon]\nmax_concurent = 3\n\n[[repo]]\nname = \"app\"\nurl = \"https://git.example.com/app.git\"\nbrnch = \"main\"\n\n\
         [[repo.step]]\nname = \"reload\"\nrun = [\"true\"]\nwhen_ = \"changed\"\n\n\
         [notifier.audit]\nkind = \"log\"\npaht = \"audit.jsonl\"\n\n[plugin.anything]\nfree_key = 1\n",
    )
    .unwrap();
    let (code, _, err) = validate(&config, &[]);
    assert_eq!(code, 2, "{err}");
    let file = config.display().to_string();
    for expected in [
        format!("{file}:2: daemon.max_concurent: unknown key `max_concurent`; did you mean `max_concurrent`?"),
        format!("{file}:7: repo \"app\".brnch: unknown key `brnch`; did you mean `branch`?"),
        format!("{file}:12: repo \"app\".step[0].when_: unknown key `when_`; did you mean `when`?"),
        format!("{file}:16: notifier.audit.paht: unknown key `paht`; did you mean `path`?"),
    ] {
        assert!(err.contains(&expected), "{expected}\n{err}");
    }
    assert!(err.contains("4 problems found"), "{err}");
    assert!(!err.contains("free_key"), "plugin settings are free: {err}");
}
