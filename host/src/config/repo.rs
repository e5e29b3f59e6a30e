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

/// Checks one `[[repo]]` against `[defaults]`, `[daemon]` and the
/// notifiers the file defines; the repository, unless it cannot be used.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_repo(
    check: &mut Check<'_>,
    spanned: &Spanned<RawRepo>,
    defaults: &RawCommon,
    daemon: &DaemonSettings,
    notifiers: &BTreeMap<String, Spanned<notifier::RawNotifier>>,
    seen: &mut Seen,
    resolve: &dyn Fn(&str) -> PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<RepoConfig> {
    let line = check.line(spanned.span().start);
    let r = spanned.get_ref();
    let Some(name) = &r.name else {
        check.push(line, "repo", "missing `name`");
        return None;
    };
    let n = name.get_ref().clone();
    let label = format!("repo \"{n}\"");
    // A name becomes a directory (the default checkout): `.` and `..`
    // would be the state directory or its parent.
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
    let duplicate = seen.names.get(&n).copied();
    if let Some(first) = duplicate {
        check.at(
            name,
            format!("{label}.name"),
            format!("duplicate name (first defined on line {first})"),
        );
    } else {
        seen.names.insert(n.clone(), check.line(name.span().start));
    }
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
    let c = r.with_defaults(defaults);
    let schedule = match c.schedule.clone() {
        None => Schedule::Every {
            period: Duration::from_secs(300),
            jitter: Duration::from_secs(30),
        },
        Some(s) => match Schedule::parse(s.get_ref()) {
            Ok(s) => s,
            Err(e) => {
                check.at(&s, format!("{label}.schedule"), e);
                Schedule::Every {
                    period: Duration::from_secs(300),
                    jitter: Duration::ZERO,
                }
            }
        },
    };
    let mode = match c.mode.clone() {
        None => Mode::FastForward,
        Some(m) => match m.get_ref().as_str() {
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
        },
    };
    let duration_or =
        |check: &mut Check, v: Option<Spanned<String>>, field: &str, default: Duration| {
            v.and_then(|v| check.duration(&v, &format!("{label}.{field}")))
                .unwrap_or(default)
        };
    let timeout = duration_or(
        check,
        c.timeout.clone(),
        "timeout",
        Duration::from_secs(120),
    );
    if timeout.is_zero() {
        let at = c.timeout.as_ref().map(|t| check.line(t.span().start));
        check.push(
            at.unwrap_or(line),
            format!("{label}.timeout"),
            "must be longer than 0s",
        );
    }
    // Learnt limits never go below this (a slow moment is not a stall).
    let min_timeout = duration_or(check, c.min_timeout.clone(), "min_timeout", MIN_TIMEOUT);
    let low_speed = crate::git::LowSpeed {
        limit: c
            .low_speed_limit
            .clone()
            .and_then(|v| check.positive(&v, &format!("{label}.low_speed_limit"), 1 << 40))
            .unwrap_or(1024),
        time: duration_or(
            check,
            c.low_speed_time.clone(),
            "low_speed_time",
            Duration::from_secs(30),
        )
        .max(Duration::from_secs(1)),
    };
    let deadline = c
        .deadline
        .clone()
        .and_then(|v| check.duration(&v, &format!("{label}.deadline")));
    let lock_wait = duration_or(
        check,
        c.lock_wait.clone(),
        "lock_wait",
        Duration::from_secs(30),
    );
    let submodules = c.submodules.as_ref().is_some_and(|b| *b.get_ref());
    let local_submodules = c
        .allow_local_submodules
        .as_ref()
        .is_some_and(|b| *b.get_ref());
    let group_write = c.group_write.as_ref().is_some_and(|b| *b.get_ref());
    let backoff_base = duration_or(
        check,
        c.backoff_base.clone(),
        "backoff_base",
        Duration::from_secs(1),
    );
    let backoff_max = duration_or(
        check,
        c.backoff_max.clone(),
        "backoff_max",
        Duration::from_secs(60),
    );
    if backoff_base > backoff_max {
        check.push(
            line,
            format!("{label}.backoff_base"),
            "is larger than backoff_max",
        );
    }
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
    let steps = check_steps(check, r, &label, line, publish);
    let max_attempts = c
        .max_attempts
        .clone()
        .and_then(|d| check.positive(&d, &format!("{label}.max_attempts"), 1000))
        .unwrap_or(5) as u32;

    let dir = r
        .dir
        .as_ref()
        .map(|d| resolve(d.get_ref()))
        .unwrap_or_else(|| daemon.state_dir.join("checkouts").join(&n));
    // The same directory however it is spelled (`a/./b`, `a/x/../b`),
    // and no checkout inside another. (A duplicate name already
    // explains a shared default directory.)
    let spelled = lexical(&dir);
    let clash = seen
        .dirs
        .iter()
        .find(|(d, _)| spelled.starts_with(d) || d.starts_with(&spelled))
        .map(|(d, other)| (d == &spelled, other.clone()));
    if clash.is_none() {
        seen.dirs.insert(spelled, n.clone());
    }
    if let Some((same, other)) = clash.filter(|_| duplicate.is_none()) {
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

    let auth = check_auth(check, r, &label, resolve, env);
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
    if let Some(token) = r
        .token_env
        .as_ref()
        .or(r.token_file.as_ref())
        .or(r.password_file.as_ref())
    {
        let allowed = r.allow_http_token.as_ref().is_some_and(|a| *a.get_ref());
        if let Err(e) = crate::git::check_token_transport(&url, allowed) {
            check.at(token, label.clone(), e);
        }
    }
    let labels = r
        .labels
        .as_ref()
        .map(|l| l.get_ref().clone())
        .unwrap_or_default();
    let policy = match c.policy.clone() {
        None => PolicyRef::default(),
        Some(p) => check_policy(check, &p, &label, daemon.plugin_dir.as_deref()),
    };
    let notifiers_list = c.notifiers.clone();
    let mut notifier_names = Vec::new();
    if let Some(list) = &notifiers_list {
        for n in list.get_ref() {
            if !notifiers.contains_key(n) {
                check.at(
                    list,
                    format!("{label}.notifiers"),
                    format!("no [notifier.{n}] is defined"),
                );
            }
            notifier_names.push(n.clone());
        }
    }
    Some(RepoConfig {
        name: n,
        url,
        follow,
        dir,
        schedule,
        mode,
        depth,
        submodules,
        local_submodules,
        group_write,
        timeout,
        min_timeout,
        low_speed,
        deadline,
        lock_wait,
        max_attempts,
        backoff_base,
        backoff_max,
        auth,
        labels,
        policy,
        notifiers: notifier_names,
        required: r.required.as_ref().is_none_or(|v| *v.get_ref()),
        steps,
        publish,
        sparse,
        username: r.username.as_ref().map(|u| u.get_ref().clone()),
        line,
    })
}
