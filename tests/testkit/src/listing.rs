//! Protocol-v2 `ls-refs` answered in-process, the way a hosting service's
//! front end answers ref listings without starting a process per request.
//! Used by [`GitHttpServer::start_listing_in_process`]: with thousands of
//! repositories polled, a `git http-backend` process per listing is what a
//! benchmark would otherwise measure. Everything else (capabilities, packs)
//! still goes to `git http-backend`; the unit test below holds the answer
//! byte for byte to git's own.
//!
//! [`GitHttpServer::start_listing_in_process`]: crate::GitHttpServer::start_listing_in_process

use std::path::Path;

/// What an `ls-refs` request asks for.
#[derive(Debug, Default, PartialEq)]
struct Asked {
    peel: bool,
    symrefs: bool,
    prefixes: Vec<String>,
}

/// The request's pkt-lines, or `None` when it is not a well-formed v2
/// `ls-refs` command (then git answers it).
fn parse(body: &[u8]) -> Option<Asked> {
    let mut rest = body;
    let mut lines = Vec::new();
    while rest.len() >= 4 {
        let len = usize::from_str_radix(std::str::from_utf8(&rest[..4]).ok()?, 16).ok()?;
        match len {
            0 => {
                lines.push(None);
                break;
            }
            1 => {
                lines.push(Some(""));
                rest = &rest[4..];
            }
            4.. => {
                let text = std::str::from_utf8(rest.get(4..len)?).ok()?;
                lines.push(Some(text.trim_end_matches('\n')));
                rest = &rest[len..];
            }
            _ => return None,
        }
    }
    let mut lines = lines.into_iter();
    if lines.next()?? != "command=ls-refs" {
        return None;
    }
    // Capabilities up to the delimiter, then arguments up to the flush.
    for line in lines.by_ref() {
        if line?.is_empty() {
            break;
        }
    }
    let mut asked = Asked::default();
    for line in lines {
        match line {
            None => return Some(asked),
            Some("peel") => asked.peel = true,
            Some("symrefs") => asked.symrefs = true,
            Some("unborn") => {}
            Some(arg) => asked
                .prefixes
                .push(arg.strip_prefix("ref-prefix ")?.to_string()),
        }
    }
    None
}

fn pkt(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(format!("{:04x}{line}", line.len() + 4).as_bytes());
}

/// The `ls-refs` answer for the repository at `git_dir`, or `None` when the
/// request is not one this answers or the repository cannot be read.
pub(crate) fn ls_refs(git_dir: &Path, body: &[u8]) -> Option<Vec<u8>> {
    let asked = parse(body)?;
    let repo = git2::Repository::open_bare(git_dir).ok()?;
    let wanted = |name: &str| {
        asked.prefixes.is_empty() || asked.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    };
    let mut out = Vec::new();
    let mut line = |reference: &git2::Reference| -> Option<()> {
        let name = reference.name().ok()?;
        let resolved = reference.resolve().ok()?;
        let oid = resolved.target()?;
        let mut text = format!("{oid} {name}");
        if asked.symrefs && reference.kind() == Some(git2::ReferenceType::Symbolic) {
            text += &format!(" symref-target:{}", reference.symbolic_target().ok()??);
        }
        if asked.peel {
            if let Ok(tag) = repo.find_tag(oid) {
                let peeled = tag.into_object().peel(git2::ObjectType::Any).ok()?;
                text += &format!(" peeled:{}", peeled.id());
            }
        }
        pkt(&mut out, &format!("{text}\n"));
        Some(())
    };
    if wanted("HEAD") {
        if let Ok(head) = repo.find_reference("HEAD") {
            // An unborn HEAD is left out, as git does without `unborn`.
            let _ = line(&head);
        }
    }
    let mut names: Vec<String> = repo
        .references()
        .ok()?
        .filter_map(|r| r.ok()?.name().ok().map(str::to_string))
        .filter(|n| wanted(n))
        .collect();
    names.sort();
    for name in names {
        if let Ok(reference) = repo.find_reference(&name) {
            line(&reference)?;
        }
    }
    out.extend_from_slice(b"0000");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Upstream;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn request(args: &[&str]) -> Vec<u8> {
        let mut body = Vec::new();
        pkt(&mut body, "command=ls-refs\n");
        pkt(&mut body, "agent=git/2\n");
        body.extend_from_slice(b"0001");
        for a in args {
            pkt(&mut body, &format!("{a}\n"));
        }
        body.extend_from_slice(b"0000");
        body
    }

    /// What `git upload-pack` itself answers to `body`.
    fn gits_answer(git_dir: &Path, body: &[u8]) -> Vec<u8> {
        let mut child = Command::new("git")
            .args(["upload-pack", "--stateless-rpc"])
            .arg(git_dir)
            .env("GIT_PROTOCOL", "version=2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(body).unwrap();
        child.wait_with_output().unwrap().stdout
    }

    #[test]
    fn answers_listings_byte_for_byte_as_git_does() {
        let root = tempfile::tempdir().unwrap();
        let mut up = Upstream::new(root.path(), "listed");
        let first = up.commit("one");
        up.tag("v1.0.0", &first, false);
        let second = up.commit_on("side", "two");
        up.tag("v2.0.0", &second, true);
        for args in [
            vec![],
            vec!["symrefs", "peel"],
            vec!["peel", "ref-prefix refs/tags/"],
            vec!["symrefs", "ref-prefix HEAD", "ref-prefix refs/heads/main"],
            vec!["ref-prefix refs/heads/absent"],
        ] {
            let body = request(&args);
            assert_eq!(
                String::from_utf8(ls_refs(&up.bare, &body).unwrap()).unwrap(),
                String::from_utf8(gits_answer(&up.bare, &body)).unwrap(),
                "{args:?}"
            );
        }
    }

    #[test]
    fn leaves_other_commands_and_malformed_requests_to_git() {
        let root = tempfile::tempdir().unwrap();
        let up = Upstream::new(root.path(), "other");
        let mut fetch = Vec::new();
        pkt(&mut fetch, "command=fetch\n");
        fetch.extend_from_slice(b"00010000");
        assert_eq!(ls_refs(&up.bare, &fetch), None);
        assert_eq!(ls_refs(&up.bare, b"zzzz"), None);
        assert_eq!(ls_refs(&up.bare, &request(&["bogus"])), None);
    }
}
