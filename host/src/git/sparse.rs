//! Sparse checkouts, written the way the `git` CLI reads them
//! (`core.sparseCheckout`, `core.sparseCheckoutCone`,
//! `.git/info/sparse-checkout`) — libgit2 has no sparse support, so the
//! rules live here: which paths a sparse set includes (cone directories,
//! or gitignore-style patterns), the file git writes for it, and reading a
//! set someone made by hand with `git sparse-checkout`.
//!
//! Pure but for [`Sparse::of_checkout`] and [`Sparse::write`]; applying a
//! set to a worktree is [`sync`](super::sync)'s.

use std::collections::BTreeSet;
use std::path::Path;

use git2::Repository;

/// Which paths of the tree a checkout has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sparse {
    /// Cone mode (`--sparse DIR`, `sparse = [...]`): these directories
    /// whole, plus every file in the root and in their ancestors.
    Cone(Vec<String>),
    /// Non-cone patterns (`sparse_patterns`): gitignore syntax, a match
    /// includes, `!` excludes, the last match wins.
    Patterns(Vec<String>),
}

impl Sparse {
    /// Cone mode over `dirs` (`docs/`, `charts/app`), normalised.
    pub fn cone<S: AsRef<str>>(dirs: &[S]) -> Result<Sparse, String> {
        let mut out = BTreeSet::new();
        for dir in dirs {
            let d = dir.as_ref().trim().trim_matches('/');
            if d.is_empty() || d.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(format!(
                    "`{}`: a directory path inside the repository",
                    dir.as_ref()
                ));
            }
            if d.contains(['*', '?', '[', '\\', '!']) {
                return Err(format!(
                    "`{}`: cone mode takes directories, not patterns (use sparse_patterns)",
                    dir.as_ref()
                ));
            }
            out.insert(d.to_string());
        }
        Ok(Sparse::Cone(out.into_iter().collect()))
    }

    /// Non-cone `patterns`, checked to be usable.
    pub fn patterns<S: AsRef<str>>(patterns: &[S]) -> Result<Sparse, String> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.as_ref().to_string()).collect();
        Matcher::new(&Sparse::Patterns(patterns.clone()))?;
        Ok(Sparse::Patterns(patterns))
    }

    /// The `info/sparse-checkout` text, as `git sparse-checkout set` writes it.
    pub fn file_text(&self) -> String {
        match self {
            Sparse::Patterns(patterns) => patterns.iter().map(|p| format!("{p}\n")).collect(),
            Sparse::Cone(dirs) => {
                let mut parents = BTreeSet::new();
                for dir in dirs {
                    let mut at = dir.as_str();
                    while let Some((parent, _)) = at.rsplit_once('/') {
                        parents.insert(parent.to_string());
                        at = parent;
                    }
                }
                let mut text = String::from("/*\n!/*/\n");
                let mut lines: Vec<(String, bool)> = parents
                    .iter()
                    .filter(|p| !dirs.contains(p))
                    .map(|p| (p.clone(), false))
                    .chain(dirs.iter().map(|d| (d.clone(), true)))
                    .collect();
                lines.sort();
                for (dir, whole) in lines {
                    text.push_str(&format!("/{dir}/\n"));
                    if !whole {
                        text.push_str(&format!("!/{dir}/*/\n"));
                    }
                }
                text
            }
        }
    }

    /// What a checkout's own settings say (`git sparse-checkout` by
    /// hand), if it is sparse.
    pub fn of_checkout(repo: &Repository) -> Option<Sparse> {
        let config = repo.config().ok()?;
        if !config.get_bool("core.sparseCheckout").unwrap_or(false) {
            return None;
        }
        let text = std::fs::read_to_string(repo.path().join("info/sparse-checkout")).ok()?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        // Git's default is cone mode (since 2.37).
        let cone = config.get_bool("core.sparseCheckoutCone").unwrap_or(true);
        if !cone {
            return Some(Sparse::Patterns(
                lines.iter().map(|l| l.to_string()).collect(),
            ));
        }
        let dirs: Vec<String> = lines
            .iter()
            .filter(|l| !l.starts_with('!') && l.ends_with('/') && **l != "/*")
            .map(|l| l.trim_matches('/').to_string())
            .filter(|d| !d.is_empty() && !lines.contains(&format!("!/{d}/*/").as_str()))
            .collect();
        Some(Sparse::Cone(dirs))
    }

    /// Records the set in the checkout as git does, so the `git` CLI agrees.
    pub fn write(&self, repo: &Repository) -> Result<(), git2::Error> {
        let mut config = repo.config()?;
        config.set_bool("core.sparseCheckout", true)?;
        config.set_bool("core.sparseCheckoutCone", matches!(self, Sparse::Cone(_)))?;
        let info = repo.path().join("info");
        std::fs::create_dir_all(&info).map_err(|e| git2::Error::from_str(&e.to_string()))?;
        std::fs::write(info.join("sparse-checkout"), self.file_text())
            .map_err(|e| git2::Error::from_str(&e.to_string()))
    }
}

/// Decides, path by path, whether a sparse set includes a file.
pub struct Matcher {
    rule: Rule,
}

enum Rule {
    Cone(Vec<String>),
    Patterns(ignore::gitignore::Gitignore),
}

impl Matcher {
    /// A matcher for `sparse`, or why its patterns cannot be used.
    pub fn new(sparse: &Sparse) -> Result<Matcher, String> {
        let rule = match sparse {
            Sparse::Cone(dirs) => Rule::Cone(dirs.clone()),
            Sparse::Patterns(patterns) => {
                let mut builder = ignore::gitignore::GitignoreBuilder::new("/");
                for p in patterns {
                    builder
                        .add_line(None, p)
                        .map_err(|e| format!("`{p}`: {e}"))?;
                }
                Rule::Patterns(builder.build().map_err(|e| e.to_string())?)
            }
        };
        Ok(Matcher { rule })
    }

    /// Whether the file at `path` (relative, `/`-separated) is checked out.
    pub fn includes(&self, path: &str) -> bool {
        match &self.rule {
            Rule::Cone(dirs) => {
                let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                parent.is_empty()
                    || dirs.iter().any(|d| {
                        path.starts_with(&format!("{d}/")) || d.starts_with(&format!("{parent}/"))
                    })
            }
            Rule::Patterns(patterns) => {
                // A pattern "ignores" what the sparse set includes.
                let full = Path::new("/").join(path);
                patterns
                    .matched_path_or_any_parents(&full, false)
                    .is_ignore()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cone_includes_its_directories_and_the_files_of_their_ancestors() {
        let sparse = Sparse::cone(&["docs/", "charts/app"]).unwrap();
        let m = Matcher::new(&sparse).unwrap();
        for yes in [
            "README",
            "docs/a.md",
            "docs/deep/b.md",
            "charts/Chart.yaml",
            "charts/app/values.yaml",
        ] {
            assert!(m.includes(yes), "{yes}");
        }
        for no in ["src/main.rs", "charts/other/values.yaml", "docsx/a.md"] {
            assert!(!m.includes(no), "{no}");
        }
    }

    #[test]
    fn the_cone_file_is_what_git_writes_and_reads_back() {
        let sparse = Sparse::cone(&["docs", "charts/app"]).unwrap();
        assert_eq!(
            sparse.file_text(),
            "/*\n!/*/\n/charts/\n!/charts/*/\n/charts/app/\n/docs/\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        sparse.write(&repo).unwrap();
        assert_eq!(Sparse::of_checkout(&repo), Some(sparse));
    }

    #[test]
    fn patterns_include_by_the_last_match() {
        let sparse = Sparse::patterns(&["/*", "!/big/"]).unwrap();
        let m = Matcher::new(&sparse).unwrap();
        assert!(m.includes("README"));
        assert!(m.includes("src/main.rs"));
        assert!(!m.includes("big/blob.bin"));
        let only = Matcher::new(&Sparse::patterns(&["*.md"]).unwrap()).unwrap();
        assert!(only.includes("docs/a.md") && !only.includes("src/main.rs"));
    }

    #[test]
    fn cone_refuses_what_is_not_a_directory_path() {
        for bad in ["", "/", "../x", "a/*/b", "a//b"] {
            assert!(Sparse::cone(&[bad]).is_err(), "{bad}");
        }
    }
}
