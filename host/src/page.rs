//! The daemon's status page (`GET /`): one server-rendered HTML document
//! with no external assets and no JavaScript, that refreshes itself. Each
//! repository gets its state, last success, next run, failure streak, last
//! error, recent events and an inline SVG of its last pulls' durations with
//! failures marked.
//!
//! This module only renders what it is given; the daemon gathers it. Every
//! text from the config or an upstream is HTML-escaped here.

use std::fmt::Write as _;

use handlebars::html_escape as escape;

use crate::store::PullPoint;

/// Seconds between the page's own reloads.
pub const REFRESH_SECS: u32 = 10;

/// What a repository is doing, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoState {
    /// Its host's circuit is open: held back.
    BreakerOpen,
    /// Its last pull failed.
    Failing,
    /// A pull is running now.
    Running,
    /// Never pulled yet.
    Waiting,
    /// Its last pull succeeded.
    Ok,
}

impl RepoState {
    fn label(self) -> &'static str {
        match self {
            RepoState::BreakerOpen => "breaker open",
            RepoState::Failing => "failing",
            RepoState::Running => "running",
            RepoState::Waiting => "waiting",
            RepoState::Ok => "ok",
        }
    }

    fn class(self) -> &'static str {
        match self {
            RepoState::BreakerOpen => "breaker",
            RepoState::Failing => "failing",
            RepoState::Running => "running",
            RepoState::Waiting => "waiting",
            RepoState::Ok => "ok",
        }
    }
}

/// One repository's row.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoRow {
    /// Its configured name.
    pub name: String,
    /// What it is doing.
    pub state: RepoState,
    /// Unix ms of its last successful pull.
    pub last_success_ms: Option<u64>,
    /// Unix ms of its next scheduled run.
    pub next_run_ms: Option<u64>,
    /// Pulls in a row that failed.
    pub failures_in_row: u32,
    /// The class of its last failure.
    pub last_class: Option<String>,
    /// The (redacted) message of its last failed attempt.
    pub last_error: Option<String>,
    /// Recent events, newest first: when and what kind.
    pub events: Vec<(u64, String)>,
    /// Its last pulls, oldest first.
    pub pulls: Vec<PullPoint>,
}

/// The page as HTML, rendered at `now_ms`.
pub fn render(repos: &[RepoRow], now_ms: u64) -> String {
    let failing = repos
        .iter()
        .filter(|r| matches!(r.state, RepoState::Failing | RepoState::BreakerOpen))
        .count();
    let mut html = String::with_capacity(4096 + repos.len() * 2048);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse;width:100%}}
th,td{{text-align:left;padding:.4em .6em;border-bottom:1px solid #ddd;vertical-align:top}}
.state{{font-weight:600;padding:.1em .5em;border-radius:.3em}}
.ok{{background:#d8f5d8}} .failing{{background:#f9d0d0}} .breaker{{background:#f4b183}}
.running{{background:#d0e4f9}} .waiting{{background:#eee}}
.err{{color:#a00;font-size:.9em}} .events{{font-size:.85em;color:#555}}
</style></head><body>
<h1>gitpulse</h1>
<p id="summary">{count} repositories, {failing} failing. Updated {updated}; this page reloads every {REFRESH_SECS} s.</p>
<table><thead><tr><th>repository</th><th>state</th><th>last success</th><th>next run</th><th>failures in a row</th><th>last error</th><th>recent pulls</th><th>recent events</th></tr></thead><tbody>
"#,
        title = if failing > 0 {
            format!("gitpulse: {failing} failing")
        } else {
            "gitpulse: all ok".to_string()
        },
        count = repos.len(),
        updated = crate::ui::when(Some(now_ms)),
    );
    for r in repos {
        let error = match (&r.last_class, &r.last_error) {
            (Some(class), Some(message)) if r.failures_in_row > 0 => {
                format!("{}: {}", escape(class), escape(message))
            }
            (Some(class), None) if r.failures_in_row > 0 => escape(class),
            _ => String::new(),
        };
        let events: Vec<String> = r
            .events
            .iter()
            .take(5)
            .map(|(at, kind)| format!("{} {}", escape(kind), escape(&crate::ui::when(Some(*at)))))
            .collect();
        let _ = writeln!(
            html,
            r#"<tr class="repo" data-repo="{name}" data-state="{class}"><td>{name}</td><td><span class="state {class}">{label}</span></td><td>{success}</td><td>{next}</td><td>{streak}</td><td class="err">{error}</td><td>{chart}</td><td class="events">{events}</td></tr>"#,
            name = escape(&r.name),
            class = r.state.class(),
            label = r.state.label(),
            success = match r.last_success_ms {
                Some(_) => crate::ui::when(r.last_success_ms),
                None => "never".into(),
            },
            next = crate::ui::when(r.next_run_ms),
            streak = r.failures_in_row,
            chart = chart(&r.pulls),
            events = events.join("<br>"),
        );
    }
    html.push_str("</tbody></table>\n</body></html>\n");
    html
}

/// An inline SVG bar chart of `pulls` (durations on a common scale; a
/// failed pull is a red bar with a cross above it).
fn chart(pulls: &[PullPoint]) -> String {
    const WIDTH: u64 = 150;
    const HEIGHT: u64 = 30;
    if pulls.is_empty() {
        return String::new();
    }
    let longest = pulls
        .iter()
        .map(|p| p.duration_ms)
        .max()
        .unwrap_or(1)
        .max(1);
    // One slot per pull of the last 50, the newest at the right edge.
    let bar = WIDTH / 50;
    let pulls = &pulls[pulls.len().saturating_sub(50)..];
    let mut svg = format!(
        r#"<svg class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="last {} pulls"><title>last {} pulls, longest {} ms</title>"#,
        pulls.len(),
        pulls.len(),
        longest
    );
    for (i, p) in pulls.iter().enumerate() {
        let h = ((p.duration_ms * (HEIGHT - 6)) / longest).max(1);
        let x = WIDTH - (pulls.len() - i) as u64 * bar;
        let failed = p.outcome == "failed";
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}"{mark}/>"#,
            y = HEIGHT - h,
            w = bar.saturating_sub(1).max(1),
            fill = if failed { "#c00" } else { "#4a4" },
            mark = if failed { r#" class="failed""# } else { "" },
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: RepoState) -> RepoRow {
        RepoRow {
            name: name.into(),
            state,
            last_success_ms: Some(1_700_000_000_000),
            next_run_ms: None,
            failures_in_row: 0,
            last_class: None,
            last_error: None,
            events: vec![],
            pulls: vec![],
        }
    }

    #[test]
    fn upstream_text_is_escaped() {
        let mut r = row("app", RepoState::Failing);
        r.failures_in_row = 2;
        r.last_class = Some("server-error".into());
        r.last_error = Some("<script>alert(1)</script> & \"x\"".into());
        let html = render(&[r], 1_700_000_000_000);
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp;"),
            "{html}"
        );
        assert!(html.contains("<title>gitpulse: 1 failing</title>"));
    }

    #[test]
    fn failed_pulls_are_marked_in_the_chart() {
        let mut r = row("app", RepoState::Ok);
        r.pulls = ["updated", "failed", "unchanged"]
            .iter()
            .enumerate()
            .map(|(i, o)| PullPoint {
                at_ms: i as u64,
                outcome: o.to_string(),
                duration_ms: 100 * (i as u64 + 1),
            })
            .collect();
        let svg = chart(&r.pulls);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert_eq!(svg.matches("class=\"failed\"").count(), 1);
        // The longest pull is the tallest bar (HEIGHT - 6).
        assert!(svg.contains("height=\"24\""), "{svg}");
        assert!(render(&[r], 0).contains("<svg"));
    }

    #[test]
    fn no_external_assets_and_no_script() {
        let html = render(&[row("a", RepoState::Ok), row("b", RepoState::Running)], 0);
        assert!(!html.contains("<script"));
        assert!(!html.contains("src=") && !html.contains("href="), "{html}");
        assert!(html.contains("http-equiv=\"refresh\""));
    }
}
