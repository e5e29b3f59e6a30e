//! Which config a git hook uses, and whether a repository's own
//! `.gitpulse.toml` may be used at all.
//!
//! Git's rule applies: configuration that can name secrets, files or
//! commands is never taken from a repository's content, because a clone
//! brings whatever its author wrote. The sources, first found wins:
//!
//! 1. `--config FILE`, then `GITPULSE_CONFIG`: named by the user.
//! 2. `gitpulse.toml` in the repository's git directory (`.git/`): local,
//!    never cloned.
//! 3. `.gitpulse.toml` at the top of the worktree, only once the user ran
//!    `gitpulse hook trust` on that very content (its SHA-256 is recorded
//!    outside the worktree and asked again when the file changes), and only
//!    when everything it reaches (secrets' variables and files, logs,
//!    templates, state) stays inside the worktree or what the user's own
//!    config allows in `[hook]`.
//! 4. The user's config, `$XDG_CONFIG_HOME/gitpulse/config.toml`
//!    (`~/.config/gitpulse/config.toml`).
//!
//! This module decides and records trust; it reads no secret and records
//! no change (the caller runs the job).

use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::config::{self, Config, HookAllowance, Reach};

/// The worktree's config file name.
pub const WORKTREE_FILE: &str = ".gitpulse.toml";
/// The local (never cloned) config, in the git directory.
pub const LOCAL_FILE: &str = "gitpulse.toml";

/// Why no config could be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The worktree's file was never trusted, or changed since.
    #[error(
        "{path} comes with the repository and is not trusted{changed}: read it, then run `gitpulse hook trust` in this repository to use it"
    )]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// ` (it changed since it was trusted)` or nothing.
        changed: &'static str,
    },
    /// A trusted worktree config reaches outside what it may.
    #[error("{path} reaches outside the repository:\n{}\nallow each in the [hook] table of your own config ({user}: allow_env = [..], allow_paths = [..]) or remove it", .reaches.join("\n"))]
    Reach {
        /// The file.
        path: PathBuf,
        /// `  field: what` lines.
        reaches: Vec<String>,
        /// Where the user's config is.
        user: String,
    },
    /// The config does not load.
    #[error("{0}")]
    Config(#[from] config::Problems),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// There is no worktree config to trust.
    #[error("{0}: no such file (nothing to trust)")]
    Missing(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a hook's config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--config` or `GITPULSE_CONFIG`.
    Named,
    /// The repository's git directory.
    Local,
    /// The worktree, trusted.
    Worktree,
    /// The user's own config.
    User,
}

/// A config a hook may use.
#[derive(Debug)]
pub struct HookConfig {
    /// The file.
    pub path: PathBuf,
    /// Where it came from.
    pub source: Source,
    /// Loaded.
    pub config: Config,
}

/// gitpulse's directory in the user's config home: the user's config and
/// the trust records live there.
pub fn user_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("gitpulse"))
}

fn user_config() -> Option<PathBuf> {
    user_dir().map(|d| d.join("config.toml"))
}

fn trust_file() -> Option<PathBuf> {
    user_dir().map(|d| d.join("trusted"))
}

/// The config the hooks of the repository whose worktree is `top` (git
/// directory `git_dir`) use; `None` when there is none (the hook does
/// nothing). `named` is `--config`, else `GITPULSE_CONFIG`.
pub fn resolve(
    top: &Path,
    git_dir: &Path,
    named: Option<PathBuf>,
) -> Result<Option<HookConfig>, TrustError> {
    let load = |path: PathBuf, source| -> Result<HookConfig, TrustError> {
        let config = config::load(&path)?;
        Ok(HookConfig {
            path,
            source,
            config,
        })
    };
    if let Some(path) = named {
        return load(path, Source::Named).map(Some);
    }
    let local = git_dir.join(LOCAL_FILE);
    if local.is_file() {
        return load(local, Source::Local).map(Some);
    }
    let worktree = top.join(WORKTREE_FILE);
    if std::fs::symlink_metadata(&worktree).is_ok() {
        let text = read_worktree_file(&worktree)?;
        match recorded_digest(top)? {
            Some(d) if d == digest(&text) => {}
            recorded => {
                return Err(TrustError::Untrusted {
                    path: worktree,
                    changed: if recorded.is_some() {
                        " (it changed since it was trusted)"
                    } else {
                        ""
                    },
                })
            }
        }
        let config = HookConfig {
            config: parse_worktree_file(&worktree, &text)?,
            path: worktree.clone(),
            source: Source::Worktree,
        };
        let allowance = match user_config().filter(|p| p.is_file()) {
            Some(p) => config::load(&p)?.hook,
            None => HookAllowance::default(),
        };
        let outside = outside_reach(&config.config, top, &allowance);
        if !outside.is_empty() {
            return Err(TrustError::Reach {
                path: worktree,
                reaches: outside,
                user: user_config()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.config/gitpulse/config.toml".into()),
            });
        }
        return Ok(Some(config));
    }
    match user_config().filter(|p| p.is_file()) {
        Some(path) => load(path, Source::User).map(Some),
        None => Ok(None),
    }
}

/// What `gitpulse hook trust` says it trusted.
#[derive(Debug)]
pub struct Trusted {
    /// The file.
    pub path: PathBuf,
    /// Its SHA-256.
    pub digest: String,
    /// What it reaches, `field: what`, for the user to see.
    pub reaches: Vec<String>,
}

/// Records that the user trusts the worktree config of `top` as it is now.
pub fn trust(top: &Path) -> Result<Trusted, TrustError> {
    let path = top.join(WORKTREE_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        return Err(TrustError::Missing(path));
    }
    let text = read_worktree_file(&path)?;
    // A file that does not load is not worth trusting: say why now.
    let config = parse_worktree_file(&path, &text)?;
    let digest = digest(&text);
    write_record(top, Some(&digest))?;
    let reaches = config
        .reach()
        .into_iter()
        .map(|r| format!("  {}: {}", r.field, shown(&r.reach)))
        .collect();
    Ok(Trusted {
        path,
        digest,
        reaches,
    })
}

/// Forgets the trust of `top`'s worktree config; whether there was one.
pub fn untrust(top: &Path) -> Result<bool, TrustError> {
    write_record(top, None)
}

/// Whether `top`'s worktree config is trusted as it is now (`None`: no
/// such file).
pub fn is_trusted(top: &Path) -> Result<Option<bool>, TrustError> {
    let path = top.join(WORKTREE_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let text = read_worktree_file(&path)?;
    Ok(Some(recorded_digest(top)? == Some(digest(&text))))
}

/// The largest worktree config read.
const MAX_WORKTREE_FILE: u64 = 1 << 20;

/// A worktree config: a regular file (a symlink could point anywhere,
/// so it is not followed) of at most [`MAX_WORKTREE_FILE`], read once
/// through one handle. What is digested is what is parsed: the file is
/// never read again by name, so it cannot change in between.
fn read_worktree_file(path: &Path) -> Result<Vec<u8>, TrustError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let refused = || TrustError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("not a regular file of at most 1 MiB"),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refused(),
            _ => io(path)(e),
        })?;
    if !file.metadata().map_err(io(path))?.file_type().is_file() {
        return Err(refused());
    }
    let mut bytes = Vec::new();
    file.take(MAX_WORKTREE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > MAX_WORKTREE_FILE {
        return Err(refused());
    }
    Ok(bytes)
}

/// `bytes` (a worktree config, as read and digested) as a config.
fn parse_worktree_file(path: &Path, bytes: &[u8]) -> Result<Config, TrustError> {
    let text = std::str::from_utf8(bytes).map_err(|e| TrustError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("not UTF-8: {e}")),
    })?;
    Ok(config::parse(path, text, &|var| std::env::var(var).ok())?)
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn key(top: &Path) -> String {
    top.canonicalize()
        .unwrap_or_else(|_| top.to_path_buf())
        .display()
        .to_string()
}

/// The trust records: one `SHA256 PATH` line per worktree.
fn read_records() -> Result<Vec<(String, String)>, TrustError> {
    let Some(file) = trust_file() else {
        return Ok(Vec::new());
    };
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(d, p)| (d.to_string(), p.to_string()))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(TrustError::Io {
            path: file,
            source: e,
        }),
    }
}

fn recorded_digest(top: &Path) -> Result<Option<String>, TrustError> {
    let key = key(top);
    Ok(read_records()?
        .into_iter()
        .find(|(_, p)| *p == key)
        .map(|(d, _)| d))
}

/// Sets (or with `None` removes) `top`'s record; whether one was there.
fn write_record(top: &Path, digest: Option<&str>) -> Result<bool, TrustError> {
    let file = trust_file().ok_or_else(|| TrustError::Io {
        path: PathBuf::from("~/.config/gitpulse/trusted"),
        source: std::io::Error::other("neither XDG_CONFIG_HOME nor HOME is set"),
    })?;
    let key = key(top);
    let mut records = read_records()?;
    let before = records.len();
    records.retain(|(_, p)| *p != key);
    let had = records.len() != before;
    if let Some(d) = digest {
        records.push((d.to_string(), key));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Its own name: two `hook trust` at once each write a whole file (the
    // later rename wins, neither half-writes the other's).
    let tmp = dir.join(format!(".trusted.{}.tmp", std::process::id()));
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        for (d, p) in &records {
            writeln!(out, "{d} {p}").map_err(io(&tmp))?;
        }
        out.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &file).map_err(io(&file))?;
    Ok(had)
}

fn shown(reach: &Reach) -> String {
    match reach {
        Reach::Env(name) => format!("environment variable {name}"),
        Reach::Path(path) => path.display().to_string(),
    }
}

/// What `config` reaches outside `top` and `allowance`, as `  field: what`
/// lines. Paths are judged where they really lead: symlinks followed,
/// `..` refused.
fn outside_reach(config: &Config, top: &Path, allowance: &HookAllowance) -> Vec<String> {
    let roots: Vec<PathBuf> = std::iter::once(top)
        .chain(allowance.paths.iter().map(PathBuf::as_path))
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    config
        .reach()
        .into_iter()
        .filter(|r| match &r.reach {
            Reach::Env(name) => !allowance.env.contains(name),
            Reach::Path(path) => match settle(path) {
                Some(real) => !roots.iter().any(|root| real.starts_with(root)),
                None => true,
            },
        })
        .map(|r| format!("  {}: {}", r.field, shown(&r.reach)))
        .collect()
}

/// Where `path` really leads: its nearest existing ancestor resolved (all
/// symlinks followed), the rest appended; `None` when the rest climbs
/// with `..`.
fn settle(path: &Path) -> Option<PathBuf> {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if std::fs::symlink_metadata(existing).is_ok() {
            break;
        }
        rest.push(existing.file_name()?.to_os_string());
        existing = existing.parent()?;
    }
    if path
        .strip_prefix(existing)
        .ok()?
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let mut real = existing.canonicalize().ok()?;
    real.extend(rest.iter().rev());
    Some(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_follows_symlinks_and_refuses_climbing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("inside/link")).unwrap();
        assert_eq!(
            settle(&root.join("inside/new/file")),
            Some(root.join("inside/new/file"))
        );
        assert_eq!(
            settle(&root.join("inside/link/passwd")),
            Some(PathBuf::from("/etc/passwd"))
        );
        assert_eq!(settle(&root.join("inside/missing/../../../x")), None);
    }
}
