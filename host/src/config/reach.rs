//! What a loaded config reaches outside its own text: the environment
//! variables it reads secrets from and the files and directories it reads
//! or writes.
//!
//! A config is trusted with all of it when the user names the file
//! (`--config`, `GITPULSE_CONFIG`, their own config). A `.gitpulse.toml`
//! that came with a cloned repository is not: `githook` holds every reach
//! listed here against what the user's own config allows before it uses
//! such a file. This module only lists; it judges nothing and reads no
//! secret. A new field that names a variable or a path belongs here, or a
//! repository's config could use it unchecked.

use std::path::{Path, PathBuf};

use super::{ApiToken, AuthRef, Channel, Config, SecretRef};

/// One thing outside the file that a config uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A secret read from this environment variable.
    Env(String),
    /// A file or directory read or written (a secret, a template, a log,
    /// the state directory, a checkout).
    Path(PathBuf),
}

/// A reach and the field that asks for it (`notifier.mail.password_env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    /// The field, as problems name it.
    pub field: String,
    /// What it reaches.
    pub reach: Reach,
}

impl Config {
    /// Every environment variable and path this config uses, with the
    /// field that names it, in file order by section.
    pub fn reach(&self) -> Vec<Reached> {
        let mut out = Reaches(Vec::new());
        let d = &self.daemon;
        out.path("daemon.state_dir", &d.state_dir);
        if let Some(dir) = &d.plugin_dir {
            out.path("daemon.plugin_dir", dir);
        }
        match &d.api_token {
            ApiToken::Generated => {}
            ApiToken::Env(name) => out.env("daemon.api_token_env", name),
            ApiToken::File(path) => out.path("daemon.api_token_file", path),
        }
        for r in &self.repos {
            let at = |f: &str| format!("repo \"{}\".{f}", r.name);
            out.path(&at("dir"), &r.dir);
            match &r.auth {
                AuthRef::None => {}
                AuthRef::TokenEnv(name) => out.env(&at("token_env"), name),
                AuthRef::TokenFile(path) => out.path(&at("token_file"), path),
                AuthRef::SshKey { key, known_hosts } => {
                    out.path(&at("ssh_key"), key);
                    if let Some(k) = known_hosts {
                        out.path(&at("known_hosts"), k);
                    }
                }
            }
        }
        for (name, n) in &self.notifiers {
            let at = |f: &str| format!("notifier.{name}.{f}");
            match &n.channel {
                Channel::Email(e) => {
                    out.secret(&at("password"), e.password.as_ref());
                    if let Some(ca) = &e.ca_file {
                        out.path(&at("ca_file"), ca);
                    }
                }
                Channel::Webhook(w) => out.secret(&at("secret"), w.secret.as_ref()),
                Channel::Log(l) => {
                    if let Some(path) = &l.path {
                        out.path(&at("path"), path);
                    }
                }
            }
            for (kind, t) in &n.templates {
                for (part, file) in [("body", &t.body), ("html", &t.html)] {
                    if let Some(file) = file {
                        out.path(&at(&format!("templates.{kind}.{part}")), file);
                    }
                }
            }
        }
        for r in &self.receivers {
            out.secret(&format!("receiver \"{}\".secret", r.name), Some(&r.secret));
        }
        for c in &self.credentials {
            out.secret(
                &format!("credential \"{}\".token", c.url_prefix),
                Some(&c.secret),
            );
        }
        out.0
    }
}

struct Reaches(Vec<Reached>);

impl Reaches {
    fn env(&mut self, field: &str, name: &str) {
        self.0.push(Reached {
            field: field.to_string(),
            reach: Reach::Env(name.to_string()),
        });
    }

    fn path(&mut self, field: &str, path: &Path) {
        self.0.push(Reached {
            field: field.to_string(),
            reach: Reach::Path(path.to_path_buf()),
        });
    }

    fn secret(&mut self, field: &str, secret: Option<&SecretRef>) {
        match secret {
            None => {}
            Some(SecretRef::Env(name)) => self.env(&format!("{field}_env"), name),
            Some(SecretRef::File(path)) => self.path(&format!("{field}_file"), path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitpulse.toml");
        std::fs::write(&path, text).unwrap();
        super::super::load(&path).unwrap()
    }

    #[test]
    fn secrets_and_files_of_every_section_are_listed_with_their_field() {
        let config = load(
            "[daemon]\nstate_dir = \"/var/lib/gp\"\n\n\
             [[repo]]\nname = \"app\"\nurl = \"https://example.com/app.git\"\ndir = \"/srv/app\"\ntoken_env = \"APP_TOKEN\"\n\n\
             [notifier.mail]\nkind = \"email\"\nserver = \"smtp://127.0.0.1:25\"\nfrom = \"a@example.com\"\n\
             to = [\"b@example.com\"]\nusername = \"u\"\npassword_file = \"/home/u/.ssh/id_ed25519\"\n\n\
             [notifier.audit]\nkind = \"log\"\npath = \"/home/u/.bashrc\"\n",
        );
        let reach = config.reach();
        let has = |field: &str, r: Reach| reach.iter().any(|x| x.field == field && x.reach == r);
        assert!(has("daemon.state_dir", Reach::Path("/var/lib/gp".into())));
        assert!(has("repo \"app\".dir", Reach::Path("/srv/app".into())));
        assert!(has(
            "repo \"app\".token_env",
            Reach::Env("APP_TOKEN".into())
        ));
        assert!(has(
            "notifier.mail.password_file",
            Reach::Path("/home/u/.ssh/id_ed25519".into())
        ));
        assert!(has(
            "notifier.audit.path",
            Reach::Path("/home/u/.bashrc".into())
        ));
    }
}
