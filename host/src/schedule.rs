//! When each repository is pulled next.
//!
//! Pure time arithmetic over a [`Schedule`]: the first run, spread so that
//! a thousand repositories configured together do not fire in the same
//! second, and every later run. Intervals keep their phase (the next run is
//! the previous *scheduled* time plus the period, so slow pulls do not make
//! a schedule drift) with up to `jitter` added; cron schedules follow
//! `croner` (the parser tokio-cron-scheduler uses) and get a stable
//! per-repository offset of up to 30 s.
//!
//! The daemon keeps all next-run times in one heap and sleeps until the
//! earliest, which costs nothing between runs however many repositories
//! there are; this module only computes the times.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

use crate::config::Schedule;

/// Largest spread added to cron runs.
const CRON_SPREAD: Duration = Duration::from_secs(30);

/// A stable number for `name`, so a repository keeps its offset across restarts.
fn stable_hash(name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

fn fraction(d: Duration, random: u64) -> Duration {
    let nanos = d.as_nanos().min(u64::MAX as u128) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random % nanos)
}

/// The first run after start-up at `now`. Intervals start at a random point
/// in their first period.
pub fn first_run(schedule: &Schedule, name: &str, now: SystemTime, random: u64) -> SystemTime {
    match schedule {
        Schedule::Every { period, .. } => now + fraction(*period, random),
        Schedule::Cron(_) => next_run(schedule, name, now, now, random),
    }
}

/// The run after the one scheduled at `previous`, never at or before `now`.
pub fn next_run(
    schedule: &Schedule,
    name: &str,
    previous: SystemTime,
    now: SystemTime,
    random: u64,
) -> SystemTime {
    match schedule {
        Schedule::Every { period, jitter } => {
            let mut next = previous + *period;
            if next <= now {
                // Missed runs (a long pull, a suspended machine) are not caught up.
                let behind = now.duration_since(next).unwrap_or_default();
                let periods = behind.as_nanos() / period.as_nanos().max(1) + 1;
                next += *period * periods.min(u32::MAX as u128) as u32;
            }
            next + fraction(*jitter, random)
        }
        Schedule::Cron(expr) => {
            let offset = fraction(CRON_SPREAD, stable_hash(name));
            let after = previous.max(now);
            cron_after(expr, after.checked_sub(offset).unwrap_or(after))
                .map(|t| t + offset)
                // An expression that never fires again (e.g. a past date):
                // look again in a day.
                .unwrap_or(after + Duration::from_secs(86_400))
        }
    }
}

fn cron_after(expr: &str, after: SystemTime) -> Option<SystemTime> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .ok()?;
    let after: DateTime<Utc> = after.into();
    let next = cron.find_next_occurrence(&after, false).ok()?;
    let millis = next.timestamp_millis();
    (millis >= 0).then(|| UNIX_EPOCH + Duration::from_millis(millis as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn first_runs_of_many_repositories_are_spread_over_the_period() {
        let every = Schedule::Every {
            period: Duration::from_secs(60),
            jitter: Duration::ZERO,
        };
        let mut x: u64 = 1;
        let mut seconds = std::collections::BTreeSet::new();
        for i in 0..1000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let t = first_run(&every, &format!("repo{i}"), at(1000), x >> 1);
            assert!(t >= at(1000) && t < at(1060));
            seconds.insert(t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        }
        assert!(
            seconds.len() >= 55,
            "1000 first runs fall in {} distinct seconds",
            seconds.len()
        );
    }

    #[test]
    fn intervals_keep_their_phase_and_skip_missed_runs() {
        let every = Schedule::Every {
            period: Duration::from_secs(60),
            jitter: Duration::ZERO,
        };
        assert_eq!(next_run(&every, "a", at(1000), at(1001), 0), at(1060));
        // The pull took 150 s: the runs at 1060 and 1120 are gone, not queued.
        assert_eq!(next_run(&every, "a", at(1000), at(1150), 0), at(1180));
        let jittered = Schedule::Every {
            period: Duration::from_secs(60),
            jitter: Duration::from_secs(10),
        };
        let t = next_run(&jittered, "a", at(1000), at(1001), 123_456_789_012);
        assert!(t >= at(1060) && t < at(1070));
    }

    #[test]
    fn cron_runs_follow_the_expression_plus_a_stable_spread() {
        let cron = Schedule::Cron("0 */5 * * * *".into());
        let a1 = next_run(&cron, "alpha", at(0), at(0), 0);
        let a2 = next_run(&cron, "alpha", at(0), at(0), 99);
        assert_eq!(a1, a2, "the spread depends on the name, not on chance");
        // The 00:00:00 occurrence, shifted by this repo's offset (< 30 s).
        let secs = a1.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(secs < 30, "{secs}");
        let next = next_run(&cron, "alpha", a1, a1, 0);
        assert_eq!(next.duration_since(a1).unwrap(), Duration::from_secs(300));
    }
}
