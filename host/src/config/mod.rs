//! The daemon's configuration file: its TOML model, defaults, environment
//! overrides, and validation that reports every problem at once with
//! `file:line` and the field.
//!
//! [`load`] turns a file into a [`Config`] that is valid as a whole or not
//! at all: callers (the daemon at start and on reload, `gitpulse validate`)
//! either get a complete value to swap in or the full list of [`Problem`]s,
//! never a half-applied config. Reading never looks beyond the file (and the
//! templates it names): what the config needs from the machine — variables
//! set, secret, key and CA files, the plugin directory — is collected as
//! [`Need`]s with their lines ([`Config::needs`]) and checked by `validate`
//! (daemon start, reloads, `gitpulse validate`), so commands that only read
//! state work without the secrets. The environment is read here only for
//! the variables that override settings (`GITPULSE_STATE_DIR`, …). It does
//! not schedule, pull or load plugins for use.
//!
//! ```toml
//! [daemon]
//! state_dir = "state"            # SQLite state, plugin key-value stores
//! listen = "127.0.0.1:8787"
//! max_concurrent = 8             # pulls at once
//! per_host = 4                   # pulls at once per remote host
//! max_concurrent_steps = 4       # owed steps at once, in their own pool (not the pulls' permits)
//! breaker_threshold = 5          # transient failures in a row that open a host's circuit
//! breaker_cool_down = "30s"      # how long it stays open before a canary
//! plugin_dir = "plugins"         # NAME.wasm files
//!
//! [defaults]
//! schedule = "every 5m"          # or 6-field cron with seconds: "0 */5 * * * *"
//! timeout = "2m"
//! mode = "ff"
//!
//! [[repo]]
//! name = "app"
//! url = "https://git.example.com/app.git"
//! branch = "main"
//! token_env = "APP_TOKEN"
//! labels = { team = "platform" }
//! policy = { retry = "retry-after" }
//!
//! [store]                        # optional: SQLite in state_dir unless
//! backend = "postgres"           # several daemons share one database
//! url_env = "GITPULSE_DATABASE_URL"
//!
//! [plugin.retry-after]
//! base_ms = 500
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::git::{Follow, Mode, OriginCredential, Publish, Sparse};
use crate::redact::looks_like_a_secret;
pub use crate::schedule::{Cron, Schedule};
use crate::step::{self, Step};

mod credentials;
mod daemon;
mod flags;
mod fleet;
mod keys;
mod notifier;
mod reach;
mod receiver;
mod repo;
mod steps;
mod store;
pub use flags::{RepoFlags, StepFlags};
pub use notifier::{
    read_secret, Channel, Delivery, EmailConfig, Filter, HttpMethod, LogConfig, NotifierConfig,
    SecretRef, Shape, SmtpSecurity, TemplateOverride, WebhookConfig,
};
pub use reach::{Reach, Reached};
pub use receiver::{HookKind, ReceiverConfig};

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file.
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single place (a missing section).
    pub line: usize,
    /// `repo "app".schedule`, `daemon.listen`, …
    pub field: String,
    /// What is wrong, in words; never a secret's value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.as_os_str().is_empty() {
            // A command-line flag: the field names it.
            write!(f, "{}: {}", self.field, self.message)
        } else if self.line > 0 {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.field,
                self.message
            )
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// How a repository authenticates. Names only: secrets are read when used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRef {
    /// Anonymous (or credentials from ssh-agent).
    None,
    /// A token read from this environment variable.
    TokenEnv(String),
    /// A token read from this file.
    TokenFile(PathBuf),
    /// An SSH key, and the known_hosts to check the server against.
    SshKey {
        /// The private key file.
        key: PathBuf,
        /// Where the server's key must be listed; default `~/.ssh/known_hosts`.
        known_hosts: Option<PathBuf>,
    },
}

/// Which plugin plays which role for a repository (`None`: built-in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRef {
    /// Decides whether and when to retry.
    pub retry: Option<String>,
    /// Chooses the delay of each retry.
    pub backoff: Option<String>,
    /// Shapes the repo's notifications.
    pub notify: Option<String>,
}

/// One `[[repo]]`, with defaults applied and paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    /// Unique; what status, history, events and metrics call it.
    pub name: String,
    /// The remote (credentials never in it).
    pub url: String,
    /// What the checkout follows (`branch`, `ref`, `semver`); all unset:
    /// the branch the checkout has, else the remote's HEAD.
    pub follow: Follow,
    /// The checkout.
    pub dir: PathBuf,
    /// When it is pulled.
    pub schedule: Schedule,
    /// How the checkout is updated.
    pub mode: Mode,
    /// Shallow history of this many commits.
    pub depth: Option<u32>,
    /// Also update submodules.
    pub submodules: bool,
    /// Submodules may be cloned from this machine (`file://`, paths).
    pub local_submodules: bool,
    /// Give DIR's group what its owner has on what pulls write.
    pub group_write: bool,
    /// Limit of one attempt: the ceiling of learnt limits.
    pub timeout: Duration,
    /// The floor of learnt per-attempt limits.
    pub min_timeout: Duration,
    /// When a transfer counts as stalled (`low_speed_limit`, `low_speed_time`).
    pub low_speed: crate::git::LowSpeed,
    /// Limit of a whole pull, waits included.
    pub deadline: Option<Duration>,
    /// How long to wait for another process's lock on the checkout.
    pub lock_wait: Duration,
    /// Attempts before giving up.
    pub max_attempts: u32,
    /// The retry curve's base delay.
    pub backoff_base: Duration,
    /// The retry curve's cap.
    pub backoff_max: Duration,
    /// How it authenticates (names only).
    pub auth: AuthRef,
    /// The user sent with its token (`username`); default: the URL's, else
    /// `x-access-token`.
    pub username: Option<String>,
    /// Free labels, for notifier filters and plugins.
    pub labels: BTreeMap<String, String>,
    /// Which plugin plays which role.
    pub policy: PolicyRef,
    /// The notifiers it tells (empty: every notifier whose filters accept).
    pub notifiers: Vec<String>,
    /// Whether the daemon is ready (`/readyz`) only once this repository
    /// has been pulled successfully.
    pub required: bool,
    /// Commands that run after its pulls (`[[repo.step]]`), in order.
    pub steps: Vec<Step>,
    /// How a pulled revision reaches `dir`.
    pub publish: Publish,
    /// The sparse set (`sparse`, `sparse_patterns`); none: whatever the
    /// checkout has.
    pub sparse: Option<Sparse>,
    /// Where the `[[repo]]` starts in the file.
    pub line: usize,
}

impl DaemonSettings {
    /// Where the daemon (and `validate`, for it) caches compiled plugins.
    pub fn compile_cache(&self) -> PathBuf {
        self.state_dir.join("cache")
    }
}

impl RepoConfig {
    /// Whether `other` has the same settings: where the `[[repo]]` sits in
    /// the file is not a setting, so a reload that only moves it (a repo
    /// added above it) does not reschedule it.
    pub fn same_settings(&self, other: &RepoConfig) -> bool {
        *self
            == RepoConfig {
                line: self.line,
                ..other.clone()
            }
    }
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// Where state.db, plugin stores and the compile cache live.
    pub state_dir: PathBuf,
    /// Where the HTTP face listens.
    pub listen: SocketAddr,
    /// Pulls at once.
    pub max_concurrent: usize,
    /// Pulls at once to one remote host.
    pub per_host: usize,
    /// Owed steps running at once, in a pool of their own: a slow step
    /// holds no pull's permits.
    pub max_concurrent_steps: usize,
    /// Where `NAME.wasm` plugins are found.
    pub plugin_dir: Option<PathBuf>,
    /// Pulls to one host that must fail (transiently, in a row) before its
    /// circuit opens.
    pub breaker_threshold: u32,
    /// How long an open circuit holds the host's repositories back before
    /// one canary probes.
    pub breaker_cool_down: Duration,
    /// How long pulls, attempts and events are kept in the state.
    pub retention: Duration,
    /// Where the API's bearer token comes from.
    pub api_token: ApiToken,
    /// More host names the HTTP face answers to (besides the listen
    /// address, `localhost` and loopback addresses).
    pub host_names: Vec<String>,
    /// How the daemon writes its log.
    pub log_format: LogFormat,
    /// Retries to one host may add at most this share of its pulls in a
    /// minute …
    pub retry_budget_ratio: f64,
    /// … and at least this many retries a minute are allowed.
    pub retry_budget_min: u32,
}

/// How the daemon writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one line of text per event.
    #[default]
    Text,
    /// For collectors: one JSON object per line.
    Json,
}

/// Where the daemon's API token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiToken {
    /// Made at start (random) and written to `api-token` in the state
    /// directory, mode 0600, where `gitpulse trigger` and `status --live`
    /// read it.
    Generated,
    /// An environment variable's value.
    Env(String),
    /// A file's content (trimmed).
    File(PathBuf),
}

impl DaemonSettings {
    /// Where a generated API token is written (and read by the CLI).
    pub fn api_token_file(&self) -> PathBuf {
        match &self.api_token {
            ApiToken::File(path) => path.clone(),
            _ => self.state_dir.join("api-token"),
        }
    }
}

/// A validated configuration, built once and swapped whole on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (relative paths are relative to it).
    pub path: PathBuf,
    /// `[daemon]`.
    pub daemon: DaemonSettings,
    /// `[store]`: where the state lives.
    pub store: crate::store::Backend,
    /// `[fleet]`: this daemon as a replica of the state's users.
    pub fleet: crate::store::Replica,
    /// `[[repo]]`, in file order.
    pub repos: Vec<RepoConfig>,
    /// `[plugin.NAME]` settings, as strings (what `config-get` returns).
    pub plugins: BTreeMap<String, BTreeMap<String, String>>,
    /// `[notifier.NAME]`, validated.
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// `[[receiver]]`: push webhooks.
    pub receivers: Vec<ReceiverConfig>,
    /// `[[credential]]`: HTTP(S) credentials by URL prefix, for remotes
    /// and submodules on their own origins.
    pub credentials: Vec<OriginCredential>,
    /// `[hook]`: what a repository's own `.gitpulse.toml` may reach. Read
    /// from the user's config only; in any other file it grants nothing.
    pub hook: HookAllowance,
    /// Where each repository is in `repos`: the daemon looks one up for
    /// every pull, and a fleet has thousands.
    by_name: HashMap<String, usize>,
    /// What this config needs from the machine it runs on (variables,
    /// files, directories), with where the file states each; `validate`
    /// checks them.
    pub needs: Vec<Requirement>,
}

impl Config {
    /// What a command runs under when it is given no config file (`gitpulse
    /// pull` without `--notify-config`): no notifiers, credentials or
    /// plugin settings; the defaults of `[daemon]`.
    pub fn without_file() -> Config {
        let mut check = Check {
            file: Path::new(""),
            text: "",
            flags: None,
            problems: Vec::new(),
            needs: Vec::new(),
        };
        let resolve = |p: &str| PathBuf::from(p);
        let daemon = daemon::check_daemon(
            &mut check,
            &RawDaemon::default(),
            Path::new(""),
            &resolve,
            &|_| None,
        );
        Config {
            path: PathBuf::new(),
            daemon,
            store: crate::store::Backend::Sqlite,
            fleet: fleet::check_fleet(&mut check, None, false, &|_| None),
            repos: Vec::new(),
            plugins: BTreeMap::new(),
            notifiers: BTreeMap::new(),
            receivers: Vec::new(),
            credentials: Vec::new(),
            hook: HookAllowance::default(),
            by_name: HashMap::new(),
            needs: Vec::new(),
        }
    }

    /// The repository named `name`.
    pub fn repo(&self, name: &str) -> Option<&RepoConfig> {
        let indexed = self.by_name.get(name).and_then(|&i| self.repos.get(i));
        // `repos` is public: a name the index no longer places is looked
        // for in order.
        indexed
            .filter(|r| r.name == name)
            .or_else(|| self.repos.iter().find(|r| r.name == name))
    }

    /// A daemon needs something to pull (`gitpulse pull --config` uses a
    /// config for its notifiers alone).
    pub fn check_has_repos(&self) -> Option<Problem> {
        self.repos.is_empty().then(|| Problem {
            file: self.path.clone(),
            line: 0,
            field: "repo".into(),
            message: "no [[repo]] entries: nothing to pull".into(),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    max_concurrent: Option<Spanned<i64>>,
    per_host: Option<Spanned<i64>>,
    max_concurrent_steps: Option<Spanned<i64>>,
    plugin_dir: Option<Spanned<String>>,
    breaker_threshold: Option<Spanned<i64>>,
    breaker_cool_down: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
    listen_public: Option<Spanned<bool>>,
    api_token_env: Option<Spanned<String>>,
    api_token_file: Option<Spanned<String>>,
    host_names: Option<Spanned<Vec<String>>>,
    log_format: Option<Spanned<String>>,
    retry_budget_ratio: Option<Spanned<f64>>,
    retry_budget_min: Option<Spanned<i64>>,
}

/// Fields a `[[repo]]` may set and `[defaults]` may default.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawCommon {
    schedule: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    min_timeout: Option<Spanned<String>>,
    low_speed_limit: Option<Spanned<i64>>,
    low_speed_time: Option<Spanned<String>>,
    deadline: Option<Spanned<String>>,
    lock_wait: Option<Spanned<String>>,
    submodules: Option<Spanned<bool>>,
    allow_local_submodules: Option<Spanned<bool>>,
    group_write: Option<Spanned<bool>>,
    depth: Option<Spanned<i64>>,
    mode: Option<Spanned<String>>,
    max_attempts: Option<Spanned<i64>>,
    backoff_base: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
    policy: Option<Spanned<RawPolicy>>,
    notifiers: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawPolicy {
    /// One plugin for every role it exports.
    Name(String),
    Roles {
        retry: Option<String>,
        backoff: Option<String>,
        notify: Option<String>,
    },
}

/// `run = ["prog", "arg"]` or `run = "a shell string"` (with `shell = true`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawRun {
    Argv(Vec<String>),
    Shell(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<Spanned<String>>,
    run: Option<Spanned<RawRun>>,
    shell: Option<Spanned<bool>>,
    when: Option<Spanned<String>>,
    paths: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<String>>,
    before_publish: Option<Spanned<bool>>,
    env: Option<Spanned<BTreeMap<String, String>>>,
    pass_env: Option<Spanned<Vec<String>>>,
    once: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    name: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    branch: Option<Spanned<String>>,
    #[serde(rename = "ref")]
    reference: Option<Spanned<String>>,
    semver: Option<Spanned<String>>,
    dir: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    allow_http_token: Option<Spanned<bool>>,
    ssh_key: Option<Spanned<String>>,
    known_hosts: Option<Spanned<String>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    required: Option<Spanned<bool>>,
    step: Option<Vec<Spanned<RawStep>>>,
    publish: Option<Spanned<String>>,
    keep_worktrees: Option<Spanned<i64>>,
    sparse: Option<Spanned<Vec<String>>>,
    sparse_patterns: Option<Spanned<Vec<String>>>,
    // The fields of `RawCommon`, repeated: serde's `flatten` would lose the
    // spans that give every problem its line.
    schedule: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    min_timeout: Option<Spanned<String>>,
    low_speed_limit: Option<Spanned<i64>>,
    low_speed_time: Option<Spanned<String>>,
    deadline: Option<Spanned<String>>,
    lock_wait: Option<Spanned<String>>,
    submodules: Option<Spanned<bool>>,
    allow_local_submodules: Option<Spanned<bool>>,
    group_write: Option<Spanned<bool>>,
    depth: Option<Spanned<i64>>,
    mode: Option<Spanned<String>>,
    max_attempts: Option<Spanned<i64>>,
    backoff_base: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
    policy: Option<Spanned<RawPolicy>>,
    notifiers: Option<Spanned<Vec<String>>>,
}

impl RawRepo {
    /// This repo's own settings, with `defaults` filling the gaps.
    fn with_defaults(&self, defaults: &RawCommon) -> RawCommon {
        RawCommon {
            schedule: self.schedule.clone().or_else(|| defaults.schedule.clone()),
            timeout: self.timeout.clone().or_else(|| defaults.timeout.clone()),
            min_timeout: self
                .min_timeout
                .clone()
                .or_else(|| defaults.min_timeout.clone()),
            low_speed_limit: self
                .low_speed_limit
                .clone()
                .or_else(|| defaults.low_speed_limit.clone()),
            low_speed_time: self
                .low_speed_time
                .clone()
                .or_else(|| defaults.low_speed_time.clone()),
            deadline: self.deadline.clone().or_else(|| defaults.deadline.clone()),
            lock_wait: self
                .lock_wait
                .clone()
                .or_else(|| defaults.lock_wait.clone()),
            submodules: self
                .submodules
                .clone()
                .or_else(|| defaults.submodules.clone()),
            allow_local_submodules: self
                .allow_local_submodules
                .clone()
                .or_else(|| defaults.allow_local_submodules.clone()),
            group_write: self
                .group_write
                .clone()
                .or_else(|| defaults.group_write.clone()),
            depth: self.depth.clone().or_else(|| defaults.depth.clone()),
            mode: self.mode.clone().or_else(|| defaults.mode.clone()),
            max_attempts: self
                .max_attempts
                .clone()
                .or_else(|| defaults.max_attempts.clone()),
            backoff_base: self
                .backoff_base
                .clone()
                .or_else(|| defaults.backoff_base.clone()),
            backoff_max: self
                .backoff_max
                .clone()
                .or_else(|| defaults.backoff_max.clone()),
            policy: self.policy.clone().or_else(|| defaults.policy.clone()),
            notifiers: self
                .notifiers
                .clone()
                .or_else(|| defaults.notifiers.clone()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: Option<Spanned<RawDaemon>>,
    #[serde(default)]
    defaults: Option<Spanned<RawCommon>>,
    #[serde(default)]
    repo: Vec<Spanned<RawRepo>>,
    #[serde(default)]
    plugin: BTreeMap<String, Spanned<toml::Table>>,
    #[serde(default)]
    notifier: BTreeMap<String, Spanned<notifier::RawNotifier>>,
    #[serde(default)]
    receiver: Vec<Spanned<receiver::RawReceiver>>,
    #[serde(default)]
    credential: Vec<Spanned<RawCredential>>,
    #[serde(default)]
    hook: Option<Spanned<RawHook>>,
    #[serde(default)]
    store: Option<Spanned<store::RawStore>>,
    #[serde(default)]
    fleet: Option<Spanned<fleet::RawFleet>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    allow_env: Option<Spanned<Vec<String>>>,
    allow_paths: Option<Spanned<Vec<String>>>,
}

/// `[hook]` of the user's config: the environment variables and the
/// directories a trusted repository's `.gitpulse.toml` may use besides its
/// own worktree. Empty (the default): none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookAllowance {
    /// Variables it may read secrets from.
    pub env: Vec<String>,
    /// Directories (resolved against the user's config) whose files it
    /// may read or write.
    pub paths: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    url_prefix: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
}

/// Something a config needs from the machine it runs on. Reading a file
/// never looks beyond it: the needs are collected with where the file
/// states them, and `validate` (daemon start, every reload, `gitpulse
/// validate`) checks them. Commands that only read state (`status`,
/// `history`, `outbox`, `trigger`) work in a shell without the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// An environment variable that must be set and not blank (a token, a
    /// password, a URL).
    Variable(String),
    /// A file that must exist: a secret, a key, a template, a CA.
    File(PathBuf),
    /// A plugin component `plugin_dir` must hold.
    Plugin(PathBuf),
    /// A directory that must exist (`plugin_dir`).
    Dir(PathBuf),
    /// The directory a file is written into (a log notifier's `path`).
    ParentDir(PathBuf),
}

/// A [`Need`] and where the file states it: a problem's place, should the
/// need be unmet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// What is needed.
    pub need: Need,
    /// The config file.
    pub file: PathBuf,
    /// 1-based line of the value that states the need.
    pub line: usize,
    /// The field, worded as a [`Problem`]'s.
    pub field: String,
}

/// Collects problems against one file, or against the flags that filled
/// a raw repository (then a problem names the flag, not a line).
struct Check<'a> {
    file: &'a Path,
    text: &'a str,
    flags: Option<&'a flags::Flags>,
    problems: Vec<Problem>,
    needs: Vec<Requirement>,
}

impl Check<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn at<T>(
        &mut self,
        spanned: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = self.line(spanned.span().start);
        self.push(line, field, message);
    }

    fn push(&mut self, line: usize, field: impl Into<String>, message: impl Into<String>) {
        // Messages quote what they refuse; a value typed in the wrong
        // field may be a secret, and problems are printed, logged and
        // sent (config-rejected).
        let message = without_secret_looking_words(&message.into());
        let problem = match self.flags {
            Some(flags) => flags.problem(&field.into(), &message),
            None => Problem {
                file: self.file.to_path_buf(),
                line,
                field: field.into(),
                message,
            },
        };
        self.problems.push(problem);
    }

    fn duration(&mut self, value: &Spanned<String>, field: &str) -> Option<Duration> {
        match crate::model::parse_duration(value.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.at(value, field, e);
                None
            }
        }
    }

    /// The environment variable `var` names must be set and not blank
    /// (checked by `validate`); its name is checked here.
    fn need_variable(&mut self, var: &Spanned<String>, field: impl Into<String>) {
        let field = field.into();
        if let Some(why) = not_a_variable_name(var.get_ref()) {
            // Whatever was pasted here is never shown: it may be the secret.
            self.at(var, field, why);
            return;
        }
        let line = self.line(var.span().start);
        self.need(line, field, Need::Variable(var.get_ref().clone()));
    }

    /// `path` must be an existing file (checked by `validate`); a problem
    /// is reported at `at`.
    fn need_file<T>(&mut self, at: &Spanned<T>, field: impl Into<String>, path: &Path) {
        let line = self.line(at.span().start);
        self.need(line, field, Need::File(path.to_path_buf()));
    }

    fn need(&mut self, line: usize, field: impl Into<String>, need: Need) {
        // Flags name no file line: their needs are checked when the job
        // starts (a token variable, a key file), as before.
        if self.flags.is_none() {
            self.needs.push(Requirement {
                need,
                file: self.file.to_path_buf(),
                line,
                field: field.into(),
            });
        }
    }

    fn positive(&mut self, value: &Spanned<i64>, field: &str, max: i64) -> Option<u64> {
        let v = *value.get_ref();
        if v < 1 || v > max {
            self.at(value, field, format!("{v} is out of range (1 to {max})"));
            None
        } else {
            Some(v as u64)
        }
    }
}

/// Reads and checks `path`: its structure, types and values. Relative paths
/// in the file are relative to the file's directory. What the config needs
/// from the machine is in [`Config::needs`]; `validate` checks it.
pub fn load(path: &Path) -> Result<Config, Problems> {
    read(path).0
}

/// [`load`], with what the file needs from the machine even when its
/// structure has problems (so `validate` reports every problem at once).
pub fn read(path: &Path) -> (Result<Config, Problems>, Vec<Requirement>) {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_needing(path, &text, &|var| std::env::var(var).ok()),
        Err(e) => (
            Err(Problems(vec![Problem {
                file: path.to_path_buf(),
                line: 0,
                field: "file".into(),
                message: e.to_string(),
            }])),
            Vec::new(),
        ),
    }
}

/// Checks `text` as the contents of `path`; `env` looks up the environment
/// variables that override settings (`GITPULSE_STATE_DIR`, …).
pub fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Problems> {
    parse_needing(path, text, env).0
}

/// [`parse`], with the needs found whatever the outcome.
pub fn parse_needing(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Result<Config, Problems>, Vec<Requirement>) {
    let mut check = Check {
        file: path,
        text,
        flags: None,
        problems: Vec::new(),
        needs: Vec::new(),
    };
    let result = parse_into(&mut check, path, text, env);
    let needs = std::mem::take(&mut check.needs);
    match result {
        Ok(mut config) => {
            config.needs = needs.clone();
            (Ok(config), needs)
        }
        Err(problems) => (Err(problems), needs),
    }
}

fn parse_into(
    check: &mut Check<'_>,
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Problems> {
    // Every unknown key at once, each with the key it was likely meant to
    // be (the parser would stop at the first).
    if keys::check_keys(text, check) {
        check.problems.sort_by_key(|p| p.line);
        return Err(Problems(std::mem::take(&mut check.problems)));
    }
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.span().map(|s| check.line(s.start)).unwrap_or(0);
            // The parser quotes the values it refuses; a value may be a
            // secret typed in the wrong place.
            check.push(line, "toml", without_quoted_values(e.message().trim()));
            return Err(Problems(std::mem::take(&mut check.problems)));
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: &str| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };

    let daemon_raw = raw.daemon.map(Spanned::into_inner).unwrap_or_default();
    let daemon = daemon::check_daemon(check, &daemon_raw, &base, &resolve, env);
    let plugins = plugin_settings(check, &raw.plugin);
    let store = store::check_store(check, raw.store.as_ref(), &resolve);
    let postgres = store != crate::store::Backend::Sqlite;
    let fleet = fleet::check_fleet(check, raw.fleet.as_ref(), postgres, env);

    // [notifier.NAME]
    let mut notifiers = BTreeMap::new();
    for (name, table) in &raw.notifier {
        if let Some(n) = notifier::check_notifier(check, name, table, &resolve) {
            notifiers.insert(name.clone(), n);
        }
    }

    let defaults = raw.defaults.map(Spanned::into_inner).unwrap_or_default();
    let mut repos = Vec::new();
    let mut seen = repo::Seen::default();
    for spanned in &raw.repo {
        let around = repo::Around {
            defaults: &defaults,
            state_dir: &daemon.state_dir,
            plugin_dir: daemon.plugin_dir.as_deref(),
            notifiers: &raw.notifier,
            resolve: &resolve,
        };
        let checked = repo::check_repo(check, spanned, &around, &mut seen);
        repos.extend(checked);
    }

    let repo_names: Vec<String> = repos.iter().map(|r| r.name.clone()).collect();
    let mut receivers: Vec<ReceiverConfig> = Vec::new();
    for spanned in &raw.receiver {
        let line = check.line(spanned.span().start);
        let found = receiver::check_receiver(check, line, spanned.get_ref(), &repo_names, &resolve);
        if let Some(r) = found {
            if let Some(first) = receivers.iter().find(|o| o.name == r.name) {
                let message = format!("duplicate name (first defined on line {})", first.line);
                check.push(line, format!("receiver \"{}\".name", r.name), message);
            } else {
                receivers.push(r);
            }
        }
    }

    let mut credentials: Vec<OriginCredential> = Vec::new();
    for spanned in &raw.credential {
        let line = check.line(spanned.span().start);
        if let Some(c) = credentials::check_credential(check, line, spanned.get_ref(), &resolve) {
            if credentials.iter().any(|o| o.url_prefix == c.url_prefix) {
                check.push(
                    line,
                    "credential.url_prefix",
                    "another [[credential]] has this url_prefix",
                );
            } else {
                credentials.push(c);
            }
        }
    }

    let hook = raw
        .hook
        .as_ref()
        .map(|h| {
            let h = h.get_ref();
            HookAllowance {
                env: h
                    .allow_env
                    .as_ref()
                    .map(|v| v.get_ref().clone())
                    .unwrap_or_default(),
                paths: h
                    .allow_paths
                    .as_ref()
                    .map(|v| v.get_ref().iter().map(|p| resolve(p)).collect())
                    .unwrap_or_default(),
            }
        })
        .unwrap_or_default();

    if !check.problems.is_empty() {
        check.problems.sort_by_key(|p| p.line);
        return Err(Problems(std::mem::take(&mut check.problems)));
    }
    let by_name = repos
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect();
    Ok(Config {
        path: path.to_path_buf(),
        daemon,
        store,
        fleet,
        repos,
        plugins,
        notifiers,
        receivers,
        credentials,
        hook,
        by_name,
        needs: Vec::new(),
    })
}

/// `[plugin.NAME]`: scalar settings, as strings (what `config-get` returns).
fn plugin_settings(
    check: &mut Check<'_>,
    raw: &BTreeMap<String, Spanned<toml::Table>>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut plugins = BTreeMap::new();
    for (name, table) in raw {
        let mut settings = BTreeMap::new();
        for (key, value) in table.get_ref() {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    check.at(
                        table,
                        format!("plugin.{name}.{key}"),
                        "settings must be strings, numbers or booleans",
                    );
                    continue;
                }
            };
            settings.insert(key.clone(), text);
        }
        plugins.insert(name.clone(), settings);
    }
    plugins
}

/// Why `name` cannot be an environment variable's name, said without
/// repeating it; `None` when it can.
fn not_a_variable_name(name: &str) -> Option<String> {
    let shaped = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if looks_like_a_secret(name) {
        Some("must name an environment variable; this looks like a secret pasted in its place (not shown)".into())
    } else if !shaped {
        Some("must name an environment variable (letters, digits and `_`; not shown)".into())
    } else {
        None
    }
}

/// `message` with every word that looks like a secret replaced by `…`.
fn without_secret_looking_words(message: &str) -> String {
    each_word(message, &|c| c == '-', &|word| {
        looks_like_a_secret(word).then(|| "…".to_string())
    })
}

/// `text` with each word (letters, digits, `_`, and what `also` admits)
/// replaced by what `replace` says, if it says anything.
fn each_word(
    text: &str,
    also: &dyn Fn(char) -> bool,
    replace: &dyn Fn(&str) -> Option<String>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match replace(word) {
            Some(other) => out.push_str(&other),
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || also(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A parser message with every quoted value replaced by `"…"`.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…");
            }
            quoted = !quoted;
            if !quoted {
                out.push('"');
            }
            continue;
        }
        if !quoted {
            out.push(c);
        }
    }
    out
}

/// `path` with `.` dropped and `..` applied to what precedes it, without
/// asking the file system (the directory may not exist yet).
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn check_url(url: &str) -> Result<(), String> {
    let parsed = crate::git::check_remote_url(url)?;
    if parsed.password().is_some() || looks_like_a_secret(parsed.username()) {
        let shown = crate::redact::url(url);
        return Err(format!(
            "`{shown}`: put credentials in token_env or token_file, not in the URL"
        ));
    }
    Ok(())
}

/// The floor of learnt attempt limits unless a repo says.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `sparse` (cone directories) or `sparse_patterns`, not both, not with a mirror.
fn check_sparse(check: &mut Check, r: &RawRepo, label: &str, mode: Mode) -> Option<Sparse> {
    let (field, value, sparse) = match (&r.sparse, &r.sparse_patterns) {
        (None, None) => return None,
        (Some(_), Some(p)) => {
            check.at(
                p,
                format!("{label}.sparse_patterns"),
                "use sparse (directories) or sparse_patterns, not both",
            );
            return None;
        }
        (Some(d), None) => ("sparse", d, Sparse::cone(d.get_ref())),
        (None, Some(p)) => ("sparse_patterns", p, Sparse::patterns(p.get_ref())),
    };
    if mode == Mode::Mirror {
        check.at(
            value,
            format!("{label}.{field}"),
            "a mirror has no worktree to make sparse",
        );
        return None;
    }
    match sparse {
        Ok(sparse) => Some(sparse),
        Err(e) => {
            check.at(value, format!("{label}.{field}"), e);
            None
        }
    }
}

/// `publish` and `keep_worktrees`.
fn check_publish(check: &mut Check, r: &RawRepo, label: &str, mode: Mode) -> Publish {
    let keep = r
        .keep_worktrees
        .as_ref()
        .and_then(|k| {
            let v = *k.get_ref();
            if !(0..=100).contains(&v) {
                check.at(
                    k,
                    format!("{label}.keep_worktrees"),
                    format!("{v} is out of range (0 to 100)"),
                );
                None
            } else {
                Some(v as usize)
            }
        })
        .unwrap_or(1);
    match r.publish.as_ref().map(|p| (p, p.get_ref().as_str())) {
        None | Some((_, "in-place")) => {
            if let Some(k) = &r.keep_worktrees {
                check.at(
                    k,
                    format!("{label}.keep_worktrees"),
                    "only meaningful with publish = \"symlink\"",
                );
            }
            Publish::InPlace
        }
        Some((at, "symlink")) if mode == Mode::Mirror => {
            check.at(
                at,
                format!("{label}.publish"),
                "a mirror has no worktree to publish",
            );
            Publish::InPlace
        }
        Some((_, "symlink")) => Publish::Symlink { keep },
        Some((at, other)) => {
            check.at(
                at,
                format!("{label}.publish"),
                format!("`{other}`: use in-place or symlink"),
            );
            Publish::InPlace
        }
    }
}

/// `branch`, `ref` and `semver`: each well formed, and none with a mirror
/// (which takes every ref).
fn check_follow(check: &mut Check, r: &RawRepo, label: &str, mode: Mode) -> Follow {
    let mut follow = Follow::default();
    for (field, value) in [("branch", &r.branch), ("ref", &r.reference)] {
        let Some(value) = value else { continue };
        if let Some(why) = crate::git::bad_ref(value.get_ref()) {
            check.at(
                value,
                format!("{label}.{field}"),
                format!("`{}`: {why}", value.get_ref()),
            );
        } else if mode == Mode::Mirror {
            check.at(
                value,
                format!("{label}.{field}"),
                "a mirror takes every ref: drop it or the mirror mode",
            );
        } else if field == "branch" {
            follow.branch = Some(value.get_ref().clone());
        } else {
            follow.reference = Some(value.get_ref().clone());
        }
    }
    if let Some(range) = &r.semver {
        match crate::git::parse_semver(range.get_ref()) {
            Err(e) => check.at(range, format!("{label}.semver"), e),
            Ok(_) if mode == Mode::Mirror => check.at(
                range,
                format!("{label}.semver"),
                "a mirror takes every ref: drop it or the mirror mode",
            ),
            Ok(req) => follow.semver = Some(req),
        }
    }
    follow
}

fn check_auth(
    check: &mut Check,
    r: &RawRepo,
    label: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> AuthRef {
    let given: Vec<&Spanned<String>> = [&r.token_env, &r.token_file, &r.password_file, &r.ssh_key]
        .into_iter()
        .flatten()
        .collect();
    if given.len() > 1 {
        check.at(
            given[1],
            label.to_string(),
            "use only one of token_env, token_file, password_file and ssh_key",
        );
    }
    if let Some(var) = &r.token_env {
        check.need_variable(var, format!("{label}.token_env"));
        return AuthRef::TokenEnv(var.get_ref().clone());
    }
    let file = |check: &mut Check, v: &Spanned<String>, field: &str| {
        let path = resolve(v.get_ref());
        check.need_file(v, format!("{label}.{field}"), &path);
        path
    };
    if let Some(f) = &r.token_file {
        return AuthRef::TokenFile(file(check, f, "token_file"));
    }
    // A password is sent as a token is (basic auth), with `username`.
    if let Some(f) = &r.password_file {
        return AuthRef::TokenFile(file(check, f, "password_file"));
    }
    if let Some(k) = &r.ssh_key {
        let key = file(check, k, "ssh_key");
        let known_hosts = r
            .known_hosts
            .as_ref()
            .map(|h| file(check, h, "known_hosts"));
        return AuthRef::SshKey { key, known_hosts };
    }
    if let Some(h) = &r.known_hosts {
        check.at(
            h,
            format!("{label}.known_hosts"),
            "only meaningful with ssh_key",
        );
    }
    AuthRef::None
}

fn check_policy(
    check: &mut Check,
    p: &Spanned<RawPolicy>,
    label: &str,
    plugin_dir: Option<&Path>,
) -> PolicyRef {
    let policy = match p.get_ref() {
        RawPolicy::Name(name) => PolicyRef {
            retry: Some(name.clone()),
            backoff: Some(name.clone()),
            notify: Some(name.clone()),
        },
        RawPolicy::Roles {
            retry,
            backoff,
            notify,
        } => PolicyRef {
            retry: retry.clone(),
            backoff: backoff.clone(),
            notify: notify.clone(),
        },
    };
    let names: BTreeSet<&String> = [&policy.retry, &policy.backoff, &policy.notify]
        .into_iter()
        .flatten()
        .collect();
    for name in names {
        if name == "builtin" {
            continue;
        }
        // A name is a file in the plugin directory, nothing outside it.
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !plain {
            check.at(
                p,
                format!("{label}.policy"),
                format!("`{name}`: a plugin name is a file name in plugin_dir (letters, digits, `-`, `_`, `.`)"),
            );
            continue;
        }
        match plugin_dir {
            None => check.at(
                p,
                format!("{label}.policy"),
                format!("plugin `{name}` named but [daemon] has no plugin_dir"),
            ),
            Some(dir) => {
                let line = check.line(p.span().start);
                let component = dir.join(format!("{name}.wasm"));
                check.need(line, format!("{label}.policy"), Need::Plugin(component));
            }
        }
    }
    let builtin = |n: Option<String>| n.filter(|n| n != "builtin");
    PolicyRef {
        retry: builtin(policy.retry),
        backoff: builtin(policy.backoff),
        notify: builtin(policy.notify),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a test reads: the file alone, or the file and what it needs
    /// from the machine (as the daemon starts: `validate` checks the needs).
    #[derive(Clone, Copy, PartialEq)]
    enum Scope {
        Structure,
        Environment,
    }

    fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, Problems> {
        parse_scoped(text, vars, Scope::Environment)
    }

    fn parse_scoped(text: &str, vars: &[(&str, &str)], scope: Scope) -> Result<Config, Problems> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.get(k).cloned();
        let (read, needs) = parse_needing(Path::new("/etc/gitpulse/gitpulse.toml"), text, &env);
        match scope {
            Scope::Structure => read,
            Scope::Environment => crate::validate::with_needs_met(read, &needs, &env),
        }
    }

    #[test]
    fn reading_the_structure_needs_no_secrets_and_checking_the_environment_does() {
        let text = r#"[[repo]]
name = "app"
url = "https://h/app.git"
token_env = "APP_TOKEN"

[[repo]]
name = "lib"
url = "https://h/lib.git"
token_file = "/nonexistent/lib.token"

[notifier.ops]
kind = "webhook"
url = "https://hooks.example.com/x"
secret_env = "HOOK_SECRET"
"#;
        let config = parse_scoped(text, &[], Scope::Structure).unwrap();
        assert_eq!(config.repos.len(), 2);
        assert_eq!(config.repos[0].auth, AuthRef::TokenEnv("APP_TOKEN".into()));
        let err = parse_scoped(text, &[], Scope::Environment).unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "repo \"app\".token_env",
                "repo \"lib\".token_file",
                "notifier.ops.secret_env"
            ],
            "{err}"
        );
        // A structural mistake is reported whatever the scope.
        let err = parse_scoped("[[repo]]\nname = \"x\"\n", &[], Scope::Structure).unwrap_err();
        assert_eq!(err.0[0].field, "repo \"x\".url");
    }

    #[test]
    fn schedules_parse_cron_and_intervals() {
        assert_eq!(
            Schedule::parse("every 30s").unwrap(),
            Schedule::Every {
                period: Duration::from_secs(30),
                jitter: Duration::from_secs(3)
            }
        );
        assert_eq!(
            Schedule::parse("every 5m jitter 20s").unwrap(),
            Schedule::Every {
                period: Duration::from_secs(300),
                jitter: Duration::from_secs(20)
            }
        );
        assert_eq!(
            Schedule::parse("0 */5 * * * *").unwrap(),
            Schedule::Cron(Cron::parse("0 */5 * * * *").unwrap())
        );
        assert!(Schedule::parse("*/5 * * * *")
            .unwrap_err()
            .contains("5 fields"));
        assert!(Schedule::parse("0 61 * * * *").is_err());
        assert!(Schedule::parse("every soon")
            .unwrap_err()
            .contains("every 30s"));
        assert!(Schedule::parse("every 10s jitter 1m")
            .unwrap_err()
            .contains("longer than"));
    }

    #[test]
    fn a_good_config_gets_defaults_and_resolved_paths() {
        let config = parse_with(
            r#"
[daemon]
breaker_cool_down = "5s"

[defaults]
schedule = "every 1m"
mode = "reset"

[[repo]]
name = "app"
url = "https://git.example.com/app.git"
token_env = "APP_TOKEN"
labels = { team = "platform" }

[[repo]]
name = "docs"
url = "git://git.example.com/docs.git"
dir = "/srv/docs"
schedule = "0 0 * * * *"
mode = "ff"
"#,
            &[("APP_TOKEN", "t0k")],
        )
        .unwrap();
        let app = config.repo("app").unwrap();
        assert_eq!(
            app.dir,
            PathBuf::from("/etc/gitpulse/gitpulse-state/checkouts/app")
        );
        assert_eq!(app.mode, Mode::Reset);
        assert_eq!(app.auth, AuthRef::TokenEnv("APP_TOKEN".into()));
        assert_eq!(app.labels["team"], "platform");
        assert!(
            matches!(app.schedule, Schedule::Every { period, .. } if period == Duration::from_secs(60))
        );
        let docs = config.repo("docs").unwrap();
        assert_eq!(docs.mode, Mode::FastForward);
        assert_eq!(docs.schedule, Schedule::parse("0 0 * * * *").unwrap());
        assert_eq!(config.daemon.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(config.daemon.breaker_cool_down, Duration::from_secs(5));
        assert_eq!(config.daemon.breaker_threshold, 5);
        assert_eq!(config.daemon.retention, Duration::from_secs(30 * 24 * 3600));
        assert!(!app.submodules);
        assert_eq!(app.lock_wait, Duration::from_secs(30));
        assert_eq!(app.deadline, None);
    }

    #[test]
    fn pull_options_come_from_defaults_and_repos() {
        let config = parse_with(
            "[defaults]\nsubmodules = true\nlock_wait = \"5s\"\n\n\
             [[repo]]\nname = \"app\"\nurl = \"https://h/app.git\"\ndeadline = \"10m\"\n\n\
             [[repo]]\nname = \"lib\"\nurl = \"https://h/lib.git\"\nsubmodules = false\n",
            &[],
        )
        .unwrap();
        let app = config.repo("app").unwrap();
        assert!(app.submodules);
        assert_eq!(app.lock_wait, Duration::from_secs(5));
        assert_eq!(app.deadline, Some(Duration::from_secs(600)));
        assert!(!config.repo("lib").unwrap().submodules);
        let err = parse_with(
            "[[repo]]\nname = \"app\"\nurl = \"https://h/app.git\"\ndeadline = \"soon\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.0[0].field, "repo \"app\".deadline");
        assert_eq!(err.0[0].line, 4);
    }

    #[test]
    fn moving_a_repo_in_the_file_keeps_its_settings() {
        let one = "[[repo]]\nname = \"app\"\nurl = \"https://h/app.git\"\n";
        let two = format!("[[repo]]\nname = \"new\"\nurl = \"https://h/new.git\"\n\n{one}");
        let a = parse_with(one, &[]).unwrap();
        let b = parse_with(&two, &[]).unwrap();
        let (old, moved) = (a.repo("app").unwrap(), b.repo("app").unwrap());
        assert_ne!(old.line, moved.line);
        assert!(old.same_settings(moved));
        let changed = parse_with(&one.replace("app.git", "other.git"), &[]).unwrap();
        assert!(!old.same_settings(changed.repo("app").unwrap()));
    }

    #[test]
    fn a_token_over_plain_http_to_another_machine_needs_an_opt_in() {
        let repo = |url: &str, extra: &str| {
            format!("[[repo]]\nname = \"a\"\nurl = \"{url}\"\ntoken_env = \"T\"\n{extra}")
        };
        let vars = [("T", "t0ken")];
        let err = parse_with(&repo("http://git.example.com/a.git", ""), &vars).unwrap_err();
        assert!(err.to_string().contains("travel in clear"), "{err}");
        assert!(!err.to_string().contains("t0ken"), "{err}");
        let opted = repo("http://git.example.com/a.git", "allow_http_token = true\n");
        assert!(parse_with(&opted, &vars).is_ok());
        assert!(parse_with(&repo("https://git.example.com/a.git", ""), &vars).is_ok());
        assert!(
            parse_with(&repo("http://127.0.0.1:8080/a.git", ""), &vars).is_ok(),
            "loopback"
        );
    }

    /// Bounded random search (seeded, reproducible): whatever the file
    /// says, parsing ends in a config or in problems, never in a panic, and
    /// never echoes the secret-looking value planted in it.
    #[test]
    fn no_arrangement_of_config_text_panics_or_echoes_a_planted_token() {
        let mut rng = fastrand::Rng::with_seed(0xc0ff1e);
        let token = "ghp_0a1b2c3d4e5f6a7b8c9d";
        let pieces = [
            "[daemon]\n",
            "[defaults]\n",
            "[[repo]]\n",
            "[notifier.n]\n",
            "[plugin.p]\n",
            "name = \"a\"\n",
            "url = \"https://h/a.git\"\n",
            "kind = \"log\"\n",
            "schedule = \"every 1s\"\n",
            "schedule = \"0 0 0 30 2 *\"\n",
            "timeout = \"0s\"\n",
            "retention = \"1s\"\n",
            "depth = -1\n",
            "max_concurrent = 0\n",
            "token_env = \"ghp_0a1b2c3d4e5f6a7b8c9d\"\n",
            "events = [\"nope\"]\n",
            "listen = \"ghp_0a1b2c3d4e5f6a7b8c9d\"\n",
            "dir = \"../x\"\n",
            "policy = { retry = \"r\" }\n",
            "= \n",
            "\"\n",
            "[\n",
            "x = 1\n",
            "\u{0}\n",
        ];
        for _ in 0..3_000 {
            let mut text = String::new();
            for _ in 0..rng.usize(0..10) {
                text.push_str(pieces[rng.usize(..pieces.len())]);
            }
            for scope in [Scope::Structure, Scope::Environment] {
                if let Err(problems) = parse_scoped(&text, &[], scope) {
                    let shown = problems.to_string();
                    assert!(!shown.contains(token), "{text:?} -> {shown}");
                    assert!(!problems.0.is_empty(), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn credential_shapes_are_never_echoed_whatever_their_case() {
        for secret in [
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_0a1b2c3d4e5f6a7b8c9d",
            "glpat-ABCDEFGHIJKLMNOPQRST",
        ] {
            let shown = without_secret_looking_words(&format!("`{secret}`: not a duration"));
            assert!(!shown.contains(secret), "{shown}");
            let text = format!("[[repo]]\nname = \"a\"\nurl = \"https://h/a.git\"\ntoken_env = \"{secret}\"\ntimeout = \"{secret}\"\n");
            let problems = parse_scoped(&text, &[], Scope::Structure).unwrap_err();
            assert!(!problems.to_string().contains(secret), "{problems}");
        }
        // Names and ordinary words stay.
        for word in [
            "GITPULSE_TOKEN",
            "SMTP_PASSWORD",
            "AKIA",
            "main",
            "refs-heads-main",
        ] {
            assert_eq!(without_secret_looking_words(word), word);
        }
    }

    #[test]
    fn group_write_comes_from_defaults_unless_a_repo_says() {
        let config = parse_with(
            "[defaults]\ngroup_write = true\n\n[[repo]]\nname = \"a\"\nurl = \"https://h/a.git\"\n\n\
             [[repo]]\nname = \"b\"\nurl = \"https://h/b.git\"\ngroup_write = false\n",
            &[],
        )
        .unwrap();
        assert!(config.repo("a").unwrap().group_write);
        assert!(!config.repo("b").unwrap().group_write);
    }

    #[test]
    fn plugin_names_stay_inside_the_plugin_directory() {
        let text = |name: &str| {
            format!(
                "[daemon]\nplugin_dir = \"/nonexistent/plugins\"\n\n\
                 [[repo]]\nname = \"a\"\nurl = \"https://h/a.git\"\npolicy = \"{name}\"\n"
            )
        };
        for bad in ["../../etc/evil", "sub/p", ".."] {
            let err = parse_scoped(&text(bad), &[], Scope::Structure).unwrap_err();
            assert_eq!(err.0[0].field, "repo \"a\".policy", "{bad}: {err}");
            assert!(err.to_string().contains("file name in plugin_dir"), "{err}");
        }
        assert!(parse_scoped(&text("retry-after"), &[], Scope::Structure).is_ok());
    }

    #[test]
    fn a_secret_pasted_in_the_wrong_place_is_never_echoed() {
        let token = "ghp_9a8b7c6d5e4f3a2b1c0d";
        let text = format!(
            "[[repo]]\nname = \"a\"\nurl = \"https://h/a.git\"\ntoken_env = \"{token}\"\n\n\
             [[repo]]\nname = \"b\"\nurl = \"https://h/b.git\"\ntoken_file = \"{token}\"\n\n\
             [[repo]]\nname = \"c\"\nurl = \"https://bob:pa/ss#{token}@h/c.git\"\n"
        );
        let err = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(!err.contains(token) && !err.contains("pa/ss"), "{err}");
        assert!(err.contains("looks like a secret"), "{err}");
        let typed = format!("[daemon]\nmax_concurrent = \"{token}\"\n");
        let err = parse_with(&typed, &[]).unwrap_err().to_string();
        assert!(!err.contains(token), "{err}");
        assert!(err.contains("gitpulse.toml:2"), "{err}");
    }

    #[test]
    fn ref_and_semver_are_checked_where_they_are_written() {
        let repo =
            |extra: &str| format!("[[repo]]\nname = \"a\"\nurl = \"https://h/a.git\"\n{extra}");
        let ok = parse_with(&repo("ref = \"v1.2\"\nsemver = \">=1.2, <2\"\n"), &[]).unwrap();
        assert_eq!(ok.repos[0].follow.reference.as_deref(), Some("v1.2"));
        assert_eq!(ok.repos[0].follow.describe(), "semver >=1.2, <2");
        for (extra, field, said) in [
            ("ref = \"a..b\"\n", "ref", "not a valid git ref name"),
            ("semver = \"latest\"\n", "semver", "not a semver range"),
            (
                "branch = \"x\"\nmode = \"mirror\"\n",
                "branch",
                "a mirror takes every ref",
            ),
        ] {
            let err = parse_with(&repo(extra), &[]).unwrap_err();
            assert_eq!(err.0[0].field, format!("repo \"a\".{field}"), "{err}");
            assert_eq!(err.0[0].line, 4, "{err}");
            assert!(err.to_string().contains(said), "{err}");
        }
    }

    #[test]
    fn steps_are_checked_where_they_are_written() {
        let repo = |step: &str| {
            format!("[[repo]]\nname = \"a\"\nurl = \"https://h/a.git\"\n\n[[repo.step]]\n{step}")
        };
        let ok = parse_with(
            &repo("name = \"reload\"\nrun = [\"systemctl\", \"reload\", \"nginx\"]\npaths = [\"conf/**\"]\ntimeout = \"30s\"\n"),
            &[],
        )
        .unwrap();
        let step = &ok.repos[0].steps[0];
        assert_eq!(step.name, "reload");
        assert_eq!(step.timeout, Duration::from_secs(30));
        assert_eq!(step.when, step::When::Changed);
        for (step, field, said) in [
            (
                "name = \"x\"\nrun = \"make\"\n",
                "step \"x\".run",
                "shell = true",
            ),
            ("name = \"x\"\nrun = []\n", "step \"x\".run", "empty"),
            (
                "name = \"x\"\nrun = [\"a\"]\nwhen = \"often\"\n",
                "step \"x\".when",
                "changed, failed or always",
            ),
            (
                "name = \"x\"\nrun = [\"a\"]\ntimeout = \"0s\"\n",
                "step \"x\".timeout",
                "greater than zero",
            ),
            ("run = [\"a\"]\n", "step[0]", "missing field `name`"),
        ] {
            let err = parse_with(&repo(step), &[]).unwrap_err();
            assert_eq!(err.0[0].field, format!("repo \"a\".{field}"), "{err}");
            assert!(err.to_string().contains(said), "{err}");
            assert!(err.0[0].line >= 5, "{err}");
        }
        let twice =
            repo("name = \"x\"\nrun = [\"a\"]\n\n[[repo.step]]\nname = \"x\"\nrun = [\"b\"]\n");
        let err = parse_with(&twice, &[]).unwrap_err();
        assert!(err.to_string().contains("duplicate step name"), "{err}");
    }

    #[test]
    fn a_username_needs_a_token_and_no_colon() {
        let repo =
            |extra: &str| format!("[[repo]]\nname = \"a\"\nurl = \"https://h/a.git\"\n{extra}");
        let ok = parse_with(
            &repo("token_env = \"T\"\nusername = \"deploy\"\n"),
            &[("T", "x")],
        )
        .unwrap();
        assert_eq!(ok.repos[0].username.as_deref(), Some("deploy"));
        for (extra, said) in [
            ("username = \"deploy\"\n", "add token_env or token_file"),
            ("token_env = \"T\"\nusername = \"a:b\"\n", "cannot hold `:`"),
        ] {
            let err = parse_with(&repo(extra), &[("T", "x")]).unwrap_err();
            assert_eq!(err.0[0].field, "repo \"a\".username", "{err}");
            assert!(err.to_string().contains(said), "{err}");
        }
    }

    #[test]
    fn a_public_listen_address_must_be_asked_for() {
        let err = parse_with("[daemon]\nlisten = \"0.0.0.0:8787\"\n", &[]).unwrap_err();
        assert_eq!(err.0[0].field, "daemon.listen", "{err}");
        assert!(err.to_string().contains("listen_public = true"), "{err}");
        let ok = parse_with(
            "[daemon]\nlisten = \"0.0.0.0:8787\"\nlisten_public = true\n",
            &[],
        );
        assert!(ok.is_ok());
        let env_override = parse_with("", &[("GITPULSE_LISTEN", "10.1.2.3:80")]);
        assert!(env_override.is_err(), "the environment is held to it too");
        let token = parse_with(
            "[daemon]\napi_token_env = \"API_T\"\napi_token_file = \"t\"\n",
            &[("API_T", "x")],
        )
        .unwrap_err();
        assert_eq!(token.0[0].field, "daemon.api_token_file", "{token}");
    }

    #[test]
    fn names_dirs_and_durations_that_cannot_work_are_refused() {
        let err = parse_with(
            r#"[daemon]
breaker_cool_down = "18446744073709551615s"

[[repo]]
name = ".."
url = "https://h/a.git"

[[repo]]
name = "b"
url = "https://h/b.git"
dir = "/srv/x/./b"
timeout = "0s"

[[repo]]
name = "c"
url = "https://h/c.git"
dir = "/srv/x/y/../b"

[[repo]]
name = "d"
url = "https://h/d.git"
dir = "/srv/x/b/inner"
"#,
            &[],
        )
        .unwrap_err();
        let found: Vec<String> = err
            .0
            .iter()
            .map(|p| format!("{}:{}", p.line, p.field))
            .collect();
        assert_eq!(
            found,
            [
                "2:daemon.breaker_cool_down",
                "5:repo \"..\".name",
                "12:repo \"b\".timeout",
                "17:repo \"c\".dir",
                "22:repo \"d\".dir",
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("largest accepted, 3650d"), "{text}");
        assert!(
            text.contains("is also the checkout of repo \"b\""),
            "{text}"
        );
        assert!(
            text.contains("overlaps the checkout of repo \"b\""),
            "{text}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line_and_field() {
        let err = parse_with(
            r#"[daemon]
listen = "localhost"

[[repo]]
name = "app"
url = "ftp://x/app.git"
schedule = "*/5 * * * *"
token_env = "MISSING_TOKEN"

[[repo]]
name = "app"
url = "https://h/app.git"
mode = "merge"
notifiers = ["ops"]
"#,
            &[],
        )
        .unwrap_err();
        let lines: Vec<String> = err
            .0
            .iter()
            .map(|p| format!("{}:{}", p.line, p.field))
            .collect();
        assert_eq!(
            lines,
            [
                "2:daemon.listen",
                "6:repo \"app\".url",
                "7:repo \"app\".schedule",
                "8:repo \"app\".token_env",
                "11:repo \"app\".name",
                "13:repo \"app\".mode",
                "14:repo \"app\".notifiers",
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("/etc/gitpulse/gitpulse.toml:7: repo \"app\".schedule:"),
            "{text}"
        );
        assert!(text.contains("MISSING_TOKEN is not set"), "{text}");
        assert!(
            text.contains("duplicate name (first defined on line 5)"),
            "{text}"
        );
        assert!(text.contains("`merge`: use ff, reset or mirror"), "{text}");
        assert!(text.contains("no [notifier.ops] is defined"), "{text}");
    }

    #[test]
    fn unknown_fields_and_bad_toml_point_at_the_line() {
        let err = parse_with(
            "[[repo]]\nname = \"a\"\nurl = \"https://h/a\"\nshedule = \"every 1m\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].line, 4, "{err}");
        assert!(err.0[0].message.contains("shedule"), "{err}");
        let err = parse_with("[[repo]\nname = 1\n", &[]).unwrap_err();
        assert_eq!(err.0[0].line, 1, "{err}");
    }

    #[test]
    fn credentials_in_urls_are_refused_without_being_shown() {
        let err = parse_with(
            "[[repo]]\nname = \"a\"\nurl = \"https://u:hunter22@h/a\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("token_env"), "{err}");
        assert!(!err.contains("hunter22"), "{err}");
    }
}
