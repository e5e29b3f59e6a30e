//! `[store]`: where the state lives. SQLite in the state directory unless
//! it says `backend = "postgres"`, with the connection URL read from a
//! variable or a file when the store opens (it holds a password: never in
//! the config file, never shown).

use super::*;
use crate::git::SecretRef;
use crate::store::Backend;

/// `[store]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    backend: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    url_file: Option<Spanned<String>>,
    pool_size: Option<Spanned<i64>>,
    connect_timeout: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
}

/// Checks `[store]` (none: SQLite).
pub(super) fn check_store(
    check: &mut Check<'_>,
    raw: Option<&Spanned<RawStore>>,
    resolve: &dyn Fn(&str) -> PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
) -> Backend {
    let Some(spanned) = raw else {
        return Backend::Sqlite;
    };
    let raw = spanned.get_ref();
    let postgres = match &raw.backend {
        None => false,
        Some(b) => match b.get_ref().as_str() {
            "sqlite" => false,
            "postgres" | "postgresql" => true,
            other => {
                check.at(
                    b,
                    "store.backend",
                    format!("`{other}`: use \"sqlite\" (the default) or \"postgres\""),
                );
                return Backend::Sqlite;
            }
        },
    };
    let only_postgres: [(&str, Option<std::ops::Range<usize>>); 5] = [
        ("url_env", raw.url_env.as_ref().map(Spanned::span)),
        ("url_file", raw.url_file.as_ref().map(Spanned::span)),
        ("pool_size", raw.pool_size.as_ref().map(Spanned::span)),
        (
            "connect_timeout",
            raw.connect_timeout.as_ref().map(Spanned::span),
        ),
        ("ca_file", raw.ca_file.as_ref().map(Spanned::span)),
    ];
    if !postgres {
        for (field, span) in only_postgres {
            if let Some(span) = span {
                let line = check.line(span.start);
                check.push(
                    line,
                    format!("store.{field}"),
                    "only for backend = \"postgres\" (SQLite keeps its file in [daemon] state_dir)",
                );
            }
        }
        return Backend::Sqlite;
    }
    let url = match (&raw.url_env, &raw.url_file) {
        (Some(var), None) => {
            check.env_set(var, "store.url_env", env);
            SecretRef::Env(var.get_ref().clone())
        }
        (None, Some(file)) => {
            let path = resolve(file.get_ref());
            check.file_exists(file, "store.url_file", &path);
            SecretRef::File(path)
        }
        (Some(_), Some(second)) => {
            check.at(second, "store", "use only one of url_env and url_file");
            return Backend::Sqlite;
        }
        (None, None) => {
            let line = check.line(spanned.span().start);
            check.push(
                line,
                "store",
                "backend = \"postgres\" needs url_env (a variable holding postgres://USER:PASSWORD@HOST/DB) or url_file (a file holding it)",
            );
            return Backend::Sqlite;
        }
    };
    let pool_size = raw
        .pool_size
        .as_ref()
        .and_then(|n| check.positive(n, "store.pool_size", 64))
        .unwrap_or(8) as u32;
    let connect_timeout = raw
        .connect_timeout
        .as_ref()
        .and_then(|d| check.duration(d, "store.connect_timeout"))
        .unwrap_or(Duration::from_secs(10));
    let ca_file = raw.ca_file.as_ref().map(|file| {
        let path = resolve(file.get_ref());
        check.file_exists(file, "store.ca_file", &path);
        path
    });
    Backend::Postgres {
        url,
        pool_size,
        connect_timeout,
        ca_file,
    }
}
