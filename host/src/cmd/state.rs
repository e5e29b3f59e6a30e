//! The commands that read or change the state: `status` (and `--live`), `history`, `trigger`, `outbox`, `notify test`.

use crate::*;

/// The config (its structure only: no secrets needed) and the store it
/// names.
pub(crate) fn open_state(config_path: &Path) -> Result<(Config, Box<dyn Storage>), Failure> {
    let config = config::load(config_path).map_err(usage)?;
    if config.store == store::Backend::Sqlite {
        let db = SqliteStore::path_in(&config.daemon.state_dir);
        if !db.exists() {
            return Err(usage(format!(
                "{} does not exist yet: has the daemon run with this config?",
                db.display()
            )));
        }
    }
    let store = store::open(&config.store, &config.daemon.state_dir, &config.fleet)?;
    Ok((config, store))
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
    print!("{}", ui::status_table(&configured));
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
    let config = config::load(&args.config).map_err(usage)?;
    let body = gitpulse::daemon::Client::of(&config.daemon)
        .and_then(|client| client.status())
        .map_err(failed)?;
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
    print!("{}", ui::status_table(&configured));
    Ok(())
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
    print!("{}", ui::history_table(&entries, args.output_lines));
    Ok(())
}

pub(crate) fn trigger(args: &TriggerArgs) -> Result<(), Failure> {
    use gitpulse::daemon::{Client, ClientError};
    let config = config::load(&args.config).map_err(usage)?;
    match Client::of(&config.daemon).and_then(|c| c.trigger(args.repo.as_deref())) {
        Ok(()) => {
            match &args.repo {
                Some(repo) => println!("pull of `{repo}` requested"),
                None => println!("pull of every repository requested"),
            }
            Ok(())
        }
        Err(e @ ClientError::NotFound(_)) => Err(usage(e)),
        Err(e) => Err(failed(e)),
    }
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
    print!("{}", ui::outbox_table(&rows));
    Ok(())
}

pub(crate) fn notify_test(name: &str, config_path: &Path) -> Result<(), Failure> {
    // Only this notifier's secret matters, and sending reads it.
    let config = config::load(config_path).map_err(|problems| Failure::Problems(problems, ""))?;
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
