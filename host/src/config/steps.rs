//! `[[repo.step]]`: what runs after a repository's pulls (or gates its
//! publication), checked into [`Step`]s.

use super::*;

/// A step's time limit unless it says.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// `[[repo.step]]`: named (unique in the repo), something to run, a known
/// `when`, usable `paths`.
pub(super) fn check_steps(
    check: &mut Check,
    r: &RawRepo,
    label: &str,
    repo_line: usize,
    publish: Publish,
) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (i, spanned) in r.step.iter().flatten().enumerate() {
        let line = check.line(spanned.span().start).max(repo_line);
        let at = Place {
            label,
            line,
            index: i,
        };
        if let Some(step) = check_step(check, spanned.get_ref(), &at, &steps, publish) {
            steps.push(step);
        }
    }
    steps
}

/// Where a step is: its repository's label, its line and its index.
struct Place<'a> {
    label: &'a str,
    line: usize,
    index: usize,
}

/// One `[[repo.step]]`, unless it cannot be used; `before` are the steps
/// of the repository checked so far.
fn check_step(
    check: &mut Check,
    raw: &RawStep,
    at: &Place<'_>,
    before: &[Step],
    publish: Publish,
) -> Option<Step> {
    let (label, line, i) = (at.label, at.line, at.index);
    let name = match &raw.name {
        Some(n) if !n.get_ref().trim().is_empty() && n.get_ref().len() <= 64 => n.get_ref().clone(),
        Some(n) => {
            check.at(
                n,
                format!("{label}.step[{i}].name"),
                "empty or longer than 64 characters",
            );
            return None;
        }
        None => {
            check.push(line, format!("{label}.step[{i}]"), "missing field `name`");
            return None;
        }
    };
    let field = format!("{label}.step \"{name}\"");
    if before.iter().any(|s| s.name == name) {
        check.push(
            line,
            format!("{field}.name"),
            "duplicate step name in this repo",
        );
        return None;
    }
    let program = check_program(check, raw, &field, line)?;
    let when = match &raw.when {
        None => step::When::Changed,
        Some(w) => match step::When::parse(w.get_ref()) {
            Some(when) => when,
            None => {
                check.at(
                    w,
                    format!("{field}.when"),
                    format!("`{}`: use changed, failed or always", w.get_ref()),
                );
                return None;
            }
        },
    };
    let paths = raw
        .paths
        .as_ref()
        .map(|p| p.get_ref().clone())
        .unwrap_or_default();
    if let (Some(at), Some(why)) = (&raw.paths, step::bad_paths(&paths)) {
        check.at(at, format!("{field}.paths"), why);
    }
    let timeout = match &raw.timeout {
        None => STEP_TIMEOUT,
        Some(t) => match check.duration(t, &format!("{field}.timeout")) {
            Some(d) if d.is_zero() => {
                check.at(t, format!("{field}.timeout"), "must be greater than zero");
                return None;
            }
            Some(d) => d,
            None => return None,
        },
    };
    let before_publish = raw.before_publish.as_ref().is_some_and(|b| *b.get_ref());
    if let Some(at) = raw.before_publish.as_ref().filter(|b| *b.get_ref()) {
        if publish == Publish::InPlace {
            check.at(
                at,
                format!("{field}.before_publish"),
                "gates a publication: it needs publish = \"symlink\" (in place, there is no new revision apart to run in)",
            );
            return None;
        }
        if when != step::When::Changed {
            check.at(
                at,
                format!("{field}.before_publish"),
                "runs before a change is published: when must be \"changed\"",
            );
            return None;
        }
    }
    let env = step::StepEnv {
        set: raw
            .env
            .as_ref()
            .map(|e| e.get_ref().clone())
            .unwrap_or_default(),
        pass: raw
            .pass_env
            .as_ref()
            .map(|p| p.get_ref().clone())
            .unwrap_or_default(),
    };
    let bad_name = |n: &String| {
        n.is_empty() || n.contains('=') || n.contains('\0') || n.starts_with("GITPULSE_")
    };
    if let Some(at) = raw.env.as_ref().filter(|_| env.set.keys().any(bad_name)) {
        check.at(at, format!("{field}.env"), "variable names must be non-empty, without `=`, and not GITPULSE_* (gitpulse sets those)");
        return None;
    }
    if let Some(at) = raw
        .pass_env
        .as_ref()
        .filter(|_| env.pass.iter().any(bad_name))
    {
        check.at(at, format!("{field}.pass_env"), "variable names must be non-empty, without `=`, and not GITPULSE_* (gitpulse sets those)");
        return None;
    }
    let once = match &raw.once {
        None => step::Once::Replica,
        Some(o) => match o.get_ref().as_str() {
            "replica" => step::Once::Replica,
            "fleet" => step::Once::Fleet,
            other => {
                check.at(
                    o,
                    format!("{field}.once"),
                    format!("`{other}`: use \"replica\" (on every replica, the default) or \"fleet\" (once for all, with [fleet] mode = \"replicate\")"),
                );
                return None;
            }
        },
    };
    Some(Step {
        name,
        program,
        when,
        paths,
        timeout,
        before_publish,
        env,
        once,
    })
}

/// `run` (and `shell`): an argv array, or a script with `shell = true`.
fn check_program(
    check: &mut Check,
    raw: &RawStep,
    field: &str,
    line: usize,
) -> Option<step::Program> {
    let shell = raw.shell.as_ref().is_some_and(|s| *s.get_ref());
    match raw.run.as_ref().map(|r| (r, r.get_ref().clone())) {
        None => {
            check.push(
                line,
                format!("{field}.run"),
                "missing: an argv array, or a string with shell = true",
            );
            None
        }
        Some((at, RawRun::Argv(argv))) => {
            if argv.first().is_none_or(|p| p.is_empty()) {
                check.at(at, format!("{field}.run"), "empty: name the program to run");
                return None;
            }
            if shell {
                check.at(
                    at,
                    format!("{field}.run"),
                    "shell = true takes one string, not an array",
                );
                return None;
            }
            Some(step::Program::Argv(argv))
        }
        Some((at, RawRun::Shell(script))) => {
            if !shell {
                check.at(
                    at,
                    format!("{field}.run"),
                    "a string runs only with shell = true (sh -c); or give an argv array: [\"prog\", \"arg\"]",
                );
                return None;
            }
            if script.trim().is_empty() {
                check.at(at, format!("{field}.run"), "empty");
                return None;
            }
            Some(step::Program::Shell(script))
        }
    }
}
