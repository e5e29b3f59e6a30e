//! The `gitpulse` binary: parse, dispatch, print, exit. The work is in the
//! library.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gitpulse::cli::{
    CheckArgs, Cli, Command, DaemonArgs, HistoryArgs, NewArgs, NotifyCommand, OutboxAction,
    OutboxArgs, PluginCommand, PluginOptions, PullArgs, RoleArg, SimulateArgs, StateArgs,
    TriggerArgs, ValidateArgs,
};
use gitpulse::config::Scope;
use gitpulse::policy::wasm::{self, KvStore, Plugin, PluginEnv, RepoInfo, Told, WasmPolicy};
use gitpulse::policy::{tools, Backoff, Builtin, RetryPolicy};
use gitpulse::{pull, report};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    }
}

fn daemon(args: &DaemonArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GITPULSE_LOG")
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let options = gitpulse::daemon::DaemonOptions {
        config_path: args.config.clone(),
        grace: args.grace,
    };
    match gitpulse::daemon::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(gitpulse::daemon::DaemonError::Config(problems)) => {
            eprintln!("{problems}");
            eprintln!(
                "{} problem{} found; not starting",
                problems.0.len(),
                if problems.0.len() == 1 { "" } else { "s" }
            );
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// The config (for its state dir) and the store it names.
fn open_state(
    config_path: &std::path::Path,
) -> Result<(gitpulse::config::Config, gitpulse::store::Store), ExitCode> {
    let config = gitpulse::config::load(config_path, Scope::Structure).map_err(usage)?;
    let db = gitpulse::daemon::state_db(&config);
    if !db.exists() {
        return Err(usage(format!(
            "{} does not exist yet: has the daemon run with this config?",
            db.display()
        )));
    }
    let store = gitpulse::store::Store::open(&db).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_FAILED)
    })?;
    Ok((config, store))
}

fn when(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let now = gitpulse::store::now_ms();
    let (d, ago) = if ms <= now {
        (now - ms, true)
    } else {
        (ms - now, false)
    };
    let text = humantime::format_duration(Duration::from_secs(d / 1000)).to_string();
    let text = text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let text = if text.is_empty() { "0s".into() } else { text };
    if ago {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

fn status(args: &StateArgs) -> ExitCode {
    let (config, store) = match open_state(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rows = match store.status() {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    let configured: Vec<_> = config
        .repos
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                rows.iter().find(|s| s.repo == r.name).cloned(),
            )
        })
        .collect();
    if args.json {
        let list: Vec<_> = configured
            .iter()
            .map(|(name, row)| serde_json::json!({ "repo": name, "state": row }))
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<20} {:<16} {:<22} {:<14} {:>9}",
        "REPO", "LAST SUCCESS", "LAST RESULT", "NEXT RUN", "FAILURES"
    );
    for (name, row) in configured {
        let (success, result, next, failures) = match &row {
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
        println!("{name:<20} {success:<16} {result:<22} {next:<14} {failures:>9}");
    }
    if let Ok(c) = store.outbox_counts() {
        if c.pending > 0 || c.dead > 0 {
            println!(
                "\nnotifications: {} pending, {} dead (`gitpulse outbox --config {}`)",
                c.pending,
                c.dead,
                args.config.display()
            );
        }
    }
    ExitCode::SUCCESS
}

fn history(args: &HistoryArgs) -> ExitCode {
    let (config, store) = match open_state(&args.state.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if config.repo(&args.repo).is_none() {
        return usage(format!(
            "no repository named `{}` in {}",
            args.repo,
            args.state.config.display()
        ));
    }
    let entries = match store.history(&args.repo, args.limit) {
        Ok(e) => e,
        Err(e) => return usage(e),
    };
    if args.state.json {
        println!("{}", serde_json::to_string(&entries).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<14} {:<11} {:<14} {:>8} {:>10}  DETAIL",
        "WHEN", "WHAT", "CLASS", "DELAY", "DURATION"
    );
    for e in entries {
        println!(
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
            e.detail
        );
    }
    ExitCode::SUCCESS
}

fn trigger(args: &TriggerArgs) -> ExitCode {
    let config = match gitpulse::config::load(&args.config, Scope::Structure) {
        Ok(c) => c,
        Err(p) => return usage(p),
    };
    let url = match &args.repo {
        Some(repo) => format!("http://{}/trigger/{repo}", config.daemon.listen),
        None => format!("http://{}/trigger", config.daemon.listen),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    match agent.post(&url).send_empty() {
        Ok(mut response) => {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            match response.status().as_u16() {
                202 => {
                    print!("{body}");
                    ExitCode::SUCCESS
                }
                404 => usage(body.trim()),
                s => {
                    eprintln!("error: the daemon answered {s}: {}", body.trim());
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Err(e) => {
            eprintln!(
                "error: cannot reach the daemon at {}: {e}",
                config.daemon.listen
            );
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn validate(args: &ValidateArgs) -> ExitCode {
    let problems = match gitpulse::config::load(&args.config, Scope::Environment) {
        Ok(config) => {
            let problems = gitpulse::validate::check(&config);
            if problems.is_empty() {
                println!(
                    "{}: ok — {} repo{}, {} plugin setting{}, {} notifier{}",
                    args.config.display(),
                    config.repos.len(),
                    if config.repos.len() == 1 { "" } else { "s" },
                    config.plugins.len(),
                    if config.plugins.len() == 1 { "" } else { "s" },
                    config.notifiers.len(),
                    if config.notifiers.len() == 1 { "" } else { "s" },
                );
                return ExitCode::SUCCESS;
            }
            problems
        }
        Err(problems) => problems.0,
    };
    for p in &problems {
        eprintln!("{p}");
    }
    eprintln!(
        "{} problem{} found",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    ExitCode::from(EXIT_USAGE)
}

fn outbox(args: &OutboxArgs) -> ExitCode {
    let Some(config) = &args.config else {
        return usage("--config FILE (or GITPULSE_CONFIG) names the daemon's config");
    };
    if let Some(OutboxAction::Retry { id }) = &args.action {
        let (_, mut store) = match open_state(config) {
            Ok(s) => s,
            Err(code) => return code,
        };
        return match store.requeue(*id) {
            Ok(true) => {
                println!("message {id} requeued; the daemon sends it on its next pass");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                eprintln!("error: no pending or dead message {id} (see `gitpulse outbox --all`)");
                ExitCode::from(EXIT_FAILED)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILED)
            }
        };
    }
    let (_, store) = match open_state(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    use gitpulse::store::OutboxState;
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
    let rows = match store.outbox(states, args.limit) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
        );
        return ExitCode::SUCCESS;
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
        return ExitCode::SUCCESS;
    }
    println!(
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
        println!(
            "{:>6}  {:<9} {:<14} {:<16} {:<16} {:>8}  {:<14} {}",
            r.id, r.state, r.notifier, r.kind, r.repo, r.attempts, at, detail
        );
    }
    ExitCode::SUCCESS
}

fn notify_test(name: &str, config_path: &std::path::Path) -> ExitCode {
    // Only this notifier's secret matters, and sending reads it.
    let config = match gitpulse::config::load(config_path, Scope::Structure) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let Some(notifier) = config.notifiers.get(name) else {
        let known: Vec<&str> = config.notifiers.keys().map(String::as_str).collect();
        return usage(format!(
            "{}: no [notifier.{name}] (defined: {})",
            config_path.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        ));
    };
    let message = gitpulse::notify::test_message(notifier);
    let letter = gitpulse::notify::Letter {
        delivery_id: 0,
        kind: "test",
        subject: &message.subject,
        body: &message.body,
        html: message.html.as_deref(),
    };
    match gitpulse::notify::Senders::default().send(notifier, &letter) {
        Ok(answer) => {
            println!("{name} ({}): {answer}", notifier.channel.kind());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: {name} ({}): {} ({})",
                notifier.channel.kind(),
                e.message,
                e.class.as_str()
            );
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_USAGE)
}

fn run_pull(args: &PullArgs) -> ExitCode {
    let (options, builtin) = match args.options() {
        Ok(o) => o,
        Err(e) => return usage(e),
    };
    // A bad notification config stops the pull before it starts.
    let notify_config = match &args.notify_config {
        None => None,
        Some(path) => match gitpulse::config::load(path, Scope::Environment) {
            Ok(config) => {
                let problems = gitpulse::notify::check_templates(&config);
                if !problems.is_empty() {
                    return usage(gitpulse::config::Problems(problems));
                }
                Some(config)
            }
            Err(problems) => return usage(problems),
        },
    };
    let mut policy: Box<dyn RetryPolicy> = match &args.policy {
        None => Box::new(builtin),
        Some(file) => {
            let settings = match tools::parse_settings(&args.plugin.config) {
                Ok(s) => s,
                Err(e) => return usage(e),
            };
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let kv = match plugin_kv(&name) {
                Ok(kv) => kv,
                Err(e) => return usage(format!("plugin state: {e}")),
            };
            let env = PluginEnv::new(settings, args.seed).with_kv(kv);
            let plugin = match Plugin::load(
                file,
                args.plugin.cache().as_deref(),
                args.plugin.sandbox(),
                env,
            ) {
                Ok(p) => p,
                Err(e) => return usage(e),
            };
            let repo = RepoInfo {
                name: options
                    .sync
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                url: gitpulse::redact::url(&args.url),
                remote_host: gitpulse::git::remote_host(&args.url),
                branch: args.branch.clone().unwrap_or_default(),
                labels: vec![],
            };
            let told = Told {
                max_attempts: args.max_attempts,
                max_delay: args.backoff_max,
            };
            Box::new(WasmPolicy::new(plugin, builtin, repo, told))
        }
    };
    let cancel = match cancel_on_signals() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    force_exit_if_cancel_stalls(cancel.clone(), args);
    let mut terminal = report::Terminal::new(!args.json && std::io::stderr().is_terminal());
    let result = match pull::pull(&options, policy.as_mut(), &mut terminal, cancel) {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    if args.json {
        match serde_json::to_string(&result) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: cannot encode the result: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    } else if result.outcome.is_success() {
        println!("{}", report::summary(&result));
    } else {
        eprintln!("error: {}", report::summary(&result));
    }
    if let Some(config) = &notify_config {
        notify_after_pull(config, args, &options, &result);
    }
    if result.outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// The persisted key-value store of the plugin `name` for `gitpulse pull`.
fn plugin_kv(name: &str) -> Result<KvStore, String> {
    match wasm::default_state_dir() {
        Some(dir) => KvStore::persisted(dir.join("plugins").join(format!("{name}.json")))
            .map_err(|e| e.to_string()),
        None => Ok(KvStore::in_memory()),
    }
}

/// Sends the pull's notifications; their trouble is reported on stderr
/// but does not change the pull's exit code.
fn notify_after_pull(
    config: &gitpulse::config::Config,
    args: &PullArgs,
    options: &pull::PullOptions,
    result: &gitpulse::outcome::PullReport,
) {
    let name = options
        .sync
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let repo = gitpulse::events::RepoRef::new(
        &name,
        &args.url,
        args.branch.as_deref(),
        Default::default(),
    );
    let plugin_name = args
        .policy
        .as_ref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned());
    let audience = gitpulse::notify::Audience {
        notifiers: &[],
        plugin: plugin_name.as_deref(),
    };
    let load = |_: &str| -> Result<Plugin, wasm::LoadError> {
        let file = args.policy.clone().unwrap_or_default();
        let settings = tools::parse_settings(&args.plugin.config).unwrap_or_default();
        let name = plugin_name.clone().unwrap_or_default();
        let kv = plugin_kv(&name).unwrap_or_else(|_| KvStore::in_memory());
        Plugin::load(
            &file,
            args.plugin.cache().as_deref(),
            args.plugin.sandbox(),
            PluginEnv::new(settings, args.seed).with_kv(kv),
        )
    };
    let store = gitpulse::daemon::state_db(config);
    match gitpulse::notify::after_pull(
        config,
        &repo,
        &options.sync.dir,
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

fn plugin_new(args: &NewArgs) -> ExitCode {
    let role = match args.role {
        RoleArg::Retry => tools::Role::Retry,
        RoleArg::Backoff => tools::Role::Backoff,
        RoleArg::Notify => tools::Role::Notify,
        RoleArg::Full => tools::Role::Full,
    };
    match tools::scaffold(&args.name, &args.dir, role) {
        Ok(path) => {
            println!("created {}", path.display());
            println!("next:");
            println!("  cd {}", path.display());
            println!("  cargo test                                        # unit tests, natively");
            println!("  cargo build --release --target wasm32-wasip2      # the component");
            println!(
                "  gitpulse plugin check target/wasm32-wasip2/release/{}.wasm",
                args.name.replace('-', "_")
            );
            ExitCode::SUCCESS
        }
        Err(e) => usage(e),
    }
}

fn load(
    file: &std::path::Path,
    opts: &PluginOptions,
    seed: Option<u64>,
) -> Result<Plugin, ExitCode> {
    let settings = tools::parse_settings(&opts.config).map_err(usage)?;
    Plugin::load(
        file,
        opts.cache().as_deref(),
        opts.sandbox(),
        PluginEnv::new(settings, seed),
    )
    .map_err(usage)
}

fn plugin_check(args: &CheckArgs) -> ExitCode {
    let started = std::time::Instant::now();
    let mut plugin = match load(&args.file, &args.plugin, Some(1)) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let load_time = started.elapsed();
    println!("plugin     {}", plugin.path.display());
    println!("roles      {}", plugin.roles);
    println!(
        "contract   gitpulse:policy@{} (this host accepts {})",
        plugin.contract,
        wasm::ACCEPTED
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
    let smoke = tools::smoke(&mut plugin, told);
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
        ExitCode::SUCCESS
    } else {
        println!("\n{} fault(s):", smoke.faults.len());
        for f in smoke.faults.iter().take(20) {
            println!("  {f}");
        }
        ExitCode::from(EXIT_FAILED)
    }
}

fn plugin_simulate(args: &SimulateArgs) -> ExitCode {
    let trace = match (&args.trace, &args.classes) {
        (Some(path), _) => match std::fs::read_to_string(path) {
            Ok(text) => tools::parse_trace(&path.display().to_string(), &text),
            Err(e) => return usage(format!("{}: {e}", path.display())),
        },
        (None, Some(list)) => tools::classes_trace(list),
        (None, None) => return usage("give --trace FILE or --classes LIST"),
    };
    let trace = match trace {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    if args.backoff_base > args.backoff_max {
        return usage("--backoff-base is larger than --backoff-max");
    }
    let plugin = match load(&args.file, &args.plugin, Some(args.seed)) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let backoff = Backoff {
        base: args.backoff_base,
        max: args.backoff_max,
    };
    let builtin = Builtin::new(backoff, args.max_attempts, Some(args.seed));
    let told = Told {
        max_attempts: args.max_attempts,
        max_delay: args.backoff_max,
    };
    let repo = RepoInfo {
        name: "simulated".into(),
        url: "https://git.example.com/simulated.git".into(),
        remote_host: "git.example.com".into(),
        branch: "main".into(),
        labels: vec![],
    };
    let (path, roles, env) = (plugin.path.clone(), plugin.roles, plugin.env().clone());
    let mut policy = WasmPolicy::new(plugin, builtin, repo, told);
    let steps = tools::simulate(&mut policy, &trace, told);
    if args.json {
        for step in &steps {
            match serde_json::to_string(step) {
                Ok(line) => println!("{line}"),
                Err(e) => return usage(e),
            }
        }
    } else {
        println!("{} ({roles}), seed {}\n", path.display(), args.seed);
        print!("{}", tools::render_timeline(&steps));
    }
    for line in env.take_logs() {
        eprintln!("plugin log {}: {}", line.level_name(), line.message);
    }
    ExitCode::SUCCESS
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
