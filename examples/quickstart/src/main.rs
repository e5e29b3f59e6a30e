//! The gitpulse quickstart: everything local, nothing to configure.
//!
//! Creates two upstream repositories, serves one over smart HTTP (the real
//! `git http-backend`) behind a proxy that answers 503 once, writes a daemon
//! config, and runs the daemon: both repositories are cloned (one after a
//! retry), commits pushed upstream are picked up on the next scheduled
//! pull, the state lands in SQLite, and each change reaches a local webhook
//! receiver as a signed message from the outbox. Pass a directory to keep
//! the files.

// Test code: a panic is how it fails, and its helpers need no API docs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use gitpulse::store::{History as _, State as _};
use gitpulse_testkit::{free_port, Fault, FaultProxy, GitHttpServer, Upstream, WebhookReceiver};

fn main() -> anyhow::Result<()> {
    let keep = std::env::args().nth(1).map(PathBuf::from);
    let temp = tempfile::tempdir().context("creating a scratch directory")?;
    let root = match &keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::path::absolute(dir)?
        }
        None => temp.path().to_path_buf(),
    };

    let mut app = Upstream::new(&root, "app");
    let mut docs = Upstream::new(&root, "docs");
    let server = GitHttpServer::start(&root);
    let proxy = FaultProxy::start(server.addr());
    proxy.push(Fault::Status(503));
    let receiver = WebhookReceiver::start("quickstart-secret");
    std::fs::write(root.join("webhook.secret"), "quickstart-secret")?;
    let port = free_port();
    let config = root.join("gitpulse.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
state_dir = "state"
listen = "127.0.0.1:{port}"

[defaults]
schedule = "every 2s jitter 0s"
backoff_base = "500ms"

[[repo]]
name = "app"
url = "{app_url}"
dir = "checkouts/app"
labels = {{ team = "platform" }}

[[repo]]
name = "docs"
url = "{docs_url}"
dir = "checkouts/docs"

[notifier.hook]
kind = "webhook"
url = "{hook_url}"
secret_file = "webhook.secret"
events = ["changed", "failed", "recovered"]
"#,
            app_url = proxy.url("app"),
            docs_url = docs.file_url(),
            hook_url = receiver.url("/gitpulse"),
        ),
    )?;

    println!("gitpulse quickstart — a daemon pulling two local repositories\n");
    println!("  config     {}", config.display());
    println!(
        "  app        {} (smart HTTP; the proxy answers 503 once)",
        proxy.url("app")
    );
    println!("  docs       {}", docs.file_url());
    println!("  checkouts  {}", root.join("checkouts").display());
    println!(
        "  webhook    {} (checks each message's signature)\n",
        receiver.url("/gitpulse")
    );
    println!("── the daemon's log (each repository is pulled every 2 s; unchanged pulls log at debug):\n");

    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let options = gitpulse::daemon::DaemonOptions {
        config_path: config.clone(),
        grace: Duration::from_secs(5),
    };
    thread::spawn(move || {
        if let Err(e) = gitpulse::daemon::run(options) {
            eprintln!("daemon: {e}");
            std::process::exit(1);
        }
    });

    thread::sleep(Duration::from_secs(5));
    println!("\n── pushing two commits to app and one to docs\n");
    app.commit("fix a bug");
    app.commit("add a feature");
    docs.commit("document the feature");
    thread::sleep(Duration::from_secs(5));

    let db = root.join("state").join("state.db");
    let store = gitpulse::store::SqliteStore::open(&db)?;
    println!("\n── state in {}:\n", db.display());
    for s in store.status()? {
        println!(
            "  {:<6} last result {:<10} last commit {}  failures in a row {}",
            s.repo,
            s.last_result.unwrap_or_default(),
            s.last_commit.as_deref().map(|c| &c[..10]).unwrap_or("-"),
            s.failures_in_row
        );
    }
    let history = store.history("app", 10)?;
    println!(
        "\n  app's history: {}",
        history
            .iter()
            .map(|h| h.kind.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\n── the webhook received (from the outbox in state.db):\n");
    for d in receiver.deliveries() {
        let event: serde_json::Value = serde_json::from_str(&d.body).unwrap_or_default();
        println!(
            "  {:<8} {:<5} {} new commit(s){}  signature {}",
            event["kind"].as_str().unwrap_or("?"),
            event["repo"]["name"].as_str().unwrap_or("?"),
            event["commit_count"],
            event["commits"][0]["subject"]
                .as_str()
                .map(|s| format!(", newest: \"{s}\""))
                .unwrap_or_default(),
            if d.signature_ok { "ok" } else { "BAD" }
        );
    }
    println!(
        "\nNext: `gitpulse daemon --config {}` runs it for real;",
        config.display()
    );
    println!("`gitpulse status|history|trigger|outbox --config …` talk to it; `gitpulse pull --help` for one-off pulls.");
    match keep {
        Some(_) => println!("Files kept in {}", root.display()),
        None => println!("(These files are removed now; `cargo run -p gitpulse-quickstart -- DIR` keeps them in DIR.)"),
    }
    // The daemon thread is dropped mid-schedule: exactly the crash gitpulse is built to survive.
    std::process::exit(0);
}
