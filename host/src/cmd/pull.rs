//! `gitpulse pull`: one job from the command line. The flags make the
//! repository (as a `[[repo]]` would), the job pulls, publishes, runs its
//! steps and records, as the daemon's does; what is left here is where its
//! results go: the terminal (or one JSON object), GitHub Actions' outputs
//! and summary, and the notifications of `--notify-config`.

use crate::*;
use gitpulse::job::{Job, JobRun, StepsRun};

pub(crate) fn run_pull(args: &PullArgs) -> Result<(), Failure> {
    // A bad notification config stops the pull before it starts.
    let notify_config = match &args.notify_config {
        None => None,
        Some(path) => {
            let config = gitpulse::validate::load_environment(path).map_err(usage)?;
            let problems = gitpulse::notify::check_templates(&config);
            if !problems.is_empty() {
                return Err(usage(Problems(problems)));
            }
            Some(config)
        }
    };
    let mut repo = args.repo(pull_matches(args)?.as_ref()).map_err(usage)?;
    repo.policy = policy_roles(args);
    let config = notify_config.clone().unwrap_or_else(Config::without_file);
    // Recorded where notifications wait (`--notify-config`'s state), else
    // kept for this run only. A state that will not open does not stop the
    // pull: it is said, and the pull is kept for this run only.
    let store: Box<dyn Storage> = match &notify_config {
        Some(c) => match store::open(&c.store, &c.daemon.state_dir, &c.fleet) {
            Ok(store) => store,
            Err(e) => {
                eprintln!("error: notifications: {e}; nothing will be sent");
                Box::new(MemoryStore::new())
            }
        },
        None => Box::new(MemoryStore::new()),
    };
    let load = |_: &str| load_pull_plugin(args, notify_config.as_ref());
    let cancel = cancel_on_signals().map_err(|e| failed(format!("{e:#}")))?;
    force_exit_if_cancel_stalls(cancel.clone(), args);
    let job = Job {
        repo: &repo,
        config: &config,
        plugins: &load,
        store: store.as_ref(),
        cancel,
        budget: None,
        quiet: None,
        seed: args.seed,
        digests: false,
        news: Box::new(|| {}),
    };
    let workflow = gitpulse::github::Workflow::from_env(!args.no_step_summary);
    if let Some(w) = &workflow {
        for secret in job.secrets() {
            w.mask(secret.expose());
        }
    }
    let mut terminal = ui::Terminal::new(!args.json && std::io::stderr().is_terminal());
    let run = match &workflow {
        Some(_) => job.run(
            &mut gitpulse::github::ActionsObserver::new(&mut terminal),
            job::Timing::default(),
        ),
        None => job.run(&mut terminal, job::Timing::default()),
    };
    if let Err(e) = &run.recorded {
        eprintln!("warning: recording the pull: {e}");
    }
    if let Some(e) = &run.unstarted {
        // Told as a failed pull (its notifications go out), but a job that
        // could not start is a usage problem on the command line.
        notify(notify_config.as_ref(), store.as_ref(), args);
        return Err(usage(e));
    }
    if let Some(w) = &workflow {
        github_outputs(w, &repo, &run);
    }
    let steps = job.run_steps();
    if let Err(e) = &steps.recorded {
        eprintln!("warning: recording the steps: {e}");
    }
    let ok = print_result(args, &run, &steps)?;
    notify(notify_config.as_ref(), store.as_ref(), args);
    match ok {
        true => Ok(()),
        false => Err(Failure::Reported),
    }
}

/// This subcommand's matches, which know how the `--step` flags
/// interleave (clap's derive keeps each flag's values apart); the command
/// line is parsed again only when it has steps to order.
fn pull_matches(args: &PullArgs) -> Result<Option<clap::ArgMatches>, Failure> {
    use clap::CommandFactory as _;
    if args.step.is_empty() && args.step_shell.is_empty() && args.step_arg.is_empty() {
        return Ok(None);
    }
    let matches = Cli::command()
        .try_get_matches_from(std::env::args_os())
        .map_err(|e| usage(anyhow::anyhow!("{e}")))?;
    Ok(match matches.subcommand() {
        Some(("pull", pull)) => Some(pull.clone()),
        _ => None,
    })
}

/// The step's outputs and summary in GitHub Actions: the new commits and
/// the changed files.
fn github_outputs(workflow: &gitpulse::github::Workflow, repo: &config::RepoConfig, run: &JobRun) {
    let result = &run.report;
    let git_dir = repo.publish.repo_dir(&repo.dir);
    let (commits, files) = match &result.new {
        Some(new) if result.new != result.old => (
            gitpulse::events::read_changes(&git_dir, result.old.as_deref(), new)
                .map(|c| c.commits)
                .unwrap_or_default(),
            gitpulse::events::changed_paths(
                &git_dir,
                result.old.as_deref(),
                new,
                gitpulse::github::MAX_CHANGED_FILES,
            )
            .unwrap_or_default(),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    if let Err(e) = workflow.finish(result, &commits, &files) {
        eprintln!("warning: writing the GitHub step outputs: {e}");
    }
}

/// Prints the pull's result (one JSON object with `--json`, else a
/// summary line), the gates that refused and the steps; whether all went
/// well.
fn print_result(args: &PullArgs, run: &JobRun, steps: &StepsRun) -> Result<bool, Failure> {
    let result = &run.report;
    if args.json {
        let mut json = serde_json::to_value(result)
            .map_err(|e| failed(format!("cannot encode the result: {e}")))?;
        if !steps.ran.is_empty() {
            json["steps"] = serde_json::to_value(&steps.ran).unwrap_or_default();
        }
        println!("{json}");
    } else if result.outcome.is_success() {
        println!("{}", ui::summary(result));
    } else {
        eprintln!("error: {}", ui::summary(result));
    }
    let mut ok = result.outcome.is_success() && run.gates.is_empty();
    for gate in &run.gates {
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
    for step in &steps.ran {
        match step.run.status.as_str() {
            "succeeded" | "skipped" => {
                if !args.json {
                    println!(
                        "step `{}` {} in {} ms",
                        step.name, step.run.status, step.run.duration_ms
                    );
                }
            }
            _ => {
                ok = false;
                let code = step
                    .run
                    .exit_code
                    .map(|c| format!(" (exit {c})"))
                    .unwrap_or_default();
                eprintln!("error: step `{}` {}{code}", step.name, step.run.status);
                print_tail(&step.run.output);
            }
        }
    }
    Ok(ok)
}

/// Delivers what the job recorded for `--notify-config`'s notifiers; their
/// trouble is reported on stderr but does not change the exit code.
fn notify(config: Option<&Config>, store: &dyn Storage, args: &PullArgs) {
    let Some(config) = config else { return };
    match job::deliver_from(store, config, args.notify_wait) {
        Ok(n) if n.pending > 0 || n.dead > 0 => eprintln!(
            "notifications: {} delivered, {} dead, {} still pending in {} (see `gitpulse outbox --config {}`)",
            n.delivered,
            n.dead,
            n.pending,
            store::describe(&config.store, &config.daemon.state_dir),
            config.path.display()
        ),
        Ok(n) if n.delivered > 0 && !args.json => {
            eprintln!("notifications: {} delivered", n.delivered)
        }
        Ok(_) => {}
        Err(e) => eprintln!("error: notifications: {e}"),
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

/// The `--policy` plugin, with its settings and its key-value store: the
/// one every entry point gives this plugin file (see
/// [`job::plugin_kv_file`]), under `--notify-config`'s state directory or
/// the user's.
pub(crate) fn load_pull_plugin(
    args: &PullArgs,
    config: Option<&Config>,
) -> Result<Plugin, plugin::LoadError> {
    let file = args.policy.clone().unwrap_or_default();
    let settings = authoring::parse_settings(&args.plugin.config).unwrap_or_default();
    let state_dir = match config {
        Some(c) => Some(c.daemon.state_dir.clone()),
        None => plugin::default_state_dir(),
    };
    let plugin_dir = config.and_then(|c| c.daemon.plugin_dir.as_deref());
    let kv = state_dir
        .map(|dir| KvStore::persisted(job::plugin_kv_file(&dir, plugin_dir, &file)))
        .and_then(Result::ok)
        .unwrap_or_else(KvStore::in_memory);
    plugin::Registry::new(args.plugin.cache(), args.plugin.sandbox())
        .get(&file, PluginEnv::new(settings, args.seed).with_kv(kv))
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
