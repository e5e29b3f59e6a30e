//! The repository lock: one gitpulse process per checkout at a time.
//!
//! The lock is an advisory `flock` on a file beside the checkout
//! (`.NAME.gitpulse.lock`), not inside it, so it also covers a clone into a
//! directory that does not exist yet. The kernel drops the lock when its
//! holder dies, even by `kill -9`, so a stale lock cannot outlive its
//! process; whoever takes the lock next owns any leftovers beside the
//! checkout (half-finished clones), which [`RepoLock::sweep_leftovers`]
//! removes. The lock file is also their ledger: each scratch directory is
//! written into it before it exists, so a sweep reads one small file
//! instead of listing the parent directory (with thousands of checkouts
//! side by side, that listing cost more than the rest of a no-op pull).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::{AttemptControl, FailureClass, GitFailure};

/// Held for the whole attempt; released on drop (or on process death).
#[derive(Debug)]
pub(crate) struct RepoLock {
    /// Locked, and the ledger of scratch directories.
    file: File,
    parent: PathBuf,
    name: String,
    /// Scratch names this holder has written into the ledger.
    recorded: Mutex<BTreeSet<String>>,
}

/// The ledger's first line. A lock file without it (new, or from a
/// gitpulse before the ledger) gets one sweep of the whole directory.
const LEDGER: &str = "gitpulse scratch ledger v1\n";

impl RepoLock {
    /// Takes the lock on `dir`, waiting up to `wait` for another holder.
    pub(crate) fn acquire(
        dir: &Path,
        wait: Duration,
        control: &AttemptControl,
    ) -> Result<RepoLock, GitFailure> {
        let (parent, name) = parent_and_name(dir)?;
        let path = parent.join(format!(".{name}.gitpulse.lock"));
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
        };
        // The parent nearly always exists: create it only when missing.
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&parent).map_err(|e| io_failure(&parent, e))?;
                open()
            }
            other => other,
        }
        .map_err(|e| io_failure(&path, e))?;
        let give_up = Instant::now() + wait.min(control.remaining());
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(RepoLock {
                        file,
                        parent,
                        name,
                        recorded: Mutex::new(BTreeSet::new()),
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
    /// damaged copy moved aside), written into the ledger before the
    /// caller creates it.
    pub(crate) fn scratch_path(&self, purpose: &str) -> PathBuf {
        let name = format!(".{}.gitpulse-{purpose}-{}", self.name, std::process::id());
        let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        if recorded.insert(name.clone()) {
            let mut file = &self.file;
            let written = file
                .seek(SeekFrom::End(0))
                .and_then(|_| file.write_all(format!("{name}\n").as_bytes()));
            if written.is_err() {
                // A ledger that may miss a name is no ledger: without its
                // first line, the next holder sweeps the whole directory.
                let _ = self.file.set_len(0);
            }
        }
        self.parent.join(name)
    }

    /// Removes half-finished clones left by a process that died holding the
    /// lock, and damaged copies moved aside more than [`KEEP_ASIDE`] ago
    /// (long enough to look at them; they would pile up otherwise). Safe
    /// because we hold the lock now. Reads the ledger; lists the parent
    /// directory only when there is no ledger yet.
    pub(crate) fn sweep_leftovers(&self) -> io::Result<usize> {
        let mut text = String::new();
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))?;
        file.read_to_string(&mut text)?;
        let Some(names) = text.strip_prefix(LEDGER) else {
            let (removed, kept) = self.sweep_directory()?;
            self.rewrite_ledger(&kept.iter().map(String::as_str).collect::<Vec<_>>())?;
            return Ok(removed);
        };
        if names.is_empty() {
            return Ok(0);
        }
        let mut kept = Vec::new();
        let mut removed = 0;
        for name in names.lines() {
            // The ledger names this checkout's scratch directories and
            // nothing else is acted on, whatever the file says.
            let path = self.parent.join(name);
            match self.leftover(name) {
                Some(Leftover::Clone) if path.exists() => {
                    fs::remove_dir_all(&path)?;
                    removed += 1;
                }
                Some(Leftover::Damaged) if path.exists() => {
                    if expired(&path) {
                        fs::remove_dir_all(&path)?;
                        removed += 1;
                    } else {
                        kept.push(name);
                    }
                }
                _ => {}
            }
        }
        if kept.is_empty() {
            // Only the first line stays: cutting is cheaper than
            // rewriting, and this follows every clone.
            self.recorded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            self.file.set_len(LEDGER.len() as u64)?;
        } else {
            self.rewrite_ledger(&kept)?;
        }
        Ok(removed)
    }

    /// The sweep without a ledger: every entry of the parent directory.
    /// Returns how many were removed and the damaged copies still kept
    /// (for the ledger).
    fn sweep_directory(&self) -> io::Result<(usize, Vec<String>)> {
        let mut removed = 0;
        let mut kept = Vec::new();
        for entry in fs::read_dir(&self.parent)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let path = self.parent.join(&name);
            match self.leftover(&name) {
                Some(Leftover::Clone) => {}
                Some(Leftover::Damaged) if expired(&path) => {}
                Some(Leftover::Damaged) => {
                    kept.push(name);
                    continue;
                }
                None => continue,
            }
            fs::remove_dir_all(&path)?;
            removed += 1;
        }
        Ok((removed, kept))
    }

    /// What `name` is, if it is one of this checkout's scratch directories.
    fn leftover(&self, name: &str) -> Option<Leftover> {
        let rest = name
            .strip_prefix(&format!(".{}.gitpulse-", self.name))
            .filter(|rest| !rest.contains('/'))?;
        if rest.starts_with("clone-") {
            Some(Leftover::Clone)
        } else if rest.starts_with("damaged-") {
            Some(Leftover::Damaged)
        } else {
            None
        }
    }

    fn rewrite_ledger(&self, names: &[&str]) -> io::Result<()> {
        self.recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut text = LEDGER.to_string();
        for name in names {
            text.push_str(name);
            text.push('\n');
        }
        let mut file = &self.file;
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(text.as_bytes())
    }
}

enum Leftover {
    Clone,
    Damaged,
}

/// Whether a damaged copy moved aside at `path` has been kept long enough.
fn expired(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > KEEP_ASIDE)
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
