//! `[[repo]]`: one repository's settings, checked against `[defaults]`,
//! `[daemon]` and the rest of the file, into the one `RepoConfig` every
//! entry point runs.

use super::*;

/// What checking the repositories remembers from one to the next: names
/// and checkout directories taken.
#[derive(Default)]
pub(super) struct Seen {
    names: BTreeMap<String, usize>,
    dirs: BTreeMap<PathBuf, String>,
}

/// What a `[[repo]]` is checked against: the rest of its file.
pub(super) struct Around<'a> {
    /// `[defaults]`: fills what the repository leaves unset.
    pub defaults: &'a RawCommon,
    /// Where a checkout goes when `dir` is not given.
    pub state_dir: &'a Path,
    /// Where the plugins its `policy` names must be.
    pub plugin_dir: Option<&'a Path>,
    /// The notifiers it may name.
    pub notifiers: &'a BTreeMap<String, Spanned<notifier::RawNotifier>>,
    /// Resolves a path as the file means it (relative to the file).
    pub resolve: &'a dyn Fn(&str) -> PathBuf,
}

/// Checks one `[[repo]]` against the rest of its file; the repository,
/// unless it cannot be used.
pub(super) fn check_repo(
    check: &mut Check<'_>,
    spanned: &Spanned<RawRepo>,
    around: &Around<'_>,
    seen: &mut Seen,
) -> Option<RepoConfig> {
    let line = check.line(spanned.span().start);
    let r = spanned.get_ref();
    let Some(name) = &r.name else {
        check.push(line, "repo", "missing `name`");
        return None;
    };
    let n = name.get_ref().clone();
    let label = format!("repo \"{n}\"");
    let duplicate = check_name(check, name, &label, seen);
    let url = match &r.url {
        None => {
            check.push(line, format!("{label}.url"), "missing `url`");
            String::new()
        }
        Some(url) => {
            if let Err(e) = check_url(url.get_ref()) {
                check.at(url, format!("{label}.url"), e);
            }
            url.get_ref().clone()
        }
    };
    let c = r.with_defaults(around.defaults);
    let mode = check_mode(check, &c, &label);
    let limits = check_limits(check, &c, &label, line);
    // 0: the whole history (unshallows a shallow checkout).
    let depth = c
        .depth
        .clone()
        .filter(|d| *d.get_ref() != 0)
        .and_then(|d| check.positive(&d, &format!("{label}.depth"), i32::MAX as i64))
        .map(|d| d as u32);
    if let (Some(d), Err(e)) = (&c.depth, crate::git::check_depth(&url, depth)) {
        check.at(d, format!("{label}.depth"), e);
    }
    let follow = check_follow(check, r, &label, mode);
    let publish = check_publish(check, r, &label, mode);
    let sparse = check_sparse(check, r, &label, mode);
    let steps = steps::check_steps(check, r, &label, line, publish);
    let dir = r
        .dir
        .as_ref()
        .map(|d| (around.resolve)(d.get_ref()))
        .unwrap_or_else(|| around.state_dir.join("checkouts").join(&n));
    if duplicate.is_none() {
        check_dir(check, r, &label, line, &dir, seen);
    }
    let auth = check_credentials(check, r, &label, &url, around);
    let policy = match c.policy.clone() {
        None => PolicyRef::default(),
        Some(p) => check_policy(check, &p, &label, around.plugin_dir),
    };
    let notifiers = check_notifiers(check, &c, &label, around.notifiers);
    let flag = |b: &Option<Spanned<bool>>| b.as_ref().is_some_and(|b| *b.get_ref());
    Some(RepoConfig {
        name: n,
        url,
        follow,
        dir,
        schedule: check_schedule(check, &c, &label),
        mode,
        depth,
        submodules: flag(&c.submodules),
        local_submodules: flag(&c.allow_local_submodules),
        group_write: flag(&c.group_write),
        timeout: limits.timeout,
        min_timeout: limits.min_timeout,
        low_speed: limits.low_speed,
        deadline: limits.deadline,
        lock_wait: limits.lock_wait,
        max_attempts: limits.max_attempts,
        backoff_base: limits.backoff_base,
        backoff_max: limits.backoff_max,
        auth,
        labels: r
            .labels
            .as_ref()
            .map(|l| l.get_ref().clone())
            .unwrap_or_default(),
        policy,
        notifiers,
        required: r.required.as_ref().is_none_or(|v| *v.get_ref()),
        steps,
        publish,
        sparse,
        username: r.username.as_ref().map(|u| u.get_ref().clone()),
        line,
    })
}

/// A usable, unique name (it becomes the default checkout's directory);
/// the line where it was first defined, when it is a duplicate.
fn check_name(
    check: &mut Check<'_>,
    name: &Spanned<String>,
    label: &str,
    seen: &mut Seen,
) -> Option<usize> {
    let n = name.get_ref();
    // `.` and `..` would be the state directory or its parent.
    let name_ok = !n.is_empty()
        && n != "."
        && n != ".."
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        check.at(
            name,
            format!("{label}.name"),
            "use letters, digits, `-`, `_` and `.` (not `.` or `..` alone)",
        );
    }
    let duplicate = seen.names.get(n).copied();
    match duplicate {
        Some(first) => check.at(
            name,
            format!("{label}.name"),
            format!("duplicate name (first defined on line {first})"),
        ),
        None => {
            seen.names.insert(n.clone(), check.line(name.span().start));
        }
    }
    duplicate
}

fn check_schedule(check: &mut Check<'_>, c: &RawCommon, label: &str) -> Schedule {
    let Some(s) = c.schedule.clone() else {
        return Schedule::Every {
            period: Duration::from_secs(300),
            jitter: Duration::from_secs(30),
        };
    };
    Schedule::parse(s.get_ref()).unwrap_or_else(|e| {
        check.at(&s, format!("{label}.schedule"), e);
        Schedule::Every {
            period: Duration::from_secs(300),
            jitter: Duration::ZERO,
        }
    })
}

fn check_mode(check: &mut Check<'_>, c: &RawCommon, label: &str) -> Mode {
    let Some(m) = c.mode.clone() else {
        return Mode::FastForward;
    };
    match m.get_ref().as_str() {
        "ff" => Mode::FastForward,
        "reset" => Mode::Reset,
        "mirror" => Mode::Mirror,
        other => {
            check.at(
                &m,
                format!("{label}.mode"),
                format!("`{other}`: use ff, reset or mirror"),
            );
            Mode::FastForward
        }
    }
}

/// How long a pull may take and how often it is tried.
struct Limits {
    timeout: Duration,
    min_timeout: Duration,
    low_speed: crate::git::LowSpeed,
    deadline: Option<Duration>,
    lock_wait: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
}

fn check_limits(check: &mut Check<'_>, c: &RawCommon, label: &str, line: usize) -> Limits {
    let mut duration = |v: &Option<Spanned<String>>, field: &str, default: Duration| {
        v.as_ref()
            .and_then(|v| check.duration(v, &format!("{label}.{field}")))
            .unwrap_or(default)
    };
    let timeout = duration(&c.timeout, "timeout", Duration::from_secs(120));
    // Learnt limits never go below this (a slow moment is not a stall).
    let min_timeout = duration(&c.min_timeout, "min_timeout", MIN_TIMEOUT);
    let low_speed_time = duration(&c.low_speed_time, "low_speed_time", Duration::from_secs(30))
        .max(Duration::from_secs(1));
    let lock_wait = duration(&c.lock_wait, "lock_wait", Duration::from_secs(30));
    let backoff_base = duration(&c.backoff_base, "backoff_base", Duration::from_secs(1));
    let backoff_max = duration(&c.backoff_max, "backoff_max", Duration::from_secs(60));
    if timeout.is_zero() {
        let at = c.timeout.as_ref().map(|t| check.line(t.span().start));
        check.push(
            at.unwrap_or(line),
            format!("{label}.timeout"),
            "must be longer than 0s",
        );
    }
    if backoff_base > backoff_max {
        check.push(
            line,
            format!("{label}.backoff_base"),
            "is larger than backoff_max",
        );
    }
    Limits {
        timeout,
        min_timeout,
        low_speed: crate::git::LowSpeed {
            limit: c
                .low_speed_limit
                .as_ref()
                .and_then(|v| check.positive(v, &format!("{label}.low_speed_limit"), 1 << 40))
                .unwrap_or(1024),
            time: low_speed_time,
        },
        deadline: c
            .deadline
            .as_ref()
            .and_then(|v| check.duration(v, &format!("{label}.deadline"))),
        lock_wait,
        max_attempts: c
            .max_attempts
            .as_ref()
            .and_then(|d| check.positive(d, &format!("{label}.max_attempts"), 1000))
            .unwrap_or(5) as u32,
        backoff_base,
        backoff_max,
    }
}

/// The same directory however it is spelled (`a/./b`, `a/x/../b`), and no
/// checkout inside another.
fn check_dir(
    check: &mut Check<'_>,
    r: &RawRepo,
    label: &str,
    line: usize,
    dir: &Path,
    seen: &mut Seen,
) {
    let spelled = lexical(dir);
    let clash = seen
        .dirs
        .iter()
        .find(|(d, _)| spelled.starts_with(d) || d.starts_with(&spelled))
        .map(|(d, other)| (d == &spelled, other.clone()));
    let Some((same, other)) = clash else {
        let name = r
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_default();
        seen.dirs.insert(spelled, name);
        return;
    };
    let at = r
        .dir
        .as_ref()
        .map(|d| check.line(d.span().start))
        .unwrap_or(line);
    let how = if same { "is also" } else { "overlaps" };
    check.push(
        at,
        format!("{label}.dir"),
        format!("{} {how} the checkout of repo \"{other}\"", dir.display()),
    );
}

/// How it authenticates, the user sent with its token, and whether the
/// token may travel to its URL.
fn check_credentials(
    check: &mut Check<'_>,
    r: &RawRepo,
    label: &str,
    url: &str,
    around: &Around<'_>,
) -> AuthRef {
    let auth = check_auth(check, r, label, around.resolve);
    if let Some(user) = &r.username {
        if let Some(why) = crate::git::bad_username(user.get_ref()) {
            check.at(user, format!("{label}.username"), why);
        } else if !matches!(auth, AuthRef::TokenEnv(_) | AuthRef::TokenFile(_)) {
            check.at(
                user,
                format!("{label}.username"),
                "it is sent with a token: add token_env or token_file",
            );
        }
    }
    let token = [
        ("token_env", &r.token_env),
        ("token_file", &r.token_file),
        ("password_file", &r.password_file),
    ]
    .into_iter()
    .find_map(|(field, given)| given.as_ref().map(|g| (field, g)));
    if let Some((field, token)) = token {
        let allowed = r.allow_http_token.as_ref().is_some_and(|a| *a.get_ref());
        if let Err(e) = crate::git::check_token_transport(url, allowed) {
            check.at(token, format!("{label}.{field}"), e);
        }
    }
    auth
}

/// The notifiers it names, each defined.
fn check_notifiers(
    check: &mut Check<'_>,
    c: &RawCommon,
    label: &str,
    defined: &BTreeMap<String, Spanned<notifier::RawNotifier>>,
) -> Vec<String> {
    let Some(list) = &c.notifiers else {
        return Vec::new();
    };
    for n in list.get_ref() {
        if !defined.contains_key(n) {
            check.at(
                list,
                format!("{label}.notifiers"),
                format!("no [notifier.{n}] is defined"),
            );
        }
    }
    list.get_ref().clone()
}
