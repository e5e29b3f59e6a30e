//! The on-disk compile cache: `<dir>/<engine-hash>-<sha256>.cwasm`.
//!
//! The key covers both the component's bytes and the engine's
//! compatibility hash (wasmtime version, target, settings), so a cached
//! artefact is only ever loaded by an engine that produced an identical
//! one. Writes go to a temporary file renamed into place; an unreadable or
//! stale entry is recompiled and overwritten, never trusted.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Compiles `bytes`, or loads the cached compilation. Returns whether the
/// cache served it.
pub(super) fn load(
    engine: &Engine,
    bytes: &[u8],
    dir: Option<&Path>,
) -> wasmtime::Result<(Component, bool)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, bytes)?, false));
    };
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let file = dir.join(format!("{:016x}-{hex}.cwasm", hasher.finish()));
    if file.exists() {
        // SAFETY: the file was written by `Component::serialize` of an
        // engine with the same compatibility hash, in a directory owned by
        // this user; wasmtime still checks its header before use.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, &file) } {
            return Ok((component, true));
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Ok(serialized) = component.serialize() {
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let written = crate::model::private_dir(dir)
            .and_then(|_| std::fs::write(&tmp, serialized))
            .and_then(|_| std::fs::rename(&tmp, &file));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((component, false))
}
