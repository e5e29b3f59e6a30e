//! Terminal output: what a person sees while `gitpulse pull` runs (a
//! progress bar for the transfer, only on a terminal; one line per failed
//! attempt with its class and the wait before the next; a one-line summary
//! at the end), and the one way gitpulse writes a duration or a moment for
//! people ([`duration`], [`when`]), in tables and logs alike.
//!
//! Everything goes to stderr except the summary (stdout), so `--json` keeps
//! stdout to exactly one JSON object. Messages arrive already redacted.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::git::Transfer;
use crate::outcome::{AttemptRecord, Outcome, PullReport};
use crate::policy::Decision;
use crate::pull::Observer;
use crate::store::{HistoryEntry, OutboxRow, OutboxState, RepoStatus};
use std::fmt::Write as _;

/// Draws progress and attempt lines on stderr.
pub struct Terminal {
    bar: Option<ProgressBar>,
    show_progress: bool,
}

impl Terminal {
    /// `show_progress`: draw a progress bar (indicatif hides it anyway when
    /// stderr is not a terminal).
    pub fn new(show_progress: bool) -> Self {
        Terminal {
            bar: None,
            show_progress,
        }
    }

    fn finish_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Terminal {
    fn attempt_started(&mut self, _n: u32) {
        self.finish_bar();
    }

    fn transfer(&mut self, p: Transfer) {
        if !self.show_progress || p.total_objects == 0 {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(
                Some(p.total_objects as u64),
                ProgressDrawTarget::stderr_with_hz(10),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>10} [{bar:30}] {pos}/{len} objects, {prefix} ({elapsed})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        if p.received_objects < p.total_objects {
            bar.set_message("receiving");
            bar.set_position(p.received_objects as u64);
        } else {
            bar.set_message("indexing");
            bar.set_length(p.total_deltas.max(1) as u64);
            bar.set_position(p.indexed_deltas as u64);
        }
        bar.set_prefix(indicatif::HumanBytes(p.received_bytes as u64).to_string());
    }

    fn attempt_failed(&mut self, record: &AttemptRecord, decision: &Decision) {
        self.finish_bar();
        eprintln!("{}", attempt_line(record, decision));
    }

    fn notice(&mut self, text: &str) {
        self.finish_bar();
        eprintln!("note: {text}");
    }
}

/// `attempt 2 failed: server-error (HTTP 503): HTTP 503 — retrying in 1.2s`
pub fn attempt_line(record: &AttemptRecord, decision: &Decision) -> String {
    let status = record
        .http_status
        .map(|s| format!(" (HTTP {s})"))
        .unwrap_or_default();
    let next = match decision {
        Decision::RetryAfter { delay, .. } => format!("retrying in {}", duration(*delay)),
        Decision::Stop(reason) => format!("giving up: {reason}"),
    };
    format!(
        "attempt {} failed: {}{status}: {} — {next}",
        record.n,
        record.class,
        upstream(&record.message)
    )
}

/// What a remote said, as it may be printed: every line after the first
/// begins `  | `, so no line a hostile server wrote can start with `::`
/// (a GitHub Actions runner reads its steps' output for workflow commands
/// such as `::error::` or `::add-mask::`, after leading spaces).
pub fn upstream(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text
        .split(['\n', '\r'])
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push_str("\n  | ");
        }
        out.push_str(line);
    }
    out
}

/// The final line for a person.
pub fn summary(report: &PullReport) -> String {
    let sha = |s: &Option<String>| {
        s.as_deref()
            .map(|s| &s[..s.len().min(10)])
            .unwrap_or("?")
            .to_string()
    };
    let took = duration(Duration::from_millis(report.duration_ms));
    let tries = match report.attempts.len() {
        0 => String::new(),
        n => format!(
            ", after {n} failed attempt{}",
            if n == 1 { "" } else { "s" }
        ),
    };
    match report.outcome {
        Outcome::Cloned => format!(
            "cloned {} into {} at {} ({} commit{}) in {took}{tries}",
            report.url,
            report.dir,
            sha(&report.new),
            report.commits,
            if report.commits == 1 { "" } else { "s" }
        ),
        Outcome::Updated => format!(
            "updated {}: {} → {} ({} new commit{}) in {took}{tries}",
            report.dir,
            sha(&report.old),
            sha(&report.new),
            report.commits,
            if report.commits == 1 { "" } else { "s" }
        ),
        Outcome::Unchanged => format!(
            "unchanged {} at {} in {took}{tries}",
            report.dir,
            sha(&report.new)
        ),
        Outcome::Failed => {
            let last = report
                .attempts
                .last()
                .map(|a| format!("{}: {}", a.class, upstream(&a.message)))
                .unwrap_or_default();
            format!(
                "pull of {} into {} failed ({}) after {} attempt{} in {took}: {last}",
                report.url,
                report.dir,
                report
                    .reason
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "stopped".into()),
                report.attempts.len(),
                if report.attempts.len() == 1 { "" } else { "s" }
            )
        }
    }
}

/// A duration for people: milliseconds below a second, tenths below a
/// minute, then the two largest whole units (`250ms`, `1.2s`, `1m 30s`,
/// `2h 5m`, `3days 4h`).
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    if d < Duration::from_secs(60) {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let whole = humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    whole
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A moment in unix milliseconds relative to now, for tables: `5m 3s ago`,
/// `in 12s`, or `-` when there is none.
pub fn when(at_ms: Option<u64>) -> String {
    let Some(at) = at_ms else {
        return "-".into();
    };
    let now = crate::model::now_ms();
    // Whole seconds: a table that says "in 0.4s" is already stale.
    let secs = |ms: u64| match ms / 1000 {
        s if s < 60 => format!("{s}s"),
        s => duration(Duration::from_secs(s)),
    };
    if at <= now {
        format!("{} ago", secs(now - at))
    } else {
        format!("in {}", secs(at - now))
    }
}

/// The status table: each repo's last success, last result, next run,
/// failures in a row, and whether it is being pulled now.
pub fn status_table(repos: &[(String, Option<RepoStatus>, bool)]) -> String {
    let mut out = String::new();
    // A fleet's state says which replica holds each repository.
    let fleet = repos
        .iter()
        .any(|(_, row, _)| row.as_ref().is_some_and(|s| s.replica.is_some()));
    let _ = write!(
        out,
        "{:<20} {:<16} {:<22} {:<14} {:>9}",
        "REPO", "LAST SUCCESS", "LAST RESULT", "NEXT RUN", "FAILURES"
    );
    let _ = writeln!(out, "{}", if fleet { "  REPLICA" } else { "" });
    for (name, row, running) in repos {
        let (success, result, next, failures) = match row {
            Some(s) => (
                when(s.last_success_ms),
                match (&s.last_result, &s.last_class) {
                    (Some(r), Some(c)) => format!("{r} ({c})"),
                    (Some(r), None) => r.clone(),
                    _ => "-".into(),
                },
                when(s.next_run_ms),
                s.failures_in_row,
            ),
            None => ("-".into(), "never run".into(), "-".into(), 0),
        };
        let result = if *running {
            format!("running; last {result}")
        } else {
            result
        };
        let _ = write!(
            out,
            "{name:<20} {success:<16} {result:<22} {next:<14} {failures:>9}"
        );
        let replica = row.as_ref().and_then(|s| s.replica.as_deref());
        let since = row.as_ref().and_then(|s| s.replica_since_ms);
        let _ = match (fleet, replica) {
            (true, Some(r)) if since.is_some() => writeln!(out, "  {r} (since {})", when(since)),
            (true, Some(r)) => writeln!(out, "  {r}"),
            (true, None) => writeln!(out, "  -"),
            (false, _) => writeln!(out),
        };
    }
    out
}

/// `gitpulse history`: one line per pull, attempt and step run, newest
/// first; a step's last `output_lines` lines of output follow it.
pub fn history_table(entries: &[HistoryEntry], output_lines: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<11} {:<14} {:>8} {:>10}  DETAIL",
        "WHEN", "WHAT", "CLASS", "DELAY", "DURATION"
    );
    for e in entries {
        // A step's output follows its line, indented.
        let (first, output) = e.detail.split_once('\n').unwrap_or((&e.detail, ""));
        let _ = writeln!(
            out,
            "{:<14} {:<11} {:<14} {:>8} {:>10}  {}",
            when(Some(e.at_ms)),
            e.kind,
            e.class.as_deref().unwrap_or("-"),
            e.delay_ms
                .map(|d| format!("{d}ms"))
                .unwrap_or_else(|| "-".into()),
            e.duration_ms
                .map(|d| format!("{d}ms"))
                .unwrap_or_else(|| "-".into()),
            first
        );
        let lines: Vec<&str> = output.lines().collect();
        for line in &lines[lines.len().saturating_sub(output_lines)..] {
            let _ = writeln!(out, "{:>62}| {line}", "");
        }
    }
    out
}

/// `gitpulse outbox`: one line per message, with what happened to it.
pub fn outbox_table(rows: &[OutboxRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<9} {:<14} {:<16} {:<16} {:>8}  {:<14} DETAIL",
        "ID", "STATE", "NOTIFIER", "EVENT", "REPO", "ATTEMPTS", "WHEN"
    );
    for r in rows {
        let (at, detail) = match r.state {
            OutboxState::Pending => (
                when(r.next_at_ms),
                r.last_error.clone().unwrap_or_else(|| r.subject.clone()),
            ),
            OutboxState::InDigest => (
                when(Some(r.created_ms)),
                format!("in digest {}", r.digest_of.unwrap_or_default()),
            ),
            OutboxState::Dead => (
                when(Some(r.created_ms)),
                r.last_error.clone().unwrap_or_default(),
            ),
            OutboxState::Delivered => (
                when(r.delivered_ms),
                match r.digest_of {
                    Some(d) if d != r.id => format!("in digest {d}"),
                    _ => r.answer.clone().unwrap_or_default(),
                },
            ),
        };
        let _ = writeln!(
            out,
            "{:>6}  {:<9} {:<14} {:<16} {:<16} {:>8}  {:<14} {}",
            r.id, r.state, r.notifier, r.kind, r.repo, r.attempts, at, detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    fn sample_status() -> RepoStatus {
        RepoStatus {
            repo: "app".into(),
            last_success_ms: None,
            last_result: Some("failed".into()),
            last_class: Some("timeout".into()),
            last_commit: None,
            failures_in_row: 2,
            next_run_ms: None,
            skipped: 0,
            last_pull_ms: None,
            replica: None,
            replica_since_ms: None,
        }
    }

    #[test]
    fn tables_say_what_is_running_what_never_ran_and_indent_step_output() {
        let status = sample_status();
        let table = status_table(&[
            ("app".into(), Some(status), true),
            ("docs".into(), None, false),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("REPO"), "{table}");
        assert!(lines[1].contains("running; last failed (timeout)") && lines[1].ends_with('2'));
        assert!(lines[2].contains("never run"), "{table}");
        assert!(!table.contains("REPLICA"), "no fleet, no column: {table}");

        // A fleet's state: who holds each repository.
        let held = RepoStatus {
            replica: Some("web-2".into()),
            ..sample_status()
        };
        let table = status_table(&[
            ("app".into(), Some(held), false),
            ("docs".into(), None, false),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("REPLICA"), "{table}");
        assert!(lines[1].ends_with("web-2"), "{table}");
        let since = RepoStatus {
            replica: Some("web-2".into()),
            replica_since_ms: Some(1_700_000_000_000),
            ..sample_status()
        };
        let table = status_table(&[("app".into(), Some(since), false)]);
        assert!(
            table.lines().nth(1).unwrap_or("").contains("web-2 (since "),
            "{table}"
        );
        assert!(lines[2].ends_with('-'), "{table}");

        let step = HistoryEntry {
            at_ms: 0,
            kind: "step build".into(),
            class: Some("failed".into()),
            http_status: None,
            delay_ms: None,
            duration_ms: Some(5),
            detail: "failed (exit 2)\none\ntwo\nthree".into(),
            limit_ms: None,
            limit_why: None,
        };
        let table = history_table(&[step], 2);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines.len(),
            4,
            "header, the step, its last two lines: {table}"
        );
        assert!(lines[1].contains("step build") && lines[1].ends_with("failed (exit 2)"));
        assert!(lines[2].ends_with("| two") && lines[3].ends_with("| three"));
    }

    use super::*;

    #[test]
    fn no_line_a_remote_wrote_can_start_a_workflow_command() {
        let said = upstream("denied\n::error::fake\r\n  ::add-mask::x\rlast");
        assert_eq!(
            said,
            "denied\n  | ::error::fake\n  |   ::add-mask::x\n  | last"
        );
        for line in said.lines() {
            assert!(!line.trim_start().starts_with("::"), "{line}");
        }
        assert_eq!(upstream("one line"), "one line");
    }
    use crate::git::FailureClass;
    use crate::policy::StopReason;

    #[test]
    fn durations_read_the_same_everywhere() {
        let ms = Duration::from_millis;
        assert_eq!(duration(ms(250)), "250ms");
        assert_eq!(duration(ms(1_234)), "1.2s");
        assert_eq!(duration(ms(90_000)), "1m 30s");
        assert_eq!(duration(ms(7_384_000)), "2h 3m", "two units at most");
        assert_eq!(when(None), "-");
        let now = crate::model::now_ms();
        assert_eq!(when(Some(now - 5_400)), "5s ago");
        assert!(
            when(Some(now + 3_599_500)).starts_with("in 59m"),
            "{}",
            when(Some(now + 3_599_500))
        );
    }

    #[test]
    fn attempt_lines_name_class_status_and_wait() {
        let record = AttemptRecord {
            n: 2,
            class: FailureClass::ServerError,
            http_status: Some(503),
            message: "HTTP 503".into(),
            delay_ms: Some(1200),
            duration_ms: 40,
            limit: None,
        };
        let retry = Decision::RetryAfter {
            delay: Duration::from_millis(1200),
            timeout: None,
        };
        assert_eq!(
            attempt_line(&record, &retry),
            "attempt 2 failed: server-error (HTTP 503): HTTP 503 — retrying in 1.2s"
        );
        let stop = Decision::Stop(StopReason::AttemptsExhausted);
        assert!(attempt_line(&record, &stop).ends_with("giving up: attempts exhausted"));
    }
}
