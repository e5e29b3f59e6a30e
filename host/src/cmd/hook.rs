//! `gitpulse hook …`: install, trust, and what the shims call.

use crate::*;

pub(crate) fn hook(command: HookCommand) -> Result<(), Failure> {
    match command {
        HookCommand::Install {
            repo,
            mut hooks,
            reference_transaction,
            into_hooks_path,
            force,
        } => {
            let location = githook::locate(&repo).map_err(usage)?;
            let dir = match &location.hooks_path {
                Some(setting) if !into_hooks_path => {
                    return Err(usage(githook::HookError::HooksPath {
                        value: setting.value.clone(),
                        scope: setting.scope.clone(),
                        origin: setting.origin.clone(),
                    }))
                }
                Some(setting) => setting.dir.clone(),
                None => location.own.clone(),
            };
            if reference_transaction && !hooks.iter().any(|h| h == "reference-transaction") {
                hooks.push("reference-transaction".into());
            }
            let binary = std::env::current_exe()
                .and_then(|p| p.canonicalize())
                .map_err(|e| failed(format!("where this gitpulse is: {e}")))?;
            let done = githook::install(&dir, &hooks, &binary, force).map_err(usage)?;
            for (name, what) in done {
                let said = match what {
                    githook::Installed::New => "installed",
                    githook::Installed::Updated => "updated",
                    githook::Installed::Chained => "installed; the hook that was there runs first",
                    githook::Installed::Replaced => {
                        "installed; the hook that was there is kept aside (not run)"
                    }
                };
                println!("{name}: {said} ({})", dir.join(&name).display());
            }
            Ok(())
        }
        HookCommand::Uninstall { repo } => {
            let location = githook::locate(&repo).map_err(usage)?;
            let mut dirs = vec![location.own.clone()];
            dirs.extend(location.hooks_path.map(|h| h.dir));
            let mut any = false;
            for dir in dirs {
                for name in githook::uninstall(&dir).map_err(failed)? {
                    println!("{name}: removed ({})", dir.join(&name).display());
                    any = true;
                }
            }
            if !any {
                println!("no gitpulse hooks installed");
            }
            Ok(())
        }
        HookCommand::Status { repo } => {
            let location = githook::locate(&repo).map_err(usage)?;
            if let Some(h) = &location.hooks_path {
                println!(
                    "core.hooksPath = {} ({} config, {}): git runs hooks from {}",
                    h.value,
                    h.scope,
                    h.origin,
                    h.dir.display()
                );
            }
            for (name, path, state) in githook::status(&location) {
                let said = match state {
                    githook::HookState::Ours => "gitpulse".to_string(),
                    githook::HookState::Chained => {
                        "gitpulse, running the previous hook first".into()
                    }
                    githook::HookState::Foreign => "another tool's or yours (not gitpulse)".into(),
                    githook::HookState::NotExecutable => {
                        "not executable: git does not run it".into()
                    }
                    githook::HookState::Shadowed(active) => format!(
                        "gitpulse, but shadowed: core.hooksPath makes git run {} instead",
                        active.display()
                    ),
                    githook::HookState::Missing => "none".into(),
                };
                println!("{name:<22} {said} ({})", path.display());
            }
            let file = location.top.join(githook::trust::WORKTREE_FILE);
            match githook::trust::is_trusted(&location.top) {
                Ok(None) => {}
                Ok(Some(true)) => println!(
                    "{:<22} trusted ({})",
                    githook::trust::WORKTREE_FILE,
                    file.display()
                ),
                Ok(Some(false)) => println!(
                    "{:<22} not trusted, so not used: read it, then `gitpulse hook trust` ({})",
                    githook::trust::WORKTREE_FILE,
                    file.display()
                ),
                Err(e) => println!("{:<22} {e}", githook::trust::WORKTREE_FILE),
            }
            Ok(())
        }
        HookCommand::Trust { repo } => {
            let location = githook::locate(&repo).map_err(usage)?;
            let trusted = githook::trust::trust(&location.top).map_err(usage)?;
            println!(
                "trusted {} (sha256 {}); the hooks use it until it changes",
                trusted.path.display(),
                &trusted.digest[..12]
            );
            if !trusted.reaches.is_empty() {
                println!(
                    "it uses (each must be inside the worktree or allowed by your [hook] table):"
                );
                for line in trusted.reaches {
                    println!("{line}");
                }
            }
            Ok(())
        }
        HookCommand::Untrust { repo } => {
            let location = githook::locate(&repo).map_err(usage)?;
            if githook::trust::untrust(&location.top).map_err(failed)? {
                println!(
                    "no longer trusted: {}",
                    location.top.join(githook::trust::WORKTREE_FILE).display()
                );
            } else {
                println!("was not trusted");
            }
            Ok(())
        }
        HookCommand::Run { name, args, config } => {
            // Fail open: whatever goes wrong is one line, and git goes on.
            if let Err(e) = hook_run(&name, &args, config) {
                eprintln!("gitpulse {name} hook: {e} (ignored; the git command went through)");
            }
            Ok(())
        }
        HookCommand::Deliver { repo, config } => {
            let (_, found) = hook_config(&repo, config).map_err(usage)?;
            let Some(found) = found else {
                return Ok(());
            };
            job::deliver_pending(&found.config, Duration::from_secs(30))?;
            Ok(())
        }
    }
}

/// The worktree at `dir` and the config its hooks use (see
/// `githook::trust`): `--config`, else `GITPULSE_CONFIG`, else what the
/// repository and the user have.
pub(crate) fn hook_config(
    dir: &Path,
    config: Option<PathBuf>,
) -> Result<(PathBuf, Option<githook::trust::HookConfig>), String> {
    let (top, git_dir) = githook::dirs(dir).map_err(|e| e.to_string())?;
    let named = config.or_else(|| std::env::var_os("GITPULSE_CONFIG").map(PathBuf::from));
    let found = githook::trust::resolve(&top, &git_dir, named).map_err(|e| e.to_string())?;
    Ok((top, found))
}

/// `hook run`: the change git reports, recorded as a pull of the worktree's
/// repository would be (events, notify plugin, outbox), then delivered by
/// a detached process so git does not wait.
pub(crate) fn hook_run(name: &str, args: &[String], config: Option<PathBuf>) -> Result<(), String> {
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let named = config.clone();
    let (top, found) = hook_config(&cwd, config)?;
    let Some(found) = found else {
        return Ok(()); // nothing configured: nothing to do
    };
    let mut stdin = String::new();
    if matches!(name, "post-rewrite" | "reference-transaction") {
        use std::io::Read as _;
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut stdin)
            .map_err(|e| e.to_string())?;
    }
    let Some(change) = githook::change(name, args, &stdin, &top).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let seen = githook::describe(&top, &change);
    let events = job::record_change(&found.config, &top, &seen).map_err(|e| e.to_string())?;
    if events > 0 && !found.config.notifiers.is_empty() {
        spawn_deliverer(&top, named.as_deref());
    }
    Ok(())
}

/// Starts `gitpulse hook deliver` in its own process group, detached from
/// git's: the hook returns at once, delivery goes on. It chooses the
/// config again, as `run` did (a worktree file that changed in between is
/// no longer trusted).
pub(crate) fn spawn_deliverer(top: &Path, config: Option<&Path>) {
    use std::os::unix::process::CommandExt as _;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut command = std::process::Command::new(exe);
    command.args(["hook", "deliver", "--repo"]).arg(top);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let _ = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
}
