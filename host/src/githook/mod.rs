//! Git hooks in developers' own repositories: `gitpulse hook install |
//! uninstall | status` manage small POSIX sh shims, and `hook run` reads
//! what git says changed so the job pipeline can tell of it.
//!
//! A shim chains a hook that was there before (moved aside as
//! `NAME.gitpulse-chained`, run first with the same arguments and stdin),
//! fails open (a missing or failing gitpulse never fails the user's git
//! command), and `GITPULSE_HOOKS=0` turns gitpulse off in it. This module
//! owns the files and the reading of git's inputs; it records nothing
//! itself (the caller runs the job).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::job::LocalChange;

pub mod trust;

/// The hooks installed by default: those that run after the checkout moved.
pub const DEFAULT_HOOKS: [&str; 3] = ["post-merge", "post-checkout", "post-rewrite"];
/// Every hook `hook run` understands.
pub const KNOWN_HOOKS: [&str; 4] = [
    "post-merge",
    "post-checkout",
    "post-rewrite",
    "reference-transaction",
];
/// The line that makes a hook file ours.
pub const MARKER: &str = "# gitpulse-hook-shim";
const CHAINED: &str = ".gitpulse-chained";
const REPLACED: &str = ".gitpulse-replaced";
const ZERO: &str = "0000000000000000000000000000000000000000";

/// Why a hook command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// `git` failed or is not there.
    #[error("git {args}: {message}")]
    Git {
        /// The git arguments.
        args: String,
        /// What went wrong.
        message: String,
    },
    /// `core.hooksPath` sends git elsewhere.
    #[error(
        "core.hooksPath is set to {value} ({scope} config, {origin}): git runs the hooks there, not in this repository's hooks directory. Either\n  \
         - install there: gitpulse hook install --into-hooks-path (shims beside the other tool's hooks), or\n  \
         - remove the setting yourself: git config --{scope} --unset core.hooksPath, or\n  \
         - have the tool that owns that directory call `gitpulse hook run <hook> \"$@\"` from its hooks"
    )]
    HooksPath {
        /// Its value.
        value: String,
        /// local, global, worktree, system.
        scope: String,
        /// The file that sets it.
        origin: String,
    },
    /// A hook cannot be installed without losing one.
    #[error("{0}")]
    Conflict(String),
    /// Not a hook this command knows.
    #[error("`{0}` is not a hook gitpulse handles (post-merge, post-checkout, post-rewrite, reference-transaction)")]
    UnknownHook(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HookError + '_ {
    move |source| HookError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `git -C dir ARGS`, its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, HookError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| HookError::Git {
            args: args.join(" "),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(HookError::Git {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A `core.hooksPath` setting and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HooksPath {
    /// Its value, as written.
    pub value: String,
    /// Its scope (local, global, worktree, system).
    pub scope: String,
    /// The file that sets it.
    pub origin: String,
    /// The directory it names, absolute.
    pub dir: PathBuf,
}

/// Where a repository's hooks live.
#[derive(Debug, Clone)]
pub struct Location {
    /// The top of the worktree.
    pub top: PathBuf,
    /// The repository's git directory (`$GIT_COMMON_DIR`, shared by linked
    /// worktrees): local, never cloned.
    pub git_dir: PathBuf,
    /// The repository's own hooks directory (`$GIT_COMMON_DIR/hooks`).
    pub own: PathBuf,
    /// `core.hooksPath`, when set at any scope.
    pub hooks_path: Option<HooksPath>,
}

/// The top of the worktree at `dir` and its repository's git directory
/// (`$GIT_COMMON_DIR`), in one `git` call: what `hook run` needs.
pub fn dirs(dir: &Path) -> Result<(PathBuf, PathBuf), HookError> {
    let out = git(
        dir,
        &[
            "rev-parse",
            "--path-format=absolute",
            "--show-toplevel",
            "--git-common-dir",
        ],
    )?;
    let mut lines = out.lines();
    match (lines.next(), lines.next()) {
        (Some(top), Some(common)) => Ok((PathBuf::from(top), PathBuf::from(common))),
        _ => Err(HookError::Git {
            args: "rev-parse --show-toplevel --git-common-dir".into(),
            message: format!("unexpected answer {out:?}"),
        }),
    }
}

/// Finds the hooks directories of the repository (or linked worktree, or
/// submodule) at `dir`.
pub fn locate(dir: &Path) -> Result<Location, HookError> {
    let (top, git_dir) = dirs(dir)?;
    let own = git_dir.join("hooks");
    let setting = git(
        dir,
        &[
            "config",
            "--show-origin",
            "--show-scope",
            "--get",
            "core.hooksPath",
        ],
    )
    .ok()
    .filter(|s| !s.is_empty());
    let hooks_path = match setting {
        None => None,
        Some(line) => {
            // `scope<TAB>origin<TAB>value`
            let mut parts = line.splitn(3, '\t');
            let scope = parts.next().unwrap_or("").to_string();
            let origin = parts.next().unwrap_or("").to_string();
            let value = parts.next().unwrap_or("").to_string();
            let resolved = git(
                dir,
                &["rev-parse", "--path-format=absolute", "--git-path", "hooks"],
            )?;
            Some(HooksPath {
                value,
                scope,
                origin,
                dir: PathBuf::from(resolved),
            })
        }
    };
    Ok(Location {
        top,
        git_dir,
        own,
        hooks_path,
    })
}

/// The shim for hook `name`, calling `binary` (or `gitpulse` on PATH).
pub fn shim(name: &str, binary: &Path) -> String {
    let binary = binary.display().to_string().replace('\'', "'\\''");
    let status_rule = if name == "post-checkout" {
        "exit \"$status\"  # post-checkout reports the chained hook's status"
    } else {
        "exit 0"
    };
    format!(
        r#"#!/bin/sh
{MARKER} ({name}): installed by `gitpulse hook install`; `gitpulse hook uninstall` removes it.
# It runs the hook that was here before (if any), then tells gitpulse. A
# missing or failing gitpulse never fails the git command. GITPULSE_HOOKS=0
# turns gitpulse off here.
hook='{name}'
here=$(dirname "$0")
status=0
input=''
scratch=''
if [ -x "$here/$hook{CHAINED}" ]; then
  # git's stdin, kept for both: a file of our own (mktemp, or a directory
  # mkdir made new, never a name someone else could have made first).
  input=$(mktemp 2>/dev/null) || input=''
  if [ -z "$input" ]; then
    scratch="${{TMPDIR:-/tmp}}/gitpulse-hook.$$.$(date +%s)"
    if (umask 077 && mkdir "$scratch") 2>/dev/null; then input="$scratch/stdin"; else scratch=''; fi
  fi
  if [ -n "$input" ]; then
    cat > "$input"
    "$here/$hook{CHAINED}" "$@" < "$input"
  else
    "$here/$hook{CHAINED}" "$@"
  fi
  status=$?
fi
if [ "${{GITPULSE_HOOKS:-1}}" != 0 ] && [ -z "${{GITPULSE_IN_HOOK:-}}" ]; then
  GITPULSE_IN_HOOK=1
  export GITPULSE_IN_HOOK
  bin='{binary}'
  [ -x "$bin" ] || bin=$(command -v gitpulse 2>/dev/null)
  if [ -z "$bin" ]; then
    echo "gitpulse: not found; the $hook hook did nothing" >&2
  elif [ -n "$input" ]; then
    "$bin" hook run "$hook" "$@" < "$input" || echo "gitpulse: the $hook hook failed (ignored)" >&2
  else
    "$bin" hook run "$hook" "$@" || echo "gitpulse: the $hook hook failed (ignored)" >&2
  fi
fi
[ -z "$input" ] || rm -f "$input"
[ -z "$scratch" ] || rmdir "$scratch" 2>/dev/null
{status_rule}
"#
    )
}

/// Whether the file at `path` is one of our shims.
pub fn is_ours(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .is_ok_and(|text| text.lines().nth(1).is_some_and(|l| l.starts_with(MARKER)))
}

/// What `install` did to one hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// A new shim where there was none.
    New,
    /// Our shim was there already: rewritten (the binary's path may move).
    Updated,
    /// A foreign hook was moved aside and is run first by the shim.
    Chained,
    /// A foreign hook was moved aside and is not run (`--force`).
    Replaced,
}

/// Installs shims for `hooks` into `dir`, calling `binary`.
pub fn install(
    dir: &Path,
    hooks: &[String],
    binary: &Path,
    force: bool,
) -> Result<Vec<(String, Installed)>, HookError> {
    for name in hooks {
        if !KNOWN_HOOKS.contains(&name.as_str()) {
            return Err(HookError::UnknownHook(name.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Check every hook before touching any: no half-installed set.
    for name in hooks {
        let path = dir.join(name);
        let aside = dir.join(format!("{name}{}", if force { REPLACED } else { CHAINED }));
        if path.exists() && !is_ours(&path) && aside.exists() {
            return Err(HookError::Conflict(format!(
                "{} is not gitpulse's and {} exists already: move one of them away first",
                path.display(),
                aside.display()
            )));
        }
    }
    let mut done = Vec::new();
    for name in hooks {
        let path = dir.join(name);
        let what = if !path.exists() {
            Installed::New
        } else if is_ours(&path) {
            Installed::Updated
        } else {
            let (suffix, what) = if force {
                (REPLACED, Installed::Replaced)
            } else {
                (CHAINED, Installed::Chained)
            };
            let aside = dir.join(format!("{name}{suffix}"));
            std::fs::rename(&path, &aside).map_err(io(&path))?;
            what
        };
        write_executable(&path, &shim(name, binary))?;
        done.push((name.clone(), what));
    }
    Ok(done)
}

fn write_executable(path: &Path, text: &str) -> Result<(), HookError> {
    crate::model::write_replacing(path, text.as_bytes(), 0o755).map_err(io(path))
}

/// Removes our shims from `dir` and puts back what they replaced (a rename:
/// bytes and mode as they were). Returns what was removed.
pub fn uninstall(dir: &Path) -> Result<Vec<String>, HookError> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(removed);
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.contains(".gitpulse-"))
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if !is_ours(&path) {
            continue;
        }
        std::fs::remove_file(&path).map_err(io(&path))?;
        for suffix in [CHAINED, REPLACED] {
            let aside = dir.join(format!("{name}{suffix}"));
            if aside.exists() {
                std::fs::rename(&aside, &path).map_err(io(&aside))?;
                break;
            }
        }
        removed.push(name);
    }
    Ok(removed)
}

/// One hook's state, for `hook status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookState {
    /// Our shim, alone.
    Ours,
    /// Our shim, running the hook that was there first.
    Chained,
    /// Someone else's hook.
    Foreign,
    /// A hook file git will not run (not executable).
    NotExecutable,
    /// Our shim, but `core.hooksPath` makes git look elsewhere.
    Shadowed(PathBuf),
    /// No hook.
    Missing,
}

/// The state of each known hook at `location`.
pub fn status(location: &Location) -> Vec<(String, PathBuf, HookState)> {
    use std::os::unix::fs::PermissionsExt;
    let active = location
        .hooks_path
        .as_ref()
        .map(|h| h.dir.clone())
        .unwrap_or_else(|| location.own.clone());
    let mut dirs = vec![active.clone()];
    if active != location.own {
        dirs.push(location.own.clone());
    }
    let mut found = Vec::new();
    for dir in dirs {
        for name in KNOWN_HOOKS {
            let path = dir.join(name);
            let Ok(meta) = std::fs::metadata(&path) else {
                if dir == active {
                    found.push((name.to_string(), path, HookState::Missing));
                }
                continue;
            };
            let state = if dir != active {
                if !is_ours(&path) {
                    continue;
                }
                HookState::Shadowed(active.clone())
            } else if meta.permissions().mode() & 0o111 == 0 {
                HookState::NotExecutable
            } else if is_ours(&path) {
                if dir.join(format!("{name}{CHAINED}")).exists() {
                    HookState::Chained
                } else {
                    HookState::Ours
                }
            } else {
                HookState::Foreign
            };
            found.push((name.to_string(), path, state));
        }
    }
    found
}

/// What moved: the checkout went from `old` (none: it had no commit) to
/// `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Before.
    pub old: Option<String>,
    /// After.
    pub new: String,
}

impl Change {
    fn between(old: &str, new: &str) -> Option<Change> {
        if old == new || new.is_empty() || new == ZERO {
            return None;
        }
        Some(Change {
            old: (!old.is_empty() && old != ZERO).then(|| old.to_string()),
            new: new.to_string(),
        })
    }
}

/// `post-checkout PREV NEW FLAG`: a branch checkout (flag 1) that moved.
pub fn from_checkout_args(args: &[String]) -> Option<Change> {
    match args {
        [old, new, flag, ..] if flag == "1" => Change::between(old, new),
        _ => None,
    }
}

/// `reference-transaction committed` lines (`OLD NEW REF`) for `branch_ref`.
pub fn from_ref_lines(state: &str, stdin: &str, branch_ref: &str) -> Option<Change> {
    if state != "committed" {
        return None;
    }
    stdin.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let (old, new, name) = (words.next()?, words.next()?, words.next()?);
        (name == branch_ref)
            .then(|| Change::between(old, new))
            .flatten()
    })
}

/// `post-rewrite` stdin pairs (`OLD NEW [EXTRA]`): the first one.
pub fn first_rewrite(stdin: &str) -> Option<(String, String)> {
    let line = stdin.lines().next()?;
    let mut words = line.split_whitespace();
    Some((words.next()?.to_string(), words.next()?.to_string()))
}

/// What hook `name` with `args` and `stdin` says changed in the worktree
/// at `top`, from git's own inputs: post-merge `ORIG_HEAD..HEAD`;
/// post-checkout its arguments (not during a rebase); post-rewrite the amended pair, or
/// `ORIG_HEAD..HEAD` after a rebase; reference-transaction the committed
/// update of the checked-out branch.
pub fn change(
    name: &str,
    args: &[String],
    stdin: &str,
    top: &Path,
) -> Result<Option<Change>, HookError> {
    let rev = |r: &str| {
        git(
            top,
            &["rev-parse", "-q", "--verify", &format!("{r}^{{commit}}")],
        )
    };
    Ok(match name {
        "post-merge" => {
            let (Ok(old), Ok(new)) = (rev("ORIG_HEAD"), rev("HEAD")) else {
                return Ok(None);
            };
            Change::between(&old, &new)
        }
        // A rebase checks out its base first, then post-rewrite reports
        // the whole move: one change, not two.
        "post-checkout" if rebasing(top) => None,
        "post-checkout" => from_checkout_args(args),
        "post-rewrite" => {
            let head = rev("HEAD")?;
            match args.first().map(String::as_str) {
                Some("rebase") => match rev("ORIG_HEAD") {
                    Ok(old) => Change::between(&old, &head),
                    Err(_) => {
                        first_rewrite(stdin).and_then(|(old, _)| Change::between(&old, &head))
                    }
                },
                _ => first_rewrite(stdin).and_then(|(old, new)| Change::between(&old, &new)),
            }
        }
        "reference-transaction" => {
            let Ok(branch) = git(top, &["symbolic-ref", "-q", "HEAD"]) else {
                return Ok(None); // detached: no branch to follow
            };
            from_ref_lines(
                args.first().map(String::as_str).unwrap_or(""),
                stdin,
                &branch,
            )
        }
        other => return Err(HookError::UnknownHook(other.to_string())),
    })
}

/// Reads from git what a configured repository would otherwise say: the
/// commit count of `change`, the worktree's origin and branch.
pub fn describe(top: &Path, change: &Change) -> LocalChange {
    let range = match &change.old {
        Some(old) => format!("{old}..{}", change.new),
        None => change.new.clone(),
    };
    LocalChange {
        old: change.old.clone(),
        new: change.new.clone(),
        commits: git(top, &["rev-list", "--count", &range])
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        name: top
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "repo".into()),
        url: git(top, &["remote", "get-url", "origin"]).unwrap_or_default(),
        branch: git(top, &["symbolic-ref", "-q", "--short", "HEAD"]).ok(),
    }
}

/// Whether a rebase is under way in the repository at `top`.
fn rebasing(top: &Path) -> bool {
    ["rebase-merge", "rebase-apply"].iter().any(|d| {
        git(
            top,
            &["rev-parse", "--path-format=absolute", "--git-path", d],
        )
        .is_ok_and(|p| Path::new(&p).exists())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn checkout_arguments_give_a_change_only_for_a_branch_that_moved() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        assert_eq!(
            from_checkout_args(&s(&[&a, &b, "1"])),
            Some(Change {
                old: Some(a.clone()),
                new: b.clone()
            })
        );
        assert_eq!(
            from_checkout_args(&s(&[&a, &b, "0"])),
            None,
            "a file checkout"
        );
        assert_eq!(from_checkout_args(&s(&[&a, &a, "1"])), None, "same commit");
        assert_eq!(
            from_checkout_args(&s(&[ZERO, &b, "1"])),
            Some(Change { old: None, new: b }),
            "the first checkout of a clone"
        );
    }

    #[test]
    fn only_the_committed_update_of_the_checked_out_branch_counts() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let lines = format!("{a} {b} refs/heads/other\n{a} {b} refs/heads/main\n");
        assert_eq!(
            from_ref_lines("committed", &lines, "refs/heads/main"),
            Some(Change {
                old: Some(a.clone()),
                new: b.clone()
            })
        );
        assert_eq!(from_ref_lines("prepared", &lines, "refs/heads/main"), None);
        assert_eq!(from_ref_lines("committed", &lines, "refs/heads/x"), None);
        let deleted = format!("{a} {ZERO} refs/heads/main\n");
        assert_eq!(
            from_ref_lines("committed", &deleted, "refs/heads/main"),
            None
        );
    }

    #[test]
    fn the_shim_is_ours_chains_and_quotes_the_binary() {
        let text = shim("post-checkout", Path::new("/opt/it's/gitpulse"));
        assert!(text.starts_with("#!/bin/sh\n# gitpulse-hook-shim (post-checkout)"));
        assert!(text.contains("bin='/opt/it'\\''s/gitpulse'"), "{text}");
        assert!(text.contains("exit \"$status\""));
        assert!(shim("post-merge", Path::new("/x"))
            .trim_end()
            .ends_with("exit 0"));
    }
}
