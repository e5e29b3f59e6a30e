//! `gitpulse pull` as a GitHub Actions step (when `GITHUB_ACTIONS=true`):
//! outputs appended to `$GITHUB_OUTPUT`, a Markdown summary to
//! `$GITHUB_STEP_SUMMARY`, workflow commands on stdout (`::add-mask::` for
//! the token, `::group::` around each failed attempt, `::warning::` per
//! retry, `::error::` on failure), with GitHub's escaping, and whatever the
//! remote said wrapped in `::stop-commands::` so it cannot issue commands.
//!
//! It formats and appends; the pull itself is `pull`'s.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use crate::events::Commit;
use crate::outcome::{AttemptRecord, PullReport};
use crate::policy::Decision;
use crate::pull::Observer;

/// The step summary is capped well under GitHub's 1 MiB per step.
pub const MAX_SUMMARY: usize = 64 * 1024;
/// Changed files listed in the `changed-files` output, at most.
pub const MAX_CHANGED_FILES: usize = 10_000;

/// `%`, CR and LF escaped, as in a workflow command's message.
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// [`escape_data`], and `:` and `,` too, as in a command's property value.
pub fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// A workflow command line: `::name k=v,k=v::message`.
pub fn command(name: &str, properties: &[(&str, &str)], message: &str) -> String {
    let props: Vec<String> = properties
        .iter()
        .map(|(k, v)| format!("{k}={}", escape_property(v)))
        .collect();
    let space = if props.is_empty() { "" } else { " " };
    format!(
        "::{name}{space}{}::{}",
        props.join(","),
        escape_data(message)
    )
}

/// One `$GITHUB_OUTPUT` entry, multiline-safe: `name<<DELIM`, the value,
/// `DELIM`, with a random delimiter that the value does not contain.
pub fn output_entry(name: &str, value: &str) -> String {
    let mut delimiter = delimiter();
    while value.contains(&delimiter) {
        delimiter = self::delimiter();
    }
    format!("{name}<<{delimiter}\n{value}\n{delimiter}\n")
}

fn delimiter() -> String {
    let random = crate::model::random_hex(16).unwrap_or_else(|_| {
        // No OS randomness: the clock still makes a value's guess unlikely.
        format!("{:x}", crate::model::now_ms())
    });
    format!("ghadelimiter_{random}")
}

/// The step's view of the workflow: where outputs and the summary go.
#[derive(Debug, Clone)]
pub struct Workflow {
    output: Option<PathBuf>,
    summary: Option<PathBuf>,
    write_summary: bool,
}

impl Workflow {
    /// The workflow this process runs in, when `GITHUB_ACTIONS=true`;
    /// `summary` false leaves the step summary alone.
    pub fn from_env(summary: bool) -> Option<Workflow> {
        if std::env::var("GITHUB_ACTIONS").ok().as_deref() != Some("true") {
            return None;
        }
        let path = |var: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Some(Workflow {
            output: path("GITHUB_OUTPUT"),
            summary: path("GITHUB_STEP_SUMMARY"),
            write_summary: summary,
        })
    }

    /// Masks `secret` in the job's log: first, before anything could print it.
    pub fn mask(&self, secret: &str) {
        if !secret.is_empty() {
            println!("{}", command("add-mask", &[], secret));
        }
    }

    /// Appends the outputs and the summary for `result`, and says
    /// `::error::` when it failed.
    pub fn finish(
        &self,
        result: &PullReport,
        commits: &[Commit],
        changed_files: &[String],
    ) -> std::io::Result<()> {
        if !result.outcome.is_success() {
            let why = result
                .attempts
                .last()
                .map(|a| format!("{}: {}", a.class.as_str(), a.message))
                .unwrap_or_else(|| "the pull failed".into());
            println!(
                "{}",
                command("error", &[("title", "gitpulse pull failed")], &why)
            );
        }
        if let Some(path) = &self.output {
            append(path, &outputs(result, changed_files))?;
        }
        if let (true, Some(path)) = (self.write_summary, &self.summary) {
            append(path, &summary(result, commits))?;
        }
        Ok(())
    }
}

fn append(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Every output of the step, as `$GITHUB_OUTPUT` entries.
pub fn outputs(result: &PullReport, changed_files: &[String]) -> String {
    let commit = result.new.clone().or_else(|| result.old.clone());
    let changed = result.new.is_some() && result.new != result.old;
    let attempts = result.attempts.len() + usize::from(result.outcome.is_success());
    let files: Vec<std::borrow::Cow<'_, str>> = changed_files
        .iter()
        .take(MAX_CHANGED_FILES)
        .map(|p| crate::model::quote_path(p))
        .collect();
    [
        ("commit", commit.unwrap_or_default()),
        ("previous-commit", result.old.clone().unwrap_or_default()),
        ("changed", changed.to_string()),
        ("commits", result.commits.to_string()),
        ("attempts", attempts.to_string()),
        ("outcome", result.outcome.as_str().to_string()),
        ("duration-ms", result.duration_ms.to_string()),
        ("changed-files", files.join("\n")),
    ]
    .iter()
    .map(|(name, value)| output_entry(name, value))
    .collect()
}

/// The step summary: outcome, old → new, the attempts, the new commits.
pub fn summary(result: &PullReport, commits: &[Commit]) -> String {
    let short = |sha: &Option<String>| {
        sha.as_deref()
            .map(|s| format!("`{}`", &s[..s.len().min(12)]))
            .unwrap_or_else(|| "none".into())
    };
    let mut md = String::new();
    let _ = writeln!(md, "### gitpulse pull: {}\n", result.outcome.as_str());
    let _ = writeln!(
        md,
        "{} → {} · {} new commit{} · {} · {}\n",
        short(&result.old),
        short(&result.new),
        result.commits,
        if result.commits == 1 { "" } else { "s" },
        crate::ui::duration(std::time::Duration::from_millis(result.duration_ms)),
        cell(&result.url),
    );
    if !result.attempts.is_empty() {
        md.push_str("| attempt | class | HTTP | message | delay |\n|---|---|---|---|---|\n");
        for a in &result.attempts {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                a.n,
                a.class.as_str(),
                a.http_status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                cell(&a.message),
                a.delay_ms
                    .map(|d| crate::ui::duration(std::time::Duration::from_millis(d)))
                    .unwrap_or_else(|| "gave up".into()),
            );
        }
        md.push('\n');
    }
    if !commits.is_empty() {
        md.push_str("#### New commits\n\n");
        for c in commits {
            let line = format!(
                "- `{}` {} — {}\n",
                &c.sha[..c.sha.len().min(12)],
                cell(&c.subject),
                cell(&c.author)
            );
            if md.len() + line.len() > MAX_SUMMARY - 64 {
                md.push_str("- … (more commits not shown)\n");
                break;
            }
            md.push_str(&line);
        }
    }
    md.truncate(MAX_SUMMARY);
    md
}

/// Upstream text made safe in a Markdown table cell: no HTML, no pipes, one
/// line.
fn cell(text: &str) -> String {
    handlebars::html_escape(text)
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
}

/// Wraps the pull's observer: each failed attempt's output goes in a
/// `::group::`, what the remote said inside `::stop-commands::`, and a
/// retry is a `::warning::`.
pub struct ActionsObserver<'a> {
    inner: &'a mut dyn Observer,
}

impl<'a> ActionsObserver<'a> {
    /// Passes everything on to `inner` as well.
    pub fn new(inner: &'a mut dyn Observer) -> Self {
        ActionsObserver { inner }
    }
}

impl Observer for ActionsObserver<'_> {
    fn attempt_started(&mut self, n: u32) {
        self.inner.attempt_started(n);
    }

    fn transfer(&mut self, progress: crate::Transfer) {
        self.inner.transfer(progress);
    }

    fn attempt_failed(&mut self, record: &AttemptRecord, decision: &Decision) {
        println!("{}", attempt_group(record, decision));
        self.inner.attempt_failed(record, decision);
    }

    fn notice(&mut self, text: &str) {
        self.inner.notice(text);
    }
}

/// The workflow commands for one failed attempt.
pub fn attempt_group(record: &AttemptRecord, decision: &Decision) -> String {
    let title = format!(
        "Attempt {} failed: {}{}",
        record.n,
        record.class.as_str(),
        record
            .http_status
            .map(|s| format!(" (HTTP {s})"))
            .unwrap_or_default()
    );
    // Commands stay off while the remote's words are printed: a token only
    // this process knows turns them back on.
    let resume = crate::model::random_hex(16).unwrap_or_else(|_| "gitpulse-resume".into());
    let mut out = String::new();
    let _ = writeln!(out, "{}", command("group", &[], &title));
    let _ = writeln!(out, "::stop-commands::{resume}");
    let _ = writeln!(out, "{}", record.message);
    let _ = writeln!(out, "::{resume}::");
    let _ = write!(out, "::endgroup::");
    if let Decision::RetryAfter { delay, .. } = decision {
        let _ = write!(
            out,
            "\n{}",
            command(
                "warning",
                &[("title", &title)],
                &format!(
                    "{}; retrying in {}",
                    record.message,
                    crate::ui::duration(*delay)
                ),
            )
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;
    use crate::FailureClass;
    use std::time::Duration;

    #[test]
    fn data_and_properties_are_escaped_as_github_reads_them() {
        assert_eq!(escape_data("50% done\r\nnext"), "50%25 done%0D%0Anext");
        assert_eq!(escape_property("a:b,c%\n"), "a%3Ab%2Cc%25%0A");
        assert_eq!(
            command(
                "warning",
                &[("title", "x: y, z")],
                "line1\nline2 ::set-output::"
            ),
            "::warning title=x%3A y%2C z::line1%0Aline2 ::set-output::"
        );
        assert_eq!(command("add-mask", &[], "t%k"), "::add-mask::t%25k");
    }

    #[test]
    fn multiline_outputs_use_a_delimiter_the_value_does_not_hold() {
        let entry = output_entry("changed-files", "a.txt\nb.txt");
        let mut lines = entry.lines();
        let head = lines.next().unwrap();
        let delimiter = head.strip_prefix("changed-files<<").unwrap();
        assert!(delimiter.starts_with("ghadelimiter_") && delimiter.len() > 20);
        assert_eq!(lines.collect::<Vec<_>>(), ["a.txt", "b.txt", delimiter]);
    }

    fn report() -> PullReport {
        let mut r = PullReport::failed("https://h/x.git", std::path::Path::new("x"));
        r.outcome = Outcome::Updated;
        r.old = Some("1".repeat(40));
        r.new = Some("2".repeat(40));
        r.commits = 2;
        r.duration_ms = 1234;
        r.attempts = vec![AttemptRecord {
            n: 1,
            class: FailureClass::ServerError,
            http_status: Some(503),
            message: "HTTP 503 | <b>busy</b>".into(),
            delay_ms: Some(500),
            duration_ms: 20,
            limit: None,
        }];
        r
    }

    #[test]
    fn outputs_name_the_commit_change_and_attempts() {
        let text = outputs(&report(), &["src/a.rs".into(), "b".into()]);
        let value = |name: &str| {
            let start = text.find(&format!("{name}<<")).unwrap();
            let rest = &text[start..];
            let mut lines = rest.lines();
            let delimiter = lines.next().unwrap().split("<<").nth(1).unwrap();
            lines
                .take_while(|l| *l != delimiter)
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(value("commit"), "2".repeat(40));
        assert_eq!(value("previous-commit"), "1".repeat(40));
        assert_eq!(value("changed"), "true");
        assert_eq!(value("attempts"), "2");
        assert_eq!(value("outcome"), "updated");
        assert_eq!(value("changed-files"), "src/a.rs\nb");
    }

    #[test]
    fn the_summary_is_escaped_and_capped() {
        let commits: Vec<Commit> = (0..5000)
            .map(|i| Commit {
                sha: format!("{i:040}"),
                author: "Ada".into(),
                subject: format!("<script>x</script> | {}", "y".repeat(100)),
            })
            .collect();
        let md = summary(&report(), &commits);
        assert!(md.len() <= MAX_SUMMARY);
        assert!(
            !md.contains("<script>") && !md.contains("<b>"),
            "{}",
            &md[..500]
        );
        assert!(
            md.contains(
                "| 1 | server-error | 503 | HTTP 503 \\| &lt;b&gt;busy&lt;/b&gt; | 500ms |"
            ),
            "{}",
            &md[..600]
        );
        assert!(md.contains("more commits not shown"));
    }

    #[test]
    fn what_the_remote_says_cannot_issue_commands() {
        let record = AttemptRecord {
            n: 2,
            class: FailureClass::ServerError,
            http_status: None,
            message: "::add-mask::nothing\n::error::fake".into(),
            delay_ms: Some(1000),
            duration_ms: 5,
            limit: None,
        };
        let out = attempt_group(
            &record,
            &Decision::RetryAfter {
                delay: Duration::from_secs(1),
                timeout: None,
            },
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "::group::Attempt 2 failed: server-error");
        let token = lines[1].strip_prefix("::stop-commands::").unwrap();
        assert_eq!(lines[4], format!("::{token}::"));
        assert!(!token.is_empty() && !record.message.contains(token));
        assert_eq!(lines[5], "::endgroup::");
        assert!(lines[6].starts_with("::warning title=Attempt 2 failed%3A server-error::"));
        assert!(
            lines[6].contains("%0A::error::fake"),
            "escaped in the warning"
        );
    }
}
