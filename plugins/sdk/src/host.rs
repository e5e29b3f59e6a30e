//! Everything a plugin may ask of the host. In WebAssembly these call the
//! `gitpulse:policy/host` imports; natively they are served by the
//! [`testing`](crate::testing) harness of the current thread.

pub use crate::bindings::gitpulse::policy::host::Level;

#[cfg(target_arch = "wasm32")]
use crate::bindings::gitpulse::policy::host as imports;

#[cfg(target_arch = "wasm32")]
thread_local! {
    /// Settings already asked for, absent ones included.
    static SETTINGS: std::cell::RefCell<std::collections::BTreeMap<String, Option<String>>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

/// Writes to the host's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    imports::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with(|h| h.logs.push((level, message.to_string())));
}

/// The plugin's setting `key` (from `[plugin.NAME]` in the host config, or
/// `--plugin-config key=value`).
///
/// The host fixes an instance's settings when it creates the instance (a
/// changed config means a new instance), so each key is asked for once and
/// remembered: a policy that reads its settings at every decision does not
/// pay a host call, and a string copied across the boundary, each time.
pub fn config_get(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return SETTINGS.with(|known| {
        if let Some(value) = known.borrow().get(key) {
            return value.clone();
        }
        let value = imports::config_get(key);
        known.borrow_mut().insert(key.to_string(), value.clone());
        value
    });
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with(|h| h.config.get(key).cloned())
}

/// Milliseconds since the Unix epoch, as the host sees it.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return imports::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with(|h| h.now_ms)
}

/// A random number from the host's (seedable) generator.
/// A random number from the host (seeded per run, so replays repeat).
pub fn random() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return imports::random();
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with(|h| h.next_random())
}

/// The plugin's stored value for `key`, if any.
pub fn kv_get(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return imports::kv_get(key);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with(|h| h.kv.get(key).cloned())
}

/// Stores `value` under `key` (kept across pulls and restarts).
pub fn kv_set(key: &str, value: &str) {
    #[cfg(target_arch = "wasm32")]
    imports::kv_set(key, value);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with(|h| {
        h.kv.insert(key.to_string(), value.to_string());
    });
}

/// Forgets `key`.
pub fn kv_delete(key: &str) {
    #[cfg(target_arch = "wasm32")]
    imports::kv_delete(key);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with(|h| {
        h.kv.remove(key);
    });
}
