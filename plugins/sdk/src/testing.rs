//! A native stand-in for the host, so policies are unit-tested with plain
//! `cargo test`: settings, a clock you set, a seeded random source, a
//! key-value store and a log you can inspect.
//!
//! ```
//! use gitpulse_plugin_sdk::testing::{context, Harness};
//! use gitpulse_plugin_sdk::{helpers, types::FailureClass};
//!
//! let delay = Harness::new().seed(7).config("base_ms", "100").run(|| {
//!     helpers::full_jitter(helpers::ceiling_ms(helpers::setting("base_ms", 1000), 60_000, 3))
//! });
//! assert!(delay <= 400);
//! # let _ = context(FailureClass::Timeout, 1);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::host::Level;
use crate::types::{AttemptContext, Budget, FailureClass, FailureDetail, Repo};

/// The host as seen by a plugin under test.
#[derive(Debug, Clone, Default)]
pub struct Harness {
    /// What `config-get` answers.
    pub config: BTreeMap<String, String>,
    /// What `now-ms` answers.
    pub now_ms: u64,
    /// The plugin's key-value store.
    pub kv: BTreeMap<String, String>,
    /// What the plugin logged, in order.
    pub logs: Vec<(Level, String)>,
    state: u64,
}

thread_local! {
    static CURRENT: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

impl Harness {
    /// A host with no settings, an empty store and a fixed clock and seed.
    pub fn new() -> Self {
        Harness {
            state: 0x853c_49e6_748f_ea9b,
            now_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    /// With the setting `key` = `value`.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// With the clock at `ms` (unix milliseconds).
    pub fn now(mut self, ms: u64) -> Self {
        self.now_ms = ms;
        self
    }

    /// With the random source seeded by `seed`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.state = seed ^ 0x853c_49e6_748f_ea9b;
        self
    }

    /// Runs `f` with this harness serving the host calls; returns what `f`
    /// returned. Use [`Harness::run_keep`] to inspect the harness after.
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        self.run_keep(f).0
    }

    /// Like [`Harness::run`], also returning the harness (its kv and logs).
    pub fn run_keep<T>(self, f: impl FnOnce() -> T) -> (T, Harness) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self));
        let out = f();
        let harness = CURRENT.with(|c| c.borrow_mut().take()).unwrap_or_default();
        (out, harness)
    }

    pub(crate) fn next_random(&mut self) -> u64 {
        // splitmix64: tiny, seedable, good enough for jitter tests.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Runs `f` on the current thread's harness (a default one if none is set).
pub(crate) fn with<T>(f: impl FnOnce(&mut Harness) -> T) -> T {
    CURRENT.with(|c| {
        let mut slot = c.borrow_mut();
        f(slot.get_or_insert_with(Harness::new))
    })
}

/// A typical attempt context: `class` failed on attempt `attempt` of 5.
pub fn context(class: FailureClass, attempt: u32) -> AttemptContext {
    AttemptContext {
        attempt,
        failure: FailureDetail {
            class,
            http_status: None,
            retry_after_ms: None,
            git_code: None,
            message: format!("{class:?}"),
        },
        elapsed_ms: 0,
        remaining_ms: None,
        previous_delay_ms: None,
        max_attempts: 5,
        max_delay_ms: 60_000,
        repo: Repo {
            name: "app".into(),
            url: "https://git.example.com/app.git".into(),
            remote_host: "git.example.com".into(),
            branch: "main".into(),
            labels: vec![],
        },
        budget: Budget {
            remaining: 100,
            capacity: 100,
        },
    }
}
