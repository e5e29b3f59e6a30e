//! Making a checkout's history and object store no bigger than asked:
//! shortening a shallow history to a smaller `--depth` (as `git fetch
//! --depth` does, by moving the shallow boundary), and collecting what no
//! ref, `HEAD` or the index reaches any more (as `git gc --prune=now`).
//!
//! Both run after a successful sync, under the checkout's lock: shortening
//! when the depth asks for it, collection after shortening and whenever
//! the store has grown as `git gc --auto` would notice (more than
//! [`PACK_LIMIT`] packs, or about [`LOOSE_LIMIT`] loose objects), within
//! [`COLLECT_TIME`]. Neither
//! needs the server: the boundary is computed from the local history, and
//! collection writes one new pack of everything reachable before it
//! deletes the old packs and loose objects, so a crash in between leaves
//! both (more disk, nothing lost).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::path::Path;

use git2::{Oid, Repository};

/// What shortening did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortened {
    /// Commits reachable before.
    pub before: usize,
    /// Commits reachable after.
    pub after: usize,
}

/// Moves the shallow boundary so `HEAD`'s history is `depth` commits deep
/// (counted as git counts: generations from `HEAD`, which is 1). `None`
/// when it is no deeper already. Other refs keep what they reach, up to
/// the boundary, as with git.
pub fn shorten(repo: &Repository, depth: u32) -> Result<Option<Shortened>, git2::Error> {
    let depth = depth.max(1) as usize;
    let head = repo.head()?.peel_to_commit()?.id();
    // Generations from HEAD, breadth first, up to `depth`.
    let mut generation: HashMap<Oid, usize> = HashMap::from([(head, 1)]);
    let mut queue = VecDeque::from([head]);
    let mut boundary: HashSet<Oid> = HashSet::new();
    while let Some(id) = queue.pop_front() {
        let at = generation[&id];
        let commit = repo.find_commit(id)?;
        if commit.parent_count() == 0 {
            continue;
        }
        if at == depth {
            boundary.insert(id);
            continue;
        }
        for parent in commit.parent_ids() {
            if let std::collections::hash_map::Entry::Vacant(e) = generation.entry(parent) {
                e.insert(at + 1);
                queue.push_back(parent);
            }
        }
    }
    // A commit both at the boundary and reached sooner by another path
    // keeps its parents.
    boundary.retain(|id| generation[id] == depth);
    if boundary.is_empty() {
        return Ok(None);
    }
    let before = reachable(repo)?.len();
    // Commits already shallow stay so; the new boundary joins them.
    let shallow_file = repo.path().join("shallow");
    let mut shallow: Vec<String> = fs::read_to_string(&shallow_file)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| Oid::from_str(l).is_ok())
        .map(str::to_string)
        .collect();
    shallow.extend(boundary.iter().map(Oid::to_string));
    shallow.sort();
    shallow.dedup();
    let mut text = shallow.join("\n");
    text.push('\n');
    crate::model::write_replacing(&shallow_file, text.as_bytes(), 0o644)
        .map_err(|e| git2::Error::from_str(&format!("{}: {e}", shallow_file.display())))?;
    // libgit2 reads the boundary when a repository is opened.
    let reopened = Repository::open(repo.path())?;
    let after = reachable(&reopened)?.len();
    Ok(Some(Shortened { before, after }))
}

/// Commits that `HEAD` and the refs reach, newest first (the order a pack
/// is best built in).
fn reachable(repo: &Repository) -> Result<Vec<Oid>, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.push_head()?;
    walk.push_glob("*")?;
    walk.collect()
}

/// Packs past which collection is due (git's `gc.autoPackLimit`).
pub const PACK_LIMIT: usize = 50;
/// Loose objects past which collection is due (git's `gc.auto`).
pub const LOOSE_LIMIT: usize = 6700;
/// The longest a collection may take; past it, it stops and leaves the
/// store as it was.
pub const COLLECT_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether the object store at `git_dir` has grown enough to collect: as
/// `git gc --auto` judges it, by counting packs and sampling one of the
/// 256 loose-object folders.
pub fn due(git_dir: &Path) -> bool {
    let objects = git_dir.join("objects");
    let packs = fs::read_dir(objects.join("pack"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                .count()
        })
        .unwrap_or(0);
    let sampled = fs::read_dir(objects.join("17"))
        .map(|d| d.count())
        .unwrap_or(0);
    packs > PACK_LIMIT || sampled * 256 > LOOSE_LIMIT
}

/// Bytes the object store takes, before and after collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Before.
    pub before: u64,
    /// After.
    pub after: u64,
}

/// Repacks what `HEAD`, the refs and the index reach into one pack and
/// deletes every other pack and loose object. Reflog entries of commits
/// no ref reaches any more are expired first, as `git reflog expire
/// --expire-unreachable=now` does: they would keep the cut history alive.
pub fn collect(git_dir: &Path) -> Result<Collected, git2::Error> {
    let objects = git_dir.join("objects");
    let before = size_of(&objects);
    let repo = Repository::open(git_dir)?;
    // One walk: what it reaches is both what the reflogs may keep naming
    // and what the new pack holds.
    let commits = reachable(&repo)?;
    expire_unreachable_reflogs(&repo, &commits.iter().copied().collect())?;
    let mut builder = repo.packbuilder()?;
    let started = std::time::Instant::now();
    // A store too big to repack in time is left as it is (nothing is
    // deleted before the new pack is whole).
    builder.set_progress_callback(move |_, _, _| started.elapsed() < COLLECT_TIME)?;
    for &commit in &commits {
        builder.insert_commit(commit)?;
    }
    // A bare mirror has no index to keep objects alive.
    let index = if repo.is_bare() {
        None
    } else {
        Some(repo.index()?)
    };
    for entry in index.iter().flat_map(|i| i.iter()) {
        if entry.mode != 0o160000 {
            builder.insert_object(entry.id, None)?;
        }
    }
    let pack_dir = objects.join("pack");
    builder.write(&pack_dir, 0o444)?;
    let kept = builder
        .name()?
        .map(|n| format!("pack-{n}"))
        .ok_or_else(|| git2::Error::from_str("the new pack has no name"))?;
    drop(builder);
    drop(index);
    drop(repo);
    let io =
        |path: &Path, e: std::io::Error| git2::Error::from_str(&format!("{}: {e}", path.display()));
    for entry in fs::read_dir(&pack_dir).map_err(|e| io(&pack_dir, e))? {
        let path = entry.map_err(|e| io(&pack_dir, e))?.path();
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        if stem.as_deref() != Some(kept.as_str()) && path.is_file() {
            fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    for entry in fs::read_dir(&objects).map_err(|e| io(&objects, e))? {
        let entry = entry.map_err(|e| io(&objects, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let loose = name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit());
        if loose && entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(entry.path()).map_err(|e| io(&entry.path(), e))?;
        }
    }
    // Indexes of what is gone; git rebuilds them when it wants them.
    for stale in [
        "info/commit-graph",
        "info/commit-graphs",
        "pack/multi-pack-index",
    ] {
        let path = objects.join(stale);
        let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
    }
    Ok(Collected {
        before,
        after: size_of(&objects),
    })
}

/// Drops the reflog entries that name a commit `HEAD` and the refs no
/// longer reach.
fn expire_unreachable_reflogs(
    repo: &Repository,
    reachable: &HashSet<Oid>,
) -> Result<(), git2::Error> {
    let mut names = vec!["HEAD".to_string()];
    for reference in repo.references()? {
        if let Ok(name) = reference?.name() {
            names.push(name.to_string());
        }
    }
    for name in names {
        let mut log = repo.reflog(&name)?;
        let before = log.len();
        for i in (0..log.len()).rev() {
            let keep = log
                .get(i)
                .is_some_and(|e| e.id_new().is_zero() || reachable.contains(&e.id_new()));
            if !keep {
                log.remove(i, true)?;
            }
        }
        if log.len() != before {
            log.write()?;
        }
    }
    Ok(())
}

/// Bytes of the files under `dir`.
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => size_of(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn a_smaller_depth_moves_the_boundary_and_collection_drops_what_it_cut() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        git(d, &["init", "-q", "-b", "main"]);
        for i in 0..5 {
            fs::write(d.join(format!("f{i}")), vec![b'a' + i as u8; 64 * 1024]).unwrap();
            git(d, &["add", "."]);
            git(d, &["commit", "-q", "-m", &format!("c{i}")]);
        }
        let repo = Repository::open(d).unwrap();
        let shortened = shorten(&repo, 2).unwrap().unwrap();
        assert_eq!((shortened.before, shortened.after), (5, 2));
        // git agrees: two commits, the older one shallow.
        assert_eq!(git(d, &["rev-list", "--count", "HEAD"]), "2");
        assert_eq!(git(d, &["rev-parse", "--is-shallow-repository"]), "true");
        // Already that deep: nothing to do.
        assert_eq!(shorten(&Repository::open(d).unwrap(), 2).unwrap(), None);

        assert!(!due(&d.join(".git")), "five commits are nothing to collect");
        let collected = collect(&d.join(".git")).unwrap();
        assert!(collected.after < collected.before, "{collected:?}");
        assert_eq!(git(d, &["fsck", "--no-progress"]), "");
        assert_eq!(
            git(d, &["cat-file", "-t", &git(d, &["rev-parse", "HEAD~1"])]),
            "commit"
        );
        // The cut commits are gone from the store.
        let count = git(d, &["count-objects", "-v"]);
        assert!(count.contains("count: 0"), "{count}");
    }

    #[test]
    fn a_bare_mirror_is_collected_too() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("w");
        fs::create_dir(&d).unwrap();
        git(&d, &["init", "-q", "-b", "main"]);
        for i in 0..3 {
            fs::write(d.join(format!("f{i}")), format!("{i}")).unwrap();
            git(&d, &["add", "."]);
            git(&d, &["commit", "-q", "-m", &format!("c{i}")]);
        }
        git(dir.path(), &["clone", "-q", "--mirror", "w", "m.git"]);
        let bare = dir.path().join("m.git");
        collect(&bare).unwrap();
        assert_eq!(git(&bare, &["rev-list", "--count", "HEAD"]), "3");
        assert_eq!(git(&bare, &["fsck", "--no-progress"]), "");
    }
}
