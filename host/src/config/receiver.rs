//! `[[receiver]]`: push webhooks that make repositories pull at once.
//!
//! ```toml
//! [[receiver]]
//! name = "github"                   # served at POST /hooks/github
//! kind = "github"                   # github | gitlab | gitea | bitbucket | generic-hmac
//! secret_env = "GITHUB_WEBHOOK_SECRET"  # or secret_file; required
//! repos = ["app"]                   # optional; default: every repo whose URL and branch match
//! ```
//!
//! This module checks the table; `hooks` verifies and reads deliveries.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::notifier::{check_secret, SecretRef};
use super::Check;

/// Which forge sends the deliveries, and so how they are signed and shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `X-Hub-Signature-256: sha256=<hex>`, `X-GitHub-Event`.
    GitHub,
    /// `X-Gitlab-Token: <secret>`, `X-Gitlab-Event`.
    GitLab,
    /// Gitea and Forgejo: `X-Gitea-Signature: <hex>` (or GitHub's header).
    Gitea,
    /// Bitbucket Cloud: `X-Hub-Signature: sha256=<hex>`, `X-Event-Key`.
    Bitbucket,
    /// Anything else: `X-Signature: sha256=<hex>` over a JSON body with
    /// `url` and `ref`.
    GenericHmac,
}

impl HookKind {
    const NAMES: [(&'static str, HookKind); 5] = [
        ("github", HookKind::GitHub),
        ("gitlab", HookKind::GitLab),
        ("gitea", HookKind::Gitea),
        ("bitbucket", HookKind::Bitbucket),
        ("generic-hmac", HookKind::GenericHmac),
    ];

    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// One validated `[[receiver]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Its name: the path is `/hooks/NAME`.
    pub name: String,
    /// Its forge.
    pub kind: HookKind,
    /// The shared secret (read at each delivery, so it can rotate).
    pub secret: SecretRef,
    /// The repositories it may wake; empty: any whose URL and branch match.
    pub repos: Vec<String>,
    /// The largest body it reads (`max_body_kib`, default 1 MiB): a longer
    /// declared length is refused before a byte of it is read.
    pub max_body: usize,
    /// Where it starts in the file.
    pub line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReceiver {
    name: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    repos: Option<Spanned<Vec<String>>>,
    max_body_kib: Option<Spanned<i64>>,
}

/// Checks one `[[receiver]]` at `line`; `repo_names` are the configured
/// repositories.
pub(super) fn check_receiver(
    check: &mut Check<'_>,
    line: usize,
    r: &RawReceiver,
    repo_names: &[String],
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Option<ReceiverConfig> {
    let Some(name) = &r.name else {
        check.push(line, "receiver", "missing `name` (the path is /hooks/NAME)");
        return None;
    };
    let n = name.get_ref().clone();
    let label = format!("receiver \"{n}\"");
    let name_ok = !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    if !name_ok {
        check.at(
            name,
            format!("{label}.name"),
            "use letters, digits, `-` and `_`",
        );
    }
    let kind = match &r.kind {
        None => {
            check.push(line, format!("{label}.kind"), "missing `kind`");
            None
        }
        Some(k) => {
            let found = HookKind::NAMES
                .iter()
                .find(|(s, _)| *s == k.get_ref())
                .map(|(_, kind)| *kind);
            if found.is_none() {
                check.at(
                    k,
                    format!("{label}.kind"),
                    format!(
                        "`{}`: use github, gitlab, gitea, bitbucket or generic-hmac",
                        k.get_ref()
                    ),
                );
            }
            found
        }
    };
    let secret = check_secret(
        check,
        &label,
        &r.secret_env,
        &r.secret_file,
        ("secret_env", "secret_file"),
        resolve,
    );
    if secret.is_none() && r.secret_env.is_none() && r.secret_file.is_none() {
        check.push(
            line,
            format!("{label}.secret_env"),
            "a receiver needs a secret (secret_env or secret_file): unsigned pushes are refused",
        );
    }
    let repos = r
        .repos
        .as_ref()
        .map(|list| {
            for repo in list.get_ref() {
                if !repo_names.contains(repo) {
                    check.at(
                        list,
                        format!("{label}.repos"),
                        format!("no repository named `{repo}`"),
                    );
                }
            }
            list.get_ref().clone()
        })
        .unwrap_or_default();
    let max_body = match &r.max_body_kib {
        None => crate::receiver::DEFAULT_MAX_BODY,
        Some(k) => match usize::try_from(*k.get_ref()) {
            Ok(kib) if (1..=crate::receiver::MAX_BODY / 1024).contains(&kib) => kib * 1024,
            _ => {
                check.at(
                    k,
                    format!("{label}.max_body_kib"),
                    format!(
                        "`{}`: between 1 and {} (KiB; the forges send well under 1024)",
                        k.get_ref(),
                        crate::receiver::MAX_BODY / 1024
                    ),
                );
                return None;
            }
        },
    };
    Some(ReceiverConfig {
        name: n,
        kind: kind?,
        secret: secret?,
        repos,
        max_body,
        line,
    })
}
