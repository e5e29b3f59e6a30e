//! The log channel: one JSON line per message, appended to a file (kept
//! open across messages) or, without a path, the subject on stdout.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::LogConfig;
use crate::notify::send::{DeliveryClass, Letter, SendError};

/// Appends `letter` as a line of `log`'s file (opened once, kept in
/// `files`), or prints its subject; where it went.
pub(crate) fn send(
    files: &Mutex<HashMap<PathBuf, File>>,
    name: &str,
    log: &LogConfig,
    letter: &Letter<'_>,
) -> Result<String, SendError> {
    let line = serde_json::json!({
        "notifier": name,
        "delivery": letter.delivery_id,
        "kind": letter.kind,
        "subject": letter.subject,
        "body": letter.body,
    });
    match &log.path {
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", letter.subject)
                .and_then(|_| out.flush())
                .map_err(|e| SendError::new(DeliveryClass::Io, format!("stdout: {e}")))?;
            Ok("written to stdout".into())
        }
        Some(path) => {
            let mut files = files.lock().unwrap_or_else(|p| p.into_inner());
            let file = match files.entry(path.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| io_error(path, e))?,
                ),
            };
            // One write per line, so concurrent writers never interleave.
            file.write_all(format!("{line}\n").as_bytes())
                .and_then(|_| file.sync_data())
                .map_err(|e| io_error(path, e))?;
            Ok(format!("appended to {}", path.display()))
        }
    }
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> SendError {
    SendError::new(DeliveryClass::Io, format!("{}: {e}", path.display()))
}
