//! When each repository is pulled next.
//!
//! The [`Schedule`] type (parsed once, cron included) and pure time
//! arithmetic over it: the first run, spread so that
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

/// When a repository is pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A 6-field cron expression with seconds (`sec min hour day month weekday`).
    Cron(Cron),
    /// Every `period`, each run shifted by a random amount up to `jitter`.
    Every {
        /// How often.
        period: Duration,
        /// Up to this much is added to each run, at random.
        jitter: Duration,
    },
}

impl Schedule {
    /// Parses `every 30s`, `every 5m jitter 20s` or a 6-field cron expression.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("every ") {
            let (period, jitter) = match rest.split_once(" jitter ") {
                Some((p, j)) => (p, Some(j)),
                None => (rest, None),
            };
            let period = humantime::parse_duration(period.trim()).map_err(|e| {
                format!(
                    "`{}`: {e} (e.g. every 30s, every 5m, every 1h jitter 5m)",
                    period.trim()
                )
            })?;
            if period < Duration::from_secs(1) {
                return Err("intervals shorter than 1s are not supported".into());
            }
            let jitter = match jitter {
                Some(j) => humantime::parse_duration(j.trim())
                    .map_err(|e| format!("jitter `{}`: {e}", j.trim()))?,
                // By default spread runs over a tenth of the period, at most a minute.
                None => (period / 10).min(Duration::from_secs(60)),
            };
            if jitter > period {
                return Err(format!(
                    "jitter {} is longer than the period {}",
                    humantime::format_duration(jitter),
                    humantime::format_duration(period)
                ));
            }
            return Ok(Schedule::Every { period, jitter });
        }
        let fields = text.split_whitespace().count();
        if fields != 6 {
            return Err(format!(
                "`{text}` has {fields} fields; use `every 5m` or 6-field cron with seconds: `sec min hour day month weekday`, e.g. `0 */5 * * * *`"
            ));
        }
        Cron::parse(text).map(Schedule::Cron)
    }
}

/// A parsed cron expression, kept parsed: every run is computed from it,
/// never from the text again.
#[derive(Debug, Clone)]
pub struct Cron {
    text: String,
    // Boxed: a parsed expression is ten times the size of an interval.
    parsed: Box<croner::Cron>,
}

/// Two expressions are the same schedule when they are written the same.
impl PartialEq for Cron {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Cron {}

impl Cron {
    /// Parses a 6-field expression with seconds; refuses one that never
    /// fires (`0 0 0 30 2 *`: the 30th of February).
    pub fn parse(text: &str) -> Result<Cron, String> {
        let parsed = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse(text)
            .map_err(|e| format!("`{text}`: {e}"))?;
        let cron = Cron {
            text: text.to_string(),
            parsed: Box::new(parsed),
        };
        if cron.after(SystemTime::now()).is_none() {
            return Err(format!("`{text}` never fires"));
        }
        Ok(cron)
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first occurrence after `t`, if there is one.
    fn after(&self, t: SystemTime) -> Option<SystemTime> {
        let t: DateTime<Utc> = t.into();
        let next = self.parsed.find_next_occurrence(&t, false).ok()?;
        let millis = next.timestamp_millis();
        (millis >= 0).then(|| UNIX_EPOCH + Duration::from_millis(millis as u64))
    }
}

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
/// in their first period. `None`: a cron schedule whose last occurrence
/// has passed.
pub fn first_run(
    schedule: &Schedule,
    name: &str,
    now: SystemTime,
    random: u64,
) -> Option<SystemTime> {
    match schedule {
        Schedule::Every { period, .. } => Some(now + fraction(*period, random)),
        Schedule::Cron(_) => next_run(schedule, name, now, now, random),
    }
}

/// The run after the one scheduled at `previous`, never at or before `now`;
/// `None` when a cron schedule fires no more.
pub fn next_run(
    schedule: &Schedule,
    name: &str,
    previous: SystemTime,
    now: SystemTime,
    random: u64,
) -> Option<SystemTime> {
    match schedule {
        Schedule::Every { period, jitter } => {
            let mut next = previous + *period;
            if next <= now {
                // Missed runs (a long pull, a suspended machine) are not caught up.
                let behind = now.duration_since(next).unwrap_or_default();
                let periods = behind.as_nanos() / period.as_nanos().max(1) + 1;
                next += *period * periods.min(u32::MAX as u128) as u32;
            }
            Some(next + fraction(*jitter, random))
        }
        Schedule::Cron(cron) => {
            let offset = fraction(CRON_SPREAD, stable_hash(name));
            let after = previous.max(now);
            cron.after(after.checked_sub(offset).unwrap_or(after))
                .map(|t| t + offset)
        }
    }
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
            let t = first_run(&every, &format!("repo{i}"), at(1000), x >> 1).unwrap();
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
        assert_eq!(next_run(&every, "a", at(1000), at(1001), 0), Some(at(1060)));
        // The pull took 150 s: the runs at 1060 and 1120 are gone, not queued.
        assert_eq!(next_run(&every, "a", at(1000), at(1150), 0), Some(at(1180)));
        let jittered = Schedule::Every {
            period: Duration::from_secs(60),
            jitter: Duration::from_secs(10),
        };
        let t = next_run(&jittered, "a", at(1000), at(1001), 123_456_789_012).unwrap();
        assert!(t >= at(1060) && t < at(1070));
    }

    #[test]
    fn cron_runs_follow_the_expression_plus_a_stable_spread() {
        let cron = Schedule::parse("0 */5 * * * *").unwrap();
        let a1 = next_run(&cron, "alpha", at(0), at(0), 0).unwrap();
        let a2 = next_run(&cron, "alpha", at(0), at(0), 99).unwrap();
        assert_eq!(a1, a2, "the spread depends on the name, not on chance");
        // The 00:00:00 occurrence, shifted by this repo's offset (< 30 s).
        let secs = a1.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(secs < 30, "{secs}");
        let next = next_run(&cron, "alpha", a1, a1, 0).unwrap();
        assert_eq!(next.duration_since(a1).unwrap(), Duration::from_secs(300));
    }

    #[test]
    fn schedules_that_never_fire_or_do_not_parse_are_refused() {
        let err = Schedule::parse("0 0 0 30 2 *").unwrap_err();
        assert!(err.contains("never fires"), "{err}");
        assert!(Schedule::parse("0 0 0 29 2 *").is_ok(), "leap days come");
        assert!(Schedule::parse("0 61 * * * *").is_err());
        assert_eq!(
            Schedule::parse("0 */5 * * * *").unwrap(),
            Schedule::parse("0 */5 * * * *").unwrap()
        );
    }
}
