//! The shared vocabulary: words every part of gitpulse uses and none owns.
//! It imports nothing from the crate, so anything may import it.
//!
//! - [`EventKind`] and [`Severity`]: what happened, and how much it matters
//!   (the names the config, templates and plugins use).
//! - [`now_ms`]: the one wall clock, in unix milliseconds, as the state,
//!   events and messages record time.
//! - [`parse_duration`]: the one way durations are read, with the one cap.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The longest duration gitpulse accepts anywhere (timeouts, deadlines,
/// cool-downs, retention): ten years. Longer ones overflow clock
/// arithmetic, and no one means them.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses `250ms`, `10s`, `2m`, `1h`, `30d`; refuses anything above
/// [`MAX_DURATION`], saying what the largest accepted value is.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}`: {e} (e.g. 250ms, 10s, 2m)"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "`{text}` is longer than the largest accepted, 3650d"
        ));
    }
    Ok(d)
}

/// Creates `dir` (and its parents) readable by its owner only, as state
/// and caches are; an existing directory keeps its mode (someone chose it).
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// `bytes` random bytes from the operating system, as lower-case hex: for
/// tokens and keys (never `fastrand`, which is predictable).
pub fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(hex::encode(buf))
}

/// Writes `content` to `path` readable by its owner only (mode 0600),
/// replacing any old file whole.
pub fn write_private(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    write_replacing(path, content, 0o600)
}

/// Writes `content` to `path` with `mode`, replacing any old file whole:
/// written beside it (`NAME.gitpulse-new`), then renamed over it, so a
/// reader sees the old file or the new one, never half of one.
pub fn write_replacing(path: &std::path::Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut scratch = path.as_os_str().to_owned();
    scratch.push(".gitpulse-new");
    let scratch = std::path::PathBuf::from(scratch);
    let _ = std::fs::remove_file(&scratch);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&scratch)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&scratch, path)
}

/// Now, in unix milliseconds (0 before 1970: a clock that wrong has bigger
/// problems than our timestamps).
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// `t` in unix milliseconds (0 before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The user this process runs as (its `/proc/self` owner): who owns the
/// caches and checkouts it may use.
pub fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The kinds of event, in the names the config and templates use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// New commits arrived (or the checkout moved).
    Changed,
    /// A pull gave up.
    Failed,
    /// A pull succeeded after failed ones.
    Recovered,
    /// An attempt failed and will be retried (opt-in).
    Retrying,
    /// A plugin or template misbehaved.
    PluginFault,
    /// A reloaded config was refused.
    ConfigRejected,
    /// A `[[repo.step]]` (or `--step`) failed: its status and output tail.
    StepFailed,
}

impl EventKind {
    /// Every kind, in order.
    pub const ALL: [EventKind; 7] = [
        EventKind::Changed,
        EventKind::Failed,
        EventKind::Recovered,
        EventKind::Retrying,
        EventKind::PluginFault,
        EventKind::ConfigRejected,
        EventKind::StepFailed,
    ];

    /// The name the config and templates use.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Changed => "changed",
            EventKind::Failed => "failed",
            EventKind::Recovered => "recovered",
            EventKind::Retrying => "retrying",
            EventKind::PluginFault => "plugin-fault",
            EventKind::ConfigRejected => "config-rejected",
            EventKind::StepFailed => "step-failed",
        }
    }

    /// How much a kind matters, for `min_severity` filters.
    pub fn severity(self) -> Severity {
        match self {
            EventKind::Changed | EventKind::Recovered => Severity::Info,
            EventKind::Retrying | EventKind::PluginFault => Severity::Warning,
            EventKind::Failed | EventKind::ConfigRejected | EventKind::StepFailed => {
                Severity::Error
            }
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not an event kind (use {})",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                )
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// How much an event matters.
pub enum Severity {
    /// Worth knowing (changed, recovered).
    Info,
    /// Worth a look (retrying, plugin-fault).
    Warning,
    /// Needs someone (failed, config-rejected).
    Error,
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            _ => Err(format!(
                "`{s}` is not a severity (use info, warning or error)"
            )),
        }
    }
}
/// A path as `git diff --name-only` prints it with `core.quotePath=false`:
/// as it is, unless it holds a control character, `"` or `\`; then in
/// double quotes with C escapes (`"innocent\n/etc/passwd"`). Lists of
/// paths are one per line, so a name with a newline cannot add an entry.
pub fn quote_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len() + 8);
    out.push('"');
    for c in path.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:03o}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_as_git_quotes_them() {
        assert_eq!(quote_path("src/a.rs"), "src/a.rs");
        assert_eq!(quote_path("ünï code.txt"), "ünï code.txt");
        assert_eq!(
            quote_path("innocent\n/etc/passwd"),
            "\"innocent\\n/etc/passwd\""
        );
        assert_eq!(quote_path("a\"b\\c\td"), "\"a\\\"b\\\\c\\td\"");
        assert_eq!(quote_path("bell\u{7}"), "\"bell\\007\"");
    }
}
