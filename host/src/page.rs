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
    /// In a fleet: the replica that holds it.
    pub replica: Option<String>,
}

/// The fleet this daemon is a replica of, when it shares its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPanel {
    /// This replica.
    pub replica: String,
    /// Whether it does the fleet's housekeeping.
    pub leads: bool,
    /// The replicas alive at its last heartbeat, with theirs (unix ms).
    pub replicas: Vec<(String, u64)>,
}

/// The page as HTML, rendered at `now_ms`; with `fleet`, the replicas and
/// which one holds each repository.
pub fn render(repos: &[RepoRow], fleet: Option<&FleetPanel>, now_ms: u64) -> String {
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
{fleet}<table><thead><tr><th>repository</th><th>state</th>{held_by}<th>last success</th><th>next run</th><th>failures in a row</th><th>last error</th><th>recent pulls</th><th>recent events</th></tr></thead><tbody>
"#,
        fleet = fleet.map(|f| fleet_panel(f, now_ms)).unwrap_or_default(),
        held_by = if fleet.is_some() {
            "<th>replica</th>"
        } else {
            ""
        },
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
            r#"<tr class="repo" data-repo="{name}" data-state="{class}"><td>{name}</td><td><span class="state {class}">{label}</span></td>{held_by}<td>{success}</td><td>{next}</td><td>{streak}</td><td class="err">{error}</td><td>{chart}</td><td class="events">{events}</td></tr>"#,
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
            held_by = match fleet {
                Some(_) => format!(
                    "<td class=\"replica\">{}</td>",
                    escape(r.replica.as_deref().unwrap_or("-"))
                ),
                None => String::new(),
            },
        );
    }
    html.push_str("</tbody></table>\n</body></html>\n");
    html
}

/// The fleet's replicas: this one marked, with when each was last heard.
fn fleet_panel(fleet: &FleetPanel, now_ms: u64) -> String {
    let mut html = format!(
        "<section id=\"fleet\"><h2>fleet</h2><p>This is replica <b>{}</b>{}.</p><table><thead><tr><th>replica</th><th>last heartbeat</th></tr></thead><tbody>\n",
        escape(&fleet.replica),
        if fleet.leads {
            ", which does the fleet's housekeeping"
        } else {
            ""
        }
    );
    for (name, heartbeat_ms) in &fleet.replicas {
        let ago = now_ms.saturating_sub(*heartbeat_ms) as f64 / 1000.0;
        let _ = writeln!(
            html,
            "<tr class=\"replica\" data-replica=\"{name}\"><td>{name}{this}</td><td>{ago:.1} s ago</td></tr>",
            name = escape(name),
            this = if *name == fleet.replica { " (this one)" } else { "" },
        );
    }
    html.push_str("</tbody></table></section>\n");
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
            replica: None,
        }
    }

    #[test]
    fn a_fleet_lists_its_replicas_and_who_holds_each_repository() {
        let mut r = row("app", RepoState::Ok);
        r.replica = Some("web-<2>".into());
        let fleet = FleetPanel {
            replica: "web-1".into(),
            leads: true,
            replicas: vec![("web-1".into(), 9_000), ("web-<2>".into(), 7_500)],
        };
        let html = render(&[r.clone()], Some(&fleet), 10_000);
        assert!(
            html.contains("This is replica <b>web-1</b>, which does the fleet's housekeeping"),
            "{html}"
        );
        assert!(
            html.contains("<td>web-1 (this one)</td><td>1.0 s ago</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td>web-&lt;2&gt;</td><td>2.5 s ago</td>"),
            "{html}"
        );
        assert!(
            html.contains("<th>replica</th>")
                && html.contains("<td class=\"replica\">web-&lt;2&gt;</td>"),
            "{html}"
        );
        // Without a fleet: no panel, no column.
        let alone = render(&[r], None, 10_000);
        assert!(
            !alone.contains("fleet") && !alone.contains("<th>replica</th>"),
            "{alone}"
        );
    }

    #[test]
    fn upstream_text_is_escaped() {
        let mut r = row("app", RepoState::Failing);
        r.failures_in_row = 2;
        r.last_class = Some("server-error".into());
        r.last_error = Some("<script>alert(1)</script> & \"x\"".into());
        let html = render(&[r], None, 1_700_000_000_000);
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
        assert!(render(&[r], None, 0).contains("<svg"));
    }

    #[test]
    fn no_external_assets_and_no_script() {
        let html = render(
            &[row("a", RepoState::Ok), row("b", RepoState::Running)],
            None,
            0,
        );
        assert!(!html.contains("<script"));
        assert!(!html.contains("src=") && !html.contains("href="), "{html}");
        assert!(html.contains("http-equiv=\"refresh\""));
    }
}
