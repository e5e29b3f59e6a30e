//! Keeping secrets out of everything gitpulse prints or stores.
//!
//! Owns the [`Secret`] wrapper (a value that never prints itself) and the
//! scrubbing of free text: URL userinfo (`https://user:tok@host` becomes
//! `https://***@host`) and any known secret value. Every message that leaves
//! the `git` layer passes through here; it does not decide *what* is secret
//! beyond URL userinfo — callers register their tokens.

use std::fmt;

/// A credential. Its `Debug` and `Display` print `***`; only
/// [`Secret::expose`] gives the value, and only the transport calls it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: only for sending it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `url` with any userinfo replaced by `***`.
///
/// Works on text that is not a valid URL too (scp-like `git@host:x` has no
/// `://` and is returned unchanged: its user name is not a secret).
pub fn url(url: &str) -> String {
    text(url, &[])
}

/// `message` with URL userinfo and every value in `secrets` replaced by
/// `***`, terminal escapes and other control characters removed, and at
/// most [`MAX_TEXT`] characters kept: what a server or an upstream says
/// reaches terminals, logs, the state and notifications only through here.
///
/// Userinfo runs from the scheme to the last `@` on the line, so a
/// password holding a space, `/`, `#` or `?` is hidden whole; in scp-like
/// `user:pass@host:path` everything before the `@` is hidden when it holds
/// a `:` (a lone user name, `git@host:x`, is not a secret).
pub fn text(message: &str, secrets: &[&Secret]) -> String {
    // Control characters go first: redaction must see the text as it will
    // be shown, or `tok\u{2}en` would become the secret once stripped.
    // (Cut well past what is kept, so the cut never splits a secret that
    // ends up shown.)
    let visible = printable(message, MAX_TEXT * 4);
    let mut out = String::with_capacity(visible.len());
    let mut rest = visible.as_str();
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let line = &tail[..tail.find('\n').unwrap_or(tail.len())];
        match userinfo_end(line) {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => {
                let end = line
                    .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
                    .unwrap_or(line.len());
                out.push_str(&tail[..end]);
                rest = &tail[end..];
            }
        }
    }
    out.push_str(rest);
    let mut out = scp_userinfo(&out);
    for secret in secrets {
        let value = secret.expose();
        // Very short values would shred ordinary words; they are not real tokens.
        if value.len() >= 4 {
            out = out.replace(value, "***");
        }
    }
    printable(&out, MAX_TEXT)
}

/// Where the userinfo of the URL whose authority starts `line` ends: at
/// the line's last `@`, so a password holding `/`, `#`, `?`, spaces, `@`
/// or even `://` is hidden whole. When unsure, this hides too much
/// (`https://h/x failed for ann@example.com` loses `h/x … ann`), never too
/// little.
fn userinfo_end(line: &str) -> Option<usize> {
    line.rfind('@')
}

/// A long mix of lower-case letters and digits with no separators, as
/// tokens are and names and file names rarely are; or the shape of a
/// well-known credential whatever its case (an AWS access key id is
/// `AKIA` and 16 capitals and digits, like an environment variable's name).
pub fn looks_like_a_secret(text: &str) -> bool {
    let mixed = text.len() >= 20
        && text.chars().any(|c| c.is_ascii_lowercase())
        && text.chars().any(|c| c.is_ascii_digit())
        && !text.contains(['.', '/', ' ']);
    let aws = ["AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA"]
        .iter()
        .any(|p| text.starts_with(p))
        && text.len() == 20
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && text.chars().skip(4).any(|c| c.is_ascii_digit());
    let prefixed = [
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
        "glpat-",
        "xoxb-",
        "xoxp-",
        "xapp-",
        "sk-",
        "npm_",
        "pypi-",
    ]
    .iter()
    .any(|p| text.starts_with(p) && text.len() >= p.len() + 16);
    mixed || aws || prefixed
}

/// The most characters of one message gitpulse keeps or sends.
pub const MAX_TEXT: usize = 4096;

/// Words like `user:pass@host:path` with their userinfo hidden, line by
/// line. A password may hold spaces (`user:pa ss@host:path`): the words
/// before the `@` are hidden back to the one holding the user's `:`,
/// unless a word ending in `:` (`error:`) comes first.
fn scp_userinfo(text: &str) -> String {
    text.split('\n')
        .map(scp_userinfo_line)
        .collect::<Vec<_>>()
        .join("\n")
}

fn scp_userinfo_line(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut hide_until: Vec<Option<usize>> = vec![None; words.len()];
    for (i, word) in words.iter().enumerate() {
        if word.contains("://") {
            continue;
        }
        let Some(at) = word.rfind('@').filter(|&at| word[at..].contains(':')) else {
            continue;
        };
        if word[..at].contains(':') {
            hide_until[i] = Some(at);
            continue;
        }
        // The password's first part may be in an earlier word.
        for j in (0..i).rev() {
            let earlier = words[j];
            if earlier.contains("://") || earlier.contains('@') || earlier.ends_with(':') {
                break;
            }
            if earlier.contains(':') {
                for k in j..i {
                    hide_until[k] = Some(words[k].len());
                }
                hide_until[i] = Some(at);
                break;
            }
        }
    }
    let mut out = String::with_capacity(line.len());
    let mut hiding = false;
    for (i, word) in words.iter().enumerate() {
        match hide_until[i] {
            Some(end) if end == word.len() => {
                if !hiding {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str("***");
                }
                hiding = true;
            }
            Some(end) => {
                if !hiding {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str("***");
                }
                out.push_str(&word[end..]);
                hiding = false;
            }
            None => {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(word);
                hiding = false;
            }
        }
    }
    out
}

/// `text` without terminal escape sequences (CSI `ESC [ … letter`, OSC
/// `ESC ] … BEL or ESC \\`) and other control characters (newlines and
/// tabs stay), cut to `max` characters with `…`.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max.saturating_mul(4)));
    let mut chars = text.chars().peekable();
    let mut kept = 0;
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.peek() == Some(&'\\')) {
                            if c == '\u{1b}' {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        if c.is_control() && c != '\n' && c != '\t' {
            continue;
        }
        if kept == max {
            out.push('…');
            break;
        }
        out.push(c);
        kept += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_scp_like_password_with_spaces_is_hidden_whole() {
        assert_eq!(url("user:pa ss@host:org/app.git"), "***@host:org/app.git");
        assert_eq!(
            text("clone of user:p1 p2 p3@host:x failed", &[]),
            "clone of ***@host:x failed"
        );
        assert_eq!(url("user:secret@host:x"), "***@host:x");
        // A lone user is no secret, and `error:` is not a user.
        assert_eq!(
            text("error: cannot read from git@host:x", &[]),
            "error: cannot read from git@host:x"
        );
        assert_eq!(url("git@github.com:o/r.git"), "git@github.com:o/r.git");
    }

    #[test]
    fn userinfo_is_hidden() {
        assert_eq!(url("https://user:tok@host/x"), "https://***@host/x");
        assert_eq!(
            url("https://tok@host:8443/x.git"),
            "https://***@host:8443/x.git"
        );
        assert_eq!(url("https://host/x"), "https://host/x");
        assert_eq!(url("git@github.com:a/b"), "git@github.com:a/b");
        assert_eq!(url("ssh://git@host/a"), "ssh://***@host/a");
    }

    #[test]
    fn secrets_inside_messages_are_hidden() {
        let token = Secret::new("ghp_abcdef123456");
        let msg = "failed for http://x:ghp_abcdef123456@h/r: token ghp_abcdef123456 rejected";
        let clean = text(msg, &[&token]);
        assert!(!clean.contains("ghp_abcdef123456"), "{clean}");
        assert_eq!(clean, "failed for http://***@h/r: token *** rejected");
    }

    #[test]
    fn passwords_with_odd_characters_and_scp_like_userinfo_are_hidden() {
        assert_eq!(
            url("https://bob:pa ss@host/r.git"),
            "https://***@host/r.git"
        );
        assert_eq!(
            url("https://bob:p/#?x@host/r.git"),
            "https://***@host/r.git"
        );
        assert_eq!(url("bob:hunter2@host:team/r.git"), "***@host:team/r.git");
        assert_eq!(url("git@host:team/r.git"), "git@host:team/r.git");
        let msg = text("fetch https://u:a b@h/x failed; see https://h/docs", &[]);
        assert_eq!(msg, "fetch https://***@h/x failed; see https://h/docs");
        // Unsure is hidden: more than the password goes, never less.
        let prose = text("fetch https://h/x failed for ann@example.com", &[]);
        assert_eq!(prose, "fetch https://***@example.com");
        assert_eq!(url("https://bob:p@ss@host/x"), "https://***@host/x");
    }

    #[test]
    fn terminal_escapes_and_floods_from_upstream_are_removed() {
        let hostile =
            "ok\u{1b}[31mRED\u{1b}[0m \u{1b}]0;title\u{7}done\u{1b}]8;;http://x\u{1b}\\link\r\n";
        assert_eq!(printable(hostile, 100), "okRED donelink\n");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(text(&"x".repeat(10_000), &[]).chars().count(), MAX_TEXT + 1);
    }

    /// Bounded random search (seeded, so reproducible): whatever surrounds
    /// them, a registered secret and a URL's password never come out.
    #[test]
    fn no_arrangement_of_text_lets_a_secret_through() {
        let mut rng = fastrand::Rng::with_seed(0x5ec7e7);
        let pieces = [
            "https://",
            "http://",
            "ssh://",
            "@",
            ":",
            "/",
            "#",
            "?",
            " ",
            "\n",
            "\u{1b}[31m",
            "host",
            "git@",
            "user",
            "x",
            "é",
            "%40",
        ];
        let token = Secret::new("tok3n_V4lue");
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..rng.usize(1..12) {
                text.push_str(pieces[rng.usize(..pieces.len())]);
            }
            // A newline ends a URL in text (and is not part of one).
            let url = format!("https://user:pa{}ss@host/r.git", text.replace('\n', ""));
            let shown = super::url(&url);
            assert!(
                !shown.contains("pa") || !shown.contains("ss@"),
                "{url:?} -> {shown:?}"
            );
            let message = format!("{text}{}{text}", token.expose());
            let clean = super::text(&message, &[&token]);
            assert!(!clean.contains(token.expose()), "{message:?} -> {clean:?}");
            assert!(!clean.contains('\u{1b}'), "{message:?} -> {clean:?}");
        }
    }

    /// Found by the `redact` fuzz target: a control character inside the
    /// secret hid it from the replacement, and stripping it afterwards
    /// showed it.
    #[test]
    fn a_secret_split_by_a_control_character_is_still_hidden() {
        let token = Secret::new("tok3n_V4lue");
        let clean = super::text("*tok\u{2}3n_V4lue\n", &[&token]);
        assert!(!clean.contains("tok3n_V4lue"), "{clean:?}");
        let url = super::url("https://user:pa\u{7}ss@host/r.git");
        assert!(!url.contains("pass") && !url.contains("pa"), "{url:?}");
    }

    #[test]
    fn secret_never_formats_its_value() {
        let token = Secret::new("hunter22");
        assert_eq!(format!("{token} {token:?}"), "*** ***");
    }
}
