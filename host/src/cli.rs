//! Command-line definitions (clap) and their translation into library
//! options. No work happens here: `main` dispatches, the library pulls.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Problems, RepoConfig, RepoFlags, StepFlags};
use crate::step::Program;

macro_rules! exit_codes {
    () => {
        "\
Exit codes:
  0  success: cloned, updated or unchanged
  1  the pull failed (gave up after retries, or the failure is not retryable)
  2  usage or configuration error (bad flag, missing token variable, DIR is not a repository)
Ctrl-C or SIGTERM cancels cleanly (exit 1, class `cancelled`); a second one exits at once (130).
Either way the next pull finds the checkout consistent."
    };
}
const EXIT_CODES: &str = exit_codes!();

#[derive(Debug, Parser)]
#[command(
    name = "gitpulse",
    version,
    about = "Keep git checkouts up to date: robust pulls with classified failures and retries.",
    after_help = "Exit codes: 0 success; 1 the work failed (a pull gave up, a plugin faulted, the daemon\n\
                  is unreachable); 2 usage or configuration error. `gitpulse <COMMAND> --help` says more.",
    args_override_self = true
)]
/// The whole command line.
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

#[derive(Debug, Subcommand)]
/// The subcommands.
pub enum Command {
    /// Clone URL into DIR, or bring an existing checkout up to date.
    ///
    /// Every failed attempt is classified (dns, connect, timeout, tls,
    /// server-error, rate-limited, auth, not-found, ref-not-found, protocol,
    /// corrupt-repo, lock-held, disk-full, diverged, cancelled, other).
    /// Transient failures are retried with capped exponential backoff and
    /// full jitter; auth, not-found, ref-not-found and diverged never are.
    /// A pull killed at any moment is finished cleanly by the next one.
    #[command(after_help = EXIT_CODES, after_long_help = PULL_EXAMPLES)]
    Pull(Box<PullArgs>),
    /// Write, check and try policy plugins (WebAssembly components).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Check a daemon config file and report every problem at once, with file:line and field.
    ///
    /// Checks the TOML, schedules, URLs, modes and durations, that named
    /// environment variables and files exist, notifier settings (server
    /// URLs, addresses, secrets, filters) and that their template files
    /// compile, that referenced notifiers are defined, and that referenced
    /// plugins load and play the role they are named for. Exit codes: 0
    /// valid; 2 problems found.
    Validate(ValidateArgs),
    /// Run the daemon: pull every configured repository on its schedule.
    ///
    /// Refuses to start on an invalid config (exit 2, every problem listed).
    /// Reloads when the config file or the plugin directory changes, or on
    /// SIGHUP, keeping the running config if the new one is invalid. SIGUSR1
    /// pulls every repository now. SIGTERM/SIGINT stop scheduling, let
    /// running pulls finish within --grace, then cancel them; exit 0.
    Daemon(DaemonArgs),
    /// Show each repository's last success, last result, next run and failures in a row.
    Status(StatusArgs),
    /// List a repository's recent pulls and failed attempts, newest first.
    History(HistoryArgs),
    /// Ask the running daemon to pull a repository (or all, with --all) now.
    Trigger(TriggerArgs),
    /// List notifications waiting in the outbox and dead letters; `outbox retry ID` requeues one.
    ///
    /// Every notification is kept in the state database until it is
    /// delivered, or dead-lettered with its reason after its notifier's
    /// max_attempts. The daemon delivers them; `outbox retry ID` puts a dead
    /// letter back in the queue for the daemon's next pass (exit 1 if there
    /// is no such message or it was delivered).
    Outbox(OutboxArgs),
    /// Send a test message through a configured notifier and print the receiver's answer.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Print a shell completion script.
    ///
    /// bash: `gitpulse completions bash > /etc/bash_completion.d/gitpulse`;
    /// zsh: `gitpulse completions zsh > "${fpath[1]}/_gitpulse"`;
    /// fish: `gitpulse completions fish > ~/.config/fish/completions/gitpulse.fish`.
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `gitpulse man | man -l -`, or install it
    /// as gitpulse.1.
    Man,
    /// Git hooks in your own repository: tell gitpulse's notifiers when a
    /// `git pull`, `checkout` or `commit --amend` moves your checkout.
    ///
    /// `install` writes small shims (a hook already there is kept and run
    /// first); `run` is what they call. With no config (`--config`,
    /// GITPULSE_CONFIG, `.git/gitpulse.toml`, the worktree's `.gitpulse.toml`
    /// once you `trust` it, or ~/.config/gitpulse/config.toml), `run` does
    /// nothing. GITPULSE_HOOKS=0 turns the shims off.
    #[command(subcommand)]
    Hook(HookCommand),
}

/// `gitpulse hook …`
#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Install the shims into the repository's hooks directory
    Install {
        /// The repository (default: the current directory's)
        #[arg(long, value_name = "DIR", default_value = ".")]
        repo: PathBuf,
        /// The hooks to install
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "post-merge,post-checkout,post-rewrite"
        )]
        hooks: Vec<String>,
        /// Also install reference-transaction (sees every update of the
        /// checked-out branch, e.g. `git reset`)
        #[arg(long)]
        reference_transaction: bool,
        /// Install into the directory core.hooksPath names (beside another
        /// tool's hooks) instead of refusing
        #[arg(long)]
        into_hooks_path: bool,
        /// Replace existing hooks instead of chaining them (they are kept
        /// aside and restored by `uninstall`)
        #[arg(long)]
        force: bool,
    },
    /// Remove gitpulse's shims and put back what was there before, byte for byte
    Uninstall {
        /// The repository (default: the current directory's)
        #[arg(long, value_name = "DIR", default_value = ".")]
        repo: PathBuf,
    },
    /// Show each hook: ours, chained, foreign, shadowed by core.hooksPath, not executable
    Status {
        /// The repository (default: the current directory's)
        #[arg(long, value_name = "DIR", default_value = ".")]
        repo: PathBuf,
    },
    /// Use the repository's own .gitpulse.toml, as it is now
    ///
    /// A .gitpulse.toml comes with the clone, so the hooks ignore it until you
    /// have read it and trust it. Its SHA-256 is recorded outside the worktree
    /// (in ~/.config/gitpulse/trusted); when the file changes, the hooks stop
    /// using it until you trust it again. Even trusted, it may only use files
    /// inside the worktree, and no environment variable, unless the [hook]
    /// table of your own config (~/.config/gitpulse/config.toml) allows them:
    ///
    ///   [hook]
    ///   allow_env = ["SMTP_PASSWORD"]
    ///   allow_paths = ["/home/me/.local/share/gitpulse"]
    Trust {
        /// The repository (default: the current directory's)
        #[arg(long, value_name = "DIR", default_value = ".")]
        repo: PathBuf,
    },
    /// Stop using the repository's own .gitpulse.toml
    Untrust {
        /// The repository (default: the current directory's)
        #[arg(long, value_name = "DIR", default_value = ".")]
        repo: PathBuf,
    },
    /// What the shims call: read what git says changed and record its events
    ///
    /// The config is the first of: --config, GITPULSE_CONFIG, gitpulse.toml in
    /// the repository's git directory (.git/gitpulse.toml, never cloned), the
    /// worktree's .gitpulse.toml once trusted (`gitpulse hook trust`), your own
    /// ~/.config/gitpulse/config.toml. None: the hook does nothing.
    Run {
        /// The hook (post-merge, post-checkout, post-rewrite, reference-transaction)
        name: String,
        /// The hook's arguments, as git passed them
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
        /// The config (default: see above)
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Deliver the outbox of the hooks' config for a while (started, detached, by `run`)
    #[command(hide = true)]
    Deliver {
        /// The repository whose hooks' config is used (chosen as `run` does)
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// The config file, when `run` was given one
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
/// `gitpulse outbox`.
pub struct OutboxArgs {
    #[command(subcommand)]
    /// `retry ID`, or none to list.
    pub action: Option<OutboxAction>,
    /// The daemon's config file (it names the state directory)
    #[arg(long, env = "GITPULSE_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Also list delivered messages
    #[arg(long)]
    pub all: bool,
    /// How many messages at most
    #[arg(long, value_name = "N", default_value = "100")]
    pub limit: usize,
}

#[derive(Debug, Subcommand)]
/// What `gitpulse outbox` does besides listing.
pub enum OutboxAction {
    /// Put a dead (or pending) message back in the queue, due now, attempts reset
    Retry {
        /// The message id from `gitpulse outbox`
        id: i64,
    },
}

/// `gitpulse notify …`
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test message through notifier NAME now (not through the outbox)
    ///
    /// Prints what the receiver answered (an SMTP reply, an HTTP status and
    /// body). Exit codes: 0 delivered; 1 the delivery failed; 2 no such
    /// notifier or an invalid config.
    Test {
        /// The notifier's name ([notifier.NAME] in the config)
        name: String,
        /// The config file
        #[arg(long, env = "GITPULSE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
/// `gitpulse daemon`.
pub struct DaemonArgs {
    /// The config file
    #[arg(long, env = "GITPULSE_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// How long running pulls may finish after SIGTERM before they are cancelled
    #[arg(long, value_name = "D", default_value = "30s", value_parser = duration)]
    pub grace: Duration,
    /// Log lines as text for people or JSON for collectors (one object a
    /// line: time, level, message, repo, attempt, class, delay_ms, old,
    /// new, plugin, duration_ms …). Default: `[daemon] log_format`, else text
    #[arg(long, env = "GITPULSE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,
}

#[derive(Debug, Args)]
/// Commands that read the daemon's state (`status`).
pub struct StateArgs {
    /// The daemon's config file (it names the state directory)
    #[arg(long, env = "GITPULSE_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
/// `gitpulse status`.
pub struct StatusArgs {
    #[command(flatten)]
    /// The config and output format.
    pub state: StateArgs,
    /// Ask the running daemon (`GET /v1/status` with its API token) instead
    /// of reading the state database: shows which pulls are running now
    #[arg(long)]
    pub live: bool,
}

#[derive(Debug, Args)]
/// `gitpulse history`.
pub struct HistoryArgs {
    /// The repository's name in the config
    pub repo: String,
    #[command(flatten)]
    /// The config and the output format.
    pub state: StateArgs,
    /// How many entries
    #[arg(long, value_name = "N", default_value = "20")]
    pub limit: usize,
    /// Lines of each step's output shown (the tail; --json has all that is kept)
    #[arg(long, value_name = "N", default_value = "5")]
    pub output_lines: usize,
}

#[derive(Debug, Args)]
/// `gitpulse trigger`.
pub struct TriggerArgs {
    /// The repository's name in the config
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub repo: Option<String>,
    /// Pull every repository
    #[arg(long)]
    pub all: bool,
    /// The daemon's config file (it names the listen address)
    #[arg(long, env = "GITPULSE_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
/// `gitpulse validate`.
pub struct ValidateArgs {
    /// The config file
    #[arg(long, env = "GITPULSE_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
}

/// `gitpulse plugin …`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate that builds as is (it vendors the SDK and the WIT contract).
    #[command(after_help = "Then: cd NAME && cargo build --release --target wasm32-wasip2")]
    New(NewArgs),
    /// Load a plugin, print its roles, contract version and size, and run it on a smoke trace.
    ///
    /// Exit codes: 0 the plugin loads and never faulted; 1 it faulted on the
    /// smoke trace; 2 it cannot be loaded (not a component, wrong contract
    /// version, no role).
    Check(CheckArgs),
    /// Replay failures through a plugin with a fixed seed and print the timeline of
    /// decisions and delays, with a plot of the delay curve. No real waiting.
    #[command(
        after_help = "Trace file: one JSON object per line, e.g.\n  {\"class\":\"rate-limited\",\"http_status\":429,\"retry_after_ms\":5000}\n  {\"class\":\"server-error\",\"http_status\":503}"
    )]
    Simulate(SimulateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
/// Which roles a scaffolded plugin plays.
pub enum RoleArg {
    /// Decides whether and when to retry.
    Retry,
    /// Chooses the delay curve only.
    Backoff,
    /// Shapes notifications.
    Notify,
    /// Every role.
    Full,
}

#[derive(Debug, Args)]
/// `gitpulse plugin new`.
pub struct NewArgs {
    /// Crate name: lowercase letters, digits and dashes
    pub name: String,
    /// Directory to create the crate in
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Which roles the plugin implements
    #[arg(long, value_enum, default_value = "retry")]
    pub role: RoleArg,
}

/// How a plugin is loaded and sandboxed.
#[derive(Debug, Args, Clone)]
pub struct PluginOptions {
    /// A setting for the plugin's config-get, KEY=VALUE (repeatable)
    #[arg(long = "plugin-config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// CPU budget of one plugin call
    #[arg(long, value_name = "D", default_value = "10ms", value_parser = duration)]
    pub plugin_cpu: Duration,
    /// Memory cap of a plugin instance, in MiB
    #[arg(long, value_name = "MIB", default_value = "16", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub plugin_memory: u32,
    /// Consecutive faults before a plugin is quarantined (the built-in policy takes over)
    #[arg(long, value_name = "N", default_value = "3", value_parser = clap::value_parser!(u32).range(1..))]
    pub plugin_quarantine: u32,
    /// Compiled-plugin cache [default: $GITPULSE_CACHE_DIR, else ~/.cache/gitpulse/plugins]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile the plugin every time
    #[arg(long)]
    pub no_cache: bool,
}

impl PluginOptions {
    /// The sandbox every call of the plugin runs in.
    pub fn sandbox(&self) -> crate::plugin::Sandbox {
        crate::plugin::Sandbox {
            cpu: self.plugin_cpu,
            memory: (self.plugin_memory as usize) << 20,
            quarantine_after: self.plugin_quarantine,
        }
    }

    /// Where compiled plugins are cached (`--no-cache`: nowhere).
    pub fn cache(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(crate::plugin::default_cache_dir)
        }
    }
}

#[derive(Debug, Args)]
/// `gitpulse plugin check`.
pub struct CheckArgs {
    /// The plugin component (.wasm)
    pub file: PathBuf,
    #[command(flatten)]
    /// Settings and sandbox of the plugin.
    pub plugin: PluginOptions,
}

#[derive(Debug, Args)]
/// `gitpulse plugin simulate`.
pub struct SimulateArgs {
    /// The plugin component (.wasm)
    pub file: PathBuf,
    /// Failures to replay, one JSON object per line
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "classes",
        conflicts_with = "classes"
    )]
    pub trace: Option<PathBuf>,
    /// Failures to replay, as a comma-separated list of classes
    #[arg(long, value_name = "LIST")]
    pub classes: Option<String>,
    /// Seed of the random source the plugin (and the built-in) draw from
    #[arg(long, value_name = "N", default_value = "1")]
    pub seed: u64,
    #[arg(long, value_name = "N", default_value = "8", value_parser = clap::value_parser!(u32).range(1..=1000))]
    /// Attempts before the host gives up.
    pub max_attempts: u32,
    #[arg(long, value_name = "D", default_value = "1s", value_parser = duration)]
    /// The built-in curve's base delay.
    pub backoff_base: Duration,
    #[arg(long, value_name = "D", default_value = "60s", value_parser = duration)]
    /// The built-in curve's cap, and the cap of any plugin's delay.
    pub backoff_max: Duration,
    /// Print the timeline as JSON lines instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    /// Settings and sandbox of the plugin.
    pub plugin: PluginOptions,
}

const PULL_EXAMPLES: &str = concat!("\
Examples:
  gitpulse pull https://github.com/org/repo.git ./repo
  gitpulse pull https://git.example.com/team/app.git /srv/app --branch release --mode reset
  GITPULSE_TOKEN=... gitpulse pull https://git.example.com/private.git ./p --token-env GITPULSE_TOKEN
  gitpulse pull ssh://git@git.example.com/app.git ./app --ssh-key ~/.ssh/deploy --known-hosts ./known_hosts
  gitpulse pull https://example.com/big.git ./big --depth 1 --timeout 5m --deadline 20m --json
  gitpulse pull https://example.com/site.git /srv/site --semver '>=1.4, <2' --publish symlink --step-shell 'systemctl reload nginx'
  gitpulse pull https://example.com/charts.git ./charts --ref 5f1c0a9 --sparse charts/app
  gitpulse pull https://git.example.com/app.git ./app --notify-config gitpulse.toml   # mail/webhook on change or failure\n\n", exit_codes!());

/// How the checkout follows the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Fast-forward only; a checkout with local commits fails as `diverged`.
    Ff,
    /// Make the checkout equal to the remote, discarding local commits,
    /// changes and untracked files (ignored files are kept).
    Reset,
    /// Bare mirror of every remote ref, no worktree.
    Mirror,
}

/// How a revision reaches DIR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishArg {
    /// Update the checkout at DIR.
    InPlace,
    /// DIR is a symlink to the revision's worktree, flipped atomically.
    Symlink,
}

#[derive(Debug, Args)]
/// `gitpulse pull`.
pub struct PullArgs {
    /// Remote repository: https://, http://, ssh://, git:// or file:// (credentials in the URL are never printed)
    pub url: String,
    /// Checkout directory; created by a clone when absent
    pub dir: PathBuf,

    /// Branch to follow [default: the branch DIR has checked out, else the remote's HEAD]
    #[arg(long, short)]
    pub branch: Option<String>,
    /// What to check out instead of a branch: a tag (followed when upstream
    /// moves it: forward in ff mode, anywhere in reset mode), a commit SHA
    /// or unique prefix (pinned), `HEAD` (the remote's default branch, even
    /// when it changes), or a full ref name. Tags and commits leave HEAD
    /// detached. Beats --branch; a commit also beats --semver
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// Run PROGRAM after a pull that changed the checkout (cloned or
    /// updated), in DIR, with GITPULSE_REPO, _DIR, _OLD, _NEW, _REF and
    /// _CHANGED_FILES (a file listing the changed paths) set. Its arguments
    /// follow as --step-arg. Repeatable; steps run in order, and the pull
    /// exits 1 when one fails
    #[arg(long, value_name = "PROGRAM", help_heading = "Steps")]
    pub step: Vec<String>,
    /// One argument of the --step before it (repeatable)
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        help_heading = "Steps"
    )]
    pub step_arg: Vec<String>,
    /// Like --step, a string run with `sh -c`
    #[arg(long, value_name = "SCRIPT", help_heading = "Steps")]
    pub step_shell: Vec<String>,
    /// Limit of each step; it is killed, with what it started, after it
    #[arg(long, value_name = "D", default_value = "5m", value_parser = duration, help_heading = "Steps")]
    pub step_timeout: Duration,
    /// Run PROGRAM in the new revision before it is published, and publish
    /// it only when PROGRAM succeeds (needs --publish symlink): a failing
    /// gate leaves DIR on the revision it had and the pull exits 1; the
    /// next pull tries again. Same variables as --step. Repeatable, in order
    #[arg(long, value_name = "PROGRAM", help_heading = "Steps")]
    pub before_publish: Vec<String>,
    /// Like --before-publish, a string run with `sh -c`
    #[arg(long, value_name = "SCRIPT", help_heading = "Steps")]
    pub before_publish_shell: Vec<String>,
    /// Give DIR's group what its owner has on everything the pull writes
    /// (read and write; execute where the owner has it), whatever the
    /// umask, as git-sync's --group-write: a web server in that group can
    /// serve the checkout
    #[arg(long)]
    pub group_write: bool,
    /// Pass this variable of gitpulse's environment on to the steps
    /// (repeatable). Steps get only PATH, HOME, USER, LOGNAME, the locale,
    /// TZ, the GITPULSE_* variables and these: never the token or other
    /// secrets gitpulse holds
    #[arg(long, value_name = "VAR", help_heading = "Steps")]
    pub step_pass_env: Vec<String>,
    /// Check out the highest tag matching this semver range, e.g.
    /// ">=1.2, <2" (a leading `v` on tags is fine; pre-releases only when
    /// the range names one). Beats --branch and a tag given with --ref
    #[arg(long, value_name = "RANGE")]
    pub semver: Option<String>,
    /// Shallow history: keep only the last N commits. A larger N deepens
    /// an existing checkout, a smaller one shortens it and frees the disk
    /// the cut history took (as `git fetch --depth` and `git gc`); 0 (or
    /// leaving it out) fetches the whole history, unshallowing it. Over
    /// http(s)://, ssh:// and git:// only: a file:// remote is refused
    /// (libgit2 cannot fetch shallow from a local path; serve it with
    /// `git daemon` or use the full history)
    #[arg(long, value_name = "N")]
    pub depth: Option<u32>,
    /// Also update submodules (off by default)
    #[arg(long)]
    pub submodules: bool,
    /// Let --submodules clone submodules that upstream points at this machine's files (file://, paths)
    #[arg(long, requires = "submodules")]
    pub allow_local_submodules: bool,
    #[arg(long, value_enum, default_value = "ff")]
    /// How the checkout is updated.
    pub mode: ModeArg,
    /// Sparse checkout (cone mode): only this directory, plus the files in
    /// the root and in its ancestors (repeatable). Kept and applied across
    /// updates, recorded as `git sparse-checkout` does. Without it, a
    /// sparse set made by hand in DIR is respected
    #[arg(long, value_name = "DIR")]
    pub sparse: Vec<String>,
    /// Sparse checkout with non-cone patterns (gitignore syntax, `!` to
    /// exclude; repeatable)
    #[arg(long, value_name = "PATTERN", allow_hyphen_values = true)]
    pub sparse_pattern: Vec<String>,
    /// How a revision reaches DIR: `in-place` updates the checkout;
    /// `symlink` writes each revision whole into a worktree beside DIR
    /// (under .DIR.gitpulse/) and flips DIR, a symlink, to it atomically, so
    /// readers never see a half-updated tree. Switching an existing
    /// checkout either way works
    #[arg(long, value_enum, default_value = "in-place")]
    pub publish: PublishArg,
    /// With --publish symlink: earlier worktrees kept for readers still
    /// inside them
    #[arg(long, value_name = "N", default_value = "1")]
    pub keep_worktrees: usize,

    /// A transfer slower than this many bytes a second for --low-speed-time
    /// fails as `timeout` ("stalled"), whatever --timeout says, as git's
    /// http.lowSpeedLimit does
    #[arg(long, value_name = "BYTES", default_value = "1024")]
    pub low_speed_limit: u64,
    /// See --low-speed-limit; also how long a git:// or ssh:// socket may stay silent
    #[arg(long, value_name = "D", default_value = "30s", value_parser = duration)]
    pub low_speed_time: Duration,
    /// Time limit of one attempt (e.g. 250ms, 10s, 2m); a stalled server fails as `timeout`.
    /// The daemon learns shorter limits per repository from its history, up to this
    #[arg(long, value_name = "D", default_value = "2m", value_parser = duration)]
    pub timeout: Duration,
    /// Time limit of the whole pull, waits included [default: none]
    #[arg(long, value_name = "D", value_parser = duration)]
    pub deadline: Option<Duration>,
    /// Attempts before giving up (1 = no retries)
    #[arg(long, value_name = "N", default_value = "5", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,
    /// Ceiling of the first retry delay; doubles with each attempt
    #[arg(long, value_name = "D", default_value = "1s", value_parser = duration)]
    pub backoff_base: Duration,
    /// Longest delay between attempts
    #[arg(long, value_name = "D", default_value = "60s", value_parser = duration)]
    pub backoff_max: Duration,
    /// How long to wait when another gitpulse is updating DIR before failing as `lock-held`
    #[arg(long, value_name = "D", default_value = "30s", value_parser = duration)]
    pub lock_wait: Duration,
    /// Seed for the retry jitter, for reproducible runs
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Read an HTTPS token from this environment variable
    #[arg(long, value_name = "VAR", conflicts_with = "token_file")]
    pub token_env: Option<String>,
    /// The user to send with the token, for servers that check it (Bitbucket, Gitea,
    /// htpasswd); default: the URL's user, else x-access-token
    #[arg(long, value_name = "NAME")]
    pub username: Option<String>,
    /// Read an HTTPS token from this file (surrounding whitespace is
    /// ignored); read again at every attempt, so a rotated file is used
    #[arg(long, value_name = "F", visible_alias = "password-file")]
    pub token_file: Option<PathBuf>,
    /// Send the token over plain http:// to another machine (in clear: only on a network you trust)
    #[arg(long)]
    pub allow_http_token: bool,
    /// SSH private key (without one, ssh-agent is used for SSH remotes)
    #[arg(long, value_name = "F")]
    pub ssh_key: Option<PathBuf>,
    /// Check the SSH host key against this known_hosts file [default: ~/.ssh/known_hosts]
    #[arg(long, value_name = "F", requires = "ssh_key")]
    pub known_hosts: Option<PathBuf>,

    /// Print exactly one JSON object on stdout: url, dir, outcome, old, new, commits, attempts, duration_ms, reason
    #[arg(long)]
    pub json: bool,
    /// In GitHub Actions (GITHUB_ACTIONS=true), leave $GITHUB_STEP_SUMMARY alone; outputs,
    /// masks and annotations are written all the same
    #[arg(long)]
    pub no_step_summary: bool,

    /// A policy plugin (.wasm component) deciding retries and delays; the built-in policy covers what it lacks
    #[arg(long, value_name = "FILE.wasm")]
    pub policy: Option<PathBuf>,

    /// Notify through the [notifier.*] of this config file: the pull's events (changed, failed,
    /// recovered, …) enter its outbox (in its state directory) and are sent before exiting
    #[arg(long, value_name = "FILE")]
    pub notify_config: Option<PathBuf>,
    /// How long to keep delivering notifications after the pull; what is still undelivered
    /// stays in the outbox for the daemon or the next run
    #[arg(long, value_name = "D", default_value = "30s", value_parser = duration, requires = "notify_config")]
    pub notify_wait: Duration,
    #[command(flatten)]
    /// Settings and sandbox of a `--policy` plugin.
    pub plugin: PluginOptions,
}

fn duration(text: &str) -> Result<Duration, String> {
    crate::model::parse_duration(text)
}

/// A problem with the command line that no retry can fix (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    /// `--step`, `--step-arg` or `--step-shell` misused.
    Steps(String),
    /// A flag's value, as the rules of a `[[repo]]` see it (each problem
    /// names its flag).
    #[error("{}", .0.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\nerror: "))]
    Flags(Problems),
}

impl PullArgs {
    /// The repository these flags describe, built by the rules a `[[repo]]`
    /// of a config file goes through (one rule, one place); `matches` are
    /// this subcommand's, which know how the `--step` flags interleave.
    pub fn repo(&self, matches: Option<&clap::ArgMatches>) -> Result<RepoConfig, UsageError> {
        let mut flags = RepoFlags::new(&self.url);
        for (key, value) in [
            ("branch", &self.branch),
            ("ref", &self.reference),
            ("semver", &self.semver),
            ("token_env", &self.token_env),
            ("username", &self.username),
        ] {
            if let Some(value) = value {
                flags.set(key, value.as_str());
            }
        }
        for (key, path) in [
            ("token_file", &self.token_file),
            ("ssh_key", &self.ssh_key),
            ("known_hosts", &self.known_hosts),
        ] {
            if let Some(path) = path {
                flags.set(key, path.to_string_lossy().as_ref());
            }
        }
        let mode = match self.mode {
            ModeArg::Ff => "ff",
            ModeArg::Reset => "reset",
            ModeArg::Mirror => "mirror",
        };
        flags.set("mode", mode);
        if let Some(depth) = self.depth {
            flags.set("depth", i64::from(depth));
        }
        flags.switch("submodules", self.submodules);
        let local = self.allow_local_submodules;
        flags.switch("allow_local_submodules", local);
        flags.switch("group_write", self.group_write);
        flags.switch("allow_http_token", self.allow_http_token);
        if !self.sparse.is_empty() {
            flags.set("sparse", self.sparse.clone());
        }
        if !self.sparse_pattern.is_empty() {
            let patterns = self.sparse_pattern.clone();
            flags.set("sparse_patterns", patterns);
        }
        if self.publish == PublishArg::Symlink {
            flags.set("publish", "symlink");
            let keep = i64::try_from(self.keep_worktrees).unwrap_or(i64::MAX);
            flags.set("keep_worktrees", keep);
        }
        let speed = i64::try_from(self.low_speed_limit).unwrap_or(i64::MAX);
        flags.set("low_speed_limit", speed);
        flags.set("max_attempts", i64::from(self.max_attempts));
        for (key, value) in [
            ("low_speed_time", self.low_speed_time),
            ("timeout", self.timeout),
            ("backoff_base", self.backoff_base),
            ("backoff_max", self.backoff_max),
            ("lock_wait", self.lock_wait),
        ] {
            flags.set_duration(key, value);
        }
        if let Some(deadline) = self.deadline {
            flags.set_duration("deadline", deadline);
        }
        for step in self.steps(matches)? {
            flags.step(step);
        }
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        flags.check(&name, &self.dir).map_err(UsageError::Flags)
    }

    /// The steps of `--step`/`--step-arg`/`--step-shell` in command-line
    /// order, then the gates of `--before-publish`/`--before-publish-shell`;
    /// each named by its command line (made unique).
    fn steps(&self, matches: Option<&clap::ArgMatches>) -> Result<Vec<StepFlags>, UsageError> {
        let at = |id: &str| -> Vec<usize> {
            matches
                .and_then(|m| m.indices_of(id))
                .map(|i| i.collect())
                .unwrap_or_default()
        };
        let mut ordered: Vec<(usize, Program)> = at("step")
            .into_iter()
            .zip(&self.step)
            .map(|(i, program)| (i, Program::Argv(vec![program.clone()])))
            .chain(
                at("step_shell")
                    .into_iter()
                    .zip(&self.step_shell)
                    .map(|(i, script)| (i, Program::Shell(script.clone()))),
            )
            .collect();
        ordered.sort_by_key(|(i, _)| *i);
        for (index, arg) in at("step_arg").into_iter().zip(&self.step_arg) {
            let owner = ordered
                .iter_mut()
                .rev()
                .find(|(i, _)| *i < index)
                .map(|(_, program)| program);
            match owner {
                Some(Program::Argv(argv)) => argv.push(arg.clone()),
                _ => {
                    return Err(UsageError::Steps(format!(
                        "--step-arg {arg:?} follows no --step (it gives the arguments of the --step before it)"
                    )))
                }
            }
        }
        let gates = self
            .before_publish
            .iter()
            .map(|p| Program::Argv(vec![p.clone()]))
            .chain(
                self.before_publish_shell
                    .iter()
                    .cloned()
                    .map(Program::Shell),
            )
            .map(|program| (program, true));
        let steps = ordered.into_iter().map(|(_, program)| (program, false));
        let mut named: Vec<StepFlags> = Vec::new();
        let mut commands: Vec<String> = Vec::new();
        for (run, before_publish) in steps.chain(gates) {
            let command = match &run {
                Program::Argv(argv) => argv.join(" "),
                Program::Shell(script) => script.clone(),
            };
            let command = crate::redact::printable(&command, 60);
            let same = commands.iter().filter(|c| **c == command).count();
            commands.push(command.clone());
            let name = match same {
                0 => command,
                n => format!("{command} ({})", n + 1),
            };
            named.push(StepFlags {
                name,
                run,
                timeout_ms: self.step_timeout.as_millis(),
                before_publish,
                pass_env: self.step_pass_env.clone(),
            });
        }
        Ok(named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gitpulse").chain(args.iter().copied()))
    }

    fn repo(args: &[&str]) -> Result<RepoConfig, UsageError> {
        let Command::Pull(pull) = parse(args).unwrap().command else {
            panic!("not pull")
        };
        pull.repo(None)
    }

    #[test]
    fn a_token_as_the_urls_user_is_refused_without_being_shown() {
        let token = "ghp_0a1b2c3d4e5f6a7b8c9d";
        let url = format!("https://{token}@git.example.com/o/r.git");
        let err = repo(&["pull", &url, "d"]).unwrap_err().to_string();
        assert!(err.contains("--token-env") && !err.contains(token), "{err}");
        assert!(repo(&["pull", "https://alice@git.example.com/o/r.git", "d"]).is_ok());
    }

    #[test]
    fn durations_accept_the_documented_forms() {
        let cli = parse(&[
            "pull",
            "https://h/r",
            "d",
            "--timeout",
            "250ms",
            "--deadline",
            "2m",
            "--backoff-base",
            "10s",
        ])
        .unwrap();
        let Command::Pull(args) = cli.command else {
            panic!("not pull")
        };
        assert_eq!(args.timeout, Duration::from_millis(250));
        assert_eq!(args.deadline, Some(Duration::from_secs(120)));
        assert_eq!(args.backoff_base, Duration::from_secs(10));
    }

    #[test]
    fn a_bad_duration_is_a_usage_error_that_shows_examples() {
        let err = parse(&["pull", "https://h/r", "d", "--timeout", "soon"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("250ms"), "{err}");
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_shown() {
        let err = repo(&["pull", "https://u:hunter2@h/r", "d"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--token-env") && err.contains("https://***@h/r"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_urls_are_refused_without_showing_credentials() {
        let err = repo(&["pull", "ftp://u:hunter2@h/r", "d"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported scheme"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
