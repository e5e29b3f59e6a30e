//! What happened, in the form people are told about it.
//!
//! An [`Event`] is built from a finished pull (`changed`, `failed`,
//! `recovered`), from a failed attempt that will be retried (`retrying`),
//! or from the host itself (`plugin-fault`, `config-rejected`). The daemon
//! and `gitpulse pull` build them with the same functions here, so both
//! emit the same events. Its JSON form is the default webhook body and what
//! templates see.
//!
//! This module decides *which* events a pull implies and what they carry;
//! it does not choose recipients, render or deliver (see `notify`), and it
//! holds no secret: URLs are redacted before they get here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::git::FailureClass;
use crate::model::now_ms;
pub use crate::model::{EventKind, Severity};
use crate::outcome::{Outcome, PullReport};
use crate::store::EventRow;

/// The one identity of a repository that leaves the config: what events,
/// messages, logs and plugins see. Its URL is redacted when it is made, and
/// its fields are private, so no caller can build one that leaks a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRef {
    name: String,
    url: String,
    remote_host: String,
    branch: String,
    labels: BTreeMap<String, String>,
}

impl RepoRef {
    /// `url` is redacted here, so a caller cannot forget to.
    pub fn new(
        name: &str,
        url: &str,
        branch: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Self {
        RepoRef {
            name: name.to_string(),
            url: crate::redact::url(url),
            remote_host: crate::git::remote_host(url),
            branch: branch.unwrap_or_default().to_string(),
            labels,
        }
    }

    /// The configured name (a one-shot pull's: its directory's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The remote URL, credentials replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The host the remote is on (what digests and breakers group by).
    pub fn remote_host(&self) -> &str {
        &self.remote_host
    }

    /// The followed branch; empty when it is the remote's default.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The configured labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

/// One new commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Full SHA.
    pub sha: String,
    /// `Name <email>`.
    pub author: String,
    /// The first line of the message.
    pub subject: String,
}

/// What the new commits changed, as a summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesSummary {
    /// Files changed.
    pub changed: usize,
    /// Lines added and removed; none when more than [`MAX_LINE_STATS_FILES`]
    /// files changed (counting lines means reading every changed blob).
    pub insertions: Option<usize>,
    /// Lines removed (absent past the file limit).
    pub deletions: Option<usize>,
    /// The first paths changed (at most [`MAX_PATHS`]).
    pub paths: Vec<String>,
}

/// The new commits of an update, read from the checkout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Newest first, at most [`MAX_COMMITS`].
    pub commits: Vec<Commit>,
    /// None for a fresh clone (there is nothing to compare with).
    pub files: Option<FilesSummary>,
}

/// New commits carried, at most.
pub const MAX_COMMITS: usize = 50;
/// Characters of a commit subject carried, at most.
pub const MAX_SUBJECT: usize = 1024;
/// Characters of an author name carried, at most.
pub const MAX_AUTHOR: usize = 256;
/// Changed paths carried, at most.
pub const MAX_PATHS: usize = 20;
/// Beyond this many changed files, line counts are skipped.
pub const MAX_LINE_STATS_FILES: usize = 2_000;

/// Why the last attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(with = "class_name")]
    /// How it failed.
    pub class: FailureClass,
    /// The HTTP status, when there was one.
    pub http_status: Option<u16>,
    /// The redacted message.
    pub message: String,
}

/// A failure class in JSON: its name (`server-error`), as everywhere.
mod class_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::git::FailureClass;

    pub fn serialize<S: Serializer>(class: &FailureClass, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(class.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FailureClass, D::Error> {
        let name = String::deserialize(d)?;
        name.parse()
            .map_err(|_| serde::de::Error::custom(format!("`{name}` is not a failure class")))
    }
}

/// One event. Optional fields are present only for the kinds that have them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// How much it matters (from the kind).
    pub severity: Severity,
    /// Which repository.
    pub repo: RepoRef,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The commit before (changed, recovered).
    pub old: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The commit after.
    pub new: Option<String>,
    /// New commits, newest first (at most 50; `commit_count` has them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commits: Vec<Commit>,
    #[serde(default)]
    /// How many new commits, all of them.
    pub commit_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// What changed on disk.
    pub files: Option<FilesSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A link to the diff on GitHub, GitLab, Codeberg or Bitbucket.
    pub compare_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Why the last attempt failed (failed, retrying).
    pub failure: Option<Failure>,
    /// Failed attempts (failed, retrying) or failed pulls before a recovery.
    #[serde(default)]
    pub attempts: u32,
    /// Why it gave up (failed), or what went wrong (plugin-fault,
    /// config-rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    /// An event with only its kind, repository and time.
    pub fn new(kind: EventKind, repo: RepoRef, at_ms: u64) -> Event {
        Event {
            kind,
            severity: kind.severity(),
            repo,
            at_ms,
            old: None,
            new: None,
            commits: Vec::new(),
            commit_count: 0,
            files: None,
            compare_url: None,
            failure: None,
            attempts: 0,
            detail: None,
        }
    }

    /// An event of `kind` with every field its kind can carry filled in
    /// (commits with quotes and markup in them, a failure, a detail), for
    /// checking templates before a real event meets them.
    pub fn sample(kind: EventKind, repo: RepoRef) -> Event {
        let mut event = Event::new(kind, repo, 1_700_000_000_000);
        event.old = Some("1".repeat(40));
        event.new = Some("2".repeat(40));
        event.commits = vec![Commit {
            sha: "2".repeat(40),
            author: "Ada <ada@example.com>".into(),
            subject: "Quote \"this\", <b>escape</b> & go".into(),
        }];
        event.commit_count = 1;
        event.files = Some(FilesSummary {
            changed: 1,
            insertions: Some(3),
            deletions: Some(1),
            paths: vec!["src/main.rs".into()],
        });
        event.compare_url = Some("https://github.com/example/app/compare/1...2".into());
        event.failure = Some(Failure {
            class: FailureClass::ServerError,
            http_status: Some(503),
            message: "HTTP 503 Service Unavailable".into(),
        });
        event.attempts = 3;
        event.detail = Some("a sample detail".into());
        event
    }

    /// A host problem that is not about one repository (`repo.name` is
    /// empty) or is about `repo`.
    pub fn problem(kind: EventKind, repo: RepoRef, detail: impl Into<String>, at_ms: u64) -> Event {
        let mut event = Event::new(kind, repo, at_ms);
        event.detail = Some(detail.into());
        event
    }

    /// What makes two messages about this event "the same" for dedup:
    /// the kind, the repository, and what the event says (the new commit,
    /// the failure class, the problem).
    /// The event as the store keeps it: its JSON and its keys.
    pub fn row(&self) -> EventRow {
        EventRow {
            repo: self.repo.name().to_owned(),
            kind: self.kind.as_str().to_string(),
            payload: serde_json::to_string(self).unwrap_or_default(),
            dedup_key: self.dedup_key(),
            digest_key: self.digest_key(),
        }
    }

    /// What makes two messages the same, for the outbox's dedup window.
    pub fn dedup_key(&self) -> String {
        let what = match self.kind {
            // Where from, too: a branch rewound to a commit it had before
            // is a new change, not a repeat.
            EventKind::Changed => format!(
                "{}..{}",
                self.old.as_deref().unwrap_or_default(),
                self.new.as_deref().unwrap_or_default()
            ),
            EventKind::Failed | EventKind::Retrying => self
                .failure
                .as_ref()
                .map(|f| f.class.as_str().to_string())
                .unwrap_or_default(),
            EventKind::Recovered => self.new.clone().unwrap_or_default(),
            EventKind::PluginFault | EventKind::ConfigRejected => {
                self.detail.clone().unwrap_or_default()
            }
            // One message per step and revision, however often it is tried.
            EventKind::StepFailed => format!(
                "{}@{}",
                self.detail.as_deref().unwrap_or_default(),
                self.new.as_deref().unwrap_or_default()
            ),
        };
        format!("{}|{}|{}", self.kind, self.repo.name(), what)
    }

    /// Events that arrive in floods when a host goes down or comes back
    /// are collected into one digest per host.
    pub fn digest_key(&self) -> Option<String> {
        match self.kind {
            EventKind::Failed | EventKind::Recovered => {
                Some(format!("{}@{}", self.kind, self.repo.remote_host()))
            }
            _ => None,
        }
    }
}

/// The events a finished pull implies. `previous_failures` is how many
/// pulls in a row had failed before this one; `changes` the new commits
/// when the pull moved the checkout.
pub fn for_pull(
    repo: &RepoRef,
    report: &PullReport,
    previous_failures: u32,
    changes: Option<Changes>,
    at_ms: u64,
) -> Vec<Event> {
    let mut events = Vec::new();
    if report.outcome.is_success() {
        // Every new HEAD is a change, a rewound branch too (no new
        // commits, yet the checkout moved).
        let moved = match report.outcome {
            Outcome::Cloned => report.commits > 0,
            Outcome::Updated => report.commits > 0 || report.old != report.new,
            _ => false,
        };
        if moved {
            let mut e = Event::new(EventKind::Changed, repo.clone(), at_ms);
            e.old = report.old.clone();
            e.new = report.new.clone();
            e.commit_count = report.commits;
            if let Some(changes) = changes {
                e.commits = changes.commits;
                e.files = changes.files;
            }
            if let (Some(old), Some(new)) = (&report.old, &report.new) {
                e.compare_url = compare_url(&repo.url, old, new);
            }
            events.push(e);
        }
        if previous_failures > 0 {
            let mut e = Event::new(EventKind::Recovered, repo.clone(), at_ms);
            e.new = report.new.clone();
            e.attempts = previous_failures;
            events.push(e);
        }
    } else {
        let mut e = Event::new(EventKind::Failed, repo.clone(), at_ms);
        e.old = report.old.clone();
        e.attempts = report.attempts.len() as u32;
        e.failure = report.attempts.last().map(|a| Failure {
            class: a.class,
            http_status: a.http_status,
            message: a.message.clone(),
        });
        e.detail = report.reason.as_ref().map(ToString::to_string);
        events.push(e);
    }
    events
}

/// Everything a finished pull tells, once the store says how many pulls
/// failed before it. The daemon and `gitpulse pull` both record through it,
/// so both emit the same events.
pub struct PullEvents<'a> {
    repo: &'a RepoRef,
    report: &'a PullReport,
    changes: Option<Changes>,
    with_retries: bool,
    at_ms: u64,
}

impl<'a> PullEvents<'a> {
    /// Reads the new commits from the checkout at `dir` now, before a
    /// caller locks the store (it touches the disk). `with_retries` adds a
    /// `retrying` event per retried attempt, for callers that did not tell
    /// of them as they happened.
    pub fn read(
        repo: &'a RepoRef,
        dir: &std::path::Path,
        report: &'a PullReport,
        with_retries: bool,
    ) -> Self {
        let changes = match (&report.new, report.commits) {
            (Some(new), 1..) => read_changes(dir, report.old.as_deref(), new)
                .map_err(|e| {
                    tracing::warn!(repo = repo.name, "reading the new commits: {}", e.message())
                })
                .ok(),
            _ => None,
        };
        PullEvents {
            repo,
            report,
            changes,
            with_retries,
            at_ms: now_ms(),
        }
    }

    /// The events, given how many pulls in a row failed before this one.
    pub fn given(&self, previous_failures: u32) -> Vec<Event> {
        let (repo, report, at) = (self.repo, self.report, self.at_ms);
        let mut events = Vec::new();
        if self.with_retries {
            events.extend(retries(repo, report, at));
        }
        events.extend(for_pull(
            repo,
            report,
            previous_failures,
            self.changes.clone(),
            at,
        ));
        events.extend(plugin_faults(repo, report, at));
        events
    }
}

/// A policy plugin's faults during a pull, as `plugin-fault` events.
fn plugin_faults(repo: &RepoRef, report: &PullReport, at_ms: u64) -> Vec<Event> {
    report
        .plugin_faults
        .iter()
        .map(|f| Event::problem(EventKind::PluginFault, repo.clone(), f.clone(), at_ms))
        .collect()
}

/// `retrying` events for the attempts of a finished pull that were
/// followed by another (for `gitpulse pull`, which tells of them when the
/// pull ends; the daemon tells of each as it happens).
fn retries(repo: &RepoRef, report: &PullReport, at_ms: u64) -> Vec<Event> {
    report
        .attempts
        .iter()
        .filter(|a| a.delay_ms.is_some())
        .map(|a| retrying(repo, a, at_ms))
        .collect()
}

/// An attempt failed and another follows.
pub fn retrying(repo: &RepoRef, record: &crate::outcome::AttemptRecord, at_ms: u64) -> Event {
    let mut e = Event::new(EventKind::Retrying, repo.clone(), at_ms);
    e.attempts = record.n;
    e.failure = Some(Failure {
        class: record.class,
        http_status: record.http_status,
        message: record.message.clone(),
    });
    e.detail = record.delay_ms.map(|ms| {
        format!(
            "next attempt in {}",
            humantime::format_duration(std::time::Duration::from_millis(ms))
        )
    });
    e
}

/// Reads the new commits between `old` and `new` from the checkout at
/// `dir`. A fresh clone (`old` none) lists the newest commits and no file
/// summary. Fails only if the checkout cannot be read.
pub fn read_changes(
    dir: &std::path::Path,
    old: Option<&str>,
    new: &str,
) -> Result<Changes, git2::Error> {
    let repo = git2::Repository::open(dir)?;
    let new_id = git2::Oid::from_str(new)?;
    let mut walk = repo.revwalk()?;
    // Time order yields commits as it goes; a topological sort would walk the
    // whole history of a fresh clone first.
    walk.set_sorting(git2::Sort::TIME)?;
    walk.push(new_id)?;
    let old_id = old.map(git2::Oid::from_str).transpose()?;
    if let Some(old_id) = old_id {
        walk.hide(old_id)?;
    }
    let mut commits = Vec::new();
    for id in walk.take(MAX_COMMITS) {
        let commit = repo.find_commit(id?)?;
        // Upstream writes these: no terminal escapes, no floods.
        let author = String::from_utf8_lossy(commit.author().name_bytes()).into_owned();
        let subject = String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default());
        commits.push(Commit {
            sha: commit.id().to_string(),
            author: crate::redact::printable(&author, MAX_AUTHOR),
            subject: crate::redact::printable(&subject, MAX_SUBJECT),
        });
    }
    let files = match old_id {
        None => None,
        Some(old_id) => {
            let old_tree = repo.find_commit(old_id)?.tree()?;
            let new_tree = repo.find_commit(new_id)?.tree()?;
            let diff = repo.diff_tree_to_tree(Some(&old_tree), Some(&new_tree), None)?;
            let changed = diff.deltas().len();
            let (insertions, deletions) = if changed <= MAX_LINE_STATS_FILES {
                let stats = diff.stats()?;
                (Some(stats.insertions()), Some(stats.deletions()))
            } else {
                (None, None)
            };
            let paths = diff
                .deltas()
                .take(MAX_PATHS)
                .filter_map(|d| d.new_file().path().or_else(|| d.old_file().path()))
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            Some(FilesSummary {
                changed,
                insertions,
                deletions,
                paths,
            })
        }
    };
    Ok(Changes { commits, files })
}

/// The paths that differ between `old` and `new` (every file of `new`
/// when there is no `old`), at most `max`.
pub fn changed_paths(
    dir: &std::path::Path,
    old: Option<&str>,
    new: &str,
    max: usize,
) -> Result<Vec<String>, git2::Error> {
    let repo = git2::Repository::open(dir)?;
    let new_tree = repo.find_commit(git2::Oid::from_str(new)?)?.tree()?;
    let old_tree = match old {
        Some(old) => Some(repo.find_commit(git2::Oid::from_str(old)?)?.tree()?),
        None => None,
    };
    let diff = repo.diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), None)?;
    Ok(diff
        .deltas()
        .take(max)
        .filter_map(|d| d.new_file().path().or_else(|| d.old_file().path()))
        .map(|p| crate::redact::printable(&p.to_string_lossy(), 4096))
        .collect())
}

/// A web page comparing `old` and `new`, for the forges whose URL shape is
/// known (GitHub, GitLab, Gitea/Codeberg, Bitbucket); none otherwise.
pub fn compare_url(remote: &str, old: &str, new: &str) -> Option<String> {
    let url = url::Url::parse(remote).ok()?;
    if !matches!(url.scheme(), "https" | "http" | "ssh") {
        return None;
    }
    let host = url.host_str()?;
    let path = url.path().trim_matches('/').trim_end_matches(".git");
    if path.is_empty() {
        return None;
    }
    let web = format!("https://{host}/{path}");
    match host {
        "github.com" | "codeberg.org" => Some(format!("{web}/compare/{old}...{new}")),
        "gitlab.com" => Some(format!("{web}/-/compare/{old}...{new}")),
        "bitbucket.org" => Some(format!("{web}/branches/compare/{new}%0D{old}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::FailureClass;
    use crate::outcome::AttemptRecord;

    fn report(outcome: Outcome, commits: u64) -> PullReport {
        PullReport {
            url: "https://github.com/o/r.git".into(),
            dir: "r".into(),
            outcome,
            old: Some("a".repeat(40)),
            new: (outcome != Outcome::Failed).then(|| "b".repeat(40)),
            commits,
            attempts: if outcome == Outcome::Failed {
                vec![AttemptRecord {
                    n: 1,
                    class: FailureClass::ServerError,
                    http_status: Some(503),
                    message: "HTTP 503".into(),
                    delay_ms: None,
                    duration_ms: 3,
                    limit: None,
                }]
            } else {
                Vec::new()
            },
            duration_ms: 5,
            reason: (outcome == Outcome::Failed)
                .then_some(crate::policy::StopReason::AttemptsExhausted),
            notices: Vec::new(),
            plugin_faults: Vec::new(),
            limit: None,
            learnt: None,
        }
    }

    fn repo() -> RepoRef {
        RepoRef::new(
            "r",
            "https://user:tok@github.com/o/r.git",
            Some("main"),
            BTreeMap::new(),
        )
    }

    #[test]
    fn a_pull_implies_its_events() {
        let kinds = |r: &PullReport, prev| {
            for_pull(&repo(), r, prev, None, 1)
                .iter()
                .map(|e| e.kind)
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&report(Outcome::Updated, 2), 0), [EventKind::Changed]);
        assert_eq!(kinds(&report(Outcome::Unchanged, 0), 0), []);
        let mut rewound = report(Outcome::Updated, 0);
        rewound.old = Some("c".repeat(40));
        assert_ne!(rewound.old, rewound.new);
        assert_eq!(
            kinds(&rewound, 0),
            [EventKind::Changed],
            "a rewind moved HEAD"
        );
        assert_eq!(
            kinds(&report(Outcome::Unchanged, 0), 3),
            [EventKind::Recovered]
        );
        assert_eq!(
            kinds(&report(Outcome::Updated, 1), 1),
            [EventKind::Changed, EventKind::Recovered]
        );
        assert_eq!(kinds(&report(Outcome::Failed, 0), 0), [EventKind::Failed]);
        let failed = &for_pull(&repo(), &report(Outcome::Failed, 0), 0, None, 1)[0];
        assert_eq!(
            failed.failure.as_ref().unwrap().class,
            FailureClass::ServerError
        );
        let json = serde_json::to_value(failed).unwrap();
        assert_eq!(json["failure"]["class"], "server-error", "{json}");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(&back, failed);
        assert_eq!(failed.severity, Severity::Error);
    }

    #[test]
    fn changed_events_carry_a_compare_url_and_no_credentials() {
        let e = &for_pull(&repo(), &report(Outcome::Updated, 2), 0, None, 1)[0];
        let json = serde_json::to_string(e).unwrap();
        assert!(!json.contains("tok"), "{json}");
        assert_eq!(
            e.compare_url.as_deref(),
            Some(
                format!(
                    "https://github.com/o/r/compare/{}...{}",
                    "a".repeat(40),
                    "b".repeat(40)
                )
                .as_str()
            )
        );
        assert_eq!(
            compare_url("https://git.example.com/o/r.git", "a", "b"),
            None
        );
        assert_eq!(
            compare_url("https://gitlab.com/g/sub/r.git", "a", "b").as_deref(),
            Some("https://gitlab.com/g/sub/r/-/compare/a...b")
        );
    }

    #[test]
    fn floods_share_a_digest_key_per_host_and_kind() {
        let a = &for_pull(&repo(), &report(Outcome::Failed, 0), 0, None, 1)[0];
        let mut other = repo();
        other.name = "s".into();
        let b = &for_pull(&other, &report(Outcome::Failed, 0), 0, None, 1)[0];
        assert_eq!(a.digest_key(), b.digest_key());
        assert_ne!(a.dedup_key(), b.dedup_key());
        let changed = &for_pull(&repo(), &report(Outcome::Updated, 1), 0, None, 1)[0];
        assert_eq!(changed.digest_key(), None);
    }

    #[test]
    fn the_new_commits_and_a_file_summary_are_read_from_the_checkout() {
        use gitpulse_testkit::git_ok;
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| git_ok(dir.path(), args);
        git(&["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("a"), "1\n").unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "first"]);
        let old = git(&["rev-parse", "HEAD"]);
        std::fs::write(dir.path().join("a"), "1\n2\n3\n").unwrap();
        git(&["commit", "-qam", "second"]);
        std::fs::write(dir.path().join("b"), "x\n").unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "third: add b"]);
        let new = git(&["rev-parse", "HEAD"]);

        let changes = read_changes(dir.path(), Some(&old), &new).unwrap();
        let subjects: Vec<&str> = changes.commits.iter().map(|c| c.subject.as_str()).collect();
        assert_eq!(
            subjects,
            ["third: add b", "second"],
            "newest first, old excluded"
        );
        assert_eq!(changes.commits[0].author, "Test Author");
        let files = changes.files.unwrap();
        assert_eq!(
            (files.changed, files.insertions, files.deletions),
            (2, Some(3), Some(0))
        );
        assert_eq!(files.paths, ["a", "b"]);
        let clone = read_changes(dir.path(), None, &new).unwrap();
        assert_eq!(clone.commits.len(), 3);
        assert_eq!(
            clone.files, None,
            "a fresh clone has nothing to compare with"
        );
    }

    #[test]
    fn kinds_and_severities_parse_from_config_words() {
        assert_eq!(
            "plugin-fault".parse::<EventKind>(),
            Ok(EventKind::PluginFault)
        );
        assert!("boom"
            .parse::<EventKind>()
            .unwrap_err()
            .contains("changed, failed"));
        assert!(Severity::Error > Severity::Warning);
    }
}
