//! What wakes the scheduler from outside: signals (SIGHUP reloads,
//! SIGUSR1 pulls everything, SIGTERM/SIGINT stop) and changes to the config
//! file or the plugin directory (a reload, validated before it takes
//! effect).

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{Command, CommandHandle};
use crate::config::Config;

pub(super) fn spawn_signal_handlers(tx: mpsc::UnboundedSender<CommandHandle>) {
    use tokio::signal::unix::{signal, SignalKind};
    let pairs = [
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
    ];
    for (kind, name) in pairs {
        let tx = tx.clone();
        match signal(kind) {
            Ok(mut stream) => {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        let command = match name {
                            "SIGHUP" => Command::Reload,
                            "SIGUSR1" => Command::TriggerAll,
                            _ => Command::Shutdown,
                        };
                        info!(signal = name, "received");
                        if tx.send(CommandHandle(command)).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => error!(signal = name, "cannot install handler: {e}"),
        }
    }
}

/// Watches the config file and the plugin directory; any change asks for a
/// reload (validated before it takes effect).
pub(super) fn watch_files(
    config: &Config,
    tx: mpsc::UnboundedSender<CommandHandle>,
) -> Option<::notify::RecommendedWatcher> {
    use ::notify::{RecursiveMode, Watcher};
    let config_file = std::path::absolute(&config.path).unwrap_or_else(|_| config.path.clone());
    let plugin_dir = config
        .daemon
        .plugin_dir
        .as_ref()
        .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()));
    let watched_file = config_file.clone();
    let watched_dir = plugin_dir.clone();
    let mut watcher =
        ::notify::recommended_watcher(move |event: ::notify::Result<::notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, ::notify::EventKind::Access(_)) {
                return;
            }
            let relevant = event.paths.iter().any(|p| {
                p == &watched_file
                    || watched_dir.as_ref().is_some_and(|d| {
                        p.starts_with(d) && p.extension().is_some_and(|e| e == "wasm")
                    })
            });
            if relevant {
                let _ = tx.send(CommandHandle(Command::Reload));
            }
        })
        .map_err(|e| warn!("file watching unavailable ({e}); reload with SIGHUP"))
        .ok()?;
    // Watch the directory: editors replace files rather than write them.
    if let Some(dir) = config_file.parent() {
        let _ = watcher.watch(dir, RecursiveMode::NonRecursive);
    }
    if let Some(dir) = &plugin_dir {
        let _ = watcher.watch(dir, RecursiveMode::NonRecursive);
    }
    Some(watcher)
}
