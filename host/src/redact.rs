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

/// `message` with URL userinfo and every value in `secrets` replaced by `***`.
pub fn text(message: &str, secrets: &[&Secret]) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    for secret in secrets {
        let value = secret.expose();
        // Very short values would shred ordinary words; they are not real tokens.
        if value.len() >= 4 {
            out = out.replace(value, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn secret_never_formats_its_value() {
        let token = Secret::new("hunter22");
        assert_eq!(format!("{token} {token:?}"), "*** ***");
    }
}
