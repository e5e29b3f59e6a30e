//! Policy plugins end to end: the standard component against the native
//! built-in, the example policies in real pulls, bad plugins contained, and
//! the author tools (`plugin new`, `check`, `simulate`).

use crate::common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gitpulse::plugin::{Plugin, PluginEnv, Sandbox, Told};
use gitpulse::policy::WasmPolicy;
use gitpulse::policy::{AttemptContext, Backoff, Builtin, RetryPolicy};
use gitpulse::FailureClass;
use gitpulse_testkit::plugins;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = gitpulse().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `gitpulse plugin check` of `wasm`, uncached, with `mode=MODE`.
fn check_in_mode(wasm: &Path, mode: &str) -> (i32, String, String) {
    let config = format!("mode={mode}");
    run(&[
        "plugin",
        "check",
        path(wasm),
        "--no-cache",
        "--plugin-config",
        &config,
    ])
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `gitpulse pull --json` through `served`'s proxy into `dir`, with the
/// plugin `wasm` (uncached) and `extra` flags.
fn pull_with_plugin(served: &Served, dir: &str, wasm: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["--policy", path(wasm), "--no-cache"];
    args.extend_from_slice(extra);
    pull(&served.url(), &served.dir(dir), &args)
}

#[test]
fn the_standard_component_decides_exactly_like_the_native_builtin() {
    let wasm = plugins::build("gitpulse-standard-policy");
    let seed = 20261122;
    let settings = BTreeMap::from([
        ("base_ms".to_string(), "1000".to_string()),
        ("max_ms".to_string(), "60000".to_string()),
    ]);
    let plugin = Plugin::load(
        &wasm,
        None,
        Sandbox::default(),
        PluginEnv::new(settings, Some(seed)),
    )
    .unwrap();
    assert!(plugin.roles.retry && plugin.roles.backoff && plugin.roles.notify);
    let backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
    let told = Told {
        max_attempts: 6,
        max_delay: Duration::from_secs(60),
    };
    let mut component = WasmPolicy::new(
        plugin,
        Builtin::new(backoff, 6, Some(1)),
        gitpulse::events::RepoRef::default(),
        told,
    );
    let mut native = Builtin::new(backoff, 6, Some(seed));

    // A generated trace: every class, attempts 1..=6, with and without
    // Retry-After hints and deadlines.
    let mut x: u64 = 42;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut retries = 0;
    for i in 0..2000 {
        let ctx = AttemptContext {
            attempt: (next() % 6) as u32 + 1,
            class: FailureClass::ALL[(next() % 16) as usize],
            http_status: None,
            retry_after: (next() % 4 == 0).then(|| Duration::from_millis(next() % 90_000)),
            elapsed: Duration::from_millis(next() % 100_000),
            remaining: (next() % 3 == 0).then(|| Duration::from_millis(next() % 120_000)),
            previous_delay: None,
        };
        let expected = native.decide(&ctx);
        let got = component.decide(&ctx);
        assert_eq!(got, expected, "step {i}: {ctx:?}");
        retries += matches!(got, gitpulse::policy::Decision::RetryAfter { .. }) as u32;
    }
    assert_eq!(component.faults, 0);
    assert!(retries > 300, "the trace exercised retries ({retries})");
}

#[test]
fn plugin_check_reports_roles_contract_and_size_and_uses_the_compile_cache() {
    let wasm = plugins::build("gitpulse-standard-policy");
    let cache = tempfile::tempdir().unwrap();
    let args = [
        "plugin",
        "check",
        path(&wasm),
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("roles      retry, backoff, notify"), "{out}");
    assert!(
        out.contains("gitpulse:policy@0.1.0 (this host accepts 0.1.x)"),
        "{out}"
    );
    assert!(out.contains("KiB") && out.contains("(compiled)"), "{out}");
    assert!(out.contains("ok: no faults"), "{out}");
    let (code, out, _) = run(&args);
    assert_eq!(code, 0);
    assert!(out.contains("compile cache hit"), "{out}");
}

#[test]
fn a_swapped_or_exposed_compile_cache_is_never_loaded() {
    use sha2::Digest as _;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let (a, b) = (
        plugins::build("retry-after-policy"),
        plugins::build("escalation-policy"),
    );
    let check = |wasm: &Path| run(&["plugin", "check", path(wasm), "--cache-dir", dir]);
    for wasm in [&a, &b] {
        let (code, out, err) = check(wasm);
        assert_eq!(code, 0, "{out}{err}");
    }
    let entry = |wasm: &Path| {
        let digest = sha2::Sha256::digest(std::fs::read(wasm).unwrap());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(&hex))
            .unwrap()
    };
    // Someone puts one plugin's native code where the other's is cached.
    std::fs::copy(entry(&a), entry(&b)).unwrap();
    let (code, out, err) = check(&b);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("roles      notify"),
        "the escalation plugin's own roles: {out}"
    );
    assert!(
        out.contains("(compiled)"),
        "the swapped artefact was refused: {out}"
    );

    // A cache of ours that others could read is closed before use.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out, _) = check(&a);
    assert_eq!(code, 0);
    let mode = std::fs::metadata(cache.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "{out}");
}

#[test]
#[cfg_attr(
    not(gitpulse_tests_as_root),
    ignore = "giving the cache directory to another user needs root"
)]
fn a_compile_cache_owned_by_another_user_is_not_used() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let a = plugins::build("retry-after-policy");
    let check = || run(&["plugin", "check", path(&a), "--cache-dir", dir]);
    assert_eq!(check().0, 0);
    // Another user (nobody) owns it now: its artefacts could be anything.
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534", dir])
        .status()
        .unwrap();
    assert!(chown.success());
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("(compiled)"),
        "not loaded from another user's cache: {out}"
    );
}

#[test]
fn a_plugin_that_sleeps_does_not_block_the_host() {
    let wasm = plugins::build("misbehave-policy");
    let (code, out, err) = check_in_mode(&wasm, "sleep");
    assert_eq!(code, 0, "{out}{err}");
    // Every wait is ready at once: a three-second sleep takes no time, so
    // no plugin can hold a host call (and the daemon) for as long as it likes.
    let slept: Vec<u128> = out
        .lines()
        .filter_map(|l| l.split("misbehave: slept ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    assert!(!slept.is_empty(), "{out}");
    assert!(slept.iter().all(|&ms| ms < 1000), "{slept:?}\n{out}");
}

#[test]
fn files_that_are_not_usable_plugins_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("readme.wasm");
    std::fs::write(&text, "not wasm at all").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        (text, "not a WebAssembly file".to_string()),
        (core, "core WebAssembly module".to_string()),
        (
            plugins::build("wrong-version-policy"),
            "gitpulse:policy@0.2.0; this gitpulse accepts gitpulse:policy@0.1.x".to_string(),
        ),
        (
            plugins::build("wrong-world-plugin"),
            "exports none of gitpulse:policy/retry".to_string(),
        ),
    ];
    for (file, needle) in cases {
        let (code, out, err) = run(&["plugin", "check", path(&file), "--no-cache"]);
        assert_eq!(code, 2, "{}: {out}{err}", file.display());
        assert!(err.contains(&needle), "{}: {err}", file.display());
    }
}

#[test]
fn misbehaving_plugins_are_bounded_and_named() {
    let wasm = plugins::build("misbehave-policy");
    let cases = [
        ("loop", "exceeded its CPU budget"),
        ("host-loop", "exceeded its CPU budget"),
        ("bomb", "exceeded its memory cap of 16 MiB"),
        ("trap", "trapped"),
        ("years", "beyond the cap"),
        ("huge-reason", "stop reason (limit 512)"),
        ("huge-template", "limit 256 KiB"),
        (
            "loop-template",
            "(rendered with a sample event): took more than 100000",
        ),
        (
            "vars-bomb",
            "(rendered with a sample event): took more than 100000",
        ),
        (
            "text-template",
            "notify template for changed on webhook (rendered with a sample event): \
             the webhook body is not JSON",
        ),
    ];
    for (mode, needle) in cases {
        let started = Instant::now();
        let (code, out, err) = check_in_mode(&wasm, mode);
        assert_eq!(code, 1, "{mode}: {out}{err}");
        assert!(out.contains(needle), "{mode}: {out}");
        // Host calls are charged too: a plugin looping through them is
        // stopped within its budget, not by the 100× wall-clock backstop.
        assert!(!out.contains("host calls"), "{mode}: {out}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{mode} took {:?}",
            started.elapsed()
        );
    }
    let (code, out, _) = run(&[
        "plugin",
        "check",
        path(&wasm),
        "--no-cache",
        "--plugin-config",
        "mode=ok",
    ]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn plugins_reach_no_files_environment_or_network() {
    let wasm = plugins::build("misbehave-policy");
    let out = gitpulse()
        .args([
            "plugin",
            "check",
            path(&wasm),
            "--no-cache",
            "--plugin-config",
            "mode=snoop",
        ])
        .env("GITPULSE_SECRET_FOR_TEST", "should-not-leak")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("snoop: file denied"), "{stdout}");
    assert!(stdout.contains("env empty"), "{stdout}");
    assert!(stdout.contains("net denied"), "{stdout}");
    assert!(
        !stdout.contains("READ") && !stdout.contains("VISIBLE") && !stdout.contains("CONNECTED")
    );
}

#[test]
fn a_faulting_plugin_falls_back_to_the_builtin_and_is_quarantined() {
    let wasm = plugins::build("misbehave-policy");
    let served = Served::new("app");
    served.proxy.push_times(Fault::Status(503), 4);
    let run = pull_with_plugin(
        &served,
        "c",
        &wasm,
        &["--plugin-config", "mode=loop", "--max-attempts", "6"],
    );
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert_eq!(run.classes(), ["server-error"; 4]);
    let fallback = "exceeded its CPU budget of 10ms; the built-in policy decided instead";
    assert!(run.stderr.contains(fallback), "{run:?}");
    assert!(
        run.stderr
            .contains("quarantined after 3 consecutive faults"),
        "{run:?}"
    );
    assert_eq!(
        run.stderr.matches("exceeded its CPU budget").count(),
        3,
        "not called once quarantined: {run:?}"
    );
    assert_eq!(checkout_state(&served.dir("c")), (served.up.head(), true));
}

#[test]
fn pull_with_the_retry_after_policy_backs_off_harder_on_429() {
    let wasm = plugins::build("retry-after-policy");
    let served = Served::new("app");
    served.proxy.push(Fault::Status(429));
    served.proxy.push(Fault::RateLimited {
        retry_after_secs: 1,
    });
    let run = pull_with_plugin(
        &served,
        "c",
        &wasm,
        &["--plugin-config", "base_ms=400", "--backoff-max", "5s"],
    );
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert_eq!(run.classes(), ["rate-limited", "rate-limited"]);
    let first = run.json["attempts"][0]["delay_ms"].as_u64().unwrap();
    let second = run.json["attempts"][1]["delay_ms"].as_u64().unwrap();
    // Attempt 1 on the 429 curve: equal jitter of 400 ms → [200, 400] (the
    // built-in would wait at most --backoff-base 50 ms).
    assert!((200..=400).contains(&first), "{first}");
    assert!(second >= 1000, "Retry-After: 1 honoured, got {second}");
}

#[test]
fn pull_with_the_business_hours_policy_stops_outside_the_window() {
    let wasm = plugins::build("business-hours-policy");
    let served = Served::new("app");
    served.proxy.push(Fault::Status(503));
    let run = pull_with_plugin(&served, "closed", &wasm, &["--plugin-config", "days=none"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.json["reason"], "policy: outside business hours",
        "{run:?}"
    );

    served.proxy.push(Fault::Status(503));
    let always = [
        "--plugin-config",
        "days=mon,tue,wed,thu,fri,sat,sun",
        "--plugin-config",
        "start=00:00",
        "--plugin-config",
        "end=23:59",
    ];
    let run = pull_with_plugin(&served, "open", &wasm, &always);
    assert_eq!((run.code, run.outcome()), (0, "cloned"), "{run:?}");
    assert_eq!(run.classes(), ["server-error"]);
}

#[test]
fn the_escalation_policy_keeps_state_between_calls() {
    let wasm = plugins::build("escalation-policy");
    let (code, out, err) = run(&["plugin", "check", path(&wasm), "--no-cache"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("roles      notify"), "{out}");
    // The smoke trace sends `failed` on three channels in a row: the third
    // reaches the threshold only because the first two were remembered.
    assert!(
        out.contains("failed on email") && out.contains("suppress (1 of 3 failures"),
        "{out}"
    );
    assert!(out.contains("suppress (2 of 3 failures"), "{out}");
    assert!(
        out.contains("failed on log") && out.contains("send own template"),
        "{out}"
    );
}

#[test]
fn simulate_prints_a_reproducible_timeline_and_plot() {
    let wasm = plugins::build("gitpulse-standard-policy");
    let args = [
        "plugin",
        "simulate",
        path(&wasm),
        "--no-cache",
        "--classes",
        "server-error,server-error,timeout,rate-limited,auth",
        "--seed",
        "3",
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("delay curve"), "{out}");
    assert!(out.contains("      5  auth           stop"), "{out}");
    assert!(out.contains("not retryable"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" | ")).count(),
        4,
        "{out}"
    );
    assert_eq!(run(&args).1, out, "same seed, same timeline");

    let trace = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(trace.path(), "{\"class\":\"rate-limited\",\"http_status\":429,\"retry_after_ms\":7000}\n{\"class\":\"teapot\"}\n").unwrap();
    let (code, _, err) = run(&[
        "plugin",
        "simulate",
        path(&wasm),
        "--trace",
        trace.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains(":2:") && err.contains("teapot"), "{err}");

    std::fs::write(
        trace.path(),
        "{\"class\":\"rate-limited\",\"http_status\":429,\"retry_after_ms\":7000}\n",
    )
    .unwrap();
    let (code, out, _) = run(&[
        "plugin",
        "simulate",
        path(&wasm),
        "--no-cache",
        "--trace",
        trace.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let step: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(step["delay_ms"], 7000, "{out}");
}

#[test]
fn plugin_new_scaffolds_a_crate_that_builds_and_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(&[
        "plugin",
        "new",
        "my-policy",
        "--dir",
        dir.path().to_str().unwrap(),
        "--role",
        "full",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let crate_dir = dir.path().join("my-policy");
    let (code, _, err) = run(&[
        "plugin",
        "new",
        "my-policy",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");

    // Share compiled dependencies with the workspace between test runs.
    let target = plugins::workspace_root().join("target/scaffold-test");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for args in [
        vec!["test", "--quiet"],
        vec!["build", "--quiet", "--release", "--target", "wasm32-wasip2"],
    ] {
        let out = std::process::Command::new(&cargo)
            .args(&args)
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wasm = target.join("wasm32-wasip2/release/my_policy.wasm");
    let (code, out, err) = run(&["plugin", "check", path(&wasm), "--no-cache"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("retry, backoff, notify"), "{out}");
}
