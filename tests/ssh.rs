//! `gitpulse pull` over SSH against a real sshd: key authentication, host
//! key verification with --known-hosts, and the failures of each.

use crate::common::*;

/// `gitpulse pull --json` over SSH with `key` and `known_hosts`.
fn pull_ssh(
    url: &str,
    dir: &std::path::Path,
    key: &std::path::Path,
    known_hosts: &std::path::Path,
) -> Run {
    pull(
        url,
        dir,
        &[
            "--ssh-key",
            key.to_str().unwrap(),
            "--known-hosts",
            known_hosts.to_str().unwrap(),
        ],
    )
}

#[test]
fn clones_and_updates_over_ssh_with_a_key_and_known_hosts() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let sshd = Sshd::start();
    let url = sshd.url(&up.bare);
    let key = sshd.client_key();
    let hosts = sshd.known_hosts();
    let args = [
        "--ssh-key",
        key.to_str().unwrap(),
        "--known-hosts",
        hosts.to_str().unwrap(),
    ];
    let dir = root.path().join("c");
    let run = pull(&url, &dir, &args);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    up.commit("over ssh");
    let run = pull(&url, &dir, &args);
    assert_eq!((run.code, run.outcome()), (0, "updated"), "{run:?}");
    assert_eq!(checkout_state(&dir), (up.head(), true));
}

#[test]
fn an_unexpected_host_key_is_refused_and_not_retried() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let sshd = Sshd::start();
    let key = sshd.client_key();
    let hosts = sshd.wrong_known_hosts();
    let run = pull_ssh(&sshd.url(&up.bare), &root.path().join("c"), &key, &hosts);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["tls"], "{run:?}");
    let message = run.json["attempts"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("hostkey") || message.contains("host key"),
        "{run:?}"
    );
}

#[test]
fn a_key_the_server_does_not_accept_is_auth() {
    let root = tempfile::tempdir().unwrap();
    let up = Upstream::new(root.path(), "app");
    let sshd = Sshd::start();
    let key = sshd.stranger_key();
    let hosts = sshd.known_hosts();
    let run = pull_ssh(&sshd.url(&up.bare), &root.path().join("c"), &key, &hosts);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.classes(), ["auth"], "{run:?}");
    assert!(!root.path().join("c").exists());
}
