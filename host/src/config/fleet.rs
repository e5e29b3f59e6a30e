//! `[fleet]`: several daemons sharing one PostgreSQL state. `mode =
//! "shard"` gives each repository to one replica at a time (a lease);
//! without `[fleet]` a daemon keeps its state to itself and refuses to
//! start beside another one on the same database.

use super::*;
use crate::store::{FleetMode, Replica};

/// `[fleet]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    mode: Option<Spanned<String>>,
    replica: Option<Spanned<String>>,
    lease_ttl: Option<Spanned<String>>,
}

/// Checks `[fleet]`; `postgres` says whether `[store]` is a database the
/// replicas can share. `env` gives `GITPULSE_REPLICA` (a pod's name).
pub(super) fn check_fleet(
    check: &mut Check<'_>,
    raw: Option<&Spanned<RawFleet>>,
    postgres: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Replica {
    let from_env = env("GITPULSE_REPLICA").filter(|n| !n.trim().is_empty());
    if let Some(why) = from_env.as_deref().and_then(bad_name) {
        check.push(0, "GITPULSE_REPLICA", why);
    }
    let mut replica = Replica {
        name: from_env.clone().unwrap_or_else(default_name),
        mode: FleetMode::Solo,
        lease_ttl: Duration::from_secs(15),
    };
    let Some(spanned) = raw else {
        return replica;
    };
    let raw = spanned.get_ref();
    if let Some(mode) = &raw.mode {
        match mode.get_ref().as_str() {
            "shard" => replica.mode = FleetMode::Shard,
            "replicate" => replica.mode = FleetMode::Replicate,
            other => check.at(
                mode,
                "fleet.mode",
                format!(
                    "`{other}`: use \"shard\" (each repository pulled by one replica at a time) or \"replicate\" (every replica pulls every repository; a change is told once)"
                ),
            ),
        }
    }
    if replica.mode != FleetMode::Solo && !postgres {
        let line = check.line(spanned.span().start);
        check.push(
            line,
            "fleet",
            "a fleet shares its state: set [store] backend = \"postgres\"",
        );
    }
    if let Some(name) = &raw.replica {
        let n = name.get_ref();
        if let Some(why) = bad_name(n) {
            check.at(name, "fleet.replica", why);
        } else if from_env.is_none() {
            replica.name = n.clone();
        }
    }
    if let Some(ttl) = &raw.lease_ttl {
        match check.duration(ttl, "fleet.lease_ttl") {
            Some(d) if d < Duration::from_secs(1) || d > Duration::from_secs(3600) => check.at(
                ttl,
                "fleet.lease_ttl",
                "between 1s and 1h: how long a silent replica keeps its repositories",
            ),
            Some(d) => replica.lease_ttl = d,
            None => {}
        }
    }
    replica
}

/// Why `name` cannot name a replica (it is shown in logs, metrics labels
/// and the database).
fn bad_name(name: &str) -> Option<&'static str> {
    (name.is_empty() || name.len() > 100 || name.chars().any(char::is_control))
        .then_some("a name of 1 to 100 printable characters, unique in the fleet")
}

/// The host's name: stable across restarts on a machine or in a
/// StatefulSet, so a restarted replica finds its leases (and checkouts).
fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gitpulse".into())
}
