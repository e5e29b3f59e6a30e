//! gitpulse config files built in code: a test says which settings it
//! means (`Repo::new(…).set("timeout", "2s")`) instead of formatting TOML by
//! hand and patching it with string replacements. Values are written with
//! the `toml` crate, so paths with quotes or backslashes stay intact.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// One `[[repo]]`.
#[derive(Debug, Clone)]
pub struct Repo {
    table: Table,
}

impl Repo {
    /// A repository named `name`, pulled from `url` into `dir`.
    pub fn new(name: &str, url: &str, dir: &Path) -> Repo {
        Repo {
            table: Table::new(),
        }
        .set("name", name)
        .set("url", url)
        .set("dir", dir.display().to_string())
    }

    /// Any repo setting: `schedule`, `timeout`, `max_attempts`, `policy` …
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Repo {
        self.table.insert(key.to_string(), value.into());
        self
    }

    /// A `[[repo.step]]` with these settings (`name`, `run`, `when` …).
    pub fn step(mut self, settings: &[(&str, Value)]) -> Repo {
        let step: Table = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let steps = self
            .table
            .entry("step")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(steps) = steps {
            steps.push(Value::Table(step));
        }
        self
    }
}

/// An inline table value, such as `policy = { retry = "a" }`.
pub fn table(pairs: &[(&str, &str)]) -> Value {
    Value::Table(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect(),
    )
}

/// A whole config file.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    daemon: Table,
    store: Table,
    fleet: Table,
    defaults: Table,
    repos: Vec<Repo>,
    sections: Vec<(String, String, Table)>,
    receivers: Vec<Table>,
}

impl ConfigFile {
    /// A daemon listening on 127.0.0.1:`port` with its state in `state`
    /// beside the file.
    pub fn daemon_on(port: u16) -> ConfigFile {
        ConfigFile::default()
            .daemon("listen", format!("127.0.0.1:{port}"))
            .daemon("state_dir", "state")
    }

    /// A `[daemon]` setting.
    pub fn daemon(mut self, key: &str, value: impl Into<Value>) -> ConfigFile {
        self.daemon.insert(key.to_string(), value.into());
        self
    }

    /// A `[store]` setting (where the state lives).
    pub fn store(mut self, key: &str, value: impl Into<Value>) -> ConfigFile {
        self.store.insert(key.to_string(), value.into());
        self
    }

    /// A `[fleet]` setting (several daemons on one state).
    pub fn fleet(mut self, key: &str, value: impl Into<Value>) -> ConfigFile {
        self.fleet.insert(key.to_string(), value.into());
        self
    }

    /// A `[defaults]` setting, for every repo.
    pub fn defaults(mut self, key: &str, value: impl Into<Value>) -> ConfigFile {
        self.defaults.insert(key.to_string(), value.into());
        self
    }

    pub fn repo(mut self, repo: Repo) -> ConfigFile {
        self.repos.push(repo);
        self
    }

    /// `[notifier.NAME]` with `settings`.
    pub fn notifier(self, name: &str, settings: &[(&str, Value)]) -> ConfigFile {
        self.section("notifier", name, settings)
    }

    /// `[notifier.hook]`: a signed webhook to `url` told of `changed`
    /// events, its secret in `secret_file` (relative to the config file).
    pub fn changed_webhook(self, url: &str, secret_file: &str) -> ConfigFile {
        self.notifier(
            "hook",
            &[
                ("kind", "webhook".into()),
                ("url", url.into()),
                ("secret_file", secret_file.into()),
                ("events", vec!["changed"].into()),
            ],
        )
    }

    /// A `[[receiver]]` (push webhook) with these settings.
    pub fn receiver(mut self, settings: &[(&str, Value)]) -> ConfigFile {
        self.receivers.push(
            settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        );
        self
    }

    /// `[notifier.NAME]` with settings written as TOML (templates and
    /// filters read best that way); parsed here, so a typo fails at once.
    pub fn notifier_toml(self, name: &str, settings: &str) -> ConfigFile {
        let table: Table = toml::from_str(settings).expect("notifier settings are TOML");
        let pairs: Vec<(String, Value)> = table.into_iter().collect();
        let refs: Vec<(&str, Value)> = pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.section("notifier", name, &refs)
    }

    /// `[plugin.NAME]` with `settings`.
    pub fn plugin(self, name: &str, settings: &[(&str, Value)]) -> ConfigFile {
        self.section("plugin", name, settings)
    }

    fn section(mut self, kind: &str, name: &str, settings: &[(&str, Value)]) -> ConfigFile {
        let table = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.sections
            .push((kind.to_string(), name.to_string(), table));
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        let mut root = Table::new();
        if !self.daemon.is_empty() {
            root.insert("daemon".into(), Value::Table(self.daemon.clone()));
        }
        if !self.store.is_empty() {
            root.insert("store".into(), Value::Table(self.store.clone()));
        }
        if !self.fleet.is_empty() {
            root.insert("fleet".into(), Value::Table(self.fleet.clone()));
        }
        if !self.defaults.is_empty() {
            root.insert("defaults".into(), Value::Table(self.defaults.clone()));
        }
        if !self.repos.is_empty() {
            let repos = self.repos.iter().map(|r| Value::Table(r.table.clone()));
            root.insert("repo".into(), Value::Array(repos.collect()));
        }
        if !self.receivers.is_empty() {
            let receivers = self.receivers.iter().cloned().map(Value::Table);
            root.insert("receiver".into(), Value::Array(receivers.collect()));
        }
        for (kind, name, table) in &self.sections {
            let group = root
                .entry(kind.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(group) = group {
                group.insert(name.clone(), Value::Table(table.clone()));
            }
        }
        toml::to_string(&root).expect("a table of plain values serialises")
    }

    /// Writes the file to `dir/gitpulse.toml` and returns its path.
    pub fn write_in(&self, dir: &Path) -> PathBuf {
        let path = dir.join("gitpulse.toml");
        self.write(&path);
        path
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.text()).expect("the config file can be written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_land_in_their_tables() {
        let text = ConfigFile::daemon_on(9)
            .daemon("max_concurrent", 4)
            .defaults("schedule", "every 1s jitter 0s")
            .repo(
                Repo::new("a", "file:///x", Path::new("/tmp/a \"q\""))
                    .set("policy", table(&[("retry", "p")])),
            )
            .repo(Repo::new("b", "file:///y", Path::new("/tmp/b")))
            .notifier("hook", &[("kind", "log".into())])
            .text();
        let parsed: Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["daemon"]["listen"].as_str(), Some("127.0.0.1:9"));
        assert_eq!(parsed["daemon"]["max_concurrent"].as_integer(), Some(4));
        let repos = parsed["repo"].as_array().unwrap();
        assert_eq!(repos.len(), 2);
        assert_eq!(repos[0]["dir"].as_str(), Some("/tmp/a \"q\""));
        assert_eq!(repos[0]["policy"]["retry"].as_str(), Some("p"));
        assert_eq!(parsed["notifier"]["hook"]["kind"].as_str(), Some("log"));
    }
}
