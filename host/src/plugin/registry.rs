//! The one loader of plugins: compiled once per file content, shared by
//! every pull that uses them, for the CLI, the daemon, `validate` and
//! authoring alike.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::Digest as _;

use super::{LoadError, Plugin, PluginEnv, Sandbox};

/// Compiled plugins, held once per file content and shared by every pull
/// that uses them (the daemon's; a one-shot pull loads its one plugin).
///
/// A lookup checks the file's size, modification time and inode first and
/// rereads it only when one changed; a new content is compiled (through the
/// compile cache) and starts with a clean fault record. Blocks while it
/// reads or compiles: call it on a blocking thread.
pub struct Registry {
    cache_dir: Option<PathBuf>,
    sandbox: Sandbox,
    loaded: Mutex<std::collections::HashMap<PathBuf, Loaded>>,
}

struct Loaded {
    stamp: FileStamp,
    digest: [u8; 32],
    plugin: Plugin,
}

/// What says cheaply that a file may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        })
    }
}

impl Registry {
    /// A registry caching compiled plugins in `cache_dir`, calls run in `sandbox`.
    pub fn new(cache_dir: Option<PathBuf>, sandbox: Sandbox) -> Self {
        Registry {
            cache_dir,
            sandbox,
            loaded: Mutex::default(),
        }
    }

    /// A handle on the plugin in `path` with `env`, compiled at most once
    /// per content.
    pub fn get(&self, path: &Path, env: PluginEnv) -> Result<Plugin, LoadError> {
        let read_err = |source| LoadError::Read {
            path: path.into(),
            source,
        };
        let stamp = FileStamp::of(path).map_err(read_err)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = loaded.get(path).filter(|l| l.stamp == stamp) {
            return Ok(l.plugin.handle(env));
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        if let Some(l) = loaded.get_mut(path).filter(|l| l.digest == digest) {
            l.stamp = stamp;
            return Ok(l.plugin.handle(env));
        }
        let plugin = Plugin::from_bytes(
            path,
            &bytes,
            self.cache_dir.as_deref(),
            self.sandbox,
            env.clone(),
        )?;
        let handle = plugin.handle(env);
        loaded.insert(
            path.to_path_buf(),
            Loaded {
                stamp,
                digest,
                plugin,
            },
        );
        Ok(handle)
    }
}
