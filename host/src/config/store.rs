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
            check.need_variable(var, "store.url_env");
            SecretRef::Env(var.get_ref().clone())
        }
        (None, Some(file)) => {
            let path = resolve(file.get_ref());
            check.need_file(file, "store.url_file", &path);
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
    // Every write waits this long at most for a connection: bounded, so a
    // typo cannot stall the daemon for days.
    let connect_timeout = match &raw.connect_timeout {
        None => Duration::from_secs(10),
        Some(d) => match check.duration(d, "store.connect_timeout") {
            Some(t) if (Duration::from_millis(100)..=Duration::from_secs(600)).contains(&t) => t,
            Some(_) => {
                check.at(d, "store.connect_timeout", "between 100ms and 10m");
                Duration::from_secs(10)
            }
            None => Duration::from_secs(10),
        },
    };
    let ca_file = raw.ca_file.as_ref().map(|file| {
        let path = resolve(file.get_ref());
        check.need_file(file, "store.ca_file", &path);
        path
    });
    Backend::Postgres {
        url,
        pool_size,
        connect_timeout,
        ca_file,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::FleetMode;

    fn parse(text: &str, vars: &[(&str, &str)]) -> Result<Config, Problems> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // The file and its needs, as the daemon starts.
        let env = move |k: &str| vars.get(k).cloned();
        let (read, needs) =
            super::super::parse_needing(Path::new("/etc/gitpulse/gitpulse.toml"), text, &env);
        crate::validate::with_needs_met(read, &needs, &env)
    }

    /// Every problem of `text`, as `line field: message` lines.
    fn problems(text: &str, vars: &[(&str, &str)]) -> String {
        match parse(text, vars) {
            Ok(_) => String::new(),
            Err(p) => p.to_string(),
        }
    }

    #[test]
    fn the_state_is_sqlite_unless_postgres_is_named_with_its_url() {
        assert_eq!(parse("", &[]).unwrap().store, Backend::Sqlite);
        let config = parse(
            "[store]\nbackend = \"postgres\"\nurl_env = \"DB_URL\"\npool_size = 3\nconnect_timeout = \"2s\"\n",
            &[("DB_URL", "postgres://u:p@h/db")],
        )
        .unwrap();
        assert_eq!(
            config.store,
            Backend::Postgres {
                url: SecretRef::Env("DB_URL".into()),
                pool_size: 3,
                connect_timeout: Duration::from_secs(2),
                ca_file: None,
            }
        );
    }

    #[test]
    fn a_store_without_a_url_or_with_sqlite_settings_is_refused_where_it_is_written() {
        for (text, says) in [
            ("[store]\nbackend = \"mysql\"\n", ":2: store.backend"),
            ("[store]\nbackend = \"postgres\"\n", "needs url_env"),
            (
                "[store]\nbackend = \"postgres\"\nurl_env = \"A\"\nurl_file = \"f\"\n",
                "use only one of url_env and url_file",
            ),
            (
                "[store]\nurl_env = \"A\"\n",
                ":2: store.url_env: only for backend = \"postgres\"",
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl_env = \"A\"\npool_size = 0\n",
                "store.pool_size: 0 is out of range",
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl_env = \"A\"\nca_file = \"nowhere.pem\"\n",
                "store.ca_file",
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl_env = \"UNSET\"\n",
                "UNSET is not set",
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl_env = \"A\"\nconnect_timeout = \"30d\"\n",
                "store.connect_timeout: between 100ms and 10m",
            ),
        ] {
            let said = problems(text, &[("A", "postgres://h/db")]);
            assert!(said.contains(says), "{text:?}: {said}");
        }
    }

    #[test]
    fn a_fleet_needs_a_shared_store_and_a_usable_name() {
        let shared = "[store]\nbackend = \"postgres\"\nurl_env = \"A\"\n";
        let env = [("A", "postgres://h/db")];
        let config = parse(
            &format!(
                "{shared}[fleet]\nmode = \"shard\"\nreplica = \"web-1\"\nlease_ttl = \"5s\"\n"
            ),
            &env,
        )
        .unwrap();
        assert_eq!(config.fleet.mode, FleetMode::Shard);
        assert_eq!(config.fleet.name, "web-1");
        assert_eq!(config.fleet.lease_ttl, Duration::from_secs(5));
        // The environment names a pod; it wins over the file.
        let pod = [("A", "postgres://h/db"), ("GITPULSE_REPLICA", "gitpulse-2")];
        let config = parse(&format!("{shared}[fleet]\nreplica = \"web-1\"\n"), &pod).unwrap();
        assert_eq!(config.fleet.name, "gitpulse-2");
        assert_eq!(config.fleet.mode, FleetMode::Solo);

        for (text, says) in [
            (
                "[fleet]\nmode = \"shard\"\n".to_string(),
                "set [store] backend = \"postgres\"",
            ),
            (
                format!("{shared}[fleet]\nmode = \"leader\"\n"),
                "fleet.mode",
            ),
            (
                format!("{shared}[fleet]\nreplica = \"\"\n"),
                "fleet.replica",
            ),
            (
                format!("{shared}[fleet]\nlease_ttl = \"100ms\"\n"),
                "fleet.lease_ttl: between 1s and 1h",
            ),
        ] {
            let said = problems(&text, &env);
            assert!(said.contains(says), "{text:?}: {said}");
        }
        let long = "x".repeat(101);
        let said = problems(
            shared,
            &[("A", "postgres://h/db"), ("GITPULSE_REPLICA", &long)],
        );
        assert!(said.contains("GITPULSE_REPLICA"), "{said}");
    }
}
