//! The contract every storage keeps, run against each implementation
//! (today [`SqliteStore`] and [`MemoryStore`]): adding a database is adding
//! an implementation that passes this suite. Each check takes a fresh, empty
//! store and says which implementation failed.

use super::*;
use crate::events::{Event, EventKind, RepoRef};
use crate::git::FailureClass;
use crate::outcome::{AttemptRecord, Outcome, PullReport};

/// Runs `check` against a fresh store of every implementation.
fn each(check: fn(&dyn Storage)) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    let stores: [(&str, &dyn Storage); 2] = [("sqlite", &sqlite), ("memory", &MemoryStore::new())];
    for (name, store) in stores {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(store)));
        if let Err(panic) = run {
            eprintln!("the {name} store breaks the contract");
            std::panic::resume_unwind(panic);
        }
    }
}

pub(crate) fn report(outcome: Outcome, commits: u64, failures: &[FailureClass]) -> PullReport {
    PullReport {
        url: "https://h/app.git".into(),
        dir: "/srv/app".into(),
        outcome,
        old: Some("a".repeat(40)),
        new: outcome.is_success().then(|| "b".repeat(40)),
        commits,
        attempts: failures
            .iter()
            .enumerate()
            .map(|(i, c)| AttemptRecord {
                n: i as u32 + 1,
                class: *c,
                http_status: Some(503),
                message: "HTTP 503".into(),
                delay_ms: Some(100),
                duration_ms: 7,
                limit: None,
            })
            .collect(),
        duration_ms: 12,
        reason: (!outcome.is_success()).then_some(crate::policy::StopReason::AttemptsExhausted),
        notices: vec![],
        plugin_faults: Vec::new(),
        limit: None,
        learnt: None,
    }
}

/// Records `report` with the events it implies and no notifiers.
pub(crate) fn record(
    store: &dyn Storage,
    report: &PullReport,
    lag: Option<u64>,
    next: Option<u64>,
) -> Result<Vec<StoredEvent>, StoreError> {
    let repo = crate::events::RepoRef::new("app", &report.url, None, Default::default());
    let previous = store.failures_in_row("app")?;
    let outgoing = crate::events::for_pull(&repo, report, previous, None, 1)
        .into_iter()
        .map(|event| Outgoing {
            event: event.row(),
            messages: Vec::new(),
        })
        .collect();
    store.record_pull("app", report, lag, next, previous, outgoing, &[])
}

pub(crate) fn failed(repo: &str) -> Event {
    let mut e = Event::new(
        EventKind::Failed,
        RepoRef::new(repo, "https://h.example/x.git", None, Default::default()),
        1,
    );
    e.failure = Some(crate::events::Failure {
        class: crate::git::FailureClass::ServerError,
        http_status: Some(503),
        message: "HTTP 503".into(),
    });
    e
}

pub(crate) fn message(digest_window_ms: u64) -> NewMessage {
    NewMessage {
        notifier: "ops".into(),
        subject: "s".into(),
        body: "b".into(),
        html: None,
        max_attempts: 2,
        dedup_window_ms: 60_000,
        digest_window_ms,
    }
}

/// One test per check, each run against every implementation in this
/// process; and the list of them all, which the PostgreSQL test runs on one
/// server (a cluster takes a second to start, a database a few ms).
macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                each(checks::$check);
            }
        )*
        const ALL: &[(&str, fn(&dyn Storage))] = &[$((stringify!($check), checks::$check)),*];
    };
}

/// Every check against PostgreSQL: a real server the test starts, a fresh
/// database per check.
#[test]
fn postgres_keeps_the_contract() {
    let server = gitpulse_testkit::PostgresServer::start();
    for (i, (name, check)) in ALL.iter().enumerate() {
        let store = PostgresStore::connect(&Connect {
            url: crate::redact::Secret::new(server.database(&format!("contract_{i}"))),
            pool_size: 4,
            connect_timeout: std::time::Duration::from_secs(10),
            ca_file: None,
        })
        .unwrap();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&store)));
        if let Err(panic) = run {
            eprintln!("the postgres store breaks `{name}`");
            std::panic::resume_unwind(panic);
        }
    }
}

contract!(
    a_streak_that_changed_since_it_was_read_is_not_recorded_over,
    pulls_update_state_and_emit_events_in_one_place,
    old_history_is_pruned_and_state_stays,
    identical_messages_within_the_window_are_queued_once,
    failed_deliveries_retry_then_die_and_can_be_requeued,
    digestible_messages_wait_and_group_by_host,
    owed_steps_are_recorded_with_their_pull_and_settled_by_their_tries,
    the_state_keeps_skips_next_runs_and_learnt_limits,
    history_reads_back_in_the_order_it_happened,
);

mod checks {
    use super::*;

    pub(super) fn owed_steps_are_recorded_with_their_pull_and_settled_by_their_tries(
        store: &dyn Storage,
    ) {
        let first = report(Outcome::Updated, 1, &[]);
        let owe = ["build".to_string(), "reload".to_string()];
        store
            .record_pull("app", &first, None, None, 0, Vec::new(), &owe)
            .unwrap();
        let owed = store.owed_steps("app").unwrap();
        let names: Vec<&str> = owed.iter().map(|o| o.step.as_str()).collect();
        assert_eq!(names, ["build", "reload"], "in the order owed");
        assert_eq!(store.repos_owing_steps().unwrap(), ["app"]);

        // A newer revision owes the same step from where the first started.
        let mut second = report(Outcome::Updated, 1, &[]);
        second.old = first.new.clone();
        second.new = Some("c".repeat(40));
        store
            .record_pull("app", &second, None, None, 0, Vec::new(), &owe[..1])
            .unwrap();
        let build = store.owed_steps("app").unwrap()[0].clone();
        assert_eq!(build.step, "build");
        assert_eq!(
            (build.old.clone(), build.new.clone()),
            (first.old.clone(), second.new.clone())
        );

        let failed = StepRun {
            status: "failed".into(),
            exit_code: Some(2),
            duration_ms: 5,
            output: "boom".into(),
        };
        store
            .record_step_run("app", &build, &failed, Settle::RetryAt(42), Vec::new())
            .unwrap();
        let retried = store.owed_steps("app").unwrap()[0].clone();
        assert_eq!(
            (retried.tries, retried.next_try_ms, retried.told),
            (1, 42, true)
        );
        // A try for a revision no longer owed settles nothing.
        let stale = OwedStep {
            new: first.new.clone(),
            ..retried.clone()
        };
        store
            .record_step_run("app", &stale, &failed, Settle::Done, Vec::new())
            .unwrap();
        assert_eq!(store.owed_steps("app").unwrap().len(), 2);
        store
            .record_step_run("app", &retried, &failed, Settle::Keep, Vec::new())
            .unwrap();
        assert_eq!(
            store.owed_steps("app").unwrap()[0].tries,
            1,
            "kept as it was"
        );
        let ok = StepRun {
            status: "succeeded".into(),
            exit_code: Some(0),
            ..failed.clone()
        };
        store
            .record_step_run("app", &retried, &ok, Settle::Done, Vec::new())
            .unwrap();
        let left: Vec<String> = store
            .owed_steps("app")
            .unwrap()
            .into_iter()
            .map(|o| o.step)
            .collect();
        assert_eq!(left, ["reload"]);
        store.drop_owed_steps("app", "reload").unwrap();
        assert!(store.owed_steps("app").unwrap().is_empty());
        store
            .record_pull("app", &second, None, None, 0, Vec::new(), &owe)
            .unwrap();
        store.forget_owed_steps("app").unwrap();
        assert!(store.repos_owing_steps().unwrap().is_empty());

        // Each try is history, newest first.
        let steps: Vec<(String, Option<String>, String)> = store
            .history("app", 100)
            .unwrap()
            .into_iter()
            .filter(|h| h.kind.starts_with("step "))
            .map(|h| (h.kind, h.class, h.detail))
            .collect();
        assert_eq!(steps.len(), 4, "{steps:?}");
        assert_eq!(steps[0].0, "step build");
        assert_eq!(steps[0].1, None, "a success has no class");
        assert_eq!(steps[3].1.as_deref(), Some("failed"));
        assert_eq!(
            steps[3].2,
            format!("failed (exit 2) {}\nboom", &"c".repeat(10))
        );
    }

    pub(super) fn the_state_keeps_skips_next_runs_and_learnt_limits(store: &dyn Storage) {
        store.check_writable().unwrap();
        store.record_skip("app").unwrap();
        store.record_skip("app").unwrap();
        store
            .set_next_runs(&[("app".into(), 7_000), ("docs".into(), 9_000)])
            .unwrap();
        let mut pulled = report(Outcome::Cloned, 3, &[]);
        let learnt = crate::policy::timeout::Learnt::default();
        pulled.learnt = Some(learnt);
        record(store, &pulled, None, None).unwrap();
        let status = store.status().unwrap();
        let names: Vec<&str> = status.iter().map(|s| s.repo.as_str()).collect();
        assert_eq!(names, ["app", "docs"], "by name");
        assert_eq!((status[0].skipped, status[0].next_run_ms), (2, Some(7_000)));
        assert!(status[0].last_pull_ms.is_some() && status[1].last_pull_ms.is_none());
        assert_eq!(store.last_good("app").unwrap(), pulled.new);
        assert_eq!(store.last_good("docs").unwrap(), None);
        assert_eq!(store.learnt("app").unwrap(), learnt);

        let quiet = QuietPull {
            repo: "docs".into(),
            report: report(Outcome::Unchanged, 0, &[]),
            start_lag_ms: Some(4),
            next_run_ms: Some(11_000),
            at_ms: now_ms(),
        };
        store.record_quiet_pulls(&[quiet]).unwrap();
        let docs = store.status().unwrap()[1].clone();
        assert_eq!(
            (docs.last_result.as_deref(), docs.next_run_ms),
            (Some("unchanged"), Some(11_000))
        );
        assert_eq!(store.start_lags_since(0).unwrap(), [4]);
        assert!(store
            .start_lags_since(now_ms() + 60_000)
            .unwrap()
            .is_empty());
    }

    pub(super) fn history_reads_back_in_the_order_it_happened(store: &dyn Storage) {
        for outcome in [Outcome::Cloned, Outcome::Failed, Outcome::Unchanged] {
            let failures: &[FailureClass] = match outcome {
                Outcome::Failed => &[FailureClass::Timeout],
                _ => &[],
            };
            let commits = u64::from(outcome == Outcome::Cloned) * 2;
            record(store, &report(outcome, commits, failures), None, None).unwrap();
        }
        let pulls: Vec<String> = store
            .recent_pulls("app", 2)
            .unwrap()
            .into_iter()
            .map(|p| p.outcome)
            .collect();
        assert_eq!(pulls, ["failed", "unchanged"], "the last two, oldest first");
        let events: Vec<String> = store
            .recent_events("app", 5)
            .unwrap()
            .into_iter()
            .map(|(_, kind)| kind)
            .collect();
        assert_eq!(events, ["recovered", "failed", "changed"], "newest first");
        assert_eq!(
            store.last_failure_message("app").unwrap().as_deref(),
            Some("HTTP 503")
        );
        assert_eq!(store.last_failure_message("docs").unwrap(), None);
        let all = store.events_after(0).unwrap();
        assert_eq!(store.events_after(all[0].id).unwrap().len(), 2);
        let kinds: Vec<String> = store
            .history("app", 2)
            .unwrap()
            .into_iter()
            .map(|h| h.kind)
            .collect();
        assert_eq!(kinds.len(), 2, "limited");

        // Delivered messages are timed and pruned; pending ones stay.
        store
            .record_events(vec![Outgoing {
                event: failed("app").row(),
                messages: vec![message(0)],
            }])
            .unwrap();
        store
            .record_events(vec![Outgoing {
                event: failed("docs").row(),
                messages: vec![message(0)],
            }])
            .unwrap();
        let due = store.due_messages(now_ms(), 10).unwrap();
        assert_eq!(due.len(), 2);
        store
            .mark_delivered(&[Receipt {
                id: due[0].id,
                answer: "ok".into(),
            }])
            .unwrap();
        assert_eq!(store.delivery_times().unwrap().len(), 1);
        assert_eq!(store.prune_delivered(now_ms() + 1).unwrap(), 1);
        let counts = store.outbox_counts().unwrap();
        assert_eq!((counts.pending, counts.delivered), (1, 0));
        assert!(counts.oldest_pending_ms.is_some());
        assert_eq!(store.next_due_ms().unwrap(), Some(due[1].created_ms));
    }

    pub(super) fn a_streak_that_changed_since_it_was_read_is_not_recorded_over(
        store: &dyn Storage,
    ) {
        let failed = report(Outcome::Failed, 0, &[FailureClass::ServerError]);
        let seen = store.failures_in_row("app").unwrap();
        record(store, &failed, None, None).unwrap();
        let err = store
            .record_pull("app", &failed, None, None, seen, Vec::new(), &[])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::StreakChanged(ref r) if r == "app"),
            "{err}"
        );
        assert_eq!(
            store.status().unwrap()[0].failures_in_row,
            1,
            "nothing written"
        );
        assert_eq!(
            store.history("app", 10).unwrap().len(),
            2,
            "one pull, one attempt"
        );
    }

    pub(super) fn pulls_update_state_and_emit_events_in_one_place(store: &dyn Storage) {
        let events = record(store, &report(Outcome::Updated, 2, &[]), Some(5), None).unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["changed"]
        );
        let events = record(
            store,
            &report(Outcome::Failed, 0, &[FailureClass::ServerError; 2]),
            Some(1),
            Some(1_000),
        )
        .unwrap();
        assert_eq!(events[0].kind, "failed");
        record(
            store,
            &report(Outcome::Failed, 0, &[FailureClass::Timeout]),
            None,
            None,
        )
        .unwrap();
        let status = store.status().unwrap();
        assert_eq!(status[0].failures_in_row, 2);
        assert_eq!(status[0].next_run_ms, Some(1_000));
        assert_eq!(status[0].last_class.as_deref(), Some("timeout"));
        assert_eq!(
            status[0].last_commit.as_deref(),
            Some("b".repeat(40).as_str())
        );
        let events = record(store, &report(Outcome::Unchanged, 0, &[]), Some(3), None).unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["recovered"]
        );
        assert_eq!(store.status().unwrap()[0].failures_in_row, 0);
        let history = store.history("app", 100).unwrap();
        assert_eq!(
            history.len(),
            4 + 3,
            "4 pulls and 3 failed attempts: {history:?}"
        );
        assert_eq!(history[0].kind, "unchanged");
        assert_eq!(store.events_after(0).unwrap().len(), 4);
        assert_eq!(
            store.start_lags().unwrap(),
            [1, 3, 5],
            "manual pulls have no lag"
        );
    }

    pub(super) fn old_history_is_pruned_and_state_stays(store: &dyn Storage) {
        record(
            store,
            &report(Outcome::Failed, 0, &[FailureClass::Timeout]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(store.prune_history(1).unwrap(), 0, "nothing that old");
        assert_eq!(
            store.prune_history(now_ms() + 1).unwrap(),
            3,
            "pull, attempt, event"
        );
        assert!(store.history("app", 10).unwrap().is_empty());
        assert_eq!(
            store.status().unwrap()[0].failures_in_row,
            1,
            "state is not history"
        );
    }

    pub(super) fn identical_messages_within_the_window_are_queued_once(store: &dyn Storage) {
        for _ in 0..3 {
            store
                .record_events(vec![Outgoing {
                    event: failed("a").row(),
                    messages: vec![message(0)],
                }])
                .unwrap();
        }
        store
            .record_events(vec![Outgoing {
                event: failed("b").row(),
                messages: vec![message(0)],
            }])
            .unwrap();
        assert_eq!(store.outbox_counts().unwrap().pending, 2);
        assert_eq!(
            store.events_after(0).unwrap().len(),
            4,
            "every event is recorded"
        );
    }

    pub(super) fn failed_deliveries_retry_then_die_and_can_be_requeued(store: &dyn Storage) {
        store
            .record_events(vec![Outgoing {
                event: failed("a").row(),
                messages: vec![message(0)],
            }])
            .unwrap();
        let due = store.due_messages(now_ms(), 10).unwrap();
        assert_eq!(due.len(), 1);
        store
            .mark_failed(&[due[0].id], "HTTP 503", Some(now_ms() + 60_000))
            .unwrap();
        assert!(
            store.due_messages(now_ms(), 10).unwrap().is_empty(),
            "not due before its retry time"
        );
        store
            .mark_failed(&[due[0].id], "HTTP 400: bad payload", None)
            .unwrap();
        let dead = store.outbox(&[OutboxState::Dead], 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 400: bad payload"));
        assert!(store.requeue(dead[0].id).unwrap());
        let due = store.due_messages(now_ms(), 10).unwrap();
        assert_eq!(due[0].attempts, 0);
        store
            .mark_delivered(&[Receipt {
                id: due[0].id,
                answer: "200 OK".into(),
            }])
            .unwrap();
        assert!(
            !store.requeue(due[0].id).unwrap(),
            "a delivered message stays delivered"
        );
        assert_eq!(store.outbox_counts().unwrap().delivered, 1);
    }

    pub(super) fn digestible_messages_wait_and_group_by_host(store: &dyn Storage) {
        for repo in ["a", "b", "c"] {
            store
                .record_events(vec![Outgoing {
                    event: failed(repo).row(),
                    messages: vec![message(30_000)],
                }])
                .unwrap();
        }
        assert!(
            store.due_messages(now_ms(), 10).unwrap().is_empty(),
            "held for the digest window"
        );
        let group = store.digest_group("ops", "failed@h.example").unwrap();
        assert_eq!(group.len(), 3);
        let ids: Vec<i64> = group.iter().map(|m| m.id).collect();
        let digest = NewDigest {
            subject: "3 repositories failed".into(),
            body: "a, b, c".into(),
            html: None,
            events: "[]".into(),
            max_attempts: 2,
        };
        let accepted = store
            .accept_digest("ops", &ids, digest, Vec::new())
            .unwrap();
        assert_eq!(accepted.kind, "digest");
        assert_eq!(accepted.carries, 3);
        assert_eq!(accepted.subject, "3 repositories failed");
        let due = store.due_messages(now_ms(), 10).unwrap();
        assert_eq!(
            due,
            std::slice::from_ref(&accepted),
            "only the digest is due; its members wait in it"
        );
        let counts = store.outbox_counts().unwrap();
        assert_eq!((counts.pending, counts.delivered), (1, 0));
        store
            .mark_delivered(&[Receipt {
                id: accepted.id,
                answer: "250 OK".into(),
            }])
            .unwrap();
        let rows = store.outbox(&[OutboxState::Delivered], 10).unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows
            .iter()
            .filter(|r| r.id != accepted.id)
            .all(|r| r.digest_of == Some(accepted.id)));
    }
}
