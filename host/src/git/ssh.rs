//! SSH host-key verification against a `known_hosts` file given with
//! `--known-hosts`.
//!
//! Understands the OpenSSH format: plain host patterns (`host`,
//! `[host]:port`, comma-separated) and hashed ones (`|1|salt|hash`,
//! HMAC-SHA1 as written by `ssh-keyscan -H`). Wildcards, `@revoked` and
//! `@cert-authority` markers are not supported: such lines never match, so
//! the check fails closed.

use std::path::Path;

use base64::Engine as _;
use git2::cert::Cert;
use git2::CertificateCheckStatus;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

pub(crate) fn check_host_key(
    known_hosts: &Path,
    cert: &Cert<'_>,
    host: &str,
    port: Option<u16>,
) -> Result<CertificateCheckStatus, git2::Error> {
    let reject = |why: String| {
        Err(git2::Error::new(
            git2::ErrorCode::Certificate,
            git2::ErrorClass::Ssh,
            why,
        ))
    };
    let Some(hostkey) = cert.as_hostkey() else {
        return reject("the server offered no SSH host key".into());
    };
    let (Some(key), Some(kind)) = (hostkey.hostkey(), hostkey.hostkey_type()) else {
        return reject("the server offered no SSH host key".into());
    };
    let text = match std::fs::read_to_string(known_hosts) {
        Ok(t) => t,
        Err(e) => return reject(format!("cannot read {}: {e}", known_hosts.display())),
    };
    let name = match port {
        Some(p) if p != 22 => format!("[{host}]:{p}"),
        _ => host.to_string(),
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
    if known_keys(&text, &name).any(|(t, k)| t == kind.name() && k == encoded) {
        Ok(CertificateCheckStatus::CertificateOk)
    } else {
        reject(format!(
            "host key for {name} ({}) is not in {}",
            kind.name(),
            known_hosts.display()
        ))
    }
}

/// The (type, base64 key) pairs listed for `name`.
fn known_keys<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    text.lines().filter_map(move |line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            return None;
        }
        let mut fields = line.split_whitespace();
        let hosts = fields.next()?;
        let kind = fields.next()?;
        let key = fields.next()?;
        hosts
            .split(',')
            .any(|pattern| host_matches(pattern, name))
            .then_some((kind, key))
    })
}

fn host_matches(pattern: &str, name: &str) -> bool {
    let Some(hashed) = pattern.strip_prefix("|1|") else {
        return pattern == name;
    };
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_bracketed_hosts_match() {
        let text = "# comment\nexample.com,10.0.0.1 ssh-ed25519 AAAAkey1\n[localhost]:2222 ssh-rsa AAAAkey2\n";
        assert_eq!(
            known_keys(text, "example.com").collect::<Vec<_>>(),
            [("ssh-ed25519", "AAAAkey1")]
        );
        assert_eq!(
            known_keys(text, "[localhost]:2222").collect::<Vec<_>>(),
            [("ssh-rsa", "AAAAkey2")]
        );
        assert_eq!(known_keys(text, "localhost").count(), 0);
    }

    #[test]
    fn hashed_hosts_match() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b"0123456789abcdefghij";
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"git.example.org");
        let hash = mac.finalize().into_bytes();
        let line = format!(
            "|1|{}|{} ssh-ed25519 AAAAkey\n",
            b64.encode(salt),
            b64.encode(hash)
        );
        assert_eq!(known_keys(&line, "git.example.org").count(), 1);
        assert_eq!(known_keys(&line, "other.example.org").count(), 0);
    }
}
