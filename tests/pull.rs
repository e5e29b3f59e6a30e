//! `gitpulse pull` against real servers: clone, update, unchanged, modes,
//! branches, depth, auth, JSON output and exit codes.

mod common;
use common::*;

#[test]
fn clones_then_updates_then_reports_unchanged_over_smart_http() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Upstream::new(root.path(), "app");
    let server = GitHttpServer::start(root.path());
    let dir = root.path().join("checkout");

    let run = pull(&server.url("app"), &dir, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.outcome(), "cloned");
    assert_eq!(run.new_sha(), Some(up.head().as_str()));
    assert!(run.json["old"].is_null());
    assert_eq!(checkout_state(&dir), (up.head(), true));

    let first = up.head();
    up.commit("second");
    up.commit("third");
    let run = pull(&server.url("app"), &dir, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.outcome(), "updated");
    assert_eq!(run.json["old"], first.as_str());
    assert_eq!(run.json["commits"], 2);
    assert_eq!(checkout_state(&dir), (up.head(), true));
    assert!(dir.join("file3.txt").exists());

    let run = pull(&server.url("app"), &dir, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.outcome(), "unchanged");
    assert_eq!(run.json["commits"], 0);
    assert_eq!(run.json["attempts"], serde_json::json!([]));
    assert!(fsck_ok(&dir));
}
