//! A repository given on the command line (`gitpulse pull URL DIR
//! --flags`): the flags fill the same raw `[[repo]]` a config file does and
//! go through the same checks into the same [`RepoConfig`], so every rule
//! about a repository is written once. A problem names the flag instead of
//! a file and line, in the flags' own words (`--token-env`, not
//! `token_env`).
//!
//! This module only translates; the rules live in `repo`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{repo, Check, Problem, Problems, RawCommon, RawRepo, RepoConfig};

/// Step keys, as `--step` flags say them.
const STEP_FLAGS: [(&str, &str); 5] = [
    ("run", "--step"),
    ("name", "--step"),
    ("timeout", "--step-timeout"),
    ("before_publish", "--before-publish"),
    ("pass_env", "--step-pass-env"),
];

/// Config phrases that read differently on a command line.
const PHRASES: [(&str, &str); 3] = [
    ("publish = \"symlink\"", "--publish symlink"),
    ("allow_http_token = true", "--allow-http-token"),
    ("the mirror mode", "--mode mirror"),
];

/// The flag of each key a repository's flags can give.
const FLAGS: [(&str, &str); 29] = [
    ("url", "URL"),
    ("dir", "DIR"),
    ("branch", "--branch"),
    ("ref", "--ref"),
    ("semver", "--semver"),
    ("token_env", "--token-env"),
    ("token_file", "--token-file"),
    ("password_file", "--token-file"),
    ("username", "--username"),
    ("allow_http_token", "--allow-http-token"),
    ("ssh_key", "--ssh-key"),
    ("known_hosts", "--known-hosts"),
    ("mode", "--mode"),
    ("depth", "--depth"),
    ("submodules", "--submodules"),
    ("allow_local_submodules", "--allow-local-submodules"),
    ("group_write", "--group-write"),
    ("sparse", "--sparse"),
    ("sparse_patterns", "--sparse-pattern"),
    ("publish", "--publish"),
    ("keep_worktrees", "--keep-worktrees"),
    ("low_speed_limit", "--low-speed-limit"),
    ("low_speed_time", "--low-speed-time"),
    ("timeout", "--timeout"),
    ("deadline", "--deadline"),
    ("lock_wait", "--lock-wait"),
    ("max_attempts", "--max-attempts"),
    ("backoff_base", "--backoff-base"),
    ("backoff_max", "--backoff-max"),
];

/// Says a repository's problems in its flags' words.
pub(super) struct Flags;

fn flag(key: &str) -> Option<&'static str> {
    FLAGS.iter().find(|(k, _)| *k == key).map(|(_, f)| *f)
}

impl Flags {
    /// `problem` of the field `field` (`repo "NAME".token_env`, `repo
    /// "NAME".step "x".timeout`), as the flag that gave it.
    pub(super) fn problem(&self, field: &str, message: &str) -> Problem {
        Problem {
            file: Default::default(),
            line: 0,
            field: self.flag_of(field),
            message: self.words(message),
        }
    }

    fn flag_of(&self, field: &str) -> String {
        // `repo "NAME"` first: the rest names the key.
        let rest = field.split_once("\".").map(|(_, rest)| rest).unwrap_or("");
        if rest.starts_with("step") {
            let key = rest.rsplit('.').next().unwrap_or("");
            let flag = STEP_FLAGS.iter().find(|(k, _)| *k == key);
            return flag.map(|(_, f)| *f).unwrap_or("--step").to_string();
        }
        let key: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        match flag(&key) {
            Some(flag) => flag.to_string(),
            None => format!("--{}", key.replace('_', "-")),
        }
    }

    /// `message` with config keys said as flags (only keys with an
    /// underscore: `url` or `name` are also plain words).
    fn words(&self, message: &str) -> String {
        let mut text = message.to_string();
        for (phrase, flags) in PHRASES {
            text = text.replace(phrase, flags);
        }
        super::each_word(&text, &|_| false, &|word| {
            flag(word)
                .filter(|_| word.contains('_'))
                .map(str::to_string)
        })
    }
}

/// A repository spelled as flags: `set` each flag's value under the key a
/// config file would use, add steps, then [`RepoFlags::check`].
#[derive(Default)]
pub struct RepoFlags {
    table: toml::Table,
    steps: Vec<toml::Value>,
}

/// One `--step`/`--before-publish` (a `[[repo.step]]`).
pub struct StepFlags {
    /// What it is called (its command line, shortened).
    pub name: String,
    /// A program and its arguments, or a `sh -c` script.
    pub run: crate::step::Program,
    /// `--step-timeout`, in milliseconds.
    pub timeout_ms: u128,
    /// A publication gate (`--before-publish`).
    pub before_publish: bool,
    /// `--step-pass-env`.
    pub pass_env: Vec<String>,
}

impl RepoFlags {
    /// A repository of `url` (the positional URL), flags to follow.
    pub fn new(url: &str) -> RepoFlags {
        let mut flags = RepoFlags::default();
        flags.set("url", url);
        flags
    }

    /// The flag of the config key `key` gave `value`.
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) {
        self.table.insert(key.to_string(), value.into());
    }

    /// The flag of `key` gave the duration `value`.
    pub fn set_duration(&mut self, key: &str, value: std::time::Duration) {
        self.set(key, format!("{}ms", value.as_millis()));
    }

    /// The switch of the boolean `key` was given (or not).
    pub fn switch(&mut self, key: &str, on: bool) {
        if on {
            self.set(key, true);
        }
    }

    /// One step, in order.
    pub fn step(&mut self, step: StepFlags) {
        let mut table = toml::Table::new();
        table.insert("name".into(), step.name.into());
        let run = match step.run {
            crate::step::Program::Argv(argv) => toml::Value::from(argv),
            crate::step::Program::Shell(script) => {
                table.insert("shell".into(), true.into());
                script.into()
            }
        };
        table.insert("run".into(), run);
        table.insert("timeout".into(), format!("{}ms", step.timeout_ms).into());
        table.insert("before_publish".into(), step.before_publish.into());
        table.insert("pass_env".into(), step.pass_env.into());
        self.steps.push(toml::Value::Table(table));
    }

    /// The repository checked as a `[[repo]]` of a file with nothing else
    /// in it, checking out into `dir` under `name`. Only the structure is
    /// checked (what the flags name, variables and files, is read when the
    /// job starts).
    pub fn check(mut self, name: &str, dir: &Path) -> Result<RepoConfig, Problems> {
        // The name and the directory are the user's, as given: no config
        // rule (a name made to be a directory) applies to them.
        self.table.insert("name".into(), "pull".into());
        self.table.insert("dir".into(), ".".into());
        if !self.steps.is_empty() {
            self.table
                .insert("step".into(), toml::Value::Array(self.steps.clone()));
        }
        let text = toml::to_string(&self.table).map_err(|e| {
            Problems(vec![Problem {
                file: Default::default(),
                line: 0,
                field: "flags".into(),
                message: e.to_string(),
            }])
        })?;
        let flags = Flags;
        let raw: RawRepo =
            toml::from_str(&text).map_err(|e| Problems(vec![flags.problem("", e.message())]))?;
        let mut check = Check {
            file: Path::new(""),
            text: &text,
            flags: Some(&flags),
            problems: Vec::new(),
            needs: Vec::new(),
        };
        let around = repo::Around {
            defaults: &RawCommon::default(),
            state_dir: Path::new(""),
            plugin_dir: None,
            notifiers: &BTreeMap::new(),
            resolve: &|p: &str| p.into(),
        };
        let spanned = toml::Spanned::new(0..text.len(), raw);
        let checked = repo::check_repo(&mut check, &spanned, &around, &mut Default::default());
        match checked {
            Some(repo) if check.problems.is_empty() => Ok(RepoConfig {
                name: name.to_string(),
                dir: dir.to_path_buf(),
                ..repo
            }),
            _ => Err(Problems(check.problems)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(url: &str, set: &[(&str, &str)]) -> RepoFlags {
        let mut flags = RepoFlags::new(url);
        for (key, value) in set {
            flags.set(key, *value);
        }
        flags
    }

    fn problems(flags: RepoFlags) -> Vec<String> {
        match flags.check("app", Path::new("app")) {
            Ok(_) => Vec::new(),
            Err(p) => p.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn flags_build_the_repository_a_config_would() {
        let mut f = flags(
            "https://git.example.com/app.git",
            &[("ref", "v1.0.0"), ("mode", "reset")],
        );
        f.set_duration("timeout", std::time::Duration::from_millis(250));
        f.switch("group_write", true);
        let repo = f.check("my app", Path::new("/srv/my app")).unwrap();
        assert_eq!(repo.name, "my app");
        assert_eq!(repo.dir, Path::new("/srv/my app"));
        assert_eq!(repo.follow.reference.as_deref(), Some("v1.0.0"));
        assert_eq!(repo.mode, crate::git::Mode::Reset);
        assert_eq!(repo.timeout, std::time::Duration::from_millis(250));
        assert!(repo.group_write);
    }

    #[test]
    fn a_problem_names_the_flag_in_the_flags_words() {
        let said = problems(flags(
            "https://git.example.com/app.git",
            &[("branch", "a..b"), ("mode", "mirror")],
        ));
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].starts_with("--branch: "), "{said:?}");

        let said = problems(flags(
            "http://git.example.com/app.git",
            &[("token_env", "TOKEN")],
        ));
        assert!(
            said[0].starts_with("--token-env: ") && said[0].contains("--allow-http-token"),
            "{said:?}"
        );

        let mut f = flags("https://git.example.com/app.git", &[]);
        f.set_duration("backoff_base", std::time::Duration::from_secs(120));
        f.set_duration("backoff_max", std::time::Duration::from_secs(1));
        assert_eq!(
            problems(f),
            ["--backoff-base: is larger than --backoff-max"]
        );

        let said = problems(flags("https://ghp_0a1b2c3d4e5f6a7b8c9d@h/r.git", &[]));
        assert!(
            said[0].starts_with("URL: ")
                && said[0].contains("--token-env")
                && !said[0].contains("ghp_0a1b"),
            "{said:?}"
        );
    }

    #[test]
    fn a_gate_needs_a_symlink_publication() {
        let mut f = flags("https://git.example.com/app.git", &[]);
        f.step(StepFlags {
            name: "true".into(),
            run: crate::step::Program::Argv(vec!["true".into()]),
            timeout_ms: 1000,
            before_publish: true,
            pass_env: Vec::new(),
        });
        let said = problems(f);
        assert!(
            said[0].starts_with("--before-publish: ") && said[0].contains("--publish symlink"),
            "{said:?}"
        );
    }
}
