//! The no-op check: whether the checkout already is where the remote's
//! followed ref is, told from one small answer of the remote and a few
//! files of the checkout, without opening the repository.
//!
//! Most scheduled pulls find nothing new. Their floor is one round trip
//! for the remote's refs: over HTTP(S) a protocol-v2 `ls-refs` limited to
//! the prefixes the followed ref can have (one request, small however many
//! tags the remote has); over ssh, git and local remotes an ls-remote. The
//! checkout's HEAD is read from its files. The shape stamp
//! (`.git/gitpulse-shape`, written after every full sync) says the last
//! full sync was made for the same URL, follow, depth, sparse set, mode
//! and submodules, so a full sync would not reshape anything either.
//!
//! This module owns that decision and its pure parts (the request, the
//! answer's parsing, the prefixes, the stamp). It never moves the
//! checkout: whenever it cannot be sure, `sync` takes the full road.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::target::{Advertised, Follow, ObjectId, Target};
use super::{Mode, SyncSpec};

/// The shape stamp's file, in the checkout's git directory.
const STAMP: &str = "gitpulse-shape";

/// What the checkout's own files say it has checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkout {
    /// The branch HEAD names; `None`: detached.
    pub branch: Option<String>,
    /// The commit HEAD resolves to.
    pub head: ObjectId,
}

/// Reads HEAD and, when it names a branch, that branch (a loose ref, else
/// `packed-refs`) from `git_dir`'s files. `None` whenever that is not the
/// plain case (an unborn branch, a symbolic ref to something else, another
/// ref storage): the full sync then looks.
pub(crate) fn checkout_head(git_dir: &Path) -> Option<Checkout> {
    let head = fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim_end();
    let Some(target) = head.strip_prefix("ref: ") else {
        return Some(Checkout {
            branch: None,
            head: ObjectId::from_hex(head)?,
        });
    };
    let branch = target.strip_prefix("refs/heads/")?;
    let oid = match fs::read_to_string(git_dir.join(target)) {
        Ok(loose) => ObjectId::from_hex(loose.trim_end())?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let packed = fs::read_to_string(git_dir.join("packed-refs")).ok()?;
            packed_ref(&packed, target)?
        }
        Err(_) => return None,
    };
    Some(Checkout {
        branch: Some(branch.to_string()),
        head: oid,
    })
}

/// `name`'s object in a `packed-refs` file.
fn packed_ref(packed: &str, name: &str) -> Option<ObjectId> {
    packed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
        .find_map(|l| {
            let (oid, refname) = l.split_once(' ')?;
            (refname == name).then(|| ObjectId::from_hex(oid)).flatten()
        })
}

/// A digest of everything in `spec` that decides what a synced checkout
/// looks like besides the remote's tip. Credentials are not part of it.
pub(crate) fn shape(spec: &SyncSpec, clean_url: &str) -> String {
    let follow = &spec.follow;
    let text = format!(
        "url={clean_url}\nbranch={:?}\nref={:?}\nsemver={:?}\ndepth={:?}\nsparse={:?}\nsubmodules={} {}\nmode={:?}\n",
        follow.branch,
        follow.reference,
        follow.semver.as_ref().map(ToString::to_string),
        spec.depth,
        spec.sparse,
        spec.submodules,
        spec.local_submodules,
        spec.mode,
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Whether the last full sync of the checkout at `git_dir` had `shape`.
pub(crate) fn stamped(git_dir: &Path, shape: &str) -> bool {
    fs::read_to_string(git_dir.join(STAMP)).is_ok_and(|s| s.trim_end() == shape)
}

/// Records that the checkout at `git_dir` was synced with `shape`
/// (rewritten only when it changed).
pub(crate) fn stamp(git_dir: &Path, shape: &str) -> io::Result<()> {
    if stamped(git_dir, shape) {
        return Ok(());
    }
    fs::write(git_dir.join(STAMP), format!("{shape}\n"))
}

/// Whether a pull with `spec` may end at the no-op check. Not in reset
/// mode (it must look at the worktree for local edits), nor for a mirror
/// (every ref counts), nor for a commit pin (the checkout answers that
/// without the remote).
pub(crate) fn applies(spec: &SyncSpec) -> bool {
    spec.mode == Mode::FastForward && spec.follow.local_pin().is_none()
}

/// The ref prefixes whose refs decide where `follow` points, for a
/// checkout on `branch`; `HEAD` is listed with its symref target.
pub(crate) fn prefixes(follow: &Follow, branch: Option<&str>) -> Vec<String> {
    let mut prefixes = Vec::new();
    match follow.reference.as_deref() {
        Some("HEAD") => prefixes.push("HEAD".to_string()),
        Some(r) if r.starts_with("refs/") => prefixes.push(r.to_string()),
        Some(r) => {
            prefixes.push(format!("refs/tags/{r}"));
            prefixes.push(format!("refs/heads/{r}"));
        }
        None => {}
    }
    if follow.semver.is_some() {
        prefixes.push("refs/tags/".to_string());
    }
    if follow.reference.is_none() && follow.semver.is_none() {
        match follow.branch.as_deref().or(branch) {
            Some(b) => prefixes.push(format!("refs/heads/{b}")),
            None => prefixes.push("HEAD".to_string()),
        }
    }
    prefixes.sort();
    prefixes.dedup();
    prefixes
}

/// How long a server that did not answer a protocol-v2 listing is left
/// alone: its pulls take the full road at once meanwhile.
const ONLY_V0_FOR: Duration = Duration::from_secs(3600);

/// Origins that answered a protocol-v2 listing with something else, and
/// when. Process-wide: a daemon pulls many repositories of one server, and
/// each would pay a refused request at every pull.
fn only_v0() -> std::sync::MutexGuard<'static, HashMap<String, Instant>> {
    static ONLY_V0: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    ONLY_V0
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Whether `url`'s server recently did not answer a protocol-v2 listing.
pub(crate) fn knows_only_v0(url: &str) -> bool {
    let Some(origin) = super::http::origin(url) else {
        return false;
    };
    let mut known = only_v0();
    match known.get(&origin) {
        Some(at) if at.elapsed() < ONLY_V0_FOR => true,
        Some(_) => {
            known.remove(&origin);
            false
        }
        None => false,
    }
}

/// Notes that `url`'s server did not answer a protocol-v2 listing.
pub(crate) fn note_only_v0(url: &str) {
    if let Some(origin) = super::http::origin(url) {
        only_v0().insert(origin, Instant::now());
    }
}

/// Appends one pkt-line holding `line`.
fn pkt(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
    out.extend_from_slice(line.as_bytes());
}

/// A protocol-v2 `ls-refs` command for `prefixes`, peeled and with symref
/// targets.
pub(crate) fn ls_refs_request(prefixes: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    pkt(&mut out, "command=ls-refs\n");
    pkt(
        &mut out,
        concat!("agent=gitpulse/", env!("CARGO_PKG_VERSION"), "\n"),
    );
    out.extend_from_slice(b"0001");
    pkt(&mut out, "peel\n");
    pkt(&mut out, "symrefs\n");
    for prefix in prefixes {
        pkt(&mut out, &format!("ref-prefix {prefix}\n"));
    }
    out.extend_from_slice(b"0000");
    out
}

/// The refs of an `ls-refs` answer. `None`: not such an answer (a server
/// that does not speak protocol v2 this way, an `ERR` packet, garbage);
/// the caller then takes the full road, which reports what is wrong.
pub(crate) fn parse_ls_refs(mut answer: &[u8]) -> Option<Advertised> {
    let mut ads = Advertised::default();
    loop {
        let len = std::str::from_utf8(answer.get(..4)?).ok()?;
        let len = usize::from_str_radix(len, 16).ok()?;
        if len == 0 {
            // The flush packet ends the listing; nothing may follow.
            return answer[4..].is_empty().then_some(ads);
        }
        let line = answer.get(4..len)?;
        answer = &answer[len..];
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\n');
        let mut words = line.split(' ');
        let oid = ObjectId::from_hex(words.next()?)?;
        let name = words.next()?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_control()) {
            return None;
        }
        for attribute in words {
            if let Some(target) = attribute.strip_prefix("symref-target:") {
                if name == "HEAD" {
                    // The branch HEAD names is where HEAD is, listed or not.
                    ads.head = Some(target.to_string());
                    ads.refs.insert(target.to_string(), oid);
                }
            } else if let Some(peeled) = attribute.strip_prefix("peeled:") {
                ads.peeled
                    .insert(name.to_string(), ObjectId::from_hex(peeled)?);
            }
        }
        if name != "HEAD" {
            ads.refs.insert(name.to_string(), oid);
        }
    }
}

/// Whether the checkout already is at `target`, as a full sync would
/// leave it: on the followed branch at its tip, or detached at the tag's
/// commit.
pub(crate) fn is_current(target: &Target, checkout: &Checkout) -> bool {
    match target {
        Target::Branch { name, tip } => {
            checkout.branch.as_deref() == Some(name.as_str()) && *tip == checkout.head
        }
        Target::Tag { object, peeled, .. } => {
            checkout.branch.is_none() && peeled.unwrap_or(*object) == checkout.head
        }
        Target::Commit(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn line(text: &str) -> String {
        format!("{:04x}{text}", text.len() + 4)
    }

    #[test]
    fn an_ls_refs_answer_gives_refs_peeled_tags_and_head() {
        let answer = [
            line(&format!("{A} HEAD symref-target:refs/heads/main\n")),
            line(&format!("{A} refs/heads/main\n")),
            line(&format!("{B} refs/tags/v1 peeled:{A}\n")),
            "0000".to_string(),
        ]
        .concat();
        let ads = parse_ls_refs(answer.as_bytes()).unwrap();
        assert_eq!(ads.head.as_deref(), Some("refs/heads/main"));
        assert_eq!(ads.refs.len(), 2);
        assert!(!ads.refs.contains_key("HEAD"));
        assert_eq!(ads.refs["refs/tags/v1"].to_string(), B);
        assert_eq!(ads.peeled["refs/tags/v1"].to_string(), A);
    }

    #[test]
    fn anything_but_a_whole_listing_is_not_an_answer() {
        let whole = [line(&format!("{A} refs/heads/main\n")), "0000".into()].concat();
        assert!(parse_ls_refs(whole.as_bytes()).is_some());
        assert!(parse_ls_refs(b"0000").is_some_and(|a| a.refs.is_empty()));
        for bad in [
            // Cut before the flush packet.
            line(&format!("{A} refs/heads/main\n")),
            // An error packet.
            [line("ERR unknown command\n"), "0000".into()].concat(),
            // A v0 advertisement line (capabilities after a NUL).
            [line(&format!("{A} HEAD\0multi_ack\n")), "0000".into()].concat(),
            // An abbreviated object name, a length past the end, garbage after.
            [line("1234 refs/heads/main\n"), "0000".into()].concat(),
            "00ff".to_string(),
            [whole.clone(), "junk".into()].concat(),
            "zzzz".to_string(),
            String::new(),
        ] {
            assert!(parse_ls_refs(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_request_is_one_command_with_its_prefixes() {
        let body = ls_refs_request(&["refs/heads/main".into()]);
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("0014command=ls-refs\n"), "{text}");
        assert!(text.contains("00010009peel\n000csymrefs\n"), "{text}");
        assert!(
            text.ends_with("001fref-prefix refs/heads/main\n0000"),
            "{text}"
        );
    }

    #[test]
    fn prefixes_cover_what_each_follow_can_resolve_to() {
        let follow = |branch: Option<&str>, reference: Option<&str>, semver: bool| Follow {
            branch: branch.map(String::from),
            reference: reference.map(String::from),
            semver: semver.then(|| semver::VersionReq::parse(">=1").unwrap()),
        };
        assert_eq!(
            prefixes(&follow(Some("main"), None, false), Some("other")),
            ["refs/heads/main"]
        );
        assert_eq!(
            prefixes(&follow(None, None, false), Some("dev")),
            ["refs/heads/dev"]
        );
        assert_eq!(prefixes(&follow(None, None, false), None), ["HEAD"]);
        assert_eq!(
            prefixes(&follow(None, Some("v1"), false), Some("dev")),
            ["refs/heads/v1", "refs/tags/v1"]
        );
        assert_eq!(
            prefixes(&follow(Some("main"), None, true), None),
            ["refs/tags/"]
        );
        assert_eq!(prefixes(&follow(None, Some("HEAD"), false), None), ["HEAD"]);
    }

    #[test]
    fn head_is_read_from_loose_and_packed_refs_and_detached() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path();
        fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        // No such branch yet: unborn.
        assert_eq!(checkout_head(git), None);
        fs::write(
            git.join("packed-refs"),
            format!("# pack-refs with: peeled fully-peeled sorted\n{B} refs/heads/main\n"),
        )
        .unwrap();
        let packed = checkout_head(git).unwrap();
        assert_eq!(packed.branch.as_deref(), Some("main"));
        assert_eq!(packed.head.to_string(), B);
        fs::create_dir_all(git.join("refs/heads")).unwrap();
        fs::write(git.join("refs/heads/main"), format!("{A}\n")).unwrap();
        assert_eq!(checkout_head(git).unwrap().head.to_string(), A);
        fs::write(git.join("HEAD"), format!("{B}\n")).unwrap();
        assert_eq!(
            checkout_head(git),
            Some(Checkout {
                branch: None,
                head: ObjectId::from_hex(B).unwrap()
            })
        );
        fs::write(git.join("HEAD"), "ref: refs/remotes/origin/main\n").unwrap();
        assert_eq!(checkout_head(git), None);
    }

    #[test]
    fn current_means_on_the_branch_at_its_tip_or_detached_at_the_tag() {
        let (a, b) = (
            ObjectId::from_hex(A).unwrap(),
            ObjectId::from_hex(B).unwrap(),
        );
        let on_main = Checkout {
            branch: Some("main".into()),
            head: a,
        };
        let branch = |tip| Target::Branch {
            name: "main".into(),
            tip,
        };
        assert!(is_current(&branch(a), &on_main));
        assert!(!is_current(&branch(b), &on_main));
        let detached = Checkout {
            branch: None,
            head: a,
        };
        assert!(!is_current(&branch(a), &detached));
        let annotated = Target::Tag {
            name: "v1".into(),
            object: b,
            peeled: Some(a),
        };
        assert!(is_current(&annotated, &detached));
        assert!(!is_current(&annotated, &on_main));
    }
}
