//! The commands that read or change the state: `status` (and `--live`), `history`, `trigger`, `outbox`, `notify test`.

use crate::*;

/// The config (its structure only: no secrets needed) and the store it
/// names.
pub(crate) fn open_state(config_path: &Path) -> Result<(Config, SqliteStore), Failure> {
    let config = config::load(config_path, Scope::Structure).map_err(usage)?;
    let db = gitpulse::daemon::state_db(&config);
    if !db.exists() {
        return Err(usage(format!(
            "{} does not exist yet: has the daemon run with this config?",
            db.display()
        )));
    }
    Ok((config, SqliteStore::open(&db)?))
}

pub(crate) fn status(args: &StatusArgs) -> Result<(), Failure> {
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
pub(crate) fn status_live(args: &StateArgs) -> Result<(), Failure> {
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
pub(crate) fn print_status(repos: &[(String, Option<store::RepoStatus>, bool)]) {
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

pub(crate) fn history(args: &HistoryArgs) -> Result<(), Failure> {
    let (config, store) = open_state(&args.state.config)?;
    let entries = store.history(&args.repo, args.limit)?;
    // A repository the config does not name may still have a history:
    // `gitpulse pull --notify-config` records its pulls there too.
    if config.repo(&args.repo).is_none() && entries.is_empty() {
        return Err(usage(format!(
            "no repository named `{}` in {} or its state",
            args.repo,
            args.state.config.display()
        )));
    }
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

pub(crate) fn trigger(args: &TriggerArgs) -> Result<(), Failure> {
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
pub(crate) fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// The daemon's API token, as a client of it: the variable or file the
/// config names, else the one the daemon wrote to its state directory.
pub(crate) fn api_token(
    daemon: &config::DaemonSettings,
) -> Result<gitpulse::redact::Secret, Failure> {
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

pub(crate) fn outbox(args: &OutboxArgs) -> Result<(), Failure> {
    let Some(config) = &args.config else {
        return Err(usage(
            "--config FILE (or GITPULSE_CONFIG) names the daemon's config",
        ));
    };
    let (_, store) = open_state(config)?;
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

pub(crate) fn notify_test(name: &str, config_path: &Path) -> Result<(), Failure> {
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
