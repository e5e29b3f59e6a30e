//! The on-disk compile cache: `<dir>/<engine-hash>-<sha256>.cwasm`.
//!
//! The key covers both the component's bytes and the engine's
//! compatibility hash (wasmtime version, target, settings), so a cached
//! artefact is only ever loaded by an engine that produced an identical
//! one. Loading one runs native code, so it must also be the artefact this
//! host wrote for these very bytes: each starts with an HMAC-SHA256 of the
//! component's digest and the rest under a key
//! kept in the directory (`key`, 0600), and the directory must be this
//! user's (it is closed to others, 0700, when it is not already). An
//! artefact that fails either check — swapped, truncated, written by
//! someone else — is recompiled and overwritten, never loaded; a directory
//! of another user is not used at all. Writes go to a temporary file renamed into
//! place.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

const TAG: usize = 32;

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
    let _ = crate::model::private_dir(dir);
    let Some(key) = trusted_key(dir) else {
        tracing::warn!(
            dir = %dir.display(),
            "compile cache not used: the directory belongs to another user"
        );
        return Ok((Component::new(engine, bytes)?, false));
    };
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    let digest = Sha256::digest(bytes);
    let hex = hex::encode(digest);
    let file = dir.join(format!("{:016x}-{hex}.cwasm", hasher.finish()));
    if let Ok(stored) = std::fs::read(&file) {
        let tag = mac(&key)
            .chain_update(digest)
            .chain_update(&stored[TAG.min(stored.len())..]);
        if stored.len() > TAG && tag.verify_slice(&stored[..TAG]).is_ok() {
            // SAFETY: these bytes are what `Component::serialize` of an
            // engine with the same compatibility hash produced in this
            // process's user's private directory: the tag, under a key only
            // this user can read, proves it. wasmtime checks the header too.
            if let Ok(component) = unsafe { Component::deserialize(engine, &stored[TAG..]) } {
                return Ok((component, true));
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Ok(serialized) = component.serialize() {
        let tag = mac(&key)
            .chain_update(digest)
            .chain_update(&serialized)
            .finalize()
            .into_bytes();
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&tag)?;
                f.write_all(&serialized)
            })
            .and_then(|_| std::fs::rename(&tmp, &file));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((component, false))
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

/// The cache's key, made on first use, if `dir` is this user's. A
/// directory of ours that others may read is closed (0700); a key others
/// may have read is replaced, which retires every artefact signed with it.
fn trusted_key(dir: &Path) -> Option<Vec<u8>> {
    let me = crate::model::current_uid()?;
    let ours = |path: &Path| {
        std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.uid() == me)
    };
    let meta = ours(dir)?;
    if !meta.is_dir() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).ok()?;
    }
    let path = dir.join("key");
    let exposed = std::fs::symlink_metadata(&path)
        .is_ok_and(|m| m.uid() != me || !m.is_file() || m.permissions().mode() & 0o077 != 0);
    if exposed {
        std::fs::remove_file(&path).ok()?;
    }
    if !path.exists() {
        let mut random = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .ok()?;
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .ok()?;
        file.write_all(&random).ok()?;
    }
    let key = std::fs::read(&path).ok()?;
    (key.len() == 32).then_some(key)
}
