//! The result of a whole pull, as users and machines read it.
//!
//! [`PullReport`] is what `gitpulse pull --json` prints, field for field:
//! `{"url","dir","outcome","old","new","commits","attempts","duration_ms"}`
//! plus `reason` (why a failed pull stopped, else null). The URL in it is
//! already redacted; nothing here holds a secret.

use crate::policy::timeout::{AttemptLimit, Learnt};
use serde::{Serialize, Serializer};

use crate::git::FailureClass;
use crate::policy::StopReason;

/// How the pull ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// DIR was made.
    Cloned,
    /// DIR moved to new commits.
    Updated,
    /// DIR was already current.
    Unchanged,
    /// The pull gave up.
    Failed,
}

impl Outcome {
    /// Its name, as in JSON: `cloned`, `updated`, `unchanged`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Cloned => "cloned",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
        }
    }

    /// Whether the checkout is current after it.
    pub fn is_success(self) -> bool {
        self != Outcome::Failed
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// 1-based.
    pub n: u32,
    #[serde(serialize_with = "class_name")]
    /// How it failed.
    pub class: FailureClass,
    /// The HTTP status, when there was one.
    pub http_status: Option<u16>,
    /// Redacted message tail.
    pub message: String,
    /// The wait before the next attempt; null when the pull gave up.
    pub delay_ms: Option<u64>,
    /// How long the attempt ran. Kept in the daemon's state, not in
    /// `pull --json` (whose attempt objects are a published format).
    #[serde(skip)]
    pub duration_ms: u64,
    /// The limits it ran under, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<AttemptLimit>,
}

fn class_name<S: Serializer>(class: &FailureClass, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(class.as_str())
}

impl PullReport {
    /// A pull of `url` into `dir` that has not succeeded (yet): no
    /// attempts, no commits. `url` is redacted here.
    pub fn failed(url: &str, dir: &std::path::Path) -> PullReport {
        PullReport {
            url: crate::redact::url(url),
            dir: dir.display().to_string(),
            outcome: Outcome::Failed,
            old: None,
            new: None,
            commits: 0,
            attempts: Vec::new(),
            duration_ms: 0,
            reason: None,
            notices: Vec::new(),
            plugin_faults: Vec::new(),
            limit: None,
            learnt: None,
        }
    }
}

fn reason_words<S: Serializer>(reason: &Option<StopReason>, s: S) -> Result<S::Ok, S::Error> {
    match reason {
        Some(r) => s.serialize_str(&r.to_string()),
        None => s.serialize_none(),
    }
}

/// The whole pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullReport {
    /// The remote URL with userinfo replaced by `***`.
    pub url: String,
    /// The checkout.
    pub dir: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Full SHA before the pull, or null (fresh clone, failed before reading).
    pub old: Option<String>,
    /// Full SHA after the pull, or null when it failed.
    pub new: Option<String>,
    /// New commits.
    pub commits: u64,
    /// Every failed attempt, in order.
    pub attempts: Vec<AttemptRecord>,
    /// How long it took, waits included.
    pub duration_ms: u64,
    /// Why a failed pull stopped; in JSON its words ("not retryable",
    /// "attempts exhausted", "deadline reached", "cancelled", "policy: …").
    #[serde(serialize_with = "reason_words")]
    pub reason: Option<StopReason>,
    /// Things worth knowing that did not stop the pull.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// What a policy plugin did wrong during the pull (each one a
    /// `plugin-fault` event). Not part of `pull --json`.
    #[serde(skip)]
    pub plugin_faults: Vec<String>,
    /// The limits of the last attempt, and why (learnt, ceiling, doubled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<AttemptLimit>,
    /// The repository's attempt limits with this pull's successful attempt
    /// learnt (none when it failed or nobody told the pull its history).
    #[serde(skip)]
    pub learnt: Option<Learnt>,
}
