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
use gitpulse::cli::{Cli, Command, PullArgs};
use gitpulse::{pull, report};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Pull(args) => run_pull(&args),
    }
}

fn run_pull(args: &PullArgs) -> ExitCode {
    let (options, mut policy) = match args.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
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
    let result = match pull::pull(&options, &mut policy, &mut terminal, cancel) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
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
    if result.outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
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
