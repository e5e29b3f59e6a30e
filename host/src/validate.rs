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

use crate::config::{self, Config, Problem, Problems, Scope};
use crate::plugin::{self, Registry, Sandbox};

/// Loads `path` and checks everything a running daemon depends on; every
/// problem at once, each with file:line and field. Plugins are compiled
/// into the daemon's compile cache, so its start finds them there.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let config = config::load(path, Scope::Environment)?;
    let plugins = Registry::new(Some(config.daemon.compile_cache()), Sandbox::default());
    checked(config, &plugins)
}

/// Like [`load`], compiling plugins into `plugins`: a running daemon's
/// reload checks with the registry its pulls use, so nothing is compiled
/// twice.
pub fn load_with(path: &Path, plugins: &Registry) -> Result<Config, Problems> {
    checked(config::load(path, Scope::Environment)?, plugins)
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
