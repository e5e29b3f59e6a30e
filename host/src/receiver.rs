//! Push webhooks from GitHub, GitLab, Gitea/Forgejo, Bitbucket and a
//! generic HMAC sender: verify a delivery's signature on the raw body,
//! read what it says was pushed, and find the configured repositories it
//! concerns.
//!
//! Pure logic, no I/O: the HTTP face (`server`) feeds it headers and bytes
//! and acts on the answer; the daemon wakes the repositories.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::config::HookKind;
use crate::git::Follow;

/// The most a receiver may be configured to read (GitHub caps payloads
/// at 25 MB).
pub const MAX_BODY: usize = 25 << 20;
/// What a receiver reads unless configured otherwise: push payloads are a
/// few KiB, and one with hundreds of commits well under 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// A delivery id seen again within this window is not acted on twice.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(600);

/// Why a delivery is refused before it is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The signature header is absent.
    #[error("no {0} header: unsigned deliveries are refused")]
    Unsigned(&'static str),
    /// The signature does not match the body and the secret.
    #[error("the {0} signature does not match (wrong secret, or the body was altered)")]
    BadSignature(&'static str),
}

/// A request's headers as (name, value) pairs.
pub type Headers<'a> = [(&'a str, &'a str)];

/// The value of header `name`, case-insensitively.
fn header<'a>(headers: &Headers<'a>, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// How one kind of forge signs a delivery: a header that carries the
/// shared secret itself (GitLab) or an HMAC-SHA256 of the body in hex.
struct Signing {
    header: &'static str,
    scheme: Scheme,
}

enum Scheme {
    /// The header is the secret.
    Token,
    /// The header is the body's HMAC in hex, after this prefix.
    Hmac(Option<&'static str>),
}

const GITLAB: &[Signing] = &[Signing {
    header: "X-Gitlab-Token",
    scheme: Scheme::Token,
}];
const GITHUB: Signing = Signing {
    header: "X-Hub-Signature-256",
    scheme: Scheme::Hmac(Some("sha256=")),
};
/// Gitea and Forgejo send their own header, or GitHub's.
const GITEA: &[Signing] = &[
    Signing {
        header: "X-Gitea-Signature",
        scheme: Scheme::Hmac(None),
    },
    GITHUB,
];
const BITBUCKET: &[Signing] = &[Signing {
    header: "X-Hub-Signature",
    scheme: Scheme::Hmac(Some("sha256=")),
}];
const GENERIC: &[Signing] = &[Signing {
    header: "X-Signature",
    scheme: Scheme::Hmac(Some("sha256=")),
}];

/// The signing a delivery of `kind` carries, by the headers it has; `Err`
/// with the header `kind` signs with when it has none.
fn signing(kind: HookKind, headers: &Headers<'_>) -> Result<&'static Signing, &'static str> {
    let choices: &'static [Signing] = match kind {
        HookKind::GitLab => GITLAB,
        HookKind::GitHub => std::slice::from_ref(&GITHUB),
        HookKind::Gitea => GITEA,
        HookKind::Bitbucket => BITBUCKET,
        HookKind::GenericHmac => GENERIC,
    };
    choices
        .iter()
        .find(|c| header(headers, c.header).is_some())
        .ok_or(choices[0].header)
}

/// Whether the delivery carries the signature header its kind needs, read
/// before its body is: an unsigned delivery is refused without reading it.
pub fn signed(kind: HookKind, headers: &Headers<'_>) -> Result<(), Refused> {
    signing(kind, headers).map(drop).map_err(Refused::Unsigned)
}

/// Checks `body` against `secret` the way `kind` signs it, in constant time.
pub fn verify(
    kind: HookKind,
    headers: &Headers<'_>,
    body: &[u8],
    secret: &str,
) -> Result<(), Refused> {
    let s = signing(kind, headers).map_err(Refused::Unsigned)?;
    match s.scheme {
        Scheme::Token => {
            let token = header(headers, s.header).ok_or(Refused::Unsigned(s.header))?;
            if bool::from(token.as_bytes().ct_eq(secret.as_bytes())) {
                Ok(())
            } else {
                Err(Refused::BadSignature(s.header))
            }
        }
        Scheme::Hmac(prefix) => hmac_header(headers, s.header, prefix, body, secret),
    }
}

fn hmac_header(
    headers: &Headers<'_>,
    name: &'static str,
    prefix: Option<&str>,
    body: &[u8],
    secret: &str,
) -> Result<(), Refused> {
    let value = header(headers, name).ok_or(Refused::Unsigned(name))?.trim();
    let hex = match prefix {
        Some(p) => value.strip_prefix(p).ok_or(Refused::BadSignature(name))?,
        None => value,
    };
    let given = hex::decode(hex).map_err(|_| Refused::BadSignature(name))?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| Refused::BadSignature(name))?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| Refused::BadSignature(name))
}

/// What a verified delivery says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A ping or test delivery: nothing to pull.
    Ping,
    /// Something other than a push (an issue, a comment …).
    Other(String),
    /// Refs pushed to one repository.
    Push(Push),
}

/// A push to one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Every URL the payload gives for the repository.
    pub urls: Vec<String>,
    /// The repository's default branch, when the payload says.
    pub default_branch: Option<String>,
    /// The refs that moved.
    pub refs: Vec<Moved>,
}

/// One ref of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The full ref name (`refs/heads/main`, `refs/tags/v1`).
    pub name: String,
    /// Whether the push deleted it.
    pub deleted: bool,
}

/// Reads a verified body. `content_type` matters for Gitea's form-encoded
/// `payload=`; the event header names what happened.
pub fn read(kind: HookKind, headers: &Headers<'_>, body: &[u8]) -> Result<Delivery, String> {
    let json = |bytes: &[u8]| -> Result<Value, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON: {e}"))
    };
    let form = header(headers, "Content-Type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let payload = if form {
        let field = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or("a form body without a `payload` field")?;
        json(field.as_bytes())?
    } else {
        json(body)?
    };
    let zeros =
        |sha: Option<&str>| sha.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b == b'0'));
    let text = |v: &Value, path: &[&str]| -> Option<String> {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match kind {
        HookKind::GitHub | HookKind::Gitea => {
            let event = header(headers, "X-GitHub-Event")
                .or_else(|| header(headers, "X-Gitea-Event"))
                .or_else(|| header(headers, "X-Forgejo-Event"))
                .unwrap_or("push");
            match event {
                "ping" => return Ok(Delivery::Ping),
                "push" => {}
                other => return Ok(Delivery::Other(other.to_string())),
            }
            let repo = &payload["repository"];
            let urls = ["clone_url", "ssh_url", "html_url", "git_url"]
                .iter()
                .filter_map(|k| text(repo, &[k]))
                .collect();
            let name = text(&payload, &["ref"]).ok_or("a push without `ref`")?;
            let deleted =
                payload["deleted"].as_bool().unwrap_or(false) || zeros(payload["after"].as_str());
            Ok(Delivery::Push(Push {
                urls,
                default_branch: text(repo, &["default_branch"]),
                refs: vec![Moved { name, deleted }],
            }))
        }
        HookKind::GitLab => {
            let event = header(headers, "X-Gitlab-Event").unwrap_or("");
            let kind = payload["object_kind"].as_str().unwrap_or("");
            if kind != "push" && kind != "tag_push" {
                return Ok(Delivery::Other(if event.is_empty() {
                    kind.to_string()
                } else {
                    event.to_string()
                }));
            }
            let mut urls: Vec<String> = Vec::new();
            for (object, keys) in [
                ("project", ["git_http_url", "git_ssh_url", "web_url"]),
                ("repository", ["git_http_url", "git_ssh_url", "homepage"]),
            ] {
                urls.extend(keys.iter().filter_map(|k| text(&payload[object], &[k])));
            }
            let name = text(&payload, &["ref"]).ok_or("a push without `ref`")?;
            Ok(Delivery::Push(Push {
                urls,
                default_branch: text(&payload["project"], &["default_branch"]),
                refs: vec![Moved {
                    name,
                    deleted: zeros(payload["after"].as_str()),
                }],
            }))
        }
        HookKind::Bitbucket => {
            let event = header(headers, "X-Event-Key").unwrap_or("");
            if event == "diagnostics:ping" {
                return Ok(Delivery::Ping);
            }
            if event != "repo:push" {
                return Ok(Delivery::Other(event.to_string()));
            }
            let repo = &payload["repository"];
            let mut urls: Vec<String> = Vec::new();
            if let Some(href) = text(repo, &["links", "html", "href"]) {
                urls.push(href);
            }
            if let Some(full) = text(repo, &["full_name"]) {
                urls.push(format!("https://bitbucket.org/{full}"));
            }
            let refs = payload["push"]["changes"]
                .as_array()
                .map(|changes| {
                    changes
                        .iter()
                        .filter_map(|c| {
                            let side = if c["new"].is_null() {
                                &c["old"]
                            } else {
                                &c["new"]
                            };
                            let prefix = match side["type"].as_str()? {
                                "branch" => "refs/heads/",
                                "tag" | "annotated_tag" => "refs/tags/",
                                _ => return None,
                            };
                            Some(Moved {
                                name: format!("{prefix}{}", side["name"].as_str()?),
                                deleted: c["new"].is_null(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Delivery::Push(Push {
                urls,
                default_branch: text(repo, &["mainbranch", "name"]),
                refs,
            }))
        }
        HookKind::GenericHmac => {
            let url = text(&payload, &["url"])
                .or_else(|| text(&payload, &["repository", "url"]))
                .ok_or("a body without `url`")?;
            let name = text(&payload, &["ref"]).ok_or("a body without `ref`")?;
            Ok(Delivery::Push(Push {
                urls: vec![url],
                default_branch: None,
                refs: vec![Moved {
                    name,
                    deleted: payload["deleted"].as_bool().unwrap_or(false),
                }],
            }))
        }
    }
}

/// The delivery's id, for spotting redeliveries.
pub fn delivery_id<'a>(headers: &Headers<'a>) -> Option<&'a str> {
    [
        "X-GitHub-Delivery",
        "X-Gitea-Delivery",
        "X-Gitlab-Event-UUID",
        "X-Request-UUID",
        "X-Delivery",
    ]
    .iter()
    .find_map(|h| header(headers, h))
}

/// A configured repository, as far as matching goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// Its remote URL.
    pub url: String,
    /// What it follows.
    pub follow: Follow,
}

/// Whether a push that moved `moved` (a full ref name) can move what
/// `follow` checks out, on a remote whose default branch is `default`
/// (`None`: the payload does not say).
fn moves(follow: &Follow, moved: &str, default: Option<&str>) -> bool {
    let branch = moved.strip_prefix("refs/heads/");
    let tag = moved.strip_prefix("refs/tags/");
    let is_default = |b: &str| default.is_none_or(|d| d == b);
    match (&follow.reference, &follow.semver) {
        // A tag of that name, a branch of that name, or else a pinned
        // commit, which no push moves.
        (Some(r), _) if r == "HEAD" => branch.is_some_and(is_default),
        (Some(r), _) if r.starts_with("refs/") => moved == r,
        (Some(r), None) => branch == Some(r.as_str()) || tag == Some(r.as_str()),
        (Some(r), Some(_)) => tag.is_some() || branch == Some(r.as_str()),
        (None, Some(_)) => tag.is_some(),
        // Following the remote's default branch, with a payload that does
        // not say which it is: a spare pull is cheap, a missed one is not.
        (None, None) => match &follow.branch {
            Some(b) => branch == Some(b.as_str()),
            None => branch.is_some_and(is_default),
        },
    }
}

/// What a push does: the repositories to pull now, or why none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pull these.
    Wake(Vec<String>),
    /// Nothing to pull, and why (for the sender's delivery log).
    Ignore(String),
}

/// Which of `targets` a push concerns: same repository (URLs compared
/// without scheme, user, `.git` and case) and a pushed branch they follow.
pub fn matching(push: &Push, targets: &[Target]) -> Verdict {
    let pushed: Vec<String> = push.urls.iter().filter_map(|u| normalise(u)).collect();
    let same_repo: Vec<&Target> = targets
        .iter()
        .filter(|t| normalise(&t.url).is_some_and(|n| pushed.contains(&n)))
        .collect();
    if same_repo.is_empty() {
        return Verdict::Ignore("no configured repository has this URL".into());
    }
    let live: Vec<&Moved> = push.refs.iter().filter(|m| !m.deleted).collect();
    if live.is_empty() {
        return Verdict::Ignore("the push deleted the ref: nothing to pull".into());
    }
    let woken: Vec<String> = same_repo
        .iter()
        .filter(|t| {
            live.iter()
                .any(|m| moves(&t.follow, &m.name, push.default_branch.as_deref()))
        })
        .map(|t| t.name.clone())
        .collect();
    if woken.is_empty() {
        let names: Vec<&str> = live.iter().map(|m| m.name.as_str()).collect();
        Verdict::Ignore(format!(
            "pushed {}: not a branch or tag the matching repositories follow",
            names.join(", ")
        ))
    } else {
        Verdict::Wake(woken)
    }
}

/// `https://User@Host:443/Org/App.git/` → `host/org/app`; scp-like
/// `git@host:org/app.git` → `host/org/app`. Ports other than the scheme's
/// default are kept.
pub fn normalise(url: &str) -> Option<String> {
    let url = url.trim();
    let (host_port, path) = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let default = match scheme.to_ascii_lowercase().as_str() {
                "https" => ":443",
                "http" => ":80",
                "ssh" => ":22",
                "git" => ":9418",
                _ => "",
            };
            let host_port = if !default.is_empty() && host_port.ends_with(default) {
                &host_port[..host_port.len() - default.len()]
            } else {
                host_port
            };
            (host_port, path)
        }
        None => {
            // scp-like: [user@]host:path
            let (authority, path) = url.split_once(':')?;
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            (host, path)
        }
    };
    let path = path.trim_matches('/');
    let path = path
        .strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/');
    if host_port.is_empty() || path.is_empty() {
        return None;
    }
    Some(format!("{host_port}/{path}").to_ascii_lowercase())
}

/// Delivery ids seen in the last [`REPEAT_WINDOW`], so a redelivery is
/// answered without pulling again.
#[derive(Debug, Default)]
pub struct Seen {
    ids: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Seen {
    /// Whether `id` was seen within the window; records it either way.
    pub fn repeat(&mut self, id: &str, now: Instant) -> bool {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < REPEAT_WINDOW {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if self.ids.contains_key(id) {
            return true;
        }
        self.ids.insert(id.to_string(), now);
        self.order.push_back((now, id.to_string()));
        false
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug)]
pub struct RateLimit {
    burst: f64,
    per_second: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        RateLimit {
            burst: f64::from(burst),
            per_second: f64::from(per_minute) / 60.0,
            tokens: f64::from(burst),
            last: None,
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.duration_since(last).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn githubs_published_test_vector_verifies() {
        // docs.github.com, "Validating webhook deliveries".
        let headers: &[(&str, &str)] = &[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )];
        let secret = "It's a Secret to Everybody";
        assert_eq!(
            verify(HookKind::GitHub, headers, b"Hello, World!", secret),
            Ok(())
        );
        assert_eq!(
            verify(HookKind::GitHub, headers, b"Hello, World?", secret),
            Err(Refused::BadSignature("X-Hub-Signature-256"))
        );
        assert_eq!(
            verify(HookKind::GitHub, &[][..], b"Hello, World!", secret),
            Err(Refused::Unsigned("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn each_forge_signs_its_own_way() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let hex = sign("s3cret", body);
        let prefixed = format!("sha256={hex}");
        let cases: [(HookKind, &str, &str); 5] = [
            (HookKind::Gitea, "X-Gitea-Signature", &hex),
            (HookKind::Gitea, "X-Hub-Signature-256", &prefixed),
            (HookKind::Bitbucket, "X-Hub-Signature", &prefixed),
            (HookKind::GenericHmac, "X-Signature", &prefixed),
            (HookKind::GitLab, "X-Gitlab-Token", "s3cret"),
        ];
        for (kind, header, value) in cases {
            let ok: &[(&str, &str)] = &[(header, value)];
            assert_eq!(
                verify(kind, ok, body, "s3cret"),
                Ok(()),
                "{kind:?} {header}"
            );
            assert!(
                verify(kind, ok, body, "other").is_err(),
                "{kind:?} {header}"
            );
        }
        // A Bitbucket signature without its prefix is not accepted.
        let bare: &[(&str, &str)] = &[("X-Hub-Signature", &hex)];
        assert!(verify(HookKind::Bitbucket, bare, body, "s3cret").is_err());
    }

    #[test]
    fn urls_are_compared_without_scheme_user_suffix_or_case() {
        for same in [
            "https://github.com/Org/App.git",
            "https://github.com/org/app",
            "https://x-access-token@github.com:443/org/app/",
            "git@github.com:org/app.git",
            "ssh://git@GitHub.com/org/app.git",
            "git://github.com/org/app.git",
        ] {
            assert_eq!(
                normalise(same).as_deref(),
                Some("github.com/org/app"),
                "{same}"
            );
        }
        assert_eq!(
            normalise("https://git.example.com:8443/org/app.git").as_deref(),
            Some("git.example.com:8443/org/app")
        );
        assert_eq!(normalise("https://github.com/"), None);
    }

    fn targets() -> Vec<Target> {
        vec![
            Target {
                name: "app".into(),
                url: "git@github.com:org/app.git".into(),
                follow: Follow::branch("main"),
            },
            Target {
                name: "app-release".into(),
                url: "https://github.com/org/app.git".into(),
                follow: Follow::branch("release"),
            },
            Target {
                name: "app-default".into(),
                url: "https://github.com/org/app".into(),
                follow: Follow::default(),
            },
            Target {
                name: "other".into(),
                url: "https://github.com/org/other.git".into(),
                follow: Follow::branch("main"),
            },
        ]
    }

    fn push(refs: &[(&str, bool)]) -> Push {
        Push {
            urls: vec!["https://github.com/org/app.git".into()],
            default_branch: Some("main".into()),
            refs: refs
                .iter()
                .map(|(n, d)| Moved {
                    name: n.to_string(),
                    deleted: *d,
                })
                .collect(),
        }
    }

    #[test]
    fn a_push_wakes_the_repos_following_the_pushed_branch() {
        assert_eq!(
            matching(&push(&[("refs/heads/main", false)]), &targets()),
            Verdict::Wake(vec!["app".into(), "app-default".into()])
        );
        assert_eq!(
            matching(&push(&[("refs/heads/release", false)]), &targets()),
            Verdict::Wake(vec!["app-release".into()])
        );
        for (refs, why) in [
            (vec![("refs/heads/feature", false)], "not a branch"),
            (vec![("refs/heads/main", true)], "deleted"),
            (vec![("refs/tags/v1", false)], "not a branch or tag"),
        ] {
            match matching(&push(&refs), &targets()) {
                Verdict::Ignore(said) => assert!(said.contains(why), "{said}"),
                woke => panic!("{refs:?} woke {woke:?}"),
            }
        }
        let mut elsewhere = push(&[("refs/heads/main", false)]);
        elsewhere.urls = vec!["https://gitlab.com/org/app.git".into()];
        assert!(matches!(
            matching(&elsewhere, &targets()),
            Verdict::Ignore(_)
        ));
    }

    #[test]
    fn tag_pushes_wake_repos_following_tags_and_no_push_moves_a_pin() {
        let follow = |reference: Option<&str>, semver: Option<&str>| Follow {
            branch: None,
            reference: reference.map(String::from),
            semver: semver.map(|s| crate::git::parse_semver(s).unwrap()),
        };
        let tag = follow(Some("v1"), None);
        assert!(moves(&tag, "refs/tags/v1", None));
        assert!(!moves(&tag, "refs/tags/v2", None));
        let range = follow(None, Some(">=1"));
        assert!(moves(&range, "refs/tags/v2.0.0", None));
        assert!(!moves(&range, "refs/heads/main", None));
        let pin = follow(Some("0123abcd"), None);
        assert!(!moves(&pin, "refs/heads/main", Some("main")));
        let head = follow(Some("HEAD"), None);
        assert!(moves(&head, "refs/heads/main", Some("main")));
        assert!(!moves(&head, "refs/heads/dev", Some("main")));
        assert!(
            moves(&head, "refs/heads/dev", None),
            "default unknown: pull"
        );
    }

    #[test]
    fn payloads_of_each_forge_are_read() {
        let github = br#"{"ref":"refs/heads/main","deleted":false,"repository":{"clone_url":"https://github.com/org/app.git","ssh_url":"git@github.com:org/app.git","default_branch":"main"}}"#;
        let h: &[(&str, &str)] = &[("X-GitHub-Event", "push")];
        let Ok(Delivery::Push(p)) = read(HookKind::GitHub, h, github) else {
            panic!()
        };
        assert_eq!(p.urls.len(), 2);
        assert_eq!(p.refs[0].name, "refs/heads/main");
        let ping: &[(&str, &str)] = &[("X-GitHub-Event", "ping")];
        assert_eq!(read(HookKind::GitHub, ping, b"{}"), Ok(Delivery::Ping));

        let gitlab = br#"{"object_kind":"push","ref":"refs/heads/main","after":"0000000000000000000000000000000000000000","project":{"git_http_url":"https://gitlab.com/org/app.git","default_branch":"main"}}"#;
        let Ok(Delivery::Push(p)) = read(HookKind::GitLab, &[][..], gitlab) else {
            panic!()
        };
        assert!(p.refs[0].deleted, "an all-zero `after` is a deletion");

        let form = format!(
            "payload={}",
            form_urlencoded::byte_serialize(github).collect::<String>()
        );
        let gitea: &[(&str, &str)] = &[
            ("X-Gitea-Event", "push"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        assert!(matches!(
            read(HookKind::Gitea, gitea, form.as_bytes()),
            Ok(Delivery::Push(_))
        ));

        let bitbucket = br#"{"repository":{"full_name":"org/app","links":{"html":{"href":"https://bitbucket.org/org/app"}}},"push":{"changes":[{"new":{"type":"branch","name":"main"},"old":null},{"new":null,"old":{"type":"branch","name":"gone"}}]}}"#;
        let h: &[(&str, &str)] = &[("X-Event-Key", "repo:push")];
        let Ok(Delivery::Push(p)) = read(HookKind::Bitbucket, h, bitbucket) else {
            panic!()
        };
        assert_eq!(
            p.refs,
            [
                Moved {
                    name: "refs/heads/main".into(),
                    deleted: false
                },
                Moved {
                    name: "refs/heads/gone".into(),
                    deleted: true
                }
            ]
        );
        assert!(read(HookKind::GitHub, h, b"not json").is_err());
    }

    #[test]
    fn a_redelivery_within_ten_minutes_is_a_repeat() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        assert!(!seen.repeat("a", t0));
        assert!(seen.repeat("a", t0 + Duration::from_secs(599)));
        assert!(!seen.repeat("b", t0 + Duration::from_secs(10)));
        assert!(!seen.repeat("a", t0 + Duration::from_secs(601)));
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_refills() {
        let mut limit = RateLimit::new(3, 60);
        let t0 = Instant::now();
        assert!((0..3).all(|_| limit.allow(t0)));
        assert!(!limit.allow(t0));
        assert!(limit.allow(t0 + Duration::from_secs(1)));
        assert!(!limit.allow(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_missing_signature_header_is_seen_before_the_body() {
        assert!(signed(HookKind::GitHub, &[("x-hub-signature-256", "sha256=00")]).is_ok());
        assert_eq!(
            signed(HookKind::GitHub, &[("x-hub-signature", "sha1=00")]),
            Err(Refused::Unsigned("X-Hub-Signature-256"))
        );
        assert!(signed(HookKind::Gitea, &[("X-Hub-Signature-256", "sha256=00")]).is_ok());
        assert!(signed(HookKind::GitLab, &[]).is_err());
    }
}
