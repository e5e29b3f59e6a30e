//! What `gitpulse validate`, daemon start and every reload check beyond the
//! file's structure: the environment the config names (token and password
//! variables, key, token and template files), plugins that load and play
//! the roles they are named for, and templates that compile.
//!
//! [`config`](crate::config) owns the file; this module owns the question
//! "can this config run here, now?". Commands that only read state
//! (`status`, `history`, `outbox`, `trigger`) never come here, so they work
//! in a shell without the secrets.

use std::path::Path;

use crate::config::{self, Config, Problem, Problems, Scope};

/// Loads `path` and checks everything a running daemon depends on; every
/// problem at once, each with file:line and field.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let config = config::load(path, Scope::Environment)?;
    let problems = check(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(Problems(problems))
    }
}

/// What a daemon needs beyond a well-formed file whose environment is in
/// place: repositories, plugins that load and play their roles, templates
/// that compile.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems: Vec<Problem> = config.check_has_repos().into_iter().collect();
    problems.extend(crate::policy::check_config_plugins(config));
    problems.extend(crate::notify::check_templates(config));
    problems
}
