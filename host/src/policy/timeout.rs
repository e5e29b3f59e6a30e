//! Per-attempt time limits learnt from a repository's history, as TCP
//! learns its retransmission timeout (RFC 6298): a smoothed duration of
//! successful attempts and its variation, kept apart for attempts that
//! found nothing new (a ref advertisement) and attempts that transferred
//! objects. The configured `timeout` stays the ceiling.
//!
//! Pure: the store keeps the estimates, the pull loop asks for limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A smoothed duration and its mean deviation, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// SRTT.
    pub smoothed_ms: f64,
    /// RTTVAR.
    pub variation_ms: f64,
}

// Built only from durations: never NaN, so equality is total.
impl Eq for Estimate {}

impl Estimate {
    /// The estimate after one more sample (α = 1/8, β = 1/4).
    pub fn with(self, sample: Duration) -> Estimate {
        let r = sample.as_secs_f64() * 1000.0;
        Estimate {
            variation_ms: 0.75 * self.variation_ms + 0.25 * (self.smoothed_ms - r).abs(),
            smoothed_ms: 0.875 * self.smoothed_ms + 0.125 * r,
        }
    }

    /// The first estimate, from one sample.
    pub fn first(sample: Duration) -> Estimate {
        let r = sample.as_secs_f64() * 1000.0;
        Estimate {
            smoothed_ms: r,
            variation_ms: r / 2.0,
        }
    }

    fn limit(self) -> Duration {
        Duration::from_secs_f64((self.smoothed_ms + 4.0 * self.variation_ms).max(0.0) / 1000.0)
    }
}

/// What a repository's successful attempts took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Learnt {
    /// Attempts that found the checkout current.
    pub no_change: Option<Estimate>,
    /// Attempts that fetched objects (clones, updates).
    pub transfer: Option<Estimate>,
}

impl Eq for Learnt {}

impl Learnt {
    /// The estimates after a successful attempt of `duration`.
    pub fn learn(self, transferred: bool, duration: Duration) -> Learnt {
        let next =
            |e: Option<Estimate>| Some(e.map_or(Estimate::first(duration), |e| e.with(duration)));
        if transferred {
            Learnt {
                transfer: next(self.transfer),
                ..self
            }
        } else {
            Learnt {
                no_change: next(self.no_change),
                ..self
            }
        }
    }
}

/// Why an attempt got the limit it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// No history: the configured timeout.
    Ceiling,
    /// From the repository's history.
    Learnt,
    /// The previous attempt timed out: twice its limit.
    Doubled,
}

impl Why {
    /// The word history and JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Ceiling => "ceiling",
            Why::Learnt => "learnt",
            Why::Doubled => "doubled",
        }
    }
}

/// The limits of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AttemptLimit {
    /// The whole attempt.
    #[serde(serialize_with = "millis")]
    pub total: Duration,
    /// Asking the remote what it has (the ref advertisement): an attempt
    /// that finds nothing new is over by then.
    #[serde(serialize_with = "millis")]
    pub refs: Duration,
    /// Why.
    pub why: Why,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl AttemptLimit {
    /// The limits of an attempt: learnt ones within `[floor, ceiling]`;
    /// `ceiling` for what has no history; twice the previous limit (capped)
    /// after an attempt that timed out.
    pub fn next(
        learnt: &Learnt,
        floor: Duration,
        ceiling: Duration,
        timed_out: Option<&AttemptLimit>,
    ) -> AttemptLimit {
        if let Some(previous) = timed_out {
            return AttemptLimit {
                total: (previous.total * 2).min(ceiling),
                refs: (previous.refs * 2).min(ceiling),
                why: Why::Doubled,
            };
        }
        let clamp = |e: Option<Estimate>| e.map(|e| e.limit().clamp(floor.min(ceiling), ceiling));
        let refs = clamp(learnt.no_change);
        // An attempt may have to transfer: its whole limit is the transfer
        // estimate, and never below what the advertisement may take.
        let total = match (clamp(learnt.transfer), refs) {
            (Some(t), Some(r)) => Some(t.max(r)),
            (Some(_), None) => None,
            (None, _) => None,
        };
        AttemptLimit {
            total: total.unwrap_or(ceiling),
            refs: refs.unwrap_or(ceiling),
            why: if refs.is_some() {
                Why::Learnt
            } else {
                Why::Ceiling
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_estimate_follows_rfc_6298() {
        let e = Estimate::first(Duration::from_millis(800));
        assert_eq!((e.smoothed_ms, e.variation_ms), (800.0, 400.0));
        let e = e.with(Duration::from_millis(400));
        assert_eq!((e.smoothed_ms, e.variation_ms), (750.0, 400.0));
        assert_eq!(e.limit(), Duration::from_millis(2350));
    }

    #[test]
    fn without_history_the_ceiling_applies() {
        let limit = AttemptLimit::next(&Learnt::default(), 5 * S, 120 * S, None);
        assert_eq!(
            (limit.total, limit.refs, limit.why),
            (120 * S, 120 * S, Why::Ceiling)
        );
    }

    #[test]
    fn learnt_limits_sit_between_the_floor_and_the_ceiling() {
        let mut learnt = Learnt::default();
        for _ in 0..20 {
            learnt = learnt.learn(false, Duration::from_millis(40));
        }
        let limit = AttemptLimit::next(&learnt, 5 * S, 120 * S, None);
        assert_eq!((limit.refs, limit.why), (5 * S, Why::Learnt), "the floor");
        assert_eq!(
            limit.total,
            120 * S,
            "no transfer learnt: the ceiling for the whole"
        );
        for _ in 0..20 {
            learnt = learnt.learn(true, 30 * S);
        }
        let limit = AttemptLimit::next(&learnt, 5 * S, 120 * S, None);
        assert!(limit.total >= 30 * S && limit.total < 40 * S, "{limit:?}");
        let slow = (0..20).fold(Learnt::default(), |l, _| l.learn(true, 300 * S));
        let slow = slow.learn(false, S);
        assert_eq!(
            AttemptLimit::next(&slow, 5 * S, 120 * S, None).total,
            120 * S
        );
    }

    #[test]
    fn a_timeout_doubles_the_next_limit_up_to_the_ceiling() {
        let first = AttemptLimit {
            total: 40 * S,
            refs: 5 * S,
            why: Why::Learnt,
        };
        let second = AttemptLimit::next(&Learnt::default(), 5 * S, 120 * S, Some(&first));
        assert_eq!(
            (second.total, second.refs, second.why),
            (80 * S, 10 * S, Why::Doubled)
        );
        let third = AttemptLimit::next(&Learnt::default(), 5 * S, 120 * S, Some(&second));
        assert_eq!(third.total, 120 * S);
    }
}
