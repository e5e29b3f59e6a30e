//! Builds the workspace's plugin crates to WebAssembly components, for the
//! tests and benchmarks that load them.
//!
//! Each plugin is built by its own `cargo build -p NAME` so the SDK
//! features of different plugins never merge. Cargo's lock on the target
//! directory serialises concurrent test processes; a build that is already
//! fresh costs a fraction of a second.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The component for workspace package `package`, built (once per process)
/// with the `plugin` profile for `wasm32-wasip2`.
pub fn build(package: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(package) {
        return path.clone();
    }
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--profile",
            "plugin",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
        ])
        .current_dir(&root)
        .output()
        .expect("cargo can be run");
    assert!(
        out.status.success(),
        "building plugin {package} failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target
        .join("wasm32-wasip2/plugin")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(path.exists(), "{} was not produced", path.display());
    built.insert(package.to_string(), path.clone());
    path
}
