//! `gitpulse daemon` and `gitpulse validate`.

use crate::*;

pub(crate) fn daemon(args: &DaemonArgs) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GITPULSE_LOG")
        .unwrap_or_else(|_| "info".into());
    // The flag, else the config's setting (a config with problems is
    // reported by the daemon itself, in the default format).
    let format = args.log_format.unwrap_or_else(|| {
        config::load(&args.config)
            .map(|c| c.daemon.log_format)
            .unwrap_or_default()
    });
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Json => log.json().flatten_event(true).init(),
        config::LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let options = gitpulse::daemon::DaemonOptions {
        config_path: args.config.clone(),
        grace: args.grace,
    };
    gitpulse::daemon::run(options).map_err(|e| match e {
        DaemonError::Config(problems) => Failure::Problems(problems, "; not starting"),
        e => failed(e),
    })
}

pub(crate) fn validate(args: &ValidateArgs) -> Result<(), Failure> {
    let config = gitpulse::validate::load(&args.config)
        .map_err(|problems| Failure::Problems(problems, ""))?;
    // The state must be reachable too (a database server that does not
    // answer, or whose schema is newer, would stop the daemon at start).
    let state = store::probe(&config.store, &config.daemon.state_dir).map_err(failed)?;
    let n =
        |count: usize, what: &str| format!("{count} {what}{}", if count == 1 { "" } else { "s" });
    println!(
        "{}: ok — {}, {}, {}; state: {state}",
        args.config.display(),
        n(config.repos.len(), "repo"),
        n(config.plugins.len(), "plugin setting"),
        n(config.notifiers.len(), "notifier"),
    );
    Ok(())
}
