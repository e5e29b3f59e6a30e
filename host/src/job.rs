//! The pull job's policy and recording steps, shared by `gitpulse pull`
//! (`--policy`, `--notify-config`) and the daemon: which plugins decide a
//! repository's retries, and what a finished pull means (its events),
//! rendered into messages and written with the pull's result.
//!
//! Recording is two-phase so that nothing slow happens under the store's
//! lock or inside its write transaction: read the repository's failure
//! streak (a short read), decide the events and render their messages
//! (plugin calls, templates: no lock held), then write the result, its
//! events and their outbox rows in one transaction. If another process
//! recorded a pull of the same repository in between, the streak has moved
//! and the events are decided again.
//!
//! It also chooses a repository's policy (which plugin plays which role),
//! for the CLI and the daemon alike. This module wires the parts together;
//! it does not pull (`pull`), decide events (`events`), render (`notify`),
//! store (`store`) or load plugins (its callers hand it a loader).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{self, AuthRef, Config, PolicyRef, RepoConfig, SecretRef};
use crate::events::{EventKind, PullEvents, RepoRef};
use crate::git::FailureClass;
use crate::git::{Auth, GitFailure, Layout, OriginCredential, Publish, SyncSpec};
use crate::notify::{Audience, PluginLoader, Router};
use crate::outcome::Outcome;
use crate::outcome::{AttemptRecord, PullReport};
use crate::plugin::{LoadError, Told};
use crate::policy::{Backoff, Budgeted, Builtin, RetryBudget, RetryPolicy, StopReason, WasmPolicy};
use crate::pull::{self, Observer, PullOptions};
use crate::redact::Secret;
use crate::step::{self, Step};
use crate::store::{OwedStep, QuietPull, Settle, StepRun, Storage, StoreError, StoredEvent};

/// Why a configured repository's job could not run. Nothing was pulled.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Its token could not be read.
    #[error("{0}")]
    Auth(String),
    /// Its checkout cannot be used (not a repository, the wrong kind).
    #[error(transparent)]
    Spec(#[from] crate::git::SpecError),
    /// A plugin it names will not load.
    #[error(transparent)]
    Plugin(#[from] LoadError),
    /// DIR cannot be readied for its publication mode.
    #[error(transparent)]
    Publish(GitFailure),
}

/// A configured repository's pull job: pull under its policy, then record
/// the result with its events and their messages.
pub struct Job<'a> {
    /// The repository and its settings.
    pub repo: &'a RepoConfig,
    /// The whole config (notifiers, plugin settings).
    pub config: &'a Config,
    /// Where its plugins come from (the daemon's registry).
    pub plugins: PluginLoader<'a>,
    /// The state.
    pub store: &'a dyn Storage,
    /// Set to stop the pull at its next check.
    pub cancel: Arc<AtomicBool>,
    /// The retry budget of the repository's host, shared with the other
    /// repositories on it (the daemon's); none: retries are not budgeted.
    pub budget: Option<Arc<Mutex<RetryBudget>>>,
    /// Where quiet pulls wait to be written together (the daemon's);
    /// none: every pull is written at once.
    pub quiet: Option<&'a dyn Batch>,
    /// Seed of the built-in policy's jitter (`gitpulse pull --seed`).
    pub seed: Option<u64>,
    /// Whether digest notifiers collect messages (a daemon sends digests;
    /// a one-shot pull has nothing to collect them with: sent at once).
    pub digests: bool,
    /// Called when the job records events while it runs (a `retrying`
    /// event between attempts): the daemon wakes its sender.
    pub news: Box<dyn Fn() + 'a>,
}

impl<'a> Job<'a> {
    /// Runs the job; `observer` hears of each attempt. Returns the pull's
    /// report, how recording it went (a pull that happened is reported
    /// even when the state could not take it) and whether steps may be
    /// owed ([`Job::run_steps`] runs them). A job that cannot start (a token file gone, DIR not a
    /// repository, a plugin that will not load) is recorded too, as a
    /// failed pull with its class and a `failed` event, so `status` and
    /// notifiers see it. Blocks: call it on a blocking thread.
    pub fn run(&self, observer: &mut dyn Observer, timing: Timing) -> JobRun {
        self.run_with(&mut crate::git::sync, observer, timing)
    }

    /// [`Job::run`] over any [`pull::Attempt`] (`git::sync` for real):
    /// everything around the transfer runs as it does for real.
    pub(crate) fn run_with(
        &self,
        attempt: &mut pull::Attempt<'_>,
        observer: &mut dyn Observer,
        timing: Timing,
    ) -> JobRun {
        let repo = self.repo;
        let router = self.router();
        let audience = Audience::of(repo);
        let mut observer = Retries {
            job: self,
            router: &router,
            audience: &audience,
            inner: observer,
        };
        let (report, unstarted) = match self.pull(attempt, &mut observer) {
            Ok(report) => (report, None),
            Err(e) => (not_started(repo, &e), Some(e)),
        };
        let spec = options(repo, Auth::None, &self.config.credentials).sync;
        let (report, gates) = publish(
            &repo.name,
            &spec,
            &repo.dir,
            repo.publish,
            &repo.steps,
            report,
            &self.cancel,
        );
        let identity = identity(repo);
        // Retries were told as they happened (by the observer).
        let events = PullEvents::read(&identity, &spec.dir, &report, false);
        let told: Vec<_> = gates.iter().map(|g| gate_event(repo, &report, g)).collect();
        let gated = match told.is_empty() {
            true => Ok(Vec::new()),
            false => self.store.record_events(router.outgoing(told, &audience)),
        };
        let owed: Vec<String> = step::owed_by(&self.repo.steps, report.outcome)
            .map(|s| s.name.clone())
            .collect();
        let recorded = record(
            self.store,
            self.quiet,
            &router,
            &audience,
            &self.repo.name,
            &events,
            &report,
            timing,
            &owed,
        );
        let recorded = recorded.and_then(|mut events| {
            events.extend(gated?);
            Ok(events)
        });
        JobRun {
            report,
            recorded,
            owes_steps: !self.repo.steps.is_empty(),
            gates,
            unstarted,
        }
    }

    /// How this job routes events to messages.
    fn router(&self) -> Router<'a> {
        let router = Router::new(self.config, self.plugins);
        match self.digests {
            true => router,
            false => router.without_digests(),
        }
    }

    /// The secrets a pull of the repository may send, read now (kept out
    /// of output; masked in GitHub Actions logs).
    pub fn secrets(&self) -> Vec<Secret> {
        let auth = auth(self.repo).unwrap_or(Auth::None);
        secrets_of(&options(self.repo, auth, &self.config.credentials).sync)
    }

    /// Runs what the repository owes: this pull's steps, and any left by a
    /// crash or waiting to be tried again. Separate from [`Job::run`] so a
    /// daemon runs steps in a pool of their own, not under the pull's
    /// permits (a slow step must not hold back other pulls to its host).
    /// Blocks.
    pub fn run_steps(&self) -> StepsRun {
        let router = self.router();
        let audience = Audience::of(self.repo);
        let mut owing = false;
        let mut ran = Vec::new();
        let recorded =
            self.run_owed_steps(&router, &audience, &mut ran)
                .map(|(events, still_owing)| {
                    owing = still_owing;
                    events
                });
        let next_step_due_ms = match owing {
            true => self.next_step_due_ms(),
            false => None,
        };
        StepsRun {
            ran,
            recorded,
            next_step_due_ms,
        }
    }

    /// Runs the steps the repository owes that are due, one try each, and
    /// records every try with what it settles. A step no longer configured
    /// is forgotten.
    /// Returns what was recorded, and whether anything was owed (a step
    /// that ran may still be, to be tried again); `ran` gets each try.
    fn run_owed_steps(
        &self,
        router: &Router<'_>,
        audience: &Audience<'_>,
        ran: &mut Vec<StepReport>,
    ) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        let repo = self.repo;
        let mut recorded = Vec::new();
        if repo.steps.is_empty() {
            // Nothing to run; what a removed step still owed is forgotten
            // when the daemon starts.
            return Ok((recorded, false));
        }
        // Read first: a guard in the loop head would live through the loop.
        let owed_steps = self.store.owed_steps(&repo.name)?;
        let owed = !owed_steps.is_empty();
        for owed in owed_steps {
            let Some(step) = repo.steps.iter().find(|s| s.name == owed.step) else {
                self.store.drop_owed_steps(&repo.name, &owed.step)?;
                continue;
            };
            if owed.next_try_ms > crate::model::now_ms() {
                continue;
            }
            if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if step.once == step::Once::Fleet && !self.first_in_fleet(step, &owed)? {
                let run = StepRun {
                    status: "skipped".into(),
                    exit_code: None,
                    duration_ms: 0,
                    output: "runs once for the fleet: another replica ran it".into(),
                };
                recorded.extend(self.store.record_step_run(
                    &repo.name,
                    &owed,
                    &run,
                    Settle::Done,
                    Vec::new(),
                )?);
                continue;
            }
            let (run, settle, event) =
                try_owed_step(repo, &self.config.credentials, step, &owed, &self.cancel);
            let outgoing = router.outgoing(event.into_iter().collect(), audience);
            recorded.extend(
                self.store
                    .record_step_run(&repo.name, &owed, &run, settle, outgoing)?,
            );
            ran.push(StepReport {
                name: step.name.clone(),
                run,
            });
        }
        Ok((recorded, owed))
    }

    /// Whether this replica runs `step` for `owed`'s revision when the step
    /// runs once for the fleet (always, outside a replicating fleet).
    fn first_in_fleet(&self, step: &Step, owed: &OwedStep) -> Result<bool, StoreError> {
        match self.store.fleet() {
            Some(fleet) => fleet.run_once(
                &self.repo.name,
                &step.name,
                owed.new.as_deref().unwrap_or_default(),
            ),
            None => Ok(true),
        }
    }

    /// When the repository's next owed step is due (unix ms), if it owes one.
    fn next_step_due_ms(&self) -> Option<u64> {
        let owed = self.store.owed_steps(&self.repo.name).ok()?;
        owed.iter().map(|o| o.next_try_ms).min()
    }

    /// The pull itself, under the repository's policy.
    fn pull(
        &self,
        attempt: &mut pull::Attempt<'_>,
        observer: &mut dyn Observer,
    ) -> Result<PullReport, JobError> {
        let repo = self.repo;
        let builtin = Builtin::new(
            Backoff {
                base: repo.backoff_base,
                max: repo.backoff_max,
            },
            repo.max_attempts,
            self.seed,
        );
        let told = Told {
            max_attempts: repo.max_attempts,
            max_delay: repo.backoff_max,
        };
        prepare_dir(&repo.dir, repo.publish, repo.lock_wait).map_err(JobError::Publish)?;
        let mut policy = policy(&repo.policy, builtin, identity(repo), told, self.plugins)?;
        if let Some(budget) = &self.budget {
            budget
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pull_started(std::time::Instant::now());
            policy = Box::new(Budgeted::new(policy, budget.clone()));
        }
        let mut options = options(repo, auth(repo)?, &self.config.credentials);
        options.learnt = self.store.learnt(&repo.name).unwrap_or_default();
        Ok(pull::pull_with(
            attempt,
            &options,
            policy.as_mut(),
            observer,
            self.cancel.clone(),
        )?)
    }
}

/// Hands every attempt on to the entry point's observer, and records a
/// failed attempt that will be retried as a `retrying` event when a
/// notifier asked for them: the same for every entry point, while the
/// pull still runs.
struct Retries<'j, 'a> {
    job: &'j Job<'a>,
    router: &'j Router<'a>,
    audience: &'j Audience<'j>,
    inner: &'j mut dyn Observer,
}

impl Observer for Retries<'_, '_> {
    fn attempt_started(&mut self, n: u32) {
        self.inner.attempt_started(n);
    }

    fn transfer(&mut self, progress: crate::git::Transfer) {
        self.inner.transfer(progress);
    }

    fn notice(&mut self, text: &str) {
        self.inner.notice(text);
    }

    fn attempt_failed(&mut self, record: &AttemptRecord, decision: &crate::policy::Decision) {
        self.inner.attempt_failed(record, decision);
        let retried = matches!(decision, crate::policy::Decision::RetryAfter { .. });
        if !retried || !self.router.wants(EventKind::Retrying, self.audience) {
            return;
        }
        let event =
            crate::events::retrying(&identity(self.job.repo), record, crate::model::now_ms());
        let outgoing = self.router.outgoing(vec![event], self.audience);
        match self.job.store.record_events(outgoing) {
            Ok(_) => (self.job.news)(),
            Err(e) => tracing::error!(repo = self.job.repo.name, "recording a retry: {e}"),
        }
    }
}

/// What a job did.
pub struct JobRun {
    /// The pull's report (reported even when the state could not take it).
    pub report: PullReport,
    /// How recording it went, and the events recorded.
    pub recorded: Result<Vec<StoredEvent>, StoreError>,
    /// Whether the repository has steps, some of which may be owed now:
    /// [`Job::run_steps`] runs them.
    pub owes_steps: bool,
    /// The publication gates that kept the new revision from DIR.
    pub gates: Vec<Gate>,
    /// Why the job could not start, if it could not (its report says so
    /// too, as a failed attempt).
    pub unstarted: Option<JobError>,
}

/// What [`Job::run_steps`] did.
pub struct StepsRun {
    /// Each step tried, in order.
    pub ran: Vec<StepReport>,
    /// How recording the tries went, and the events recorded.
    pub recorded: Result<Vec<StoredEvent>, StoreError>,
    /// When the repository's next owed step is due (unix ms), if it still
    /// owes one.
    pub next_step_due_ms: Option<u64>,
}

/// One try of a step `repo` owes: skipped when no changed file concerns it,
/// else run in the checkout. A failure is told once per revision and tried
/// again on the repository's backoff curve, `max_attempts` tries in all.
fn try_owed_step(
    repo: &RepoConfig,
    shared: &[OriginCredential],
    step: &Step,
    owed: &OwedStep,
    cancel: &AtomicBool,
) -> (StepRun, Settle, Option<crate::events::Event>) {
    let pulled = owed.outcome != Outcome::Failed.as_str();
    let git_dir = repo.publish.repo_dir(&repo.dir);
    let new = owed.new.as_deref().filter(|_| pulled);
    let changed = changed_paths(&git_dir, owed.old.as_deref(), new);
    if pulled && !step::concerns(&step.paths, &changed).unwrap_or(true) {
        let skipped = StepRun {
            status: "skipped".into(),
            exit_code: None,
            duration_ms: 0,
            output: format!("no changed file matches {}", step.paths.join(", ")),
        };
        return (skipped, Settle::Done, None);
    }
    let listed = ChangedFiles::write(&git_dir, &changed);
    let revision = step::Revision {
        repo: repo.name.clone(),
        dir: repo.dir.clone(),
        old: owed.old.clone(),
        new: owed.new.clone(),
        reference: repo.follow.describe(),
        changed_files: listed.path(),
    };
    let cwd = if repo.dir.is_dir() {
        repo.dir.clone()
    } else {
        repo.dir.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let spec = options(repo, Auth::None, shared).sync;
    let ran = run_step(step, &revision, &cwd, &spec, cancel);
    let run = recorded(&ran);
    if ran.status.ok() {
        return (run, Settle::Done, None);
    }
    if ran.status == step::Status::Cancelled {
        return (run, Settle::Keep, None);
    }
    let tries = owed.tries + 1;
    let settle = if tries >= repo.max_attempts {
        Settle::Done
    } else {
        let wait = Backoff {
            base: repo.backoff_base,
            max: repo.backoff_max,
        }
        .ceiling(tries);
        Settle::RetryAt(crate::model::now_ms() + wait.as_millis() as u64)
    };
    let event = (!owed.told || settle == Settle::Done).then(|| {
        let mut event = crate::events::Event::new(
            EventKind::StepFailed,
            identity(repo),
            crate::model::now_ms(),
        );
        let given_up = match settle {
            Settle::Done => format!(", given up after {tries} tries"),
            _ => String::new(),
        };
        event.detail = Some(format!("step `{}` {}{given_up}", step.name, ran.status));
        event.old = owed.old.clone();
        event.new = owed.new.clone();
        event.attempts = tries;
        event.failure = Some(crate::events::Failure {
            class: FailureClass::Other,
            http_status: None,
            message: ran.output_tail(1000).to_string(),
        });
        event
    });
    (run, settle, event)
}

/// Readies DIR for a pull under `publish`: symlink mode turns an in-place
/// checkout into the store beside DIR (publishing its commit first); in
/// place undoes symlink mode. DIR is never missing meanwhile.
pub fn prepare_dir(dir: &Path, publish: Publish, wait: Duration) -> Result<(), GitFailure> {
    let layout = Layout::of(dir);
    let is_symlink = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
    if publish == Publish::InPlace && !is_symlink {
        return Ok(()); // nothing to switch: no lock needed
    }
    let _lock = layout.lock(wait)?;
    match publish {
        Publish::Symlink { .. } => layout.prepare(),
        Publish::InPlace => layout.undo().map(|_| ()),
    }
}

/// A gate (`before_publish` step) that failed.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The revision it kept from DIR.
    pub revision: String,
    /// The step.
    pub step: Step,
    /// How it ran.
    pub ran: step::Ran,
}

/// Publishes the revision a successful pull left in the store (symlink
/// mode): writes its worktree, runs the `before_publish` steps in it, and
/// flips DIR to it only if they all succeed; then prunes old worktrees.
/// Returns the report as DIR sees it (old: what DIR showed, new: what it
/// shows now) and the gates that failed. In place, `report` is returned
/// as it is.
pub fn publish(
    name: &str,
    spec: &crate::git::SyncSpec,
    dir: &Path,
    publish: Publish,
    steps: &[Step],
    mut report: PullReport,
    cancel: &AtomicBool,
) -> (PullReport, Vec<Gate>) {
    let Publish::Symlink { keep } = publish else {
        return (report, Vec::new());
    };
    let (true, Some(new)) = (report.outcome.is_success(), report.new.clone()) else {
        return (report, Vec::new());
    };
    let layout = Layout::of(dir);
    let _lock = match layout.lock(spec.lock_wait) {
        Ok(lock) => lock,
        Err(failure) => return (not_published(report, failure), Vec::new()),
    };
    let store = layout.store();
    let before = layout.published();
    report.dir = dir.display().to_string();
    if before.as_deref() != Some(new.as_str()) {
        let worktree = match layout.write(&new) {
            Ok(worktree) => worktree,
            Err(failure) => return (not_published(report, failure), Vec::new()),
        };
        if spec.group_write {
            if let Err(e) = crate::git::share_with_group(&worktree) {
                report.notices.push(format!(
                    "giving the group access to {}: {e}",
                    worktree.display()
                ));
            }
        }
        let changed = changed_paths(&store, before.as_deref(), Some(&new));
        let listed = ChangedFiles::write(&store, &changed);
        let revision = step::Revision {
            repo: name.to_string(),
            dir: worktree.clone(),
            old: before.clone(),
            new: Some(new.clone()),
            reference: spec.follow.describe(),
            changed_files: listed.path(),
        };
        let mut failed = Vec::new();
        for gate in steps.iter().filter(|s| s.before_publish) {
            if !step::concerns(&gate.paths, &changed).unwrap_or(true) {
                continue;
            }
            let ran = run_step(gate, &revision, &worktree, spec, cancel);
            if !ran.status.ok() {
                failed.push(Gate {
                    revision: new.clone(),
                    step: gate.clone(),
                    ran,
                });
                break;
            }
        }
        drop(listed);
        if !failed.is_empty() {
            // The old revision stays published; the next pull tries again.
            return match before {
                Some(before) => {
                    report.outcome = crate::outcome::Outcome::Unchanged;
                    report.commits = 0;
                    report.old = Some(before.clone());
                    report.new = Some(before);
                    (report, failed)
                }
                None => {
                    let why = format!(
                        "step `{}` {}: nothing published",
                        failed[0].step.name, failed[0].ran.status
                    );
                    (
                        not_published(
                            report,
                            crate::git::GitFailure {
                                class: FailureClass::Other,
                                http_status: None,
                                retry_after: None,
                                message: why,
                            },
                        ),
                        failed,
                    )
                }
            };
        }
        if let Err(failure) = layout.flip(&new) {
            return (not_published(report, failure), Vec::new());
        }
    }
    if let Err(failure) = layout.prune(keep) {
        report
            .notices
            .push(format!("pruning old worktrees: {}", failure.message));
    }
    report.outcome = match (&before, before.as_deref() == Some(new.as_str())) {
        (None, _) => crate::outcome::Outcome::Cloned,
        (Some(_), true) => crate::outcome::Outcome::Unchanged,
        (Some(_), false) => crate::outcome::Outcome::Updated,
    };
    report.commits = match report.outcome {
        crate::outcome::Outcome::Unchanged => 0,
        _ => crate::git::commits_between(&store, before.as_deref(), &new),
    };
    report.old = before;
    (report, Vec::new())
}

/// The `step-failed` event of a gate that kept a revision from DIR.
fn gate_event(repo: &RepoConfig, report: &PullReport, gate: &Gate) -> crate::events::Event {
    let mut event = crate::events::Event::new(
        EventKind::StepFailed,
        identity(repo),
        crate::model::now_ms(),
    );
    event.detail = Some(format!(
        "step `{}` {}: the new revision was not published",
        gate.step.name, gate.ran.status
    ));
    event.old = report.old.clone();
    event.new = Some(gate.revision.clone());
    event.failure = Some(crate::events::Failure {
        class: FailureClass::Other,
        http_status: None,
        message: gate.ran.output_tail(1000).to_string(),
    });
    event
}

/// `report` turned into a failure that says why nothing was published.
fn not_published(mut report: PullReport, failure: GitFailure) -> PullReport {
    report.attempts.push(AttemptRecord {
        n: report.attempts.len() as u32 + 1,
        class: failure.class,
        http_status: None,
        message: failure.message,
        delay_ms: None,
        duration_ms: 0,
        limit: None,
    });
    report.outcome = crate::outcome::Outcome::Failed;
    report.reason = Some(StopReason::NotRetryable);
    report.new = None;
    report
}

/// The secrets a pull of `spec` may send (kept out of step output and
/// masked in Actions logs).
pub fn secrets_of(spec: &crate::git::SyncSpec) -> Vec<Secret> {
    let mut secrets: Vec<Secret> = spec
        .credentials
        .iter()
        .filter_map(|c| c.secret.read().ok())
        .collect();
    if let Auth::Token(token) = &spec.auth {
        secrets.push(token.clone());
    }
    secrets
}

/// One try of a step, as `gitpulse pull --json` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    /// The step's name (its command).
    pub name: String,
    /// How it ran.
    #[serde(flatten)]
    pub run: StepRun,
}

/// The paths that changed from `old` to `new` in the repository at
/// `git_dir` (none without a `new`).
fn changed_paths(git_dir: &Path, old: Option<&str>, new: Option<&str>) -> Vec<String> {
    new.and_then(|new| crate::events::changed_paths(git_dir, old, new, 1_000_000).ok())
        .unwrap_or_default()
}

/// Runs `step` with every secret `spec` may send kept out of its output.
fn run_step(
    step: &Step,
    revision: &step::Revision,
    cwd: &Path,
    spec: &crate::git::SyncSpec,
    cancel: &AtomicBool,
) -> step::Ran {
    let secrets = secrets_of(spec);
    step::run(
        step,
        revision,
        cwd,
        &secrets.iter().collect::<Vec<_>>(),
        cancel,
    )
}

/// A step's try as history keeps it.
fn recorded(ran: &step::Ran) -> StepRun {
    StepRun {
        status: ran.status.as_str().to_string(),
        exit_code: ran.status.exit_code(),
        duration_ms: ran.duration.as_millis() as u64,
        output: ran.output.clone(),
    }
}

/// The changed paths, one per line (quoted as git quotes them when they
/// hold a newline or another control character, `"` or `\`), in the
/// checkout's git directory for `GITPULSE_CHANGED_FILES` (nothing is
/// written outside the checkout); removed when dropped.
struct ChangedFiles(Option<PathBuf>);

impl ChangedFiles {
    /// Writes the list for the repository at `dir`; none when there is no
    /// repository there.
    fn write(dir: &Path, changed: &[String]) -> ChangedFiles {
        let written = || -> Option<PathBuf> {
            let git_dir = git2::Repository::open(dir).ok()?.path().to_path_buf();
            let path = git_dir.join("gitpulse-changed-files");
            let mut text = String::new();
            for path in changed {
                text.push_str(&crate::model::quote_path(path));
                text.push('\n');
            }
            std::fs::write(&path, text).ok()?;
            Some(path)
        };
        ChangedFiles(written())
    }

    fn path(&self) -> Option<PathBuf> {
        self.0.clone()
    }
}

impl Drop for ChangedFiles {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The report of a job that could not start: one failed attempt that says
/// why, not retried.
fn not_started(repo: &RepoConfig, e: &JobError) -> PullReport {
    let class = match e {
        JobError::Auth(_) => FailureClass::Auth,
        JobError::Publish(f) => f.class,
        JobError::Spec(_) | JobError::Plugin(_) => FailureClass::Other,
    };
    could_not_start(&repo.url, &repo.dir, class, &e.to_string())
}

/// The report of a pull of `url` into `dir` that could not start, `why`:
/// one failed attempt of `class`, not retried. What the daemon records for
/// a repository whose job cannot start, and `gitpulse pull` too, so both
/// notify of it alike.
pub fn could_not_start(url: &str, dir: &Path, class: FailureClass, why: &str) -> PullReport {
    PullReport {
        attempts: vec![AttemptRecord {
            n: 1,
            class,
            http_status: None,
            message: format!("could not start: {why}"),
            delay_ms: None,
            duration_ms: 0,
            limit: None,
        }],
        reason: Some(StopReason::NotRetryable),
        ..PullReport::failed(url, dir)
    }
}

/// A configured repository as events and plugins see it.
pub fn identity(repo: &RepoConfig) -> RepoRef {
    RepoRef::new(
        &repo.name,
        &repo.url,
        Some(repo.follow.describe().as_str()).filter(|f| !f.is_empty()),
        repo.labels.clone(),
    )
}

/// The credentials `repo` names, read now (rotated tokens are picked up).
fn auth(repo: &RepoConfig) -> Result<Auth, JobError> {
    let token = |secret: SecretRef| {
        config::read_secret(&secret)
            .map(Auth::Token)
            .map_err(JobError::Auth)
    };
    Ok(match &repo.auth {
        AuthRef::None => Auth::None,
        AuthRef::TokenEnv(var) => token(SecretRef::Env(var.clone()))?,
        AuthRef::TokenFile(path) => token(SecretRef::File(path.clone()))?,
        AuthRef::SshKey { key, known_hosts } => {
            for file in std::iter::once(key).chain(known_hosts) {
                std::fs::metadata(file)
                    .map_err(|e| JobError::Auth(format!("{}: {e}", file.display())))?;
            }
            Auth::SshKey {
                key: key.clone(),
                known_hosts: known_hosts.clone(),
            }
        }
    })
}

/// What one pull of `repo` is asked to do. Its own token (checked
/// readable by `auth`) is read again at every attempt, as `[[credential]]`
/// secrets are: a rotated file needs no restart.
fn options(repo: &RepoConfig, auth: Auth, shared: &[OriginCredential]) -> PullOptions {
    let own = match &repo.auth {
        AuthRef::TokenEnv(var) => Some(SecretRef::Env(var.clone())),
        AuthRef::TokenFile(path) => Some(SecretRef::File(path.clone())),
        _ => None,
    };
    let own = own.and_then(|s| OriginCredential::for_remote(&repo.url, repo.username.clone(), s));
    let (auth, own) = match own {
        Some(own) => (Auth::None, Some(own)),
        None => (auth, None),
    };
    PullOptions {
        sync: SyncSpec {
            url: repo.url.clone(),
            dir: repo.publish.repo_dir(&repo.dir),
            follow: repo.follow.clone(),
            depth: repo.depth,
            submodules: repo.submodules,
            local_submodules: repo.local_submodules,
            mode: repo.mode,
            sparse: repo.sparse.clone(),
            auth,
            credentials: own.into_iter().chain(shared.iter().cloned()).collect(),
            username: repo.username.clone(),
            lock_wait: repo.lock_wait,
            group_write: repo.group_write,
        },
        timeout: repo.timeout,
        min_timeout: repo.min_timeout,
        low_speed: repo.low_speed,
        learnt: Default::default(),
        deadline: repo.deadline,
        max_attempts: repo.max_attempts,
        max_delay: repo.backoff_max,
    }
}

/// The retry policy of `repo`: the plugins `roles` names, each in its role,
/// loaded by `load`, and `builtin` for every role nobody plays. One plugin
/// named for both retry and backoff answers alone (its retry answer already
/// holds a delay). Loading may compile: call it on a blocking thread.
pub fn policy(
    roles: &PolicyRef,
    builtin: Builtin,
    repo: RepoRef,
    told: Told,
    load: PluginLoader<'_>,
) -> Result<Box<dyn RetryPolicy>, LoadError> {
    Ok(match (&roles.retry, &roles.backoff) {
        (None, None) => Box::new(builtin),
        (Some(retry), Some(backoff)) if retry == backoff => {
            Box::new(WasmPolicy::new(load(retry)?, builtin, repo, told))
        }
        (retry, backoff) => {
            let get = |name: &Option<String>| name.as_deref().map(load).transpose();
            Box::new(WasmPolicy::with_roles(
                get(retry)?,
                get(backoff)?,
                builtin,
                repo,
                told,
            ))
        }
    })
}

/// Where quiet pulls wait to be written together (a daemon's batch): a
/// pull that changed nothing, told nobody and owes nothing is pushed here
/// instead of written at once; anything else flushes the batch first, so
/// the state is written in the order it happened.
pub trait Batch: Send + Sync {
    /// Queues `pull` (written to `store` when the batch is full).
    fn push(&self, pull: QuietPull, store: &dyn Storage) -> Result<(), StoreError>;
    /// Writes what waits to `store`.
    fn flush(&self, store: &dyn Storage) -> Result<(), StoreError>;
}

/// When a scheduled pull ran, for the state: how late it started and when
/// the next one is planned (both absent for a manual or one-shot pull).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// How late a scheduled pull started.
    pub start_lag_ms: Option<u64>,
    /// When the next run is planned.
    pub next_run_ms: Option<u64>,
}

/// Records `report` for the repository `name` with the events `events`
/// implies and their messages for `audience`. Blocks (SQLite, plugin
/// calls): call it on a blocking thread.
///
/// With `quiet`, a pull that changed nothing, told nobody and owes nothing
/// joins its batch; anything else flushes the batch first.
#[allow(clippy::too_many_arguments)]
pub fn record(
    store: &dyn Storage,
    quiet: Option<&dyn Batch>,
    router: &Router<'_>,
    audience: &Audience<'_>,
    name: &str,
    events: &PullEvents<'_>,
    report: &PullReport,
    timing: Timing,
    steps_owed: &[String],
) -> Result<Vec<StoredEvent>, StoreError> {
    // A moving streak means another writer; it settles within a few tries.
    const TRIES: usize = 3;
    // A database server restarting or failing over is waited for, a
    // little longer each time, up to about half a minute: the pull's
    // result, its events and their messages are not lost to it.
    const UNAVAILABLE: [u64; 7] = [250, 500, 1000, 2000, 4000, 8000, 16000];
    let mut waits = UNAVAILABLE.iter();
    let mut tries = 0;
    loop {
        tries += 1;
        match record_once(
            store, quiet, router, audience, name, events, report, timing, steps_owed,
        ) {
            Err(StoreError::StreakChanged(_)) if tries < TRIES => continue,
            Err(e) if e.is_unavailable() => match waits.next() {
                Some(ms) => {
                    tracing::warn!(
                        repo = name,
                        "recording the pull: {e}; trying again in {ms} ms"
                    );
                    std::thread::sleep(Duration::from_millis(*ms));
                }
                None => return Err(e),
            },
            result => return result,
        }
    }
}

/// One try of [`record`].
#[allow(clippy::too_many_arguments)]
fn record_once(
    store: &dyn Storage,
    quiet: Option<&dyn Batch>,
    router: &Router<'_>,
    audience: &Audience<'_>,
    name: &str,
    events: &PullEvents<'_>,
    report: &PullReport,
    timing: Timing,
    steps_owed: &[String],
) -> Result<Vec<StoredEvent>, StoreError> {
    let previous = store.failures_in_row(name)?;
    let outgoing = router.outgoing(events.given(previous), audience);
    if let Some(quiet) = quiet {
        let is_quiet = report.outcome == Outcome::Unchanged
            && previous == 0
            && outgoing.is_empty()
            && steps_owed.is_empty();
        if is_quiet {
            let pull = QuietPull {
                repo: name.to_string(),
                report: report.clone(),
                start_lag_ms: timing.start_lag_ms,
                next_run_ms: timing.next_run_ms,
                at_ms: crate::model::now_ms(),
            };
            quiet.push(pull, store)?;
            return Ok(Vec::new());
        }
        quiet.flush(store)?;
    }
    store.record_pull(
        name,
        report,
        timing.start_lag_ms,
        timing.next_run_ms,
        previous,
        outgoing,
        steps_owed,
    )
}

/// A change made in a worktree by hand (`git pull`, `checkout`, …), as a
/// git hook reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalChange {
    /// Before (none: the worktree had no commit).
    pub old: Option<String>,
    /// After.
    pub new: String,
    /// Commits from `old` to `new` (0 when the checkout went back).
    pub commits: u64,
    /// The worktree's name (its directory's).
    pub name: String,
    /// Its `origin` URL, if any.
    pub url: String,
    /// The checked-out branch, if any.
    pub branch: Option<String>,
}

/// Records a change a git hook saw in the worktree `top` as a pull of it
/// would be: the `[[repo]]` whose `dir` is `top` gives its name, labels,
/// notifiers and notify plugin; otherwise the change's own name, URL and
/// branch. Returns how many events were recorded; delivery is left to the
/// caller.
pub fn record_change(config: &Config, top: &Path, seen: &LocalChange) -> Result<usize, StoreError> {
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let here = canonical(top);
    let configured = config.repos.iter().find(|r| canonical(&r.dir) == here);
    let (repo, notifiers, plugin) = match configured {
        Some(r) => (identity(r), r.notifiers.clone(), r.policy.notify.clone()),
        None => (
            RepoRef::new(
                &seen.name,
                &seen.url,
                seen.branch.as_deref(),
                Default::default(),
            ),
            Vec::new(),
            None,
        ),
    };
    let report = PullReport {
        outcome: crate::outcome::Outcome::Updated,
        old: seen.old.clone(),
        new: Some(seen.new.clone()),
        commits: seen.commits,
        ..PullReport::failed(repo.url(), top)
    };
    let audience = Audience {
        notifiers: &notifiers,
        plugin: plugin.as_deref(),
    };
    let registry = crate::plugin::Registry::new(
        Some(config.daemon.compile_cache()),
        crate::plugin::Sandbox::default(),
    );
    let load = |name: &str| plugin_in_dir(config, &registry, name);
    record_only(config, &repo, top, &report, &audience, &load)
}

/// Plugin `name` from `config`'s plugin directory through `registry`, with
/// its settings and its key-value store persisted in the state directory:
/// for one-shot commands (a git hook), which share nothing across runs.
pub fn plugin_in_dir(
    config: &Config,
    registry: &crate::plugin::Registry,
    name: &str,
) -> Result<crate::plugin::Plugin, crate::plugin::LoadError> {
    let (wasm, kv_file) = plugin_files(config, name);
    let mut env =
        crate::plugin::PluginEnv::new(config.plugins.get(name).cloned().unwrap_or_default(), None);
    if let Ok(kv) = crate::plugin::KvStore::persisted(kv_file) {
        env = env.with_kv(kv);
    }
    registry.get(&wasm, env)
}

/// Where plugin `name` of `config` lives (`plugin_dir/NAME.wasm`) and where
/// its key-value store is kept.
pub fn plugin_files(config: &Config, name: &str) -> (PathBuf, PathBuf) {
    let dir = config.daemon.plugin_dir.as_deref();
    let wasm = dir.unwrap_or(Path::new("")).join(format!("{name}.wasm"));
    let kv = plugin_kv_file(&config.daemon.state_dir, dir, &wasm);
    (wasm, kv)
}

/// Where the key-value store of the plugin in `file` is kept under
/// `state_dir`: one per plugin file, whichever entry point loads it (the
/// daemon, a git hook, `gitpulse pull --policy FILE`). A plugin of the
/// plugin directory keeps its name (`plugins/NAME.json`); another file
/// adds a digest of where it lives (`plugins/STEM-HASH.json`), so two
/// plugins that share a file name never share state.
pub fn plugin_kv_file(state_dir: &Path, plugin_dir: Option<&Path>, file: &Path) -> PathBuf {
    use sha2::Digest as _;
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let place = canonical(file);
    let in_plugin_dir = plugin_dir.is_some_and(|d| place.parent() == Some(canonical(d).as_path()));
    let name = match in_plugin_dir {
        true => stem,
        false => {
            let digest = sha2::Sha256::digest(place.as_os_str().as_encoded_bytes());
            format!("{stem}-{}", hex::encode(&digest[..6]))
        }
    };
    state_dir.join("plugins").join(format!("{name}.json"))
}

/// What `gitpulse pull --notify-config` did with its notifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullNotified {
    /// Events recorded.
    pub events: usize,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages given up on.
    pub dead: u64,
    /// Still in the outbox when the wait ran out.
    pub pending: u64,
}

/// Records the events of `report` (a pull, or a change a git hook saw) and
/// their messages in `config`'s state database; returns how many events.
/// Delivery is left to the daemon or [`deliver_pending`].
pub fn record_only(
    config: &Config,
    repo: &RepoRef,
    dir: &Path,
    report: &PullReport,
    audience: &Audience<'_>,
    load_plugin: PluginLoader<'_>,
) -> Result<usize, StoreError> {
    let router = Router::new(config, load_plugin).without_digests();
    let with_retries = router.wants(EventKind::Retrying, audience);
    let pull_events = PullEvents::read(repo, dir, report, with_retries);
    let store = open_store(config)?;
    let recorded = record(
        store.as_ref(),
        None,
        &router,
        audience,
        repo.name(),
        &pull_events,
        report,
        Timing::default(),
        &[],
    )?;
    Ok(recorded.len())
}

fn open_store(config: &Config) -> Result<Box<dyn Storage>, StoreError> {
    crate::store::open(&config.store, &config.daemon.state_dir, &config.fleet)
}

/// Delivers what is due in `config`'s outbox until nothing is or `wait`
/// has passed.
pub fn deliver_pending(config: &Config, wait: Duration) -> Result<PullNotified, StoreError> {
    deliver_from(open_store(config)?.as_ref(), config, wait)
}

/// Delivers what is due in `store`'s outbox to `config`'s notifiers until
/// nothing is or `wait` has passed.
pub fn deliver_from(
    store: &dyn Storage,
    config: &Config,
    wait: Duration,
) -> Result<PullNotified, StoreError> {
    let mut result = PullNotified::default();
    let senders = crate::notify::Senders::default();
    let until = Instant::now() + wait;
    loop {
        let stats = crate::notify::deliver_due(store, config, &senders, 500)?;
        result.delivered += stats.delivered;
        result.dead += stats.dead;
        let Some(next) = store.next_due_ms()? else {
            break;
        };
        let pause = Duration::from_millis(next.saturating_sub(crate::model::now_ms()));
        if Instant::now() + pause >= until {
            break;
        }
        std::thread::sleep(pause.max(Duration::from_millis(20)));
    }
    result.pending = store.outbox_counts()?.pending;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::{AttemptError, Change, Synced};
    use crate::plugin::Plugin;
    use crate::store::{History as _, MemoryStore, State as _, Steps as _};
    use gitpulse_testkit::{ConfigFile, Repo};

    /// A config with one repository `app` (checked out in `dir`), as
    /// `repo` shapes it, and a log notifier that wants retries.
    fn config(dir: &Path, repo: impl FnOnce(Repo) -> Repo) -> Config {
        let app = Repo::new("app", "https://git.example.com/app.git", &dir.join("app"))
            .set("backoff_base", "1ms")
            .set("backoff_max", "2ms");
        let events = ["retrying", "changed", "failed", "step-failed"].map(toml::Value::from);
        let text = ConfigFile::default()
            .daemon("state_dir", "state")
            .notifier(
                "audit",
                &[
                    ("kind", "log".into()),
                    ("path", "events.jsonl".into()),
                    ("digest_window", "0s".into()),
                    ("events", toml::Value::Array(events.to_vec())),
                ],
            )
            .repo(repo(app))
            .text();
        crate::config::parse(&dir.join("gitpulse.toml"), &text, &|_| None).unwrap()
    }

    fn no_plugins(name: &str) -> Result<Plugin, LoadError> {
        Err(LoadError::NotWasm(name.into()))
    }

    fn job<'a>(config: &'a Config, store: &'a dyn Storage) -> Job<'a> {
        Job {
            repo: &config.repos[0],
            config,
            plugins: &no_plugins,
            store,
            cancel: Arc::default(),
            budget: None,
            quiet: None,
            seed: Some(1),
            digests: false,
            news: Box::new(|| {}),
        }
    }

    fn updated() -> Synced {
        Synced {
            change: Change::Updated,
            old: Some("a".repeat(40)),
            new: "b".repeat(40),
            commits: 1,
            notices: Vec::new(),
        }
    }

    fn kinds(store: &dyn Storage) -> Vec<String> {
        store
            .events_after(0)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    #[test]
    fn a_retry_is_recorded_while_the_pull_runs_and_the_pull_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), |repo| repo);
        let store = MemoryStore::new();
        let mut tries = 0;
        let mut seen_before_the_second = Vec::new();
        let mut attempt = |_: &SyncSpec, _: &_, _: &mut dyn FnMut(_)| {
            tries += 1;
            if tries == 1 {
                return Err(AttemptError::Failed(GitFailure {
                    class: FailureClass::ServerError,
                    http_status: Some(503),
                    retry_after: None,
                    message: "HTTP 503".into(),
                }));
            }
            seen_before_the_second = kinds(&store);
            Ok(updated())
        };
        let run = job(&config, &store).run_with(&mut attempt, &mut pull::Quiet, Timing::default());
        assert!(run.unstarted.is_none());
        assert_eq!(run.report.outcome, Outcome::Updated);
        assert_eq!(
            seen_before_the_second,
            ["retrying"],
            "told between the attempts"
        );
        assert_eq!(kinds(&store), ["retrying", "changed"]);
        let history: Vec<String> = store
            .history("app", 10)
            .unwrap()
            .into_iter()
            .map(|h| h.kind)
            .collect();
        assert_eq!(history, ["updated", "attempt 1"]);
        assert_eq!(store.last_good("app").unwrap(), Some("b".repeat(40)));
    }

    #[test]
    fn a_job_that_cannot_start_is_a_failed_pull_that_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), |repo| {
            repo.set("token_env", "GITPULSE_TEST_SURELY_UNSET_TOKEN")
        });
        let store = MemoryStore::new();
        let mut attempt =
            |_: &SyncSpec, _: &_, _: &mut dyn FnMut(_)| -> Result<Synced, AttemptError> {
                panic!("a job that cannot start makes no attempt")
            };
        let run = job(&config, &store).run_with(&mut attempt, &mut pull::Quiet, Timing::default());
        assert!(
            matches!(run.unstarted, Some(JobError::Auth(_))),
            "{:?}",
            run.unstarted
        );
        assert_eq!(run.report.attempts[0].class, FailureClass::Auth);
        assert!(run.report.attempts[0]
            .message
            .contains("GITPULSE_TEST_SURELY_UNSET_TOKEN"));
        assert_eq!(kinds(&store), ["failed"]);
        assert_eq!(store.failures_in_row("app").unwrap(), 1);
    }

    #[test]
    fn steps_a_pull_owes_are_recorded_with_it_and_run_apart() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), |repo| {
            repo.step(&[("name", "ok".into()), ("run", vec!["true"].into())])
                .step(&[
                    ("name", "boom".into()),
                    ("run", "exit 3".into()),
                    ("shell", true.into()),
                ])
        });
        let store = MemoryStore::new();
        let mut attempt = |_: &SyncSpec, _: &_, _: &mut dyn FnMut(_)| Ok(updated());
        let job = job(&config, &store);
        let run = job.run_with(&mut attempt, &mut pull::Quiet, Timing::default());
        assert!(run.owes_steps);
        let owed: Vec<String> = store
            .owed_steps("app")
            .unwrap()
            .into_iter()
            .map(|o| o.step)
            .collect();
        assert_eq!(owed, ["ok", "boom"], "owed before any runs");

        let steps = job.run_steps();
        let ran: Vec<(&str, &str)> = steps
            .ran
            .iter()
            .map(|s| (s.name.as_str(), s.run.status.as_str()))
            .collect();
        assert_eq!(ran, [("ok", "succeeded"), ("boom", "failed")]);
        assert_eq!(steps.ran[1].run.exit_code, Some(3));
        let still: Vec<String> = store
            .owed_steps("app")
            .unwrap()
            .into_iter()
            .map(|o| o.step)
            .collect();
        assert_eq!(still, ["boom"], "a failed step is tried again later");
        assert!(steps.next_step_due_ms.is_some());
        assert_eq!(kinds(&store), ["changed", "step-failed"]);
    }
}
