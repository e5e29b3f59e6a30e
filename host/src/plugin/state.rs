//! What a plugin instance can reach: its settings, a clock, a seeded random
//! source, its key-value store and the log — and a WASI context with
//! nothing in it (no files, environment, arguments or network), because
//! Rust's `wasm32-wasip2` standard library imports WASI even when a plugin
//! never uses it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::allowance::{Allowance, MAX_RESOURCES};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::v0_1::{gitpulse::policy::host, gitpulse::policy::types, Level};

/// Most keys a plugin may store, and the largest key and value.
const MAX_KEYS: usize = 1000;
const MAX_KEY_BYTES: usize = 256;
const MAX_VALUE_BYTES: usize = 64 * 1024;

/// A plugin's persisted key-value store.
#[derive(Debug, Default)]
pub struct KvStore {
    map: BTreeMap<String, String>,
    /// Where the map is saved after each change; `None` keeps it in memory.
    file: Option<PathBuf>,
}

impl KvStore {
    /// A store kept in memory only.
    pub fn in_memory() -> Self {
        KvStore::default()
    }

    /// Loads `file` (missing is empty) and saves every change back to it.
    pub fn persisted(file: PathBuf) -> std::io::Result<Self> {
        let map = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", file.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(KvStore {
            map,
            file: Some(file),
        })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.map.get(key).cloned()
    }

    fn set(&mut self, key: String, value: String) -> Result<(), String> {
        if key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "kv-set `{}`: key or value too large",
                truncate(&key, 40)
            ));
        }
        if !self.map.contains_key(&key) && self.map.len() >= MAX_KEYS {
            return Err(format!("kv-set: the store is full ({MAX_KEYS} keys)"));
        }
        self.map.insert(key, value);
        self.save()
    }

    fn delete(&mut self, key: &str) -> Result<(), String> {
        if self.map.remove(key).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = file.parent() {
                crate::model::private_dir(dir)?;
            }
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&self.map)?)?;
            std::fs::rename(tmp, file)
        };
        write().map_err(|e| format!("saving the key-value store {}: {e}", file.display()))
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// One plugin log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// How loud.
    pub level: Level,
    /// What it said.
    pub message: String,
}

impl LogLine {
    /// Whether it is a warning or an error, which the host passes on to
    /// its own log (quieter lines stay with `plugin check`).
    pub fn is_loud(&self) -> bool {
        matches!(self.level, Level::Warn | Level::Error)
    }

    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub fn level_name(&self) -> &'static str {
        match self.level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// The store data of one plugin instance.
pub(crate) struct PluginState {
    pub settings: Arc<BTreeMap<String, String>>,
    pub kv: Arc<Mutex<KvStore>>,
    pub rng: Arc<Mutex<fastrand::Rng>>,
    pub logs: Arc<Mutex<Vec<LogLine>>>,
    pub limits: Allowance,
    wasi: WasiCtx,
    table: ResourceTable,
    /// What the current plugin call's host calls cost, and may cost:
    /// host calls run outside fuel, so a plugin looping through them would
    /// otherwise run until the wall-clock backstop (100× its budget).
    host_spent: Duration,
    host_allowance: Duration,
}

/// What a host call costs at least, however fast it returns: the switch
/// into the host and back is not free either.
const HOST_CALL_FLOOR: Duration = Duration::from_micros(1);

impl PluginState {
    pub fn new(
        settings: Arc<BTreeMap<String, String>>,
        kv: Arc<Mutex<KvStore>>,
        rng: Arc<Mutex<fastrand::Rng>>,
        logs: Arc<Mutex<Vec<LogLine>>>,
        limits: Allowance,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        PluginState {
            settings,
            kv,
            rng,
            logs,
            limits,
            wasi,
            table: resource_table(),
            host_spent: Duration::ZERO,
            host_allowance: Duration::MAX,
        }
    }

    /// A plugin call starts: its host calls may take `allowance`.
    pub(crate) fn start_call(&mut self, allowance: Duration) {
        self.host_spent = Duration::ZERO;
        self.host_allowance = allowance;
    }

    /// Charges a host call that began at `started`; past the allowance the
    /// plugin is stopped as if it ran out of fuel.
    fn charge(&mut self, started: Instant) -> wasmtime::Result<()> {
        self.host_spent += started.elapsed().max(HOST_CALL_FLOOR);
        if self.host_spent > self.host_allowance {
            return Err(wasmtime::Error::new(wasmtime::Trap::OutOfFuel));
        }
        Ok(())
    }

    fn log_line(&self, level: Level, message: String) {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        // A chatty plugin cannot grow the host's memory without bound.
        if logs.len() < 10_000 {
            logs.push(LogLine {
                level,
                message: truncate(&message, 2000).to_string(),
            });
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let started = Instant::now();
        self.log_line(level, message);
        self.charge(started)
    }

    fn config_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let started = Instant::now();
        let value = self.settings.get(&key).cloned();
        self.charge(started).map(|()| value)
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        let started = Instant::now();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.charge(started).map(|()| now)
    }

    fn random(&mut self) -> wasmtime::Result<u64> {
        let started = Instant::now();
        let value = self.rng.lock().unwrap_or_else(|p| p.into_inner()).u64(..);
        self.charge(started).map(|()| value)
    }

    fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let started = Instant::now();
        let value = self.kv.lock().unwrap_or_else(|p| p.into_inner()).get(&key);
        self.charge(started).map(|()| value)
    }

    fn kv_set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        let started = Instant::now();
        let result = self
            .kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(key, value);
        if let Err(problem) = result {
            self.log_line(Level::Warn, problem);
        }
        self.charge(started)
    }

    fn kv_delete(&mut self, key: String) -> wasmtime::Result<()> {
        let started = Instant::now();
        let result = self
            .kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .delete(&key);
        if let Err(problem) = result {
            self.log_line(Level::Warn, problem);
        }
        self.charge(started)
    }
}

/// A resource table that stops growing at [`MAX_RESOURCES`] entries, so a
/// plugin that opens pollables or streams in a loop faults instead of
/// growing the host.
fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persisted_store_survives_reopening_and_enforces_its_caps() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plugins/escalation.json");
        let mut kv = KvStore::persisted(file.clone()).unwrap();
        kv.set("fail:app".into(), "1,2,3".into()).unwrap();
        kv.set("gone".into(), "x".into()).unwrap();
        kv.delete("gone").unwrap();
        assert!(kv
            .set("big".into(), "x".repeat(MAX_VALUE_BYTES + 1))
            .is_err());
        let reopened = KvStore::persisted(file.clone()).unwrap();
        assert_eq!(reopened.get("fail:app").as_deref(), Some("1,2,3"));
        assert_eq!(reopened.get("gone"), None);
        std::fs::write(&file, "not json").unwrap();
        let err = KvStore::persisted(file).unwrap_err().to_string();
        assert!(err.contains("escalation.json"), "{err}");
    }
}
