//! Policy plugins, measured against the native built-in in one run:
//!
//! - decision latency: the standard policy as a component (through
//!   `WasmPolicy`, conversions and validation included) vs the same code
//!   linked natively, with the bare context the target is set on and with
//!   a daemon's full one (repository strings, labels, failure message);
//! - loading a plugin: compiling it vs loading the compile cache.
//!
//! Prints a table with the targets (release build: ≤ 1 µs per component
//! decision, ≤ 5 ms cached load).

// A benchmark: a panic is how it fails, and it has no API to document.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gitpulse::plugin::{Plugin, PluginEnv, Sandbox, Told};
use gitpulse::policy::WasmPolicy;
use gitpulse::policy::{AttemptContext, Backoff, Builtin, RetryPolicy};
use gitpulse::FailureClass;

fn contexts(n: usize) -> Vec<AttemptContext> {
    let mut x: u64 = 7;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            AttemptContext {
                attempt: (x % 5) as u32 + 1,
                class: FailureClass::ALL[((x >> 8) % 16) as usize],
                http_status: None,
                retry_after: None,
                elapsed: Duration::from_millis(x % 10_000),
                remaining: None,
                previous_delay: None,
            }
        })
        .collect()
}

/// The median per-decision time over [`ROUNDS`] rounds of every context
/// (after a warm-up): one round can land on a busy moment of the machine.
fn per_call(policy: &mut dyn RetryPolicy, ctxs: &[AttemptContext]) -> Duration {
    for c in ctxs.iter().take(1000) {
        std::hint::black_box(policy.decide(c));
    }
    median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                for c in ctxs {
                    std::hint::black_box(policy.decide(c));
                }
                start.elapsed() / ctxs.len() as u32
            })
            .collect(),
    )
}

const ROUNDS: usize = 7;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let wasm = gitpulse_testkit::plugins::build("gitpulse-standard-policy");
    let backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
    let told = Told {
        max_attempts: 5,
        max_delay: Duration::from_secs(60),
    };
    let env = || PluginEnv::new(BTreeMap::new(), Some(1));
    let ctxs = contexts(50_000);

    let mut native = Builtin::new(backoff, 5, Some(1));
    let native_call = per_call(&mut native, &ctxs);
    let plugin = Plugin::load(&wasm, None, Sandbox::default(), env()).expect("load");
    let mut component = WasmPolicy::new(
        plugin,
        Builtin::new(backoff, 5, Some(1)),
        gitpulse::events::RepoRef::default(),
        told,
    );
    let component_call = per_call(&mut component, &ctxs);
    assert_eq!(component.faults, 0);
    // A daemon's context carries the repository's name, URL, host, branch
    // and labels and the failure's message: each string is one more
    // allocation inside the component.
    let plugin = Plugin::load(&wasm, None, Sandbox::default(), env()).expect("load");
    let repo = gitpulse::events::RepoRef::new(
        "platform-api",
        "https://git.example.com/platform/api.git",
        Some("main"),
        BTreeMap::from([("team".to_string(), "platform".to_string())]),
    );
    let mut full = WasmPolicy::new(plugin, Builtin::new(backoff, 5, Some(1)), repo, told);
    full.set_failure_message("fetch: HTTP 503 from git.example.com");
    let full_call = per_call(&mut full, &ctxs);
    assert_eq!(full.faults, 0);

    let cache = tempfile::tempdir().unwrap();
    let mut compiled = Vec::new();
    let mut cached = Vec::new();
    Plugin::load(&wasm, Some(cache.path()), Sandbox::default(), env()).expect("warm the cache");
    for _ in 0..10 {
        let start = Instant::now();
        let p = Plugin::load(&wasm, None, Sandbox::default(), env()).expect("load");
        compiled.push(start.elapsed());
        assert!(!p.cached);
        let start = Instant::now();
        let p = Plugin::load(&wasm, Some(cache.path()), Sandbox::default(), env()).expect("load");
        cached.push(start.elapsed());
        assert!(p.cached);
    }
    let (compiled, cached) = (median(compiled), median(cached));
    let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);

    println!();
    println!(
        "standard policy component: {:.1} KiB; median of {ROUNDS} rounds of {} decisions over every failure class",
        size as f64 / 1024.0,
        ctxs.len()
    );
    println!();
    println!("| benchmark | component | native built-in | ratio | target |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| decision latency | {:.2} µs | {:.3} µs | {:.0}× | ≤ 1 µs {} |",
        component_call.as_secs_f64() * 1e6,
        native_call.as_secs_f64() * 1e6,
        component_call.as_secs_f64() / native_call.as_secs_f64().max(1e-12),
        if component_call <= Duration::from_micros(1) {
            "✓"
        } else {
            "✗"
        }
    );
    println!(
        "| decision latency, a daemon's full context | {:.2} µs | {:.3} µs | {:.0}× | – |",
        full_call.as_secs_f64() * 1e6,
        native_call.as_secs_f64() * 1e6,
        full_call.as_secs_f64() / native_call.as_secs_f64().max(1e-12),
    );
    println!(
        "| load, compiling | {:.2} ms | – | – | – |",
        compiled.as_secs_f64() * 1e3
    );
    println!(
        "| load, compile cache | {:.2} ms | – | {:.0}× faster | ≤ 5 ms {} |",
        cached.as_secs_f64() * 1e3,
        compiled.as_secs_f64() / cached.as_secs_f64(),
        if cached <= Duration::from_millis(5) {
            "✓"
        } else {
            "✗"
        }
    );
}
