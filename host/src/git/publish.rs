//! Atomic publication (`publish = "symlink"`), as git-sync does it: the
//! repository lives beside DIR, each revision is written out whole into a
//! worktree of its own, and DIR is a symlink flipped from one to the next
//! by a rename, so a reader sees the old revision or the new one, never a
//! mix, and a crash at any point leaves DIR on a complete revision.
//!
//! ```text
//! PARENT/DIR -> .DIR.gitpulse/worktrees/<sha>     (the symlink readers use)
//! PARENT/.DIR.gitpulse/repo                       (the repository gitpulse pulls)
//! PARENT/.DIR.gitpulse/worktrees/<sha>            (published revisions, newest kept)
//! ```
//!
//! Owns the layout, writing a worktree, the flip, switching an in-place
//! checkout to symlinks and back, and pruning old worktrees. It does not
//! pull (the store is an ordinary checkout `sync` keeps up to date) or run
//! steps (the job gates the flip).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use git2::build::CheckoutBuilder;
use git2::{Oid, Repository};

use super::lock::io_failure;
use super::{FailureClass, GitFailure};

/// How a pulled revision reaches DIR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Publish {
    /// DIR is the checkout, updated in place (the default).
    #[default]
    InPlace,
    /// DIR is a symlink to a worktree of the revision, flipped atomically;
    /// `keep` earlier worktrees stay for readers still inside them.
    Symlink {
        /// Earlier worktrees kept.
        keep: usize,
    },
}

impl Publish {
    /// Where gitpulse pulls into for DIR: DIR itself, or the store beside it.
    pub fn repo_dir(self, dir: &Path) -> PathBuf {
        match self {
            Publish::InPlace => dir.to_path_buf(),
            Publish::Symlink { .. } => Layout::of(dir).store(),
        }
    }
}

/// Where DIR's repository and worktrees live in symlink mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// DIR: the symlink readers use.
    pub dir: PathBuf,
    /// `.DIR.gitpulse` beside it.
    home: PathBuf,
}

/// Held while DIR's layout changes: two gitpulse processes publishing the
/// same DIR take turns (one could prune what the other is writing).
#[derive(Debug)]
pub struct PublishLock(#[allow(dead_code)] super::lock::RepoLock);

impl Layout {
    /// Takes DIR's lock, waiting up to `wait` for another holder.
    pub fn lock(&self, wait: std::time::Duration) -> Result<PublishLock, GitFailure> {
        let control = super::AttemptControl::new(wait, None, Default::default());
        super::lock::RepoLock::acquire(&self.dir, wait, &control).map(PublishLock)
    }

    /// The layout for DIR (made absolute first: libgit2 would take a
    /// relative worktree path as relative to the store).
    pub fn of(dir: &Path) -> Layout {
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let dir = absolute.as_path();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        Layout {
            dir: dir.to_path_buf(),
            home: parent.join(format!(".{name}.gitpulse")),
        }
    }

    /// The repository gitpulse pulls (an ordinary checkout).
    pub fn store(&self) -> PathBuf {
        self.home.join("repo")
    }

    fn worktrees(&self) -> PathBuf {
        self.home.join("worktrees")
    }

    /// The worktree of `sha`.
    pub fn worktree(&self, sha: &str) -> PathBuf {
        self.worktrees().join(sha)
    }

    /// The mark that `sha`'s worktree was written whole, by gitpulse:
    /// written last, so a directory that merely has the name (left by a
    /// crash before the mark, or put there by anyone) is not trusted.
    fn mark(&self, sha: &str) -> PathBuf {
        self.worktrees().join(format!(".{sha}.complete"))
    }

    /// Whether `sha`'s worktree is one gitpulse completed: a real
    /// directory (not a symlink) with its mark.
    fn completed(&self, sha: &str) -> bool {
        Oid::from_str(sha).is_ok()
            && fs::symlink_metadata(self.worktree(sha)).is_ok_and(|m| m.is_dir())
            && fs::symlink_metadata(self.mark(sha)).is_ok_and(|m| m.is_file())
    }

    /// Refuses to work through a symlink anywhere gitpulse creates or
    /// removes things: a planted `.DIR.gitpulse` (or `worktrees`) symlink
    /// would send writes and prunes outside DIR's parent.
    fn refuse_symlinks(&self) -> Result<(), GitFailure> {
        for path in [
            self.home.clone(),
            self.worktrees(),
            self.store(),
            self.swap(),
        ] {
            if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(GitFailure {
                    class: FailureClass::Other,
                    http_status: None,
                    retry_after: None,
                    message: format!(
                        "{} is a symlink: gitpulse publishes only into a directory of its own; remove it",
                        path.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Where a symlink or a directory waits to be swapped with DIR.
    fn swap(&self) -> PathBuf {
        self.home.join("swap")
    }

    /// The commit DIR points at now, if it is one of ours, completed.
    pub fn published(&self) -> Option<String> {
        let target = fs::read_link(&self.dir).ok()?;
        let sha = target.file_name()?.to_string_lossy().into_owned();
        self.completed(&sha).then_some(sha)
    }

    /// Makes the layout ready before a pull: finishes an interrupted switch
    /// and turns an in-place checkout at DIR into the store, publishing its
    /// commit first, so DIR is never missing and never half a tree.
    pub fn prepare(&self) -> Result<(), GitFailure> {
        self.refuse_symlinks()?;
        fs::create_dir_all(self.worktrees()).map_err(|e| io_failure(&self.home, e))?;
        // Worktrees published before revisions were marked: DIR points at
        // one, and only gitpulse makes that link.
        if let Some(sha) = fs::read_link(&self.dir)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            let legacy = Oid::from_str(&sha).is_ok()
                && fs::symlink_metadata(self.worktree(&sha)).is_ok_and(|m| m.is_dir())
                && fs::symlink_metadata(self.mark(&sha)).is_err();
            if legacy {
                fs::write(self.mark(&sha), b"").map_err(|e| io_failure(&self.mark(&sha), e))?;
            }
        }
        let swap = self.swap();
        // A switch that died after the exchange: the old checkout waits here.
        if swap.join(".git").exists() && !self.store().exists() {
            fs::rename(&swap, self.store()).map_err(|e| io_failure(&swap, e))?;
        }
        let is_real_dir = fs::symlink_metadata(&self.dir).is_ok_and(|m| m.is_dir());
        if !is_real_dir {
            return Ok(());
        }
        if !self.dir.join(".git").exists() {
            return Err(GitFailure {
                class: FailureClass::Other,
                http_status: None,
                retry_after: None,
                message: format!(
                    "{} is a directory but not a git checkout: refusing to replace it with a symlink",
                    self.dir.display()
                ),
            });
        }
        if self.store().exists() {
            return Err(GitFailure {
                class: FailureClass::Other,
                http_status: None,
                retry_after: None,
                message: format!(
                    "{} is a checkout and {} exists too: move one of them away",
                    self.dir.display(),
                    self.store().display()
                ),
            });
        }
        // Publish what DIR has now, swap the symlink in, and keep the old
        // checkout as the store.
        let head = Repository::open(&self.dir)
            .and_then(|r| r.head()?.peel_to_commit().map(|c| c.id()))
            .map_err(git_failure)?;
        self.write_worktree(&self.dir, head)?;
        let link = self.new_link(&head.to_string())?;
        exchange(&link, &self.dir).map_err(|e| io_failure(&self.dir, e))?;
        fs::rename(&link, self.store()).map_err(|e| io_failure(&link, e))
    }

    /// Writes `sha` of the store out as a worktree, whole or not at all.
    pub fn write(&self, sha: &str) -> Result<PathBuf, GitFailure> {
        self.refuse_symlinks()?;
        let oid = Oid::from_str(sha).map_err(git_failure)?;
        self.write_worktree(&self.store(), oid)
    }

    /// The worktree of `oid` as the store's checkout has it: its sparse set
    /// applied, its submodules' files in place. Trusted only once marked
    /// complete; anything else under that name is rebuilt.
    fn write_worktree(&self, repo_dir: &Path, oid: Oid) -> Result<PathBuf, GitFailure> {
        let sha = oid.to_string();
        let target = self.worktree(&sha);
        if self.completed(&sha) {
            return Ok(target);
        }
        remove_any(&target)?;
        let partial = self.worktrees().join(format!(".{oid}.partial"));
        remove_any(&partial)?;
        fs::create_dir_all(&partial).map_err(|e| io_failure(&partial, e))?;
        let repo = Repository::open(repo_dir).map_err(git_failure)?;
        let matcher = match super::sparse::Sparse::of_checkout(&repo) {
            Some(sparse) => {
                Some(
                    super::sparse::Matcher::new(&sparse).map_err(|message| GitFailure {
                        class: FailureClass::Other,
                        http_status: None,
                        retry_after: None,
                        message: format!("publishing: the sparse patterns: {message}"),
                    })?,
                )
            }
            None => None,
        };
        check_out(&repo, oid, &partial, matcher.as_ref())?;
        fs::rename(&partial, &target).map_err(|e| io_failure(&target, e))?;
        fs::write(self.mark(&sha), b"").map_err(|e| io_failure(&self.mark(&sha), e))?;
        Ok(target)
    }

    /// Points DIR at `sha`'s worktree (written by [`Layout::write`]) with
    /// one rename: readers see the old tree or the new one.
    pub fn flip(&self, sha: &str) -> Result<(), GitFailure> {
        let link = self.new_link(sha)?;
        fs::rename(&link, &self.dir).map_err(|e| io_failure(&self.dir, e))
    }

    /// A new symlink to `sha`'s worktree at the swap place (relative, so
    /// the whole tree can move).
    fn new_link(&self, sha: &str) -> Result<PathBuf, GitFailure> {
        let link = self.swap();
        if fs::symlink_metadata(&link).is_ok() {
            let removed = if link.is_dir() && !link.is_symlink() {
                fs::remove_dir_all(&link)
            } else {
                fs::remove_file(&link)
            };
            removed.map_err(|e| io_failure(&link, e))?;
        }
        let home_name = self.home.file_name().unwrap_or_default();
        let target = Path::new(home_name).join("worktrees").join(sha);
        std::os::unix::fs::symlink(target, &link).map_err(|e| io_failure(&link, e))?;
        Ok(link)
    }

    /// Removes what is not a completed revision (unfinished or stray
    /// entries, whatever they are), then completed revisions but the
    /// published one and the `keep` newest others — at least one, the
    /// revision published before, which a reader may still be inside.
    /// Entries are removed, never followed: a symlink goes as a link.
    pub fn prune(&self, keep: usize) -> Result<usize, GitFailure> {
        self.refuse_symlinks()?;
        let published = self.published();
        let dir = self.worktrees();
        let mut completed: Vec<(std::time::SystemTime, String)> = Vec::new();
        let mut junk: Vec<PathBuf> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_failure(&dir, e))? {
            let entry = entry.map_err(|e| io_failure(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(sha) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".complete"))
            {
                if !self.completed(sha) {
                    junk.push(entry.path());
                }
                continue;
            }
            if !self.completed(&name) {
                junk.push(entry.path());
                continue;
            }
            if published.as_deref() == Some(name.as_str()) {
                continue;
            }
            let marked = fs::metadata(self.mark(&name))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            completed.push((marked, name));
        }
        completed.sort_by_key(|(marked, _)| std::cmp::Reverse(*marked));
        let mut removed = 0;
        for path in junk {
            remove_any(&path)?;
            removed += 1;
        }
        for (_, sha) in completed.into_iter().skip(keep.max(1)) {
            remove_any(&self.worktree(&sha))?;
            remove_any(&self.mark(&sha))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Turns symlink mode back into an in-place checkout at DIR: the store
    /// is swapped in for the symlink in one exchange, then the worktrees go.
    pub fn undo(&self) -> Result<bool, GitFailure> {
        let is_link = fs::symlink_metadata(&self.dir).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link || !self.store().join(".git").exists() {
            return Ok(false);
        }
        exchange(&self.store(), &self.dir).map_err(|e| io_failure(&self.dir, e))?;
        fs::remove_dir_all(&self.home).map_err(|e| io_failure(&self.home, e))?;
        Ok(true)
    }
}

/// Removes whatever is at `path` without following it: a directory with
/// its content, a file or a symlink as itself; nothing there is fine.
fn remove_any(path: &Path) -> Result<(), GitFailure> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(|e| io_failure(path, e))
}

/// Checks out `oid`'s tree of `repo` into `target` (not through the
/// repository's own index or worktree), keeping only what `sparse`
/// includes, then each submodule's commit from the submodule's repository
/// in `repo`'s worktree, recursively; a submodule not checked out there
/// stays an empty directory, as git leaves it.
fn check_out(
    repo: &Repository,
    oid: Oid,
    target: &Path,
    sparse: Option<&super::sparse::Matcher>,
) -> Result<(), GitFailure> {
    let commit = repo.find_commit(oid).map_err(git_failure)?;
    let mut full = git2::Index::new().map_err(git_failure)?;
    full.read_tree(&commit.tree().map_err(git_failure)?)
        .map_err(git_failure)?;
    let mut index = git2::Index::new().map_err(git_failure)?;
    let mut gitlinks = Vec::new();
    for entry in full.iter() {
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        if sparse.is_some_and(|m| !m.includes(&path)) {
            continue;
        }
        if entry.mode == 0o160000 {
            gitlinks.push((path, entry.id));
            continue;
        }
        index.add(&entry).map_err(git_failure)?;
    }
    let mut checkout = CheckoutBuilder::new();
    checkout.force().target_dir(target);
    repo.checkout_index(Some(&mut index), Some(&mut checkout))
        .map_err(git_failure)?;
    for (path, id) in gitlinks {
        // The path comes from upstream's tree: it must stay inside.
        let plain = Path::new(&path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(GitFailure {
                class: FailureClass::Other,
                http_status: None,
                retry_after: None,
                message: format!("publishing: the submodule path `{path}` leaves the tree"),
            });
        }
        let inside = target.join(&path);
        fs::create_dir_all(&inside).map_err(|e| io_failure(&inside, e))?;
        let Some(workdir) = repo.workdir() else {
            continue;
        };
        let Ok(sub) = Repository::open(workdir.join(&path)) else {
            continue; // not checked out in the store: empty, as git leaves it
        };
        if sub.find_commit(id).is_ok() {
            check_out(&sub, id, &inside, None)?;
        }
    }
    Ok(())
}

/// Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`): a
/// directory and a symlink trade places with no moment where either is
/// missing.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; the call only renames.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn git_failure(e: git2::Error) -> GitFailure {
    GitFailure {
        class: FailureClass::Other,
        http_status: None,
        retry_after: None,
        message: format!("publishing: {}", e.message()),
    }
}
