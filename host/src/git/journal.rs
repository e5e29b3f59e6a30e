//! The intent journal: how a killed update is finished by the next one.
//!
//! Before gitpulse changes a repository it writes `gitpulse-intent` into the
//! git directory: `busy` while fetching, then `checkout <sha> <ref>` just
//! before it moves the worktree and the branch. The file is removed when the
//! change is complete. Finding it at the start of an attempt therefore means
//! an earlier gitpulse died mid-change (we hold the repository lock, so it is
//! not running), which makes two things safe that otherwise are not:
//!
//! - removing the `*.lock` files of the step the journal names (a fetch
//!   takes the remote-tracking refs' locks, a checkout the index's, HEAD's
//!   and its branch's): those can only be that process's. Any other lock
//!   may be a person's `git` started since, and stays (`lock-held`);
//! - rolling the interrupted checkout forward to the recorded commit, so the
//!   worktree, index and branch agree again.
//!
//! Lock files found *without* a journal belong to someone else (a `git`
//! run by a person): they are reported as `lock-held`, never deleted.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

const FILE: &str = "gitpulse-intent";

/// What an unfinished change was doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Fetching; the worktree was not touched yet.
    Busy,
    /// Moving the worktree and `branch` to `target`.
    Checkout { target: Oid, branch: String },
}

impl Intent {
    fn encode(&self) -> String {
        match self {
            Intent::Busy => "busy\n".to_string(),
            Intent::Checkout { target, branch } => format!("checkout {target} {branch}\n"),
        }
    }

    fn decode(text: &str) -> Option<Intent> {
        let mut words = text.split_whitespace();
        match words.next()? {
            "busy" => Some(Intent::Busy),
            "checkout" => Some(Intent::Checkout {
                target: Oid::from_str(words.next()?).ok()?,
                branch: words.next()?.to_string(),
            }),
            _ => None,
        }
    }
}

/// Records `intent`, replacing any previous one atomically.
pub(crate) fn begin(repo: &Repository, intent: &Intent) -> io::Result<()> {
    let path = repo.path().join(FILE);
    let tmp = repo.path().join(format!("{FILE}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(intent.encode().as_bytes())?;
    drop(file);
    fs::rename(tmp, path)
}

/// The change is complete.
pub(crate) fn finish(repo: &Repository) -> io::Result<()> {
    match fs::remove_file(repo.path().join(FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The unfinished intent left by a dead process, if any. An unreadable
/// journal still proves a change was interrupted, so it reads as `Busy`.
pub(crate) fn pending(git_dir: &Path) -> Option<Intent> {
    let text = fs::read_to_string(git_dir.join(FILE)).ok()?;
    Some(Intent::decode(&text).unwrap_or(Intent::Busy))
}

/// git's lock files that are not under refs/.
const WELL_KNOWN_LOCKS: [&str; 7] = [
    "index.lock",
    "HEAD.lock",
    "config.lock",
    "packed-refs.lock",
    "shallow.lock",
    "FETCH_HEAD.lock",
    "ORIG_HEAD.lock",
];

/// git's lock files in `git_dir`: the well-known ones and any under refs/.
pub(crate) fn lock_files(git_dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = WELL_KNOWN_LOCKS
        .iter()
        .map(|name| git_dir.join(name))
        .filter(|p| p.exists())
        .collect();
    collect_ref_locks(&git_dir.join("refs"), &mut found);
    found
}

/// Whether nothing is under way in `git_dir` as far as a look at a few
/// files tells: no intent of ours, none of git's well-known locks, no lock
/// on `branch`. Cheaper than [`lock_files`], which walks refs/.
pub(crate) fn quiet(git_dir: &Path, branch: Option<&str>) -> bool {
    let branch_lock = branch.map(|b| git_dir.join(format!("refs/heads/{b}.lock")));
    !git_dir.join(FILE).exists()
        && !WELL_KNOWN_LOCKS
            .iter()
            .map(|name| git_dir.join(name))
            .chain(branch_lock)
            .any(|p| p.exists())
}

fn collect_ref_locks(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_ref_locks(&path, found);
        } else if path.extension().is_some_and(|e| e == "lock") {
            found.push(path);
        }
    }
}

/// Whether the lock at `relative` (to the git directory) is one the step
/// `intent` takes. In a bare mirror every ref is gitpulse's.
fn taken_by(intent: &Intent, relative: &Path, bare: bool) -> bool {
    let name = relative.to_string_lossy();
    match intent {
        Intent::Busy => {
            ["packed-refs.lock", "shallow.lock", "FETCH_HEAD.lock"].contains(&name.as_ref())
                || name.starts_with("refs/remotes/")
                || (bare && name.starts_with("refs/"))
        }
        Intent::Checkout { branch, .. } => {
            ["index.lock", "HEAD.lock", "ORIG_HEAD.lock"].contains(&name.as_ref())
                || name == format!("{branch}.lock")
        }
    }
}

/// Removes what a dead gitpulse left in `git_dir` during the step `intent`
/// names: that step's lock files and libgit2's temporary pack files, and
/// of those only the ones made since the journal was written (its time is
/// when the step began; anything older was there before it, so not ours).
/// Only call with the repository lock held. Returns the lock files it
/// left: possibly another process's.
pub(crate) fn remove_leftovers(
    git_dir: &Path,
    intent: &Intent,
    bare: bool,
) -> io::Result<Vec<PathBuf>> {
    let began = fs::metadata(git_dir.join(FILE))
        .and_then(|m| m.modified())
        .ok();
    let since_began = |path: &Path| match (began, fs::metadata(path).and_then(|m| m.modified())) {
        (Some(began), Ok(made)) => made >= began,
        // No time to go by: the step's kind alone decides, as before.
        _ => true,
    };
    let mut foreign = Vec::new();
    for lock in lock_files(git_dir) {
        let relative = lock.strip_prefix(git_dir).unwrap_or(&lock);
        if taken_by(intent, relative, bare) && since_began(&lock) {
            fs::remove_file(&lock)?;
        } else {
            foreign.push(lock);
        }
    }
    if let Ok(entries) = fs::read_dir(git_dir.join("objects/pack")) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let temporary = name.starts_with("pack_git2_") || name.starts_with("tmp_");
            if temporary && since_began(&entry.path()) {
                fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(foreign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_round_trip() {
        let oid = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        for intent in [
            Intent::Busy,
            Intent::Checkout {
                target: oid,
                branch: "refs/heads/main".into(),
            },
        ] {
            assert_eq!(Intent::decode(&intent.encode()), Some(intent));
        }
        assert_eq!(Intent::decode("garbage"), None);
    }

    #[test]
    fn a_journal_survives_and_finish_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        assert_eq!(pending(repo.path()), None);
        begin(&repo, &Intent::Busy).unwrap();
        assert_eq!(pending(repo.path()), Some(Intent::Busy));
        // The fetch's own lock, and one a person's `git commit` took since.
        fs::create_dir_all(repo.path().join("refs/remotes/origin")).unwrap();
        fs::write(repo.path().join("refs/remotes/origin/main.lock"), "").unwrap();
        fs::write(repo.path().join("index.lock"), "").unwrap();
        assert_eq!(lock_files(repo.path()).len(), 2);
        let foreign = remove_leftovers(repo.path(), &Intent::Busy, false).unwrap();
        assert_eq!(foreign, [repo.path().join("index.lock")]);
        assert_eq!(lock_files(repo.path()), [repo.path().join("index.lock")]);
        finish(&repo).unwrap();
        assert_eq!(pending(repo.path()), None);
    }

    #[test]
    fn a_checkout_owns_the_index_head_and_its_branch_locks_only() {
        let checkout = Intent::Checkout {
            target: Oid::ZERO_SHA1,
            branch: "refs/heads/main".into(),
        };
        for (lock, ours) in [
            ("index.lock", true),
            ("HEAD.lock", true),
            ("refs/heads/main.lock", true),
            ("refs/heads/topic.lock", false),
            ("refs/remotes/origin/main.lock", false),
            ("config.lock", false),
        ] {
            assert_eq!(taken_by(&checkout, Path::new(lock), false), ours, "{lock}");
        }
        assert!(
            taken_by(&Intent::Busy, Path::new("refs/heads/x.lock"), true),
            "a mirror's refs"
        );
        assert!(!taken_by(
            &Intent::Busy,
            Path::new("refs/heads/x.lock"),
            false
        ));
    }

    #[test]
    fn only_what_was_made_since_the_step_began_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let git_dir = repo.path().to_path_buf();
        fs::create_dir_all(git_dir.join("objects/pack")).unwrap();
        // Made before the step: someone else's.
        fs::write(git_dir.join("index.lock"), "").unwrap();
        fs::write(git_dir.join("objects/pack/tmp_pack_old"), "").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for f in ["index.lock", "objects/pack/tmp_pack_old"] {
            fs::File::options()
                .write(true)
                .open(git_dir.join(f))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let target = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        begin(
            &repo,
            &Intent::Checkout {
                target,
                branch: "refs/heads/main".into(),
            },
        )
        .unwrap();
        // Made during it: ours.
        fs::write(git_dir.join("HEAD.lock"), "").unwrap();
        fs::write(git_dir.join("objects/pack/tmp_pack_new"), "").unwrap();
        let intent = pending(&git_dir).unwrap();
        let left = remove_leftovers(&git_dir, &intent, false).unwrap();
        assert_eq!(left, [git_dir.join("index.lock")]);
        assert!(!git_dir.join("HEAD.lock").exists());
        assert!(!git_dir.join("objects/pack/tmp_pack_new").exists());
        assert!(git_dir.join("objects/pack/tmp_pack_old").exists());
    }
}
