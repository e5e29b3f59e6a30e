//! The `gitpulse` binary: parse, dispatch, print, exit. The work is in the
//! library; [`exit`] is the one place a failure becomes an exit code.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use gitpulse::authoring;
use gitpulse::cli::{
    CheckArgs, Cli, Command, DaemonArgs, HistoryArgs, HookCommand, NewArgs, NotifyCommand,
    OutboxAction, OutboxArgs, PluginCommand, PluginOptions, PullArgs, RoleArg, SimulateArgs,
    StateArgs, StatusArgs, TriggerArgs, UsageError, ValidateArgs,
};
use gitpulse::config::{self, Config, PolicyRef, Problems, Scope};
use gitpulse::daemon::DaemonError;
use gitpulse::events::RepoRef;
use gitpulse::plugin::{self, KvStore, Plugin, PluginEnv, Told};
use gitpulse::policy::{Backoff, Builtin, WasmPolicy};
use gitpulse::store::{self, OutboxState, Store, StoreError};
use gitpulse::{githook, job, pull, ui};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Why a command stopped short; [`exit`] is the one place that turns it
/// into a message and an exit code.
#[derive(Debug)]
enum Failure {
    /// Bad flags, config or input: nothing was done (exit 2).
    Usage(String),
    /// A config with problems, each printed with file:line (exit 2).
    Problems(Problems, &'static str),
    /// The work itself failed: a pull gave up, a delivery or the state
    /// database failed, the daemon is unreachable (exit 1).
    Failed(String),
    /// Already reported on the way (a failed pull's summary, a plugin
    /// check's faults); only the exit code is left (exit 1).
    Reported,
}

fn usage(e: impl std::fmt::Display) -> Failure {
    Failure::Usage(e.to_string())
}

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure::Failed(e.to_string())
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        failed(e)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => exit(failure),
    }
}

fn exit(failure: Failure) -> ExitCode {
    match failure {
        Failure::Usage(message) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Failure::Problems(problems, then) => {
            eprintln!("{problems}");
            let n = problems.0.len();
            eprintln!("{n} problem{} found{then}", if n == 1 { "" } else { "s" });
            ExitCode::from(EXIT_USAGE)
        }
        Failure::Failed(message) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_FAILED)
        }
        Failure::Reported => ExitCode::from(EXIT_FAILED),
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Pull(args) => run_pull(&args),
        Command::Plugin(PluginCommand::New(args)) => plugin_new(&args),
        Command::Plugin(PluginCommand::Check(args)) => plugin_check(&args),
        Command::Plugin(PluginCommand::Simulate(args)) => plugin_simulate(&args),
        Command::Validate(args) => validate(&args),
        Command::Daemon(args) => daemon(&args),
        Command::Status(args) => status(&args),
        Command::History(args) => history(&args),
        Command::Trigger(args) => trigger(&args),
        Command::Outbox(args) => outbox(&args),
        Command::Notify(NotifyCommand::Test { name, config }) => notify_test(&name, &config),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "gitpulse", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .map_err(|e| failed(format!("writing the man page: {e}")))
        }
        Command::Hook(command) => hook(command),
    }
}

fn daemon(args: &DaemonArgs) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GITPULSE_LOG")
        .unwrap_or_else(|_| "info".into());
    // The flag, else the config's setting (a config with problems is
    // reported by the daemon itself, in the default format).
    let format = args.log_format.unwrap_or_else(|| {
        config::load(&args.config, Scope::Structure)
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

/// The config (its structure only: no secrets needed) and the store it
/// names.
fn open_state(config_path: &Path) -> Result<(Config, Store), Failure> {
    let config = config::load(config_path, Scope::Structure).map_err(usage)?;
    let db = gitpulse::daemon::state_db(&config);
    if !db.exists() {
        return Err(usage(format!(
            "{} does not exist yet: has the daemon run with this config?",
            db.display()
        )));
    }
    Ok((config, Store::open(&db)?))
}

fn status(args: &StatusArgs) -> Result<(), Failure> {
    if args.live {
        return status_live(&args.state);
    }
    let args = &args.state;
    let (config, store) = open_state(&args.config)?;
    let rows = store.status()?;
    let configured: Vec<_> = config
        .repos
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                rows.iter().find(|s| s.repo == r.name).cloned(),
                false,
            )
        })
        .collect();
    if args.json {
        let list: Vec<_> = configured
            .iter()
            .map(|(name, row, _)| serde_json::json!({ "repo": name, "state": row }))
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    print_status(&configured);
    let counts = store.outbox_counts()?;
    if counts.pending > 0 || counts.dead > 0 {
        println!(
            "\nnotifications: {} pending, {} dead (`gitpulse outbox --config {}`)",
            counts.pending,
            counts.dead,
            args.config.display()
        );
    }
    Ok(())
}

/// `status --live`: the running daemon's own view, running pulls included.
fn status_live(args: &StateArgs) -> Result<(), Failure> {
    let config = config::load(&args.config, Scope::Structure).map_err(usage)?;
    let daemon = &config.daemon;
    let token = api_token(daemon)?;
    let url = format!("http://{}/v1/status", daemon.listen);
    let mut response = http_agent()
        .get(&url)
        .header("Authorization", &format!("Bearer {}", token.expose()))
        .call()
        .map_err(|e| failed(format!("cannot reach the daemon at {}: {e}", daemon.listen)))?;
    let body = response.body_mut().read_to_string().unwrap_or_default();
    if response.status().as_u16() != 200 {
        return Err(failed(format!(
            "the daemon answered {}: {}",
            response.status().as_u16(),
            body.trim()
        )));
    }
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| failed(format!("the daemon's answer is not JSON: {e}")))?;
    let configured: Vec<_> = value["repos"]
        .as_array()
        .map(|repos| {
            repos
                .iter()
                .map(|r| {
                    (
                        r["repo"].as_str().unwrap_or("?").to_string(),
                        serde_json::from_value::<store::RepoStatus>(r["state"].clone()).ok(),
                        r["running"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    print_status(&configured);
    Ok(())
}

/// The status table: each repo's last success, last result, next run,
/// failures in a row, and whether it is being pulled now.
fn print_status(repos: &[(String, Option<store::RepoStatus>, bool)]) {
    println!(
        "{:<20} {:<16} {:<22} {:<14} {:>9}",
        "REPO", "LAST SUCCESS", "LAST RESULT", "NEXT RUN", "FAILURES"
    );
    for (name, row, running) in repos {
        let (success, result, next, failures) = match row {
            Some(s) => (
                ui::when(s.last_success_ms),
                match (&s.last_result, &s.last_class) {
                    (Some(r), Some(c)) => format!("{r} ({c})"),
                    (Some(r), None) => r.clone(),
                    _ => "-".into(),
                },
                ui::when(s.next_run_ms),
                s.failures_in_row,
            ),
            None => ("-".into(), "never run".into(), "-".into(), 0),
        };
        let result = if *running {
            format!("running; last {result}")
        } else {
            result
        };
        println!("{name:<20} {success:<16} {result:<22} {next:<14} {failures:>9}");
    }
}

fn history(args: &HistoryArgs) -> Result<(), Failure> {
    let (config, store) = open_state(&args.state.config)?;
    if config.repo(&args.repo).is_none() {
        return Err(usage(format!(
            "no repository named `{}` in {}",
            args.repo,
            args.state.config.display()
        )));
    }
    let entries = store.history(&args.repo, args.limit)?;
    if args.state.json {
        println!("{}", serde_json::to_string(&entries).map_err(failed)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<11} {:<14} {:>8} {:>10}  DETAIL",
        "WHEN", "WHAT", "CLASS", "DELAY", "DURATION"
    );
    for e in entries {
        // A step's output follows its line, indented.
        let (first, output) = e.detail.split_once('\n').unwrap_or((&e.detail, ""));
        println!(
            "{:<14} {:<11} {:<14} {:>8} {:>10}  {}",
            ui::when(Some(e.at_ms)),
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
        for line in &lines[lines.len().saturating_sub(args.output_lines)..] {
            println!("{:>62}| {line}", "");
        }
    }
    Ok(())
}

fn trigger(args: &TriggerArgs) -> Result<(), Failure> {
    let config = config::load(&args.config, Scope::Structure).map_err(usage)?;
    let daemon = &config.daemon;
    let url = match &args.repo {
        Some(repo) => format!("http://{}/v1/repos/{repo}/pull", daemon.listen),
        None => format!("http://{}/v1/pull", daemon.listen),
    };
    let token = api_token(daemon)?;
    let mut response = http_agent()
        .post(&url)
        .header("Authorization", &format!("Bearer {}", token.expose()))
        .content_type("application/json")
        .send("{}")
        .map_err(|e| failed(format!("cannot reach the daemon at {}: {e}", daemon.listen)))?;
    let body = response.body_mut().read_to_string().unwrap_or_default();
    let said = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string())
    };
    match response.status().as_u16() {
        202 => {
            match &args.repo {
                Some(repo) => println!("pull of `{repo}` requested"),
                None => println!("pull of every repository requested"),
            }
            Ok(())
        }
        404 => Err(usage(said(&body))),
        401 => Err(failed(format!(
            "the daemon refused the API token in {}: is it the daemon of this config?",
            daemon.api_token_file().display()
        ))),
        s => Err(failed(format!("the daemon answered {s}: {}", said(&body)))),
    }
}

/// A client for the daemon's API: statuses are answers, not errors.
fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// The daemon's API token, as a client of it: the variable or file the
/// config names, else the one the daemon wrote to its state directory.
fn api_token(daemon: &config::DaemonSettings) -> Result<gitpulse::redact::Secret, Failure> {
    let token = match &daemon.api_token {
        config::ApiToken::Env(var) => std::env::var(var).map_err(|_| {
            failed(format!(
                "the API token variable {var} is not set in this shell"
            ))
        })?,
        _ => {
            let file = daemon.api_token_file();
            std::fs::read_to_string(&file).map_err(|e| {
                failed(format!(
                    "cannot read the daemon's API token at {}: {e} (is the daemon running, as this user?)",
                    file.display()
                ))
            })?
        }
    };
    Ok(gitpulse::redact::Secret::new(token.trim()))
}

fn validate(args: &ValidateArgs) -> Result<(), Failure> {
    let config = gitpulse::validate::load(&args.config)
        .map_err(|problems| Failure::Problems(problems, ""))?;
    let n =
        |count: usize, what: &str| format!("{count} {what}{}", if count == 1 { "" } else { "s" });
    println!(
        "{}: ok — {}, {}, {}",
        args.config.display(),
        n(config.repos.len(), "repo"),
        n(config.plugins.len(), "plugin setting"),
        n(config.notifiers.len(), "notifier"),
    );
    Ok(())
}

fn outbox(args: &OutboxArgs) -> Result<(), Failure> {
    let Some(config) = &args.config else {
        return Err(usage(
            "--config FILE (or GITPULSE_CONFIG) names the daemon's config",
        ));
    };
    let (_, mut store) = open_state(config)?;
    if let Some(OutboxAction::Retry { id }) = &args.action {
        return if store.requeue(*id)? {
            println!("message {id} requeued; the daemon sends it on its next pass");
            Ok(())
        } else {
            Err(failed(format!(
                "no pending or dead message {id} (see `gitpulse outbox --all`)"
            )))
        };
    }
    let states: &[OutboxState] = if args.all {
        &[
            OutboxState::Pending,
            OutboxState::InDigest,
            OutboxState::Dead,
            OutboxState::Delivered,
        ]
    } else {
        &[
            OutboxState::Pending,
            OutboxState::InDigest,
            OutboxState::Dead,
        ]
    };
    let rows = store.outbox(states, args.limit)?;
    if args.json {
        println!("{}", serde_json::to_string(&rows).map_err(failed)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "the outbox is empty{}",
            if args.all {
                ""
            } else {
                " (nothing pending or dead)"
            }
        );
        return Ok(());
    }
    println!(
        "{:>6}  {:<9} {:<14} {:<16} {:<16} {:>8}  {:<14} DETAIL",
        "ID", "STATE", "NOTIFIER", "EVENT", "REPO", "ATTEMPTS", "WHEN"
    );
    for r in rows {
        let (at, detail) = match r.state {
            OutboxState::Pending => (
                ui::when(r.next_at_ms),
                r.last_error.clone().unwrap_or_else(|| r.subject.clone()),
            ),
            OutboxState::InDigest => (
                ui::when(Some(r.created_ms)),
                format!("in digest {}", r.digest_of.unwrap_or_default()),
            ),
            OutboxState::Dead => (
                ui::when(Some(r.created_ms)),
                r.last_error.clone().unwrap_or_default(),
            ),
            OutboxState::Delivered => (
                ui::when(r.delivered_ms),
                match r.digest_of {
                    Some(d) if d != r.id => format!("in digest {d}"),
                    _ => r.answer.clone().unwrap_or_default(),
                },
            ),
        };
        println!(
            "{:>6}  {:<9} {:<14} {:<16} {:<16} {:>8}  {:<14} {}",
            r.id, r.state, r.notifier, r.kind, r.repo, r.attempts, at, detail
        );
    }
    Ok(())
}

fn hook(command: HookCommand) -> Result<(), Failure> {
    match command {
        HookCommand::Install {
            repo,
            mut hooks,
            reference_transaction,
            into_hooks_path,
            force,
        } => {
            let location = githook::locate(&repo).map_err(usage)?;
            let dir = match &location.hooks_path {
                Some(setting) if !into_hooks_path => {
                    return Err(usage(githook::HookError::HooksPath {
                        value: setting.value.clone(),
                        scope: setting.scope.clone(),
                        origin: setting.origin.clone(),
                    }))
                }
                Some(setting) => setting.dir.clone(),
                None => location.own.clone(),
            };
            if reference_transaction && !hooks.iter().any(|h| h == "reference-transaction") {
                hooks.push("reference-transaction".into());
            }
            let binary = std::env::current_exe()
                .and_then(|p| p.canonicalize())
                .map_err(|e| failed(format!("where this gitpulse is: {e}")))?;
            let done = githook::install(&dir, &hooks, &binary, force).map_err(usage)?;
            for (name, what) in done {
                let said = match what {
                    githook::Installed::New => "installed",
                    githook::Installed::Updated => "updated",
                    githook::Installed::Chained => "installed; the hook that was there runs first",
                    githook::Installed::Replaced => {
                        "installed; the hook that was there is kept aside (not run)"
                    }
                };
                println!("{name}: {said} ({})", dir.join(&name).display());
            }
            Ok(())
        }
        HookCommand::Uninstall { repo } => {
            let location = githook::locate(&repo).map_err(usage)?;
            let mut dirs = vec![location.own.clone()];
            dirs.extend(location.hooks_path.map(|h| h.dir));
            let mut any = false;
            for dir in dirs {
                for name in githook::uninstall(&dir).map_err(failed)? {
                    println!("{name}: removed ({})", dir.join(&name).display());
                    any = true;
                }
            }
            if !any {
                println!("no gitpulse hooks installed");
            }
            Ok(())
        }
        HookCommand::Status { repo } => {
            let location = githook::locate(&repo).map_err(usage)?;
            if let Some(h) = &location.hooks_path {
                println!(
                    "core.hooksPath = {} ({} config, {}): git runs hooks from {}",
                    h.value,
                    h.scope,
                    h.origin,
                    h.dir.display()
                );
            }
            for (name, path, state) in githook::status(&location) {
                let said = match state {
                    githook::HookState::Ours => "gitpulse".to_string(),
                    githook::HookState::Chained => {
                        "gitpulse, running the previous hook first".into()
                    }
                    githook::HookState::Foreign => "another tool's or yours (not gitpulse)".into(),
                    githook::HookState::NotExecutable => {
                        "not executable: git does not run it".into()
                    }
                    githook::HookState::Shadowed(active) => format!(
                        "gitpulse, but shadowed: core.hooksPath makes git run {} instead",
                        active.display()
                    ),
                    githook::HookState::Missing => "none".into(),
                };
                println!("{name:<22} {said} ({})", path.display());
            }
            let file = location.top.join(githook::trust::WORKTREE_FILE);
            match githook::trust::is_trusted(&location.top) {
                Ok(None) => {}
                Ok(Some(true)) => println!(
                    "{:<22} trusted ({})",
                    githook::trust::WORKTREE_FILE,
                    file.display()
                ),
                Ok(Some(false)) => println!(
                    "{:<22} not trusted, so not used: read it, then `gitpulse hook trust` ({})",
                    githook::trust::WORKTREE_FILE,
                    file.display()
                ),
                Err(e) => println!("{:<22} {e}", githook::trust::WORKTREE_FILE),
            }
            Ok(())
        }
        HookCommand::Trust { repo } => {
            let location = githook::locate(&repo).map_err(usage)?;
            let trusted = githook::trust::trust(&location.top).map_err(usage)?;
            println!(
                "trusted {} (sha256 {}); the hooks use it until it changes",
                trusted.path.display(),
                &trusted.digest[..12]
            );
            if !trusted.reaches.is_empty() {
                println!(
                    "it uses (each must be inside the worktree or allowed by your [hook] table):"
                );
                for line in trusted.reaches {
                    println!("{line}");
                }
            }
            Ok(())
        }
        HookCommand::Untrust { repo } => {
            let location = githook::locate(&repo).map_err(usage)?;
            if githook::trust::untrust(&location.top).map_err(failed)? {
                println!(
                    "no longer trusted: {}",
                    location.top.join(githook::trust::WORKTREE_FILE).display()
                );
            } else {
                println!("was not trusted");
            }
            Ok(())
        }
        HookCommand::Run { name, args, config } => {
            // Fail open: whatever goes wrong is one line, and git goes on.
            if let Err(e) = hook_run(&name, &args, config) {
                eprintln!("gitpulse {name} hook: {e} (ignored; the git command went through)");
            }
            Ok(())
        }
        HookCommand::Deliver { repo, config } => {
            let (_, found) = hook_config(&repo, config).map_err(usage)?;
            let Some(found) = found else {
                return Ok(());
            };
            job::deliver_pending(&found.config, Duration::from_secs(30))?;
            Ok(())
        }
    }
}

/// The worktree at `dir` and the config its hooks use (see
/// `githook::trust`): `--config`, else `GITPULSE_CONFIG`, else what the
/// repository and the user have.
fn hook_config(
    dir: &Path,
    config: Option<PathBuf>,
) -> Result<(PathBuf, Option<githook::trust::HookConfig>), String> {
    let (top, git_dir) = githook::dirs(dir).map_err(|e| e.to_string())?;
    let named = config.or_else(|| std::env::var_os("GITPULSE_CONFIG").map(PathBuf::from));
    let found = githook::trust::resolve(&top, &git_dir, named).map_err(|e| e.to_string())?;
    Ok((top, found))
}

/// `hook run`: the change git reports, recorded as a pull of the worktree's
/// repository would be (events, notify plugin, outbox), then delivered by
/// a detached process so git does not wait.
fn hook_run(name: &str, args: &[String], config: Option<PathBuf>) -> Result<(), String> {
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let named = config.clone();
    let (top, found) = hook_config(&cwd, config)?;
    let Some(found) = found else {
        return Ok(()); // nothing configured: nothing to do
    };
    let mut stdin = String::new();
    if matches!(name, "post-rewrite" | "reference-transaction") {
        use std::io::Read as _;
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut stdin)
            .map_err(|e| e.to_string())?;
    }
    let Some(change) = githook::change(name, args, &stdin, &top).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let seen = githook::describe(&top, &change);
    let events = job::record_change(&found.config, &top, &seen).map_err(|e| e.to_string())?;
    if events > 0 && !found.config.notifiers.is_empty() {
        spawn_deliverer(&top, named.as_deref());
    }
    Ok(())
}

/// Starts `gitpulse hook deliver` in its own process group, detached from
/// git's: the hook returns at once, delivery goes on. It chooses the
/// config again, as `run` did (a worktree file that changed in between is
/// no longer trusted).
fn spawn_deliverer(top: &Path, config: Option<&Path>) {
    use std::os::unix::process::CommandExt as _;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut command = std::process::Command::new(exe);
    command.args(["hook", "deliver", "--repo"]).arg(top);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let _ = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
}

fn notify_test(name: &str, config_path: &Path) -> Result<(), Failure> {
    // Only this notifier's secret matters, and sending reads it.
    let config = config::load(config_path, Scope::Structure)
        .map_err(|problems| Failure::Problems(problems, ""))?;
    let Some(notifier) = config.notifiers.get(name) else {
        let known: Vec<&str> = config.notifiers.keys().map(String::as_str).collect();
        return Err(usage(format!(
            "{}: no [notifier.{name}] (defined: {})",
            config_path.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )));
    };
    let message = gitpulse::notify::test_message(notifier);
    let letter = gitpulse::notify::Letter {
        delivery_id: 0,
        kind: "test",
        subject: &message.subject,
        body: &message.body,
        html: message.html.as_deref(),
    };
    let kind = notifier.channel.kind();
    match gitpulse::notify::Senders::default().send(notifier, &letter) {
        Ok(answer) => {
            println!("{name} ({kind}): {answer}");
            Ok(())
        }
        Err(e) => Err(failed(format!(
            "{name} ({kind}): {} ({})",
            e.message,
            e.class.as_str()
        ))),
    }
}

fn run_pull(args: &PullArgs) -> Result<(), Failure> {
    // A bad notification config stops the pull before it starts.
    let notify_config = match &args.notify_config {
        None => None,
        Some(path) => {
            let config = config::load(path, Scope::Environment).map_err(usage)?;
            let problems = gitpulse::notify::check_templates(&config);
            if !problems.is_empty() {
                return Err(usage(Problems(problems)));
            }
            Some(config)
        }
    };
    // A job that cannot start (its token unreadable, its plugin broken,
    // its directory unusable) is a failed pull people are told of, as in
    // the daemon; a mistyped flag is not.
    let cannot_start = |class: gitpulse::FailureClass, why: String| -> Failure {
        if let Some(config) = &notify_config {
            let name = args
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let repo = RepoRef::new(&name, &args.url, None, Default::default());
            let report = job::could_not_start(&args.url, &args.dir, class, &why);
            notify_after_pull(config, args, &repo, &args.dir, &report);
        }
        usage(why)
    };
    let (options, builtin) = match args.options() {
        Ok(parsed) => parsed,
        Err(
            e @ (UsageError::TokenEnvMissing(_)
            | UsageError::TokenFile { .. }
            | UsageError::TokenFileEmpty(_)
            | UsageError::SshKey { .. }),
        ) => return Err(cannot_start(gitpulse::FailureClass::Auth, e.to_string())),
        Err(e) => return Err(usage(e)),
    };
    let steps = pull_steps(args)?;
    let gates = args.gates().map_err(usage)?;
    let workflow = gitpulse::github::Workflow::from_env(!args.no_step_summary);
    if let Some(w) = &workflow {
        for secret in job::secrets_of(&options.sync) {
            w.mask(secret.expose());
        }
    }
    let repo = RepoRef::new(
        &repo_name(&options),
        &args.url,
        Some(options.sync.follow.describe().as_str()).filter(|f| !f.is_empty()),
        Default::default(),
    );
    let told = Told {
        max_attempts: args.max_attempts,
        max_delay: args.backoff_max,
    };
    let load = |_: &str| load_pull_plugin(args);
    let mut policy = job::policy(&policy_roles(args), builtin, repo.clone(), told, &load)
        .map_err(|e| cannot_start(gitpulse::FailureClass::Other, e.to_string()))?;
    let cancel = cancel_on_signals().map_err(|e| failed(format!("{e:#}")))?;
    force_exit_if_cancel_stalls(cancel.clone(), args);
    job::prepare_dir(&args.dir, args.publish(), args.lock_wait)
        .map_err(|e| cannot_start(e.class, e.message))?;
    let mut terminal = ui::Terminal::new(!args.json && std::io::stderr().is_terminal());
    let result = match &workflow {
        Some(_) => {
            let mut observer = gitpulse::github::ActionsObserver::new(&mut terminal);
            pull::pull(&options, policy.as_mut(), &mut observer, cancel.clone())
        }
        None => pull::pull(&options, policy.as_mut(), &mut terminal, cancel.clone()),
    }
    .map_err(usage)?;
    let (result, failed_gates) = job::publish(
        repo.name(),
        &options.sync,
        &args.dir,
        args.publish(),
        &gates,
        result,
        &cancel,
    );
    if let Some(w) = &workflow {
        let (commits, files) = match &result.new {
            Some(new) if result.new != result.old => (
                gitpulse::events::read_changes(&options.sync.dir, result.old.as_deref(), new)
                    .map(|c| c.commits)
                    .unwrap_or_default(),
                gitpulse::events::changed_paths(
                    &options.sync.dir,
                    result.old.as_deref(),
                    new,
                    gitpulse::github::MAX_CHANGED_FILES,
                )
                .unwrap_or_default(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        if let Err(e) = w.finish(&result, &commits, &files) {
            eprintln!("warning: writing the GitHub step outputs: {e}");
        }
    }
    let ran = job::run_steps_once(
        repo.name(),
        &options.sync,
        &args.dir,
        &steps,
        &result,
        &cancel,
    );
    if args.json {
        let mut json = serde_json::to_value(&result)
            .map_err(|e| failed(format!("cannot encode the result: {e}")))?;
        if !steps.is_empty() {
            json["steps"] = serde_json::to_value(&ran).unwrap_or_default();
        }
        println!("{json}");
    } else if result.outcome.is_success() {
        println!("{}", ui::summary(&result));
    } else {
        eprintln!("error: {}", ui::summary(&result));
    }
    let mut steps_failed = !failed_gates.is_empty();
    for gate in &failed_gates {
        let code = gate
            .ran
            .status
            .exit_code()
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default();
        eprintln!(
            "error: gate `{}` {}{code}: {} was not published",
            gate.step.name,
            gate.ran.status,
            &gate.revision[..gate.revision.len().min(10)]
        );
        print_tail(&gate.ran.output);
    }
    for step in &ran {
        if step.run.status == "succeeded" {
            if !args.json {
                println!(
                    "step `{}` succeeded in {} ms",
                    step.name, step.run.duration_ms
                );
            }
            continue;
        }
        steps_failed = true;
        let code = step
            .run
            .exit_code
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default();
        eprintln!("error: step `{}` {}{code}", step.name, step.run.status);
        print_tail(&step.run.output);
    }
    if let Some(config) = &notify_config {
        notify_after_pull(config, args, &repo, &options.sync.dir, &result);
    }
    if result.outcome.is_success() && !steps_failed {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}

/// The last 20 lines of a step's kept output, indented (no line of it
/// starts a workflow command).
fn print_tail(output: &str) {
    let lines: Vec<&str> = output.lines().collect();
    for line in &lines[lines.len().saturating_sub(20)..] {
        eprintln!("  | {line}");
    }
}

/// The `--step` family, in command-line order (clap's derive keeps each
/// flag's values apart; the matches know how they interleave).
fn pull_steps(args: &PullArgs) -> Result<Vec<gitpulse::step::Step>, Failure> {
    use clap::CommandFactory as _;
    if args.step.is_empty() && args.step_shell.is_empty() && args.step_arg.is_empty() {
        return Ok(Vec::new());
    }
    let matches = Cli::command()
        .try_get_matches_from(std::env::args_os())
        .map_err(|e| usage(anyhow::anyhow!("{e}")))?;
    let Some(("pull", pull)) = matches.subcommand() else {
        return Ok(Vec::new());
    };
    args.steps(pull).map_err(usage)
}

/// A one-shot pull's repository name: its checkout directory's.
fn repo_name(options: &pull::PullOptions) -> String {
    options
        .sync
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `--policy FILE` plays every role it exports, under its file stem.
fn policy_roles(args: &PullArgs) -> PolicyRef {
    let name = args.policy.as_ref().map(|file| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    PolicyRef {
        retry: name.clone(),
        backoff: name.clone(),
        notify: name,
    }
}

/// The `--policy` plugin, with its settings and persisted key-value store.
fn load_pull_plugin(args: &PullArgs) -> Result<Plugin, plugin::LoadError> {
    let file = args.policy.clone().unwrap_or_default();
    let settings = authoring::parse_settings(&args.plugin.config).unwrap_or_default();
    let kv = plugin_kv(&kv_name(&file)).unwrap_or_else(|_| KvStore::in_memory());
    plugin::Registry::new(args.plugin.cache(), args.plugin.sandbox())
        .get(&file, PluginEnv::new(settings, args.seed).with_kv(kv))
}

/// Whose key-value store a `--policy` file gets: its stem and where it
/// lives, so two plugins that share a file name never share state (and an
/// upgraded plugin at the same place keeps its own).
fn kv_name(file: &Path) -> String {
    use sha2::Digest as _;
    let place = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let digest = sha2::Sha256::digest(place.as_os_str().as_encoded_bytes());
    let short = hex::encode(&digest[..6]);
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{stem}-{short}")
}

/// The persisted key-value store of the plugin `name` for `gitpulse pull`.
fn plugin_kv(name: &str) -> Result<KvStore, String> {
    match plugin::default_state_dir() {
        Some(dir) => KvStore::persisted(dir.join("plugins").join(format!("{name}.json")))
            .map_err(|e| e.to_string()),
        None => Ok(KvStore::in_memory()),
    }
}

/// Sends the pull's notifications; their trouble is reported on stderr
/// but does not change the pull's exit code.
fn notify_after_pull(
    config: &Config,
    args: &PullArgs,
    repo: &RepoRef,
    dir: &Path,
    result: &gitpulse::outcome::PullReport,
) {
    let roles = policy_roles(args);
    let audience = gitpulse::notify::Audience {
        notifiers: &[],
        plugin: roles.notify.as_deref(),
    };
    let load = |_: &str| load_pull_plugin(args);
    let store = gitpulse::daemon::state_db(config);
    match job::record_and_deliver(
        config,
        repo,
        dir,
        result,
        &audience,
        &load,
        args.notify_wait,
    ) {
        Ok(n) if n.pending > 0 || n.dead > 0 => eprintln!(
            "notifications: {} delivered, {} dead, {} still pending in {} (see `gitpulse outbox --config {}`)",
            n.delivered,
            n.dead,
            n.pending,
            store.display(),
            config.path.display()
        ),
        Ok(n) if n.delivered > 0 && !args.json => {
            eprintln!("notifications: {} delivered", n.delivered)
        }
        Ok(_) => {}
        Err(e) => eprintln!("error: notifications: {e}"),
    }
}

fn plugin_new(args: &NewArgs) -> Result<(), Failure> {
    let role = match args.role {
        RoleArg::Retry => authoring::Role::Retry,
        RoleArg::Backoff => authoring::Role::Backoff,
        RoleArg::Notify => authoring::Role::Notify,
        RoleArg::Full => authoring::Role::Full,
    };
    let path = authoring::scaffold(&args.name, &args.dir, role).map_err(usage)?;
    println!("created {}", path.display());
    println!("next:");
    println!("  cd {}", path.display());
    println!("  cargo test                                        # unit tests, natively");
    println!("  cargo build --release --target wasm32-wasip2      # the component");
    println!(
        "  gitpulse plugin check target/wasm32-wasip2/release/{}.wasm",
        args.name.replace('-', "_")
    );
    Ok(())
}

fn load(file: &Path, opts: &PluginOptions, seed: Option<u64>) -> Result<Plugin, Failure> {
    let settings = authoring::parse_settings(&opts.config).map_err(usage)?;
    // The one loader, as the daemon, `validate` and the hooks load theirs.
    plugin::Registry::new(opts.cache(), opts.sandbox())
        .get(file, PluginEnv::new(settings, seed))
        .map_err(usage)
}

fn plugin_check(args: &CheckArgs) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let mut plugin = load(&args.file, &args.plugin, Some(1))?;
    let load_time = started.elapsed();
    println!("plugin     {}", plugin.path.display());
    println!("roles      {}", plugin.roles);
    println!(
        "contract   gitpulse:policy@{} (this host accepts {})",
        plugin.contract,
        plugin::ACCEPTED
    );
    println!("size       {:.1} KiB", plugin.size as f64 / 1024.0);
    println!(
        "load       {:.1} ms ({})",
        load_time.as_secs_f64() * 1e3,
        if plugin.cached {
            "compile cache hit"
        } else {
            "compiled"
        }
    );
    let told = Told {
        max_attempts: 5,
        max_delay: Duration::from_secs(60),
    };
    let mut smoke = authoring::smoke(&mut plugin, told);
    for t in &smoke.templates {
        if let Err(e) =
            gitpulse::notify::check_plugin_template(t.kind, t.channel, &t.subject, &t.body, &t.vars)
        {
            smoke.faults.push(format!(
                "notify template for {} on {} (rendered with a sample event): {e}",
                t.kind, t.channel
            ));
        }
    }
    println!("\nsmoke trace: {} calls", smoke.calls);
    for line in &smoke.lines {
        println!("  {line}");
    }
    let mut logs: Vec<(String, usize)> = Vec::new();
    for line in plugin.env().take_logs() {
        let text = format!("log {}: {}", line.level_name(), line.message);
        match logs.iter_mut().find(|(t, _)| *t == text) {
            Some((_, n)) => *n += 1,
            None => logs.push((text, 1)),
        }
    }
    for (text, n) in logs {
        match n {
            1 => println!("  {text}"),
            n => println!("  {text} (×{n})"),
        }
    }
    if smoke.faults.is_empty() {
        println!("\nok: no faults");
        return Ok(());
    }
    println!("\n{} fault(s):", smoke.faults.len());
    for f in smoke.faults.iter().take(20) {
        println!("  {f}");
    }
    Err(Failure::Reported)
}

fn plugin_simulate(args: &SimulateArgs) -> Result<(), Failure> {
    let trace = match (&args.trace, &args.classes) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            authoring::parse_trace(&path.display().to_string(), &text)
        }
        (None, Some(list)) => authoring::classes_trace(list),
        (None, None) => return Err(usage("give --trace FILE or --classes LIST")),
    }
    .map_err(usage)?;
    if args.backoff_base > args.backoff_max {
        return Err(usage("--backoff-base is larger than --backoff-max"));
    }
    let plugin = load(&args.file, &args.plugin, Some(args.seed))?;
    let backoff = Backoff {
        base: args.backoff_base,
        max: args.backoff_max,
    };
    let builtin = Builtin::new(backoff, args.max_attempts, Some(args.seed));
    let told = Told {
        max_attempts: args.max_attempts,
        max_delay: args.backoff_max,
    };
    let repo = RepoRef::new(
        "simulated",
        "https://git.example.com/simulated.git",
        Some("main"),
        Default::default(),
    );
    let (path, roles, env) = (plugin.path.clone(), plugin.roles, plugin.env().clone());
    let mut policy = WasmPolicy::new(plugin, builtin, repo, told);
    let steps = authoring::simulate(&mut policy, &trace, told);
    if args.json {
        for step in &steps {
            println!("{}", serde_json::to_string(step).map_err(failed)?);
        }
    } else {
        println!("{} ({roles}), seed {}\n", path.display(), args.seed);
        print!("{}", authoring::render_timeline(&steps));
    }
    for line in env.take_logs() {
        eprintln!("plugin log {}: {}", line.level_name(), line.message);
    }
    Ok(())
}

/// A cancelled transfer stops at libgit2's next progress callback, but a
/// socket read stalled on a silent server only returns at the attempt's
/// timeout. Do not make the user wait for that: exit after a short grace
/// period. Safe because every pull recovers from an interrupted one.
fn force_exit_if_cancel_stalls(cancel: Arc<AtomicBool>, args: &PullArgs) {
    const GRACE: Duration = Duration::from_secs(3);
    let json = args.json.then(|| {
        serde_json::json!({
            "url": gitpulse::redact::url(&args.url),
            "dir": args.dir.display().to_string(),
            "outcome": "failed", "old": null, "new": null, "commits": 0,
            "attempts": [], "duration_ms": null, "reason": "cancelled",
        })
    });
    thread::spawn(move || {
        while !cancel.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(GRACE);
        match json {
            Some(obj) => println!("{obj}"),
            None => {
                eprintln!("error: cancelled; the next pull will finish or undo this one cleanly")
            }
        }
        std::process::exit(EXIT_FAILED.into());
    });
}

/// The first SIGINT/SIGTERM cancels the pull cleanly; a second one exits at
/// once (the next pull recovers, as after any crash).
fn cancel_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let cancel = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, cancel.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(signal, cancel.clone())
            .context("installing signal handlers")?;
    }
    Ok(cancel)
}
