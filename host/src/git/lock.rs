//! The repository lock: one gitpulse process per checkout at a time.
//!
//! The lock is an advisory `flock` on a file beside the checkout
//! (`.NAME.gitpulse.lock`), not inside it, so it also covers a clone into a
//! directory that does not exist yet. The kernel drops the lock when its
//! holder dies, even by `kill -9`, so a stale lock cannot outlive its
//! process; whoever takes the lock next owns any leftovers beside the
//! checkout (half-finished clones), which [`RepoLock::sweep_leftovers`]
//! removes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{AttemptControl, FailureClass, GitFailure};

/// Held for the whole attempt; released on drop (or on process death).
#[derive(Debug)]
pub(crate) struct RepoLock {
    _file: File,
    parent: PathBuf,
    name: String,
}

impl RepoLock {
    /// Takes the lock on `dir`, waiting up to `wait` for another holder.
    pub(crate) fn acquire(
        dir: &Path,
        wait: Duration,
        control: &AttemptControl,
    ) -> Result<RepoLock, GitFailure> {
        let (parent, name) = parent_and_name(dir)?;
        fs::create_dir_all(&parent).map_err(|e| io_failure(&parent, e))?;
        let path = parent.join(format!(".{name}.gitpulse.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_failure(&path, e))?;
        let give_up = Instant::now() + wait.min(control.remaining());
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(RepoLock {
                        _file: file,
                        parent,
                        name,
                    })
                }
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => return Err(io_failure(&path, e)),
            }
            if let Some(class) = control.interrupted() {
                return Err(GitFailure {
                    class,
                    http_status: None,
                    retry_after: None,
                    message: "interrupted while waiting for the repository lock".into(),
                });
            }
            if Instant::now() >= give_up {
                return Err(GitFailure {
                    class: FailureClass::LockHeld,
                    http_status: None,
                    retry_after: None,
                    message: format!(
                        "another gitpulse process is updating {} (waited {})",
                        dir.display(),
                        humantime::format_duration(wait)
                    ),
                });
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// A fresh path beside the checkout for a clone in progress (or a
    /// damaged copy moved aside).
    pub(crate) fn scratch_path(&self, purpose: &str) -> PathBuf {
        self.parent.join(format!(
            ".{}.gitpulse-{purpose}-{}",
            self.name,
            std::process::id()
        ))
    }

    /// Removes half-finished clones left by a process that died holding the
    /// lock, and damaged copies moved aside more than [`KEEP_ASIDE`] ago
    /// (long enough to look at them; they would pile up otherwise). Safe
    /// because we hold the lock now.
    pub(crate) fn sweep_leftovers(&self) -> io::Result<usize> {
        let clone = format!(".{}.gitpulse-clone-", self.name);
        let aside = format!(".{}.gitpulse-damaged-", self.name);
        let mut removed = 0;
        for entry in fs::read_dir(&self.parent)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let expired = || {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > KEEP_ASIDE)
            };
            if name.starts_with(&clone) || (name.starts_with(&aside) && expired()) {
                fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// How long a damaged repository moved aside is kept for inspection.
pub(crate) const KEEP_ASIDE: Duration = Duration::from_secs(7 * 24 * 3600);

fn parent_and_name(dir: &Path) -> Result<(PathBuf, String), GitFailure> {
    let absolute = std::path::absolute(dir).map_err(|e| io_failure(dir, e))?;
    let name = absolute
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| GitFailure {
            class: FailureClass::Other,
            http_status: None,
            retry_after: None,
            message: format!("{} has no directory name", dir.display()),
        })?;
    let parent = absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok((parent, name))
}

/// A local filesystem failure, classified (a full disk is its own class).
pub(crate) fn io_failure(path: &Path, e: io::Error) -> GitFailure {
    let class = match e.raw_os_error() {
        Some(28) | Some(122) => FailureClass::DiskFull, // ENOSPC, EDQUOT
        _ => FailureClass::Other,
    };
    GitFailure {
        class,
        http_status: None,
        retry_after: None,
        message: format!("{}: {e}", path.display()),
    }
}
