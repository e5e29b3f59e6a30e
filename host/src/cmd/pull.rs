//! `gitpulse pull`: one pull job from the command line, with its steps, gates, notifications and GitHub Actions outputs.

use crate::*;

pub(crate) fn run_pull(args: &PullArgs) -> Result<(), Failure> {
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
pub(crate) fn print_tail(output: &str) {
    let lines: Vec<&str> = output.lines().collect();
    for line in &lines[lines.len().saturating_sub(20)..] {
        eprintln!("  | {line}");
    }
}

/// The `--step` family, in command-line order (clap's derive keeps each
/// flag's values apart; the matches know how they interleave).
pub(crate) fn pull_steps(args: &PullArgs) -> Result<Vec<gitpulse::step::Step>, Failure> {
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
pub(crate) fn repo_name(options: &pull::PullOptions) -> String {
    options
        .sync
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `--policy FILE` plays every role it exports, under its file stem.
pub(crate) fn policy_roles(args: &PullArgs) -> PolicyRef {
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
pub(crate) fn load_pull_plugin(args: &PullArgs) -> Result<Plugin, plugin::LoadError> {
    let file = args.policy.clone().unwrap_or_default();
    let settings = authoring::parse_settings(&args.plugin.config).unwrap_or_default();
    let kv = plugin_kv(&kv_name(&file)).unwrap_or_else(|_| KvStore::in_memory());
    plugin::Registry::new(args.plugin.cache(), args.plugin.sandbox())
        .get(&file, PluginEnv::new(settings, args.seed).with_kv(kv))
}

/// Whose key-value store a `--policy` file gets: its stem and where it
/// lives, so two plugins that share a file name never share state (and an
/// upgraded plugin at the same place keeps its own).
pub(crate) fn kv_name(file: &Path) -> String {
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
pub(crate) fn plugin_kv(name: &str) -> Result<KvStore, String> {
    match plugin::default_state_dir() {
        Some(dir) => KvStore::persisted(dir.join("plugins").join(format!("{name}.json")))
            .map_err(|e| e.to_string()),
        None => Ok(KvStore::in_memory()),
    }
}

/// Sends the pull's notifications; their trouble is reported on stderr
/// but does not change the pull's exit code.
pub(crate) fn notify_after_pull(
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

/// A cancelled transfer stops at libgit2's next progress callback, but a
/// socket read stalled on a silent server only returns at the attempt's
/// timeout. Do not make the user wait for that: exit after a short grace
/// period. Safe because every pull recovers from an interrupted one.
pub(crate) fn force_exit_if_cancel_stalls(cancel: Arc<AtomicBool>, args: &PullArgs) {
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
pub(crate) fn cancel_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
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
