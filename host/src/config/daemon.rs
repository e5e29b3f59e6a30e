//! `[daemon]`: the daemon's settings, their defaults and the environment
//! variables that override them (`GITPULSE_STATE_DIR`, `GITPULSE_LISTEN`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ApiToken, Check, DaemonSettings, LogFormat, RawDaemon};

/// Checks `[daemon]` (`raw`) of a file in `base`, with `env` read for the
/// overrides and the API token's variable.
pub(super) fn check_daemon(
    check: &mut Check<'_>,
    raw: &RawDaemon,
    base: &Path,
    resolve: &dyn Fn(&str) -> PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
) -> DaemonSettings {
    let mut daemon = DaemonSettings {
        state_dir: raw
            .state_dir
            .as_ref()
            .map(|s| resolve(s.get_ref()))
            .unwrap_or_else(|| base.join("gitpulse-state")),
        listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
        max_concurrent: 8,
        per_host: 4,
        max_concurrent_steps: 4,
        plugin_dir: raw.plugin_dir.as_ref().map(|s| resolve(s.get_ref())),
        breaker_threshold: 5,
        breaker_cool_down: Duration::from_secs(30),
        retention: Duration::from_secs(30 * 24 * 3600),
        api_token: ApiToken::Generated,
        log_format: LogFormat::Text,
        retry_budget_ratio: 0.2,
        retry_budget_min: 10,
        host_names: raw
            .host_names
            .as_ref()
            .map(|h| h.get_ref().clone())
            .unwrap_or_default(),
    };
    check_limits(check, raw, &mut daemon);
    if let Some(format) = &raw.log_format {
        match format.get_ref().as_str() {
            "text" => daemon.log_format = LogFormat::Text,
            "json" => daemon.log_format = LogFormat::Json,
            other => check.at(
                format,
                "daemon.log_format",
                format!("`{other}`: use \"text\" or \"json\""),
            ),
        }
    }
    check_api_token(check, raw, &mut daemon, resolve);
    if let Some(dir) = env("GITPULSE_STATE_DIR") {
        daemon.state_dir = PathBuf::from(dir);
    }
    check_listen(check, raw, &mut daemon, env);
    if let (Some(dir), Some(raw_dir)) = (&daemon.plugin_dir, &raw.plugin_dir) {
        let line = check.line(raw_dir.span().start);
        check.need(line, "daemon.plugin_dir", super::Need::Dir(dir.clone()));
    }
    daemon
}

/// Retry budget, circuit breaker, concurrency and retention.
fn check_limits(check: &mut Check<'_>, raw: &RawDaemon, daemon: &mut DaemonSettings) {
    if let Some(ratio) = &raw.retry_budget_ratio {
        let r = *ratio.get_ref();
        if (0.0..=1.0).contains(&r) {
            daemon.retry_budget_ratio = r;
        } else {
            check.at(
                ratio,
                "daemon.retry_budget_ratio",
                format!("{r} is out of range (0.0 to 1.0: the share of pulls retries may add)"),
            );
        }
    }
    if let Some(n) = &raw.retry_budget_min {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if v <= 100_000 => daemon.retry_budget_min = v,
            _ => check.at(
                n,
                "daemon.retry_budget_min",
                format!(
                    "{} is out of range (0 to 100000 retries a minute)",
                    n.get_ref()
                ),
            ),
        }
    }
    if let Some(raw) = &raw.retention {
        match check.duration(raw, "daemon.retention") {
            Some(d) if d < Duration::from_secs(3600) => {
                check.at(raw, "daemon.retention", "keep at least 1h of history")
            }
            Some(d) => daemon.retention = d,
            None => {}
        }
    }
    if let Some(n) = &raw.breaker_threshold {
        daemon.breaker_threshold = check
            .positive(n, "daemon.breaker_threshold", 10_000)
            .unwrap_or(5) as u32;
    }
    if let Some(d) = &raw.breaker_cool_down {
        if let Some(d) = check.duration(d, "daemon.breaker_cool_down") {
            daemon.breaker_cool_down = d;
        }
    }
    if let Some(n) = &raw.max_concurrent {
        daemon.max_concurrent = check
            .positive(n, "daemon.max_concurrent", 10_000)
            .unwrap_or(8) as usize;
    }
    if let Some(n) = &raw.per_host {
        daemon.per_host = check.positive(n, "daemon.per_host", 10_000).unwrap_or(4) as usize;
    }
    if let Some(n) = &raw.max_concurrent_steps {
        daemon.max_concurrent_steps = check
            .positive(n, "daemon.max_concurrent_steps", 1_000)
            .unwrap_or(4) as usize;
    }
}

/// `api_token_env` or `api_token_file`, not both (none: one is made at
/// start).
fn check_api_token(
    check: &mut Check<'_>,
    raw: &RawDaemon,
    daemon: &mut DaemonSettings,
    resolve: &dyn Fn(&str) -> PathBuf,
) {
    match (&raw.api_token_env, &raw.api_token_file) {
        (Some(_), Some(file)) => check.at(
            file,
            "daemon.api_token_file",
            "use only one of api_token_env and api_token_file",
        ),
        (Some(var), None) => {
            check.need_variable(var, "daemon.api_token_env");
            daemon.api_token = ApiToken::Env(var.get_ref().clone());
        }
        (None, Some(file)) => {
            let path = resolve(file.get_ref());
            check.need_file(file, "daemon.api_token_file", &path);
            daemon.api_token = ApiToken::File(path);
        }
        (None, None) => {}
    }
}

/// `listen` (or `GITPULSE_LISTEN`): an address, loopback unless
/// `listen_public` says otherwise.
fn check_listen(
    check: &mut Check<'_>,
    raw: &RawDaemon,
    daemon: &mut DaemonSettings,
    env: &dyn Fn(&str) -> Option<String>,
) {
    if let Some(listen) = &raw.listen {
        match listen.get_ref().parse() {
            Ok(addr) => daemon.listen = addr,
            Err(_) => check.at(
                listen,
                "daemon.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8787",
                    listen.get_ref()
                ),
            ),
        }
    }
    if let Some(listen) = env("GITPULSE_LISTEN") {
        match listen.parse() {
            Ok(addr) => daemon.listen = addr,
            Err(_) => check.push(
                0,
                "GITPULSE_LISTEN",
                format!("`{listen}` is not an address like 127.0.0.1:8787"),
            ),
        }
    }
    // Anything but loopback exposes the API, hooks and page to a network:
    // an explicit choice, not a typo's consequence.
    let public = raw.listen_public.as_ref().is_some_and(|p| *p.get_ref());
    if !daemon.listen.ip().is_loopback() && !public {
        let line = raw
            .listen
            .as_ref()
            .map(|l| check.line(l.span().start))
            .unwrap_or(0);
        check.push(
            line,
            "daemon.listen",
            format!(
                "{} is not a loopback address: set `listen_public = true` in [daemon] to serve other machines",
                daemon.listen
            ),
        );
    }
}
