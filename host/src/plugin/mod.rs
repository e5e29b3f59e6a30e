//! The WebAssembly plugin host: load, version-check, sandbox, call, fall
//! back.
//!
//! One [`wasmtime::Engine`] per process and one [`Linker`] built once; each
//! [`Plugin`] keeps an `InstancePre` and one live instance that is reused
//! from call to call (instantiating costs ~100 µs, a call well under one)
//! and thrown away after any fault. Every call runs under a fuel budget
//! (the CPU budget) and a memory cap. Compiled components are cached on disk
//! (`cache`) so the second load of a plugin skips compilation.
//!
//! [`WasmPolicy`] puts plugins (one per role) behind the host's
//! [`RetryPolicy`] trait: faults (trap, timeout, memory, invalid output)
//! make that call use the built-in policy, are reported, and after
//! `quarantine_after` consecutive faults the plugin is not called again
//! until its file changes. The [`Registry`] holds each compiled plugin once
//! per file content with that fault record, so a daemon's quarantine holds
//! across pulls.
//!
//! This module never touches git; it speaks in failure classes and
//! decisions.

mod allowance;

mod cache;
mod engine;
mod registry;
mod state;
/// Contract `gitpulse:policy@0.1.x`: its generated types and their
/// conversions to the host's own.
mod v0_1;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Instance, InstancePre};
use wasmtime::{Store, Trap};

pub use registry::Registry;
pub use state::{KvStore, LogLine};
pub use v0_1::{NotifyChoice, Told};

use crate::events::RepoRef;
// The pure policy vocabulary, not `crate::policy`: that module builds on
// this one (its `WasmPolicy` calls plugins), so the dependency runs one way.
use allowance::{Allowance, OverAllowance};
use engine::{engine, linker, Ticker, TICK};
use gitpulse_policy_core::{AttemptContext, Decision};
use state::PluginState;
use v0_1::{backoff, notify, retry, wit};

/// The one place the accepted contract line is written: every minor
/// version of it is accepted (`0.1.0`, `0.1.7` …), nothing else. A new
/// line gets its own bindings module beside `bindings` (0.1).
macro_rules! contract_line {
    () => {
        "0.1"
    };
}

/// The contract versions this host accepts, as people read them.
pub const ACCEPTED: &str = concat!(contract_line!(), ".x");

/// Whether this host speaks contract `version`.
fn accepts(version: &str) -> bool {
    version
        .strip_prefix(contract_line!())
        .is_some_and(|patch| patch.starts_with('.'))
}

const PACKAGE: &str = "gitpulse:policy";
/// Fuel per millisecond of CPU budget: wasmtime spends about one unit per
/// WebAssembly instruction, and a core runs on the order of 10⁹ of them a
/// second. Fuel, unlike a wall-clock deadline, does not run out because the
/// machine is busy, so a loaded host does not fault well-behaved plugins.
const FUEL_PER_MS: u64 = 1_000_000;
/// A call is also stopped, whatever its fuel, after this many times its CPU
/// budget of wall-clock time (a plugin blocked in a host call, say).
const WALL_CLOCK_FACTOR: u32 = 100;

/// Why a file cannot be used as a plugin. Nothing was loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    /// The file cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("{0}: not a WebAssembly file (no `\\0asm` header)")]
    /// Not WebAssembly.
    NotWasm(PathBuf),
    #[error("{0}: a core WebAssembly module, not a component; build the plugin for wasm32-wasip2 (or wrap it with `wasm-tools component new`)")]
    /// A core module, not a component.
    NotAComponent(PathBuf),
    #[error("{path}: invalid component: {reason}")]
    /// Not a valid component.
    Invalid {
        /// The file.
        path: PathBuf,
        /// What wasmtime said.
        reason: String,
    },
    #[error("{path}: built for {PACKAGE}@{found}; this gitpulse accepts {PACKAGE}@{ACCEPTED}")]
    /// Built for a contract version this host does not speak.
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// The contract version it was built for.
        found: String,
    },
    #[error("{path}: exports none of {PACKAGE}/retry, /backoff or /notify (it exports: {exports}); build it from one of the worlds in wit/")]
    /// Exports none of the roles.
    NoRole {
        /// The file.
        path: PathBuf,
        /// What it exports instead.
        exports: String,
    },
    #[error("{path}: needs imports this host does not provide: {reason}")]
    /// Needs imports the host does not provide.
    Imports {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
}

/// Which roles a plugin exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    /// Exports `retry`.
    pub retry: bool,
    /// Exports `backoff`.
    pub backoff: bool,
    /// Exports `notify`.
    pub notify: bool,
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.retry, "retry"),
            (self.backoff, "backoff"),
            (self.notify, "notify"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join(", "))
    }
}

/// The sandbox of every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sandbox {
    /// CPU time per call.
    pub cpu: Duration,
    /// Host memory per instance: its linear memories and tables together.
    pub memory: usize,
    /// Consecutive faults before the plugin is quarantined.
    pub quarantine_after: u32,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            cpu: Duration::from_millis(10),
            memory: 16 << 20,
            quarantine_after: 3,
        }
    }
}

/// How a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// It ran past its CPU budget (an endless loop, or just slow).
    Timeout(Duration),
    /// It tried to use more memory than the cap.
    Memory(usize),
    /// It trapped (a panic, `unreachable`, an out-of-bounds access …).
    Trap(String),
    /// It answered something the host refuses.
    InvalidOutput(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Timeout(cpu) => write!(
                f,
                "exceeded its CPU budget of {}",
                humantime::format_duration(*cpu)
            ),
            Fault::Memory(cap) => write!(f, "exceeded its memory cap of {} MiB", cap >> 20),
            Fault::Trap(msg) => write!(f, "trapped: {msg}"),
            Fault::InvalidOutput(msg) => write!(f, "invalid output: {msg}"),
        }
    }
}

/// What a plugin instance shares with the host across calls.
#[derive(Clone)]
pub struct PluginEnv {
    /// Its `[plugin.NAME]` settings.
    pub settings: Arc<BTreeMap<String, String>>,
    /// Its key-value store.
    pub kv: Arc<Mutex<KvStore>>,
    /// Its random source (seeded in tests).
    pub rng: Arc<Mutex<fastrand::Rng>>,
    /// What it logged since the last take.
    pub logs: Arc<Mutex<Vec<LogLine>>>,
    /// Told of every call (the daemon's metrics); none by default.
    pub calls: Option<Arc<dyn CallObserver>>,
}

/// Hears of every plugin call: how long it took and how it faulted. The
/// host above (the daemon's metrics) implements it; this module only calls.
pub trait CallObserver: Send + Sync {
    /// Plugin `plugin` answered (or faulted) after `took`.
    fn called(&self, plugin: &str, took: Duration, fault: Option<&Fault>);
}

impl Fault {
    /// The fault's kind in one word: `timeout`, `memory`, `trap`,
    /// `invalid-output`.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Timeout(_) => "timeout",
            Fault::Memory(_) => "memory",
            Fault::Trap(_) => "trap",
            Fault::InvalidOutput(_) => "invalid-output",
        }
    }
}

impl PluginEnv {
    /// Settings, a seeded (or OS-seeded) random source, an in-memory store.
    pub fn new(settings: BTreeMap<String, String>, seed: Option<u64>) -> Self {
        PluginEnv {
            settings: Arc::new(settings),
            kv: Arc::new(Mutex::new(KvStore::in_memory())),
            rng: Arc::new(Mutex::new(
                seed.map(fastrand::Rng::with_seed).unwrap_or_default(),
            )),
            logs: Arc::default(),
            calls: None,
        }
    }

    /// `self` with `kv` as the key-value store.
    pub fn with_kv(mut self, kv: KvStore) -> Self {
        self.kv = Arc::new(Mutex::new(kv));
        self
    }

    /// The log lines written since the last call.
    pub fn take_logs(&self) -> Vec<LogLine> {
        std::mem::take(&mut *self.logs.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct Live {
    store: Store<PluginState>,
    retry: Option<retry::Guest>,
    backoff: Option<backoff::Guest>,
    notify: Option<notify::Guest>,
}

/// A loaded, checked plugin.
pub struct Plugin {
    /// The file stem, as the config names it.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The roles it exports.
    pub roles: Roles,
    /// The contract version the plugin was built against, e.g. `0.1.0`.
    pub contract: String,
    /// Bytes.
    pub size: u64,
    /// Whether this load came from the compile cache.
    pub cached: bool,
    sandbox: Sandbox,
    env: PluginEnv,
    /// Shared by every handle on the same loaded file (see [`Registry`]).
    health: Arc<Health>,
    pre: InstancePre<PluginState>,
    retry_idx: Option<retry::GuestIndices>,
    backoff_idx: Option<backoff::GuestIndices>,
    notify_idx: Option<notify::GuestIndices>,
    live: Option<Live>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("contract", &self.contract)
            .finish()
    }
}

impl Plugin {
    /// Loads and checks `path`. `cache_dir` holds compiled components.
    pub fn load(
        path: &Path,
        cache_dir: Option<&Path>,
        sandbox: Sandbox,
        env: PluginEnv,
    ) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.into(),
            source,
        })?;
        Plugin::from_bytes(path, &bytes, cache_dir, sandbox, env)
    }

    /// Checks and compiles `bytes`, the contents of `path`.
    fn from_bytes(
        path: &Path,
        bytes: &[u8],
        cache_dir: Option<&Path>,
        sandbox: Sandbox,
        env: PluginEnv,
    ) -> Result<Plugin, LoadError> {
        if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
            return Err(LoadError::NotWasm(path.into()));
        }
        // Bytes 4..8: version and layer; layer 0 is a core module.
        if bytes[6..8] == [0, 0] {
            return Err(LoadError::NotAComponent(path.into()));
        }
        let (component, cached) =
            cache::load(engine(), bytes, cache_dir).map_err(|e| LoadError::Invalid {
                path: path.into(),
                reason: format!("{e:#}"),
            })?;

        let ty = component.component_type();
        let mut roles = Roles::default();
        let mut versions = Vec::new();
        let mut exports = Vec::new();
        for (name, _) in ty.exports(engine()) {
            exports.push(name.to_string());
            if let Some((iface, version)) = split_contract_name(name) {
                versions.push(version.to_string());
                match iface {
                    "retry" => roles.retry = true,
                    "backoff" => roles.backoff = true,
                    "notify" => roles.notify = true,
                    _ => {}
                }
            }
        }
        for (name, _) in ty.imports(engine()) {
            if let Some((_, version)) = split_contract_name(name) {
                versions.push(version.to_string());
            }
        }
        if let Some(bad) = versions.iter().find(|v| !accepts(v)) {
            return Err(LoadError::WrongVersion {
                path: path.into(),
                found: bad.clone(),
            });
        }
        if roles == Roles::default() {
            return Err(LoadError::NoRole {
                path: path.into(),
                exports: if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                },
            });
        }
        let linker = linker().map_err(|reason| LoadError::Imports {
            path: path.into(),
            reason,
        })?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Imports {
                path: path.into(),
                reason: format!("{e:#}"),
            })?;
        let invalid = |e: wasmtime::Error| LoadError::Invalid {
            path: path.into(),
            reason: format!("{e:#}"),
        };
        let retry_idx = roles
            .retry
            .then(|| retry::GuestIndices::new(&pre))
            .transpose()
            .map_err(invalid)?;
        let backoff_idx = roles
            .backoff
            .then(|| backoff::GuestIndices::new(&pre))
            .transpose()
            .map_err(invalid)?;
        let notify_idx = roles
            .notify
            .then(|| notify::GuestIndices::new(&pre))
            .transpose()
            .map_err(invalid)?;
        let contract = versions
            .first()
            .cloned()
            .unwrap_or_else(|| concat!(contract_line!(), ".0").into());
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        Ok(Plugin {
            name,
            path: path.into(),
            roles,
            contract,
            size: bytes.len() as u64,
            cached,
            sandbox,
            env,
            health: Arc::default(),
            pre,
            retry_idx,
            backoff_idx,
            notify_idx,
            live: None,
        })
    }

    /// What the plugin shares with the host.
    pub fn env(&self) -> &PluginEnv {
        &self.env
    }

    /// Another handle on this compiled plugin, with its own instance and
    /// `env`, sharing its fault count and quarantine.
    fn handle(&self, env: PluginEnv) -> Plugin {
        Plugin {
            name: self.name.clone(),
            path: self.path.clone(),
            roles: self.roles,
            contract: self.contract.clone(),
            size: self.size,
            cached: self.cached,
            sandbox: self.sandbox,
            env,
            health: self.health.clone(),
            pre: self.pre.clone(),
            retry_idx: self.retry_idx.clone(),
            backoff_idx: self.backoff_idx.clone(),
            notify_idx: self.notify_idx.clone(),
            live: None,
        }
    }

    /// Whether the plugin is set aside after too many consecutive faults.
    pub fn is_quarantined(&self) -> bool {
        self.health.quarantined.load(Ordering::Relaxed)
    }

    fn live(&mut self) -> Result<&mut Live, Fault> {
        if self.live.is_none() {
            let limits = Allowance::new(self.sandbox.memory);
            let env = &self.env;
            let data = PluginState::new(
                env.settings.clone(),
                env.kv.clone(),
                env.rng.clone(),
                env.logs.clone(),
                limits,
            );
            let mut store = Store::new(engine(), data);
            store.limiter(|s| &mut s.limits);
            store.epoch_deadline_trap();
            store.set_epoch_deadline(self.ticks());
            // Instantiation runs the component's start code: same budget.
            let _ = store.set_fuel(self.fuel());
            let running = Ticker::running();
            let instance: Instance = self
                .pre
                .instantiate(&mut store)
                .map_err(|e| self.fault(e))?;
            drop(running);
            let retry = self
                .retry_idx
                .as_ref()
                .map(|i| i.load(&mut store, &instance))
                .transpose()
                .map_err(|e| self.fault(e))?;
            let backoff = self
                .backoff_idx
                .as_ref()
                .map(|i| i.load(&mut store, &instance))
                .transpose()
                .map_err(|e| self.fault(e))?;
            let notify = self
                .notify_idx
                .as_ref()
                .map(|i| i.load(&mut store, &instance))
                .transpose()
                .map_err(|e| self.fault(e))?;
            self.live = Some(Live {
                store,
                retry,
                backoff,
                notify,
            });
        }
        let (ticks, fuel) = (self.ticks(), self.fuel());
        match self.live.as_mut() {
            Some(live) => {
                live.store.data_mut().start_call(self.sandbox.cpu);
                live.store.set_epoch_deadline(ticks);
                live.store
                    .set_fuel(fuel)
                    .map_err(|e| Fault::Trap(e.to_string()))?;
                Ok(live)
            }
            None => Err(Fault::Trap("no instance".into())),
        }
    }

    fn ticks(&self) -> u64 {
        let wall = self.sandbox.cpu * WALL_CLOCK_FACTOR;
        // +1: the current tick may be about to end.
        (wall.as_nanos() / TICK.as_nanos()).max(1) as u64 + 1
    }

    fn fuel(&self) -> u64 {
        let micros = self.sandbox.cpu.as_micros().max(1) as u64;
        micros.saturating_mul(FUEL_PER_MS) / 1000
    }

    fn fault(&self, e: wasmtime::Error) -> Fault {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt | Trap::OutOfFuel) => Fault::Timeout(self.sandbox.cpu),
            _ if e.downcast_ref::<OverAllowance>().is_some() => Fault::Memory(self.sandbox.memory),
            _ => {
                let text = format!("{e:#}");
                if text.contains("memory") && (text.contains("grow") || text.contains("limit")) {
                    Fault::Memory(self.sandbox.memory)
                } else {
                    Fault::Trap(text.lines().next().unwrap_or("").to_string())
                }
            }
        }
    }

    /// Runs `call` on the live instance; a fault discards the instance.
    fn with_live<T>(
        &mut self,
        call: impl FnOnce(&mut Live) -> wasmtime::Result<T>,
    ) -> Result<T, Fault> {
        let live = self.live()?;
        let running = Ticker::running();
        let result = call(live);
        drop(running);
        result.map_err(|e| {
            self.live = None;
            self.fault(e)
        })
    }

    /// Runs one role's call and tells the env's observer how long it took
    /// and how it faulted (invalid answers included).
    fn observed<T>(
        &mut self,
        call: impl FnOnce(&mut Self) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        // The clock is read only for a listener: two reads are a tenth of
        // a decision.
        let started = self.env.calls.is_some().then(std::time::Instant::now);
        let result = call(self);
        if let (Some(calls), Some(started)) = (&self.env.calls, started) {
            calls.called(&self.name, started.elapsed(), result.as_ref().err());
        }
        result
    }

    /// The plugin's `retry.decide`, validated against `told`.
    pub fn decide(&mut self, ctx: &CallContext, told: &Told) -> Result<Decision, Fault> {
        self.observed(|p| {
            let raw = p.with_live(|live| match &live.retry {
                Some(g) => g.call_decide(&mut live.store, &ctx.0),
                None => Err(wasmtime::Error::msg("the plugin has no retry role")),
            })?;
            v0_1::decision_from_wit(raw, told).map_err(Fault::InvalidOutput)
        })
    }

    /// The plugin's `backoff.delay-ms`, validated against `told`.
    pub fn delay(&mut self, ctx: &CallContext, told: &Told) -> Result<Duration, Fault> {
        self.observed(|p| p.delay_unobserved(&ctx.0, told))
    }

    /// A call succeeded: the run of consecutive faults ends.
    pub fn succeeded(&self) {
        self.health.succeeded();
    }

    /// Counts a fault; `Some(count)` when this one quarantines the plugin
    /// (after its sandbox's `quarantine_after` in a row).
    pub fn faulted(&self) -> Option<u32> {
        self.health.faulted(self.sandbox.quarantine_after)
    }

    fn delay_unobserved(
        &mut self,
        ctx: &wit::AttemptContext,
        told: &Told,
    ) -> Result<Duration, Fault> {
        let ms = self.with_live(|live| match &live.backoff {
            Some(g) => g.call_delay_ms(&mut live.store, ctx),
            None => Err(wasmtime::Error::msg("the plugin has no backoff role")),
        })?;
        let delay = Duration::from_millis(ms);
        if delay > told.max_delay {
            return Err(Fault::InvalidOutput(format!(
                "asked to wait {}, beyond the cap of {}",
                humantime::format_duration(delay),
                humantime::format_duration(told.max_delay)
            )));
        }
        Ok(delay)
    }

    /// The plugin's `notify.choose` for `event` on the notifier `channel`
    /// of kind `channel_kind` (email, webhook, log).
    pub fn notify(
        &mut self,
        event: &crate::events::Event,
        channel: &str,
        channel_kind: &str,
    ) -> Result<NotifyChoice, Fault> {
        self.observed(|p| {
            p.choose(
                &wit::Event::from(event),
                &v0_1::channel_to_wit(channel, channel_kind),
            )
            .map(NotifyChoice::from)
        })
    }

    /// The plugin's `notify.choose`, in the generated types.
    fn choose(
        &mut self,
        event: &wit::Event,
        channel: &wit::Channel,
    ) -> Result<wit::NotifyChoice, Fault> {
        let choice = self.with_live(|live| match &live.notify {
            Some(g) => g.call_choose(&mut live.store, event, channel),
            None => Err(wasmtime::Error::msg("the plugin has no notify role")),
        })?;
        let size = match &choice {
            wit::NotifyChoice::Suppress(reason) => reason.len(),
            wit::NotifyChoice::Send(m) => {
                m.template
                    .as_ref()
                    .map(|t| t.subject.len() + t.body.len())
                    .unwrap_or(0)
                    + m.vars.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            }
        };
        if size > 256 * 1024 {
            return Err(Fault::InvalidOutput(format!(
                "returned {size} bytes of template and variables (limit 256 KiB)"
            )));
        }
        Ok(choice)
    }
}

/// `gitpulse:policy/retry@0.1.0` → `("retry", "0.1.0")`.
fn split_contract_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    rest.split_once('@')
}

/// Where compiled plugins are cached: `GITPULSE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/gitpulse/plugins`, else `~/.cache/gitpulse/plugins`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GITPULSE_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("gitpulse").join("plugins"))
}

/// Consecutive faults of a loaded plugin, and whether it is set aside.
/// Kept with the compiled plugin, so a quarantine holds across pulls until
/// the file changes.
/// Atomics, not a lock: every decision reads and resets it.
#[derive(Debug, Default)]
struct Health {
    consecutive_faults: AtomicU32,
    quarantined: AtomicBool,
}

impl Health {
    fn succeeded(&self) {
        if self.consecutive_faults.load(Ordering::Relaxed) != 0 {
            self.consecutive_faults.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a fault; `Some(count)` when this fault quarantines the plugin.
    fn faulted(&self, quarantine_after: u32) -> Option<u32> {
        let count = self.consecutive_faults.fetch_add(1, Ordering::Relaxed) + 1;
        (count >= quarantine_after && !self.quarantined.swap(true, Ordering::Relaxed))
            .then_some(count)
    }
}

/// The attempt context a plugin is called with, in the contract's own
/// form, kept between calls so the repository's strings are copied once.
/// Opaque outside this module: generated types stay in their contract
/// version's module.
pub struct CallContext(wit::AttemptContext);

impl CallContext {
    /// The parts that do not change between a repository's attempts.
    pub fn new(repo: &RepoRef, told: &Told) -> Self {
        CallContext(v0_1::context_base(repo, told))
    }

    /// A whole context for one attempt (the author tools' smoke runs).
    pub fn for_attempt(ctx: &AttemptContext, message: &str, repo: &RepoRef, told: &Told) -> Self {
        CallContext(v0_1::context_to_wit(ctx, message, repo, told))
    }

    /// A placeholder, to take a kept context out while it is refreshed.
    pub fn empty() -> Self {
        CallContext(v0_1::EMPTY_CONTEXT)
    }

    /// The failure being decided about says `message`.
    pub fn set_failure_message(&mut self, message: &str) {
        let kept = &mut self.0.failure.message;
        kept.clear();
        kept.push_str(message);
    }

    /// Brings the context to attempt `ctx`, with the host's retry budget
    /// (remaining, capacity) when it has one.
    pub fn refresh(&mut self, ctx: &AttemptContext, told: &Told, budget: Option<(u32, u32)>) {
        v0_1::refresh_context(&mut self.0, ctx, told);
        if let Some((remaining, capacity)) = budget {
            self.0.budget = wit::Budget {
                remaining,
                capacity,
            };
        }
    }
}

/// Where plugins' key-value stores are kept: `GITPULSE_STATE_DIR`, else
/// `$XDG_STATE_HOME/gitpulse`, else `~/.local/state/gitpulse`.
pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GITPULSE_STATE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("gitpulse"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_minor_version_of_the_contract_line_is_accepted() {
        assert_eq!(ACCEPTED, "0.1.x");
        assert!(accepts("0.1.0") && accepts("0.1.12"));
        assert!(!accepts("0.2.0") && !accepts("0.10.0") && !accepts("1.0.0"));
    }

    #[test]
    fn contract_names_split_into_interface_and_version() {
        assert_eq!(
            split_contract_name("gitpulse:policy/retry@0.1.0"),
            Some(("retry", "0.1.0"))
        );
        assert_eq!(
            split_contract_name("gitpulse:policy/host@0.2.3"),
            Some(("host", "0.2.3"))
        );
        assert_eq!(split_contract_name("wasi:cli/stdout@0.2.0"), None);
    }

    #[test]
    fn files_that_are_not_components_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.wasm");
        std::fs::write(&text, "hello").unwrap();
        let core = dir.path().join("core.wasm");
        std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
        let env = || PluginEnv::new(BTreeMap::new(), Some(1));
        let err = Plugin::load(&text, None, Sandbox::default(), env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a WebAssembly file"), "{err}");
        let err = Plugin::load(&core, None, Sandbox::default(), env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("core WebAssembly module"), "{err}");
        let err = Plugin::load(
            &dir.path().join("absent.wasm"),
            None,
            Sandbox::default(),
            env(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("absent.wasm"), "{err}");
    }
}
