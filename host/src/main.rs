//! The `gitpulse` binary: parse, dispatch, print, exit. The work is in the
//! library; [`exit`] is the one place a failure becomes an exit code.

// What the subcommands (`cmd/`) work with: they `use crate::*`.
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
    StateArgs, StatusArgs, TriggerArgs, ValidateArgs,
};
use gitpulse::config::{self, Config, PolicyRef, Problems};
use gitpulse::daemon::DaemonError;
use gitpulse::events::RepoRef;
use gitpulse::plugin::{self, KvStore, Plugin, PluginEnv, Told};
use gitpulse::policy::{Backoff, Builtin, WasmPolicy};
use gitpulse::store::{self, MemoryStore, OutboxState, SqliteStore, Storage, StoreError};
use gitpulse::{githook, job, ui};

mod cmd;

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
    use cmd::{daemon, hook, plugin as plugins, pull, state};
    match cli.command {
        Command::Pull(args) => pull::run_pull(&args),
        Command::Plugin(PluginCommand::New(args)) => plugins::plugin_new(&args),
        Command::Plugin(PluginCommand::Check(args)) => plugins::plugin_check(&args),
        Command::Plugin(PluginCommand::Simulate(args)) => plugins::plugin_simulate(&args),
        Command::Validate(args) => daemon::validate(&args),
        Command::Daemon(args) => daemon::daemon(&args),
        Command::Status(args) => state::status(&args),
        Command::History(args) => state::history(&args),
        Command::Trigger(args) => state::trigger(&args),
        Command::Outbox(args) => state::outbox(&args),
        Command::Notify(NotifyCommand::Test { name, config }) => state::notify_test(&name, &config),
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
        Command::Hook(command) => hook::hook(command),
    }
}
