//! What a checkout follows ([`Follow`], from `--branch`, `--ref` and
//! `--semver`) and what that means on the remote now ([`Target`]).
//!
//! Pure: the resolution reads the remote's ref advertisement and nothing
//! else, so every rule is unit-tested here. Fetching and moving the
//! checkout are [`sync`](super::sync)'s.

use std::collections::BTreeMap;
use std::fmt;

/// A (SHA-1) object name, parsed, printed and compared in Rust: the no-op
/// check handles object names without touching libgit2, whose first use
/// initialises it and, through libssh2, OpenSSL (a third of a millisecond,
/// at every one-shot pull).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ObjectId([u8; 20]);

impl ObjectId {
    /// The 40 hex digits of a full object name; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<ObjectId> {
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(ObjectId(bytes))
    }

    pub fn from_git(oid: git2::Oid) -> ObjectId {
        let mut bytes = [0u8; 20];
        let raw = oid.as_bytes();
        let n = raw.len().min(20);
        bytes[..n].copy_from_slice(&raw[..n]);
        ObjectId(bytes)
    }

    pub fn to_git(self) -> Result<git2::Oid, git2::Error> {
        git2::Oid::from_bytes(&self.0)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What the checkout follows. Several may be given; the most precise wins,
/// as in Flux: a commit, then a semver range, then a tag, then a branch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Follow {
    /// `--branch`.
    pub branch: Option<String>,
    /// `--ref`: `HEAD` (the remote's default branch, wherever it points),
    /// a full ref name, a tag, a branch, or a commit (full SHA or a prefix
    /// of at least 4 hex digits), looked up in that order, as
    /// gitrevisions(7) does.
    pub reference: Option<String>,
    /// `--semver`: the highest tag whose version matches.
    pub semver: Option<semver::VersionReq>,
}

impl Follow {
    /// A branch to follow, and nothing else.
    pub fn branch(name: impl Into<String>) -> Follow {
        Follow {
            branch: Some(name.into()),
            ..Follow::default()
        }
    }

    /// What people are told is followed: `main`, `tag v1.2`, `semver >=1`,
    /// `HEAD`; empty for "the checkout's branch, else the remote's HEAD".
    pub fn describe(&self) -> String {
        if let Some(r) = &self.reference {
            if is_commitish(r) || self.semver.is_none() {
                return r.clone();
            }
        }
        if let Some(req) = &self.semver {
            return format!("semver {req}");
        }
        self.branch.clone().unwrap_or_default()
    }

    /// A pin that may be found in the checkout without asking the remote:
    /// a `--ref` of 7 or more hex digits.
    pub(crate) fn local_pin(&self) -> Option<&str> {
        self.reference
            .as_deref()
            .filter(|r| r.len() >= 7 && is_commitish(r))
    }
}

/// Why a ref name cannot be followed, if it cannot.
pub fn bad_ref(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.starts_with('-') {
        Some("a ref cannot start with `-`")
    } else if name
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
        || name.contains("..")
        || name.contains("@{")
        || name.ends_with('/')
        || name.ends_with(".lock")
    {
        Some("not a valid git ref name (git check-ref-format)")
    } else {
        None
    }
}

/// Reads a `--semver` range, with what went wrong.
pub fn parse_semver(text: &str) -> Result<semver::VersionReq, String> {
    semver::VersionReq::parse(text).map_err(|e| format!("`{text}` is not a semver range: {e}"))
}

fn is_commitish(text: &str) -> bool {
    (4..=40).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The remote's refs, as it advertised them.
#[derive(Debug, Default)]
pub(crate) struct Advertised {
    /// Ref name → object (for an annotated tag: the tag object).
    pub refs: BTreeMap<String, ObjectId>,
    /// Annotated tag → the commit it points at (`refs/tags/v1^{}` lines).
    pub peeled: BTreeMap<String, ObjectId>,
    /// The branch the remote's HEAD names (`refs/heads/main`).
    pub head: Option<String>,
}

impl Advertised {
    /// Reads an advertisement as libgit2 lists it.
    pub fn from_heads<'a>(
        heads: impl IntoIterator<Item = (&'a str, ObjectId)>,
        head: Option<String>,
    ) -> Advertised {
        let mut ads = Advertised {
            head,
            ..Advertised::default()
        };
        for (name, oid) in heads {
            if name == "HEAD" {
                continue;
            }
            match name.strip_suffix("^{}") {
                Some(tag) => {
                    ads.peeled.insert(tag.to_string(), oid);
                }
                None => {
                    ads.refs.insert(name.to_string(), oid);
                }
            }
        }
        ads
    }
}

/// Where the checkout goes this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// Follow a branch: a local branch of the same name tracks it.
    Branch { name: String, tip: ObjectId },
    /// A tag: HEAD detached at its commit. `object` is what the ref
    /// points at (a tag object when annotated), `peeled` its commit when
    /// the remote said.
    Tag {
        name: String,
        object: ObjectId,
        peeled: Option<ObjectId>,
    },
    /// A commit named by SHA or prefix: HEAD detached at it.
    Commit(String),
}

/// What `follow` means on a remote that advertised `ads`, for a checkout
/// on `current_branch`. The error is a `ref-not-found` message.
pub(crate) fn resolve(
    follow: &Follow,
    ads: &Advertised,
    current_branch: Option<&str>,
) -> Result<Target, String> {
    let by_ref = match &follow.reference {
        Some(r) => Some(lookup(r, ads)?),
        None => None,
    };
    if let Some(target @ Target::Commit(_)) = &by_ref {
        return Ok(target.clone());
    }
    if let Some(req) = &follow.semver {
        return highest_match(req, ads);
    }
    if let Some(target) = by_ref {
        return Ok(target);
    }
    let name = match (&follow.branch, current_branch, &ads.head) {
        (Some(b), _, _) => b.clone(),
        (None, Some(b), _) => b.to_string(),
        (None, None, Some(head)) => head.trim_start_matches("refs/heads/").to_string(),
        (None, None, None) => {
            return Err(
                "the remote has no default branch (empty repository?); pass --branch".into(),
            )
        }
    };
    branch(&name, ads)
}

/// `--ref NAME`, looked up as gitrevisions(7) does.
fn lookup(name: &str, ads: &Advertised) -> Result<Target, String> {
    if name == "HEAD" {
        let head = ads
            .head
            .as_deref()
            .ok_or("the remote's HEAD names no branch (empty repository?)")?;
        return branch(head.trim_start_matches("refs/heads/"), ads);
    }
    let full = if name.starts_with("refs/") {
        vec![name.to_string()]
    } else {
        vec![format!("refs/tags/{name}"), format!("refs/heads/{name}")]
    };
    for candidate in &full {
        if let Some(tag) = candidate.strip_prefix("refs/tags/") {
            if let Some(&object) = ads.refs.get(candidate) {
                return Ok(Target::Tag {
                    name: tag.to_string(),
                    object,
                    peeled: ads.peeled.get(candidate).copied(),
                });
            }
        } else if let Some(b) = candidate.strip_prefix("refs/heads/") {
            if ads.refs.contains_key(candidate) {
                return branch(b, ads);
            }
        }
    }
    if is_commitish(name) {
        return Ok(Target::Commit(name.to_ascii_lowercase()));
    }
    Err(format!(
        "ref `{name}` not found on the remote: no such tag or branch (it has: {})",
        some_names(ads)
    ))
}

fn branch(name: &str, ads: &Advertised) -> Result<Target, String> {
    match ads.refs.get(&format!("refs/heads/{name}")) {
        Some(&tip) => Ok(Target::Branch {
            name: name.to_string(),
            tip,
        }),
        None if ads.refs.contains_key(&format!("refs/tags/{name}")) => Err(format!(
            "branch `{name}` not found on the remote, but a tag `{name}` is: to check out a tag (or a commit), give it as a ref (`--ref {name}`; the Action's `ref` input)"
        )),
        None => Err(format!(
            "branch `{name}` not found on the remote (it has: {})",
            some_names(ads)
        )),
    }
}

/// The highest tag whose version (a leading `v` allowed) matches `req`;
/// pre-releases only when `req` names one, as Cargo and Flux do.
fn highest_match(req: &semver::VersionReq, ads: &Advertised) -> Result<Target, String> {
    let best = ads
        .refs
        .iter()
        .filter_map(|(name, &object)| {
            let tag = name.strip_prefix("refs/tags/")?;
            let version = semver::Version::parse(tag.trim_start_matches(['v', 'V'])).ok()?;
            req.matches(&version)
                .then_some((version, tag, name, object))
        })
        .max_by(|a, b| a.0.cmp(&b.0));
    match best {
        Some((_, tag, name, object)) => Ok(Target::Tag {
            name: tag.to_string(),
            object,
            peeled: ads.peeled.get(name).copied(),
        }),
        None => Err(format!(
            "no tag on the remote matches semver `{req}` (it has: {})",
            some_names(ads)
        )),
    }
}

/// A few of the remote's branches and tags, for error messages.
fn some_names(ads: &Advertised) -> String {
    let names: Vec<&str> = ads
        .refs
        .keys()
        .filter_map(|r| {
            r.strip_prefix("refs/heads/")
                .or_else(|| r.strip_prefix("refs/tags/"))
        })
        .take(10)
        .collect();
    if names.is_empty() {
        "no branches or tags".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> ObjectId {
        ObjectId([n; 20])
    }

    #[test]
    fn object_names_read_and_print_as_git_writes_them() {
        let hex = "0123456789abcdef0123456789ABCDEF01234567";
        let id = ObjectId::from_hex(hex).unwrap();
        assert_eq!(id.to_string(), hex.to_lowercase());
        assert_eq!(ObjectId::from_git(id.to_git().unwrap()), id);
        assert_eq!(id.to_git().unwrap().to_string(), hex.to_lowercase());
        for bad in [
            "",
            "0123",
            &hex[1..],
            &format!("{hex}0"),
            "g123456789abcdef0123456789abcdef01234567",
            "+123456789abcdef0123456789abcdef01234567",
        ] {
            assert_eq!(ObjectId::from_hex(bad), None, "{bad:?}");
        }
    }

    fn ads() -> Advertised {
        Advertised::from_heads(
            [
                ("HEAD", oid(1)),
                ("refs/heads/main", oid(1)),
                ("refs/heads/dev", oid(2)),
                ("refs/heads/v9", oid(2)),
                ("refs/tags/v1.2.0", oid(3)),
                ("refs/tags/v1.2.0^{}", oid(4)),
                ("refs/tags/v1.10.0", oid(5)),
                ("refs/tags/v2.0.0", oid(6)),
                ("refs/tags/v1.11.0-rc.1", oid(7)),
                ("refs/tags/v9", oid(8)),
                ("refs/tags/latest", oid(9)),
            ],
            Some("refs/heads/main".into()),
        )
    }

    fn follow(reference: Option<&str>, semver: Option<&str>, branch: Option<&str>) -> Follow {
        Follow {
            branch: branch.map(String::from),
            reference: reference.map(String::from),
            semver: semver.map(|s| parse_semver(s).unwrap()),
        }
    }

    fn tag(name: &str, object: u8, peeled: Option<u8>) -> Target {
        Target::Tag {
            name: name.into(),
            object: oid(object),
            peeled: peeled.map(oid),
        }
    }

    #[test]
    fn a_branch_that_is_a_tag_says_to_give_it_as_a_ref() {
        let err = resolve(&follow(None, None, Some("v1.2.0")), &ads(), None).unwrap_err();
        assert!(
            err.contains("a tag `v1.2.0` is") && err.contains("--ref v1.2.0"),
            "{err}"
        );
        let err = resolve(&follow(None, None, Some("nope")), &ads(), None).unwrap_err();
        assert!(err.contains("it has:"), "{err}");
    }

    #[test]
    fn the_default_is_the_checkouts_branch_then_the_remotes_head() {
        let f = Follow::default();
        let main = Target::Branch {
            name: "main".into(),
            tip: oid(1),
        };
        assert_eq!(resolve(&f, &ads(), None), Ok(main));
        let dev = Target::Branch {
            name: "dev".into(),
            tip: oid(2),
        };
        assert_eq!(resolve(&f, &ads(), Some("dev")), Ok(dev));
    }

    #[test]
    fn head_follows_the_remotes_default_branch_wherever_it_moves() {
        let mut remote = ads();
        remote.head = Some("refs/heads/dev".into());
        let got = resolve(&follow(Some("HEAD"), None, None), &remote, Some("main"));
        assert_eq!(
            got,
            Ok(Target::Branch {
                name: "dev".into(),
                tip: oid(2)
            })
        );
    }

    #[test]
    fn tags_are_found_annotated_or_not_and_win_over_a_branch_of_the_same_name() {
        let f = follow(Some("v1.2.0"), None, None);
        assert_eq!(resolve(&f, &ads(), None), Ok(tag("v1.2.0", 3, Some(4))));
        assert_eq!(
            resolve(&follow(Some("latest"), None, None), &ads(), None),
            Ok(tag("latest", 9, None))
        );
        // As gitrevisions(7): refs/tags/NAME before refs/heads/NAME.
        assert_eq!(
            resolve(&follow(Some("v9"), None, None), &ads(), None),
            Ok(tag("v9", 8, None))
        );
        let full = follow(Some("refs/heads/v9"), None, None);
        assert!(matches!(
            resolve(&full, &ads(), None),
            Ok(Target::Branch { name, .. }) if name == "v9"
        ));
    }

    #[test]
    fn hex_that_names_no_ref_is_a_commit_and_a_commit_wins_over_everything() {
        let f = follow(Some("ABCDEF1"), Some(">=1"), Some("main"));
        assert_eq!(
            resolve(&f, &ads(), None),
            Ok(Target::Commit("abcdef1".into()))
        );
        // Too short to be a commit prefix: a missing ref.
        let err = resolve(&follow(Some("abc"), None, None), &ads(), None).unwrap_err();
        assert!(err.contains("ref `abc` not found"), "{err}");
        assert!(err.contains("main, v9"), "{err}");
    }

    #[test]
    fn semver_picks_the_highest_matching_release_and_beats_tag_and_branch() {
        let f = follow(Some("latest"), Some(">=1.2, <2"), Some("main"));
        assert_eq!(resolve(&f, &ads(), None), Ok(tag("v1.10.0", 5, None)));
        let pre = follow(None, Some(">=1.11.0-rc.0, <2"), None);
        assert_eq!(
            resolve(&pre, &ads(), None),
            Ok(tag("v1.11.0-rc.1", 7, None))
        );
        let none = resolve(&follow(None, Some(">=3"), None), &ads(), None).unwrap_err();
        assert!(
            none.contains("no tag on the remote matches semver `>=3`"),
            "{none}"
        );
    }

    #[test]
    fn a_tag_beats_a_branch_and_a_missing_branch_is_named() {
        let f = follow(Some("v2.0.0"), None, Some("main"));
        assert_eq!(resolve(&f, &ads(), None), Ok(tag("v2.0.0", 6, None)));
        let err = resolve(&Follow::branch("gone"), &ads(), None).unwrap_err();
        assert!(err.starts_with("branch `gone` not found"), "{err}");
        let empty = Advertised::default();
        assert!(resolve(&Follow::default(), &empty, None).is_err());
        assert!(resolve(&follow(Some("HEAD"), None, None), &empty, None).is_err());
    }

    #[test]
    fn describe_says_what_wins() {
        assert_eq!(follow(Some("v1"), None, Some("main")).describe(), "v1");
        assert_eq!(
            follow(Some("v1"), Some(">=1"), None).describe(),
            "semver >=1"
        );
        assert_eq!(
            follow(Some("abcdef1"), Some(">=1"), None).describe(),
            "abcdef1"
        );
        assert_eq!(Follow::branch("main").describe(), "main");
        assert_eq!(Follow::default().describe(), "");
    }

    #[test]
    fn bad_ref_names_are_refused() {
        for bad in [
            "", "-x", "a b", "a..b", "a~1", "x:y", "a/", "a.lock", "@{u}",
        ] {
            assert!(bad_ref(bad).is_some(), "{bad}");
        }
        for good in ["main", "refs/tags/v1", "release/1.x", "HEAD", "abc1234"] {
            assert_eq!(bad_ref(good), None, "{good}");
        }
        assert!(parse_semver("not a range").is_err());
    }
}
