//! What `gitpulse validate`, daemon start and every reload check beyond the
//! file's structure: the environment the config names (token and password
//! variables, key, token and template files), plugins that load and play
//! the roles they are named for, and templates that compile.
//!
//! [`config`] owns the file; this module owns the question
//! "can this config run here, now?". Commands that only read state
//! (`status`, `history`, `outbox`, `trigger`) never come here, so they work
//! in a shell without the secrets.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{self, Config, Need, Problem, Problems, Requirement};
use crate::plugin::{self, Registry, Sandbox};
use crate::redact::looks_like_a_secret;

/// Loads `path` and checks everything a running daemon depends on; every
/// problem at once, each with file:line and field. Plugins are compiled
/// into the daemon's compile cache, so its start finds them there.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let config = load_environment(path)?;
    let plugins = Registry::new(Some(config.daemon.compile_cache()), Sandbox::default());
    checked(config, &plugins)
}

/// Like [`load`], compiling plugins into `plugins`: a running daemon's
/// reload checks with the registry its pulls use, so nothing is compiled
/// twice.
pub fn load_with(path: &Path, plugins: &Registry) -> Result<Config, Problems> {
    checked(load_environment(path)?, plugins)
}

/// Loads `path` and checks what it needs from this machine (variables set,
/// files and directories present): every problem of the file and of its
/// environment at once, in the order of their lines. Plugins and templates
/// are [`check`]'s.
pub fn load_environment(path: &Path) -> Result<Config, Problems> {
    let (read, needs) = config::read(path);
    with_needs_met(read, &needs, &|var| std::env::var(var).ok())
}

/// A file's reading (`read`) joined with the problems of its `needs` on
/// this machine (`env` looks up variables), in the order of their lines.
pub fn with_needs_met(
    read: Result<Config, Problems>,
    needs: &[Requirement],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Problems> {
    let unmet = unmet(needs, env);
    let mut problems = match read {
        Ok(config) if unmet.is_empty() => return Ok(config),
        Ok(_) => unmet,
        Err(Problems(mut problems)) => {
            problems.extend(unmet);
            problems
        }
    };
    problems.sort_by_key(|p| p.line);
    Err(Problems(problems))
}

/// The needs that this machine does not meet, as problems at the lines
/// that state them; `env` looks up variables.
pub fn unmet(needs: &[Requirement], env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
    needs
        .iter()
        .filter_map(|r| {
            let message = match &r.need {
                Need::Variable(var) => env(var)
                    .is_none_or(|v| v.trim().is_empty())
                    .then(|| format!("environment variable {var} is not set or empty")),
                Need::File(path) => (!path.is_file()).then(|| {
                    // A secret pasted where a path belongs is never shown.
                    let shown = path
                        .file_name()
                        .map(|n| n.to_string_lossy())
                        .filter(|n| looks_like_a_secret(n))
                        .map(|_| {
                            "this path (it looks like a pasted secret, so it is not shown)"
                                .to_string()
                        })
                        .unwrap_or_else(|| path.display().to_string());
                    format!("{shown} does not exist or is not a file")
                }),
                Need::Plugin(path) => {
                    (!path.is_file()).then(|| format!("no plugin {}", path.display()))
                }
                Need::Dir(path) => {
                    (!path.is_dir()).then(|| format!("{} is not a directory", path.display()))
                }
                Need::ParentDir(path) => (!path.is_dir())
                    .then(|| format!("the directory {} does not exist", path.display())),
            }?;
            Some(Problem {
                file: r.file.clone(),
                line: r.line,
                field: r.field.clone(),
                message,
            })
        })
        .collect()
}

/// `config`, or every problem [`check`] finds.
pub fn checked(config: Config, plugins: &Registry) -> Result<Config, Problems> {
    let problems = check(&config, plugins);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(Problems(problems))
    }
}

/// What a daemon needs beyond a well-formed file whose environment is in
/// place: repositories, plugins that load (into `plugins`) and play their
/// roles, templates that compile.
pub fn check(config: &Config, plugins: &Registry) -> Vec<Problem> {
    let mut problems: Vec<Problem> = config.check_has_repos().into_iter().collect();
    problems.extend(check_plugins(config, plugins));
    problems.extend(crate::notify::check_templates(config));
    problems
}

/// Loads every plugin `config` names and checks it plays the role it is
/// named for; one [`Problem`] per plugin that does not, at the line of the
/// repo that names it.
fn check_plugins(config: &Config, plugins: &Registry) -> Vec<Problem> {
    let Some(dir) = &config.daemon.plugin_dir else {
        return Vec::new();
    };
    let mut loaded: BTreeMap<String, Result<plugin::Roles, String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for repo in &config.repos {
        let wanted = [
            ("retry", &repo.policy.retry),
            ("backoff", &repo.policy.backoff),
            ("notify", &repo.policy.notify),
        ];
        for (role, name) in wanted {
            let Some(name) = name else { continue };
            let roles = loaded.entry(name.clone()).or_insert_with(|| {
                let settings = config.plugins.get(name).cloned().unwrap_or_default();
                plugins
                    .get(
                        &dir.join(format!("{name}.wasm")),
                        plugin::PluginEnv::new(settings, None),
                    )
                    .map(|p| p.roles)
                    .map_err(|e| e.to_string())
            });
            let message = match roles {
                Err(e) => Some(e.clone()),
                Ok(r)
                    if !matches!(role, "retry" if r.retry)
                        && !matches!(role, "backoff" if r.backoff)
                        && !matches!(role, "notify" if r.notify) =>
                {
                    // A single name for all roles only needs the roles it has.
                    let single = repo.policy.retry == repo.policy.backoff
                        && repo.policy.backoff == repo.policy.notify;
                    (!single).then(|| {
                        format!("plugin `{name}` does not export the {role} role (it exports: {r})")
                    })
                }
                Ok(_) => None,
            };
            if let Some(message) = message {
                problems.push(Problem {
                    file: config.path.clone(),
                    line: repo.line,
                    field: format!("repo \"{}\".policy", repo.name),
                    message,
                });
            }
        }
    }
    problems.sort_by(|a, b| (a.line, &a.message).cmp(&(b.line, &b.message)));
    problems.dedup();
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn at(line: usize, field: &str, need: Need) -> Requirement {
        Requirement {
            need,
            file: PathBuf::from("/etc/gitpulse.toml"),
            line,
            field: field.into(),
        }
    }

    #[test]
    fn unmet_needs_are_problems_at_their_lines_and_met_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "t").unwrap();
        let missing = dir.path().join("missing");
        let needs = [
            at(1, "a.token_env", Need::Variable("SET".into())),
            at(2, "b.token_env", Need::Variable("BLANK".into())),
            at(3, "c.token_env", Need::Variable("UNSET".into())),
            at(4, "d.token_file", Need::File(file.clone())),
            at(5, "e.token_file", Need::File(missing.clone())),
            at(6, "f.policy", Need::Plugin(missing.join("p.wasm"))),
            at(7, "daemon.plugin_dir", Need::Dir(file.clone())),
            at(8, "g.path", Need::ParentDir(missing.clone())),
            at(9, "h.path", Need::ParentDir(dir.path().to_path_buf())),
        ];
        let env = |v: &str| match v {
            "SET" => Some("x".to_string()),
            "BLANK" => Some("  ".to_string()),
            _ => None,
        };
        let problems: Vec<(usize, String)> = unmet(&needs, &env)
            .into_iter()
            .map(|p| (p.line, p.message))
            .collect();
        let m = missing.display();
        assert_eq!(
            problems,
            [
                (2, "environment variable BLANK is not set or empty".into()),
                (3, "environment variable UNSET is not set or empty".into()),
                (5, format!("{m} does not exist or is not a file")),
                (6, format!("no plugin {m}/p.wasm")),
                (7, format!("{} is not a directory", file.display())),
                (8, format!("the directory {m} does not exist")),
            ]
        );
    }

    #[test]
    fn a_secret_pasted_as_a_path_is_not_shown() {
        let pasted = PathBuf::from("/etc/ghp_0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f");
        let problems = unmet(&[at(1, "a.token_file", Need::File(pasted))], &|_| None);
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].message.contains("ghp_"), "{}", problems[0]);
        assert!(problems[0]
            .message
            .contains("it looks like a pasted secret"));
    }

    #[test]
    fn reading_a_file_never_looks_at_the_machine_and_validate_does() {
        let text = "[[repo]]\nname = \"app\"\nurl = \"https://example.com/app.git\"\ntoken_env = \"GITPULSE_TEST_NEVER_SET\"\n";
        let path = Path::new("/etc/gitpulse.toml");
        let (read, needs) = config::parse_needing(path, text, &|_| None);
        let config = read.unwrap();
        assert_eq!(config.needs, needs);
        assert_eq!(needs[0].line, 4);
        assert_eq!(
            needs[0].need,
            Need::Variable("GITPULSE_TEST_NEVER_SET".into())
        );
        let err = with_needs_met(Ok(config), &needs, &|_| None).unwrap_err();
        assert_eq!(err.0[0].field, "repo \"app\".token_env", "{err}");
    }
}
