//! Commands that run when a pull moves (or fails to move) a checkout:
//! `[[repo.step]]` in the daemon's config, `--step` on `gitpulse pull`.
//!
//! This module owns what a step is ([`Step`]), which steps a finished pull
//! owes ([`owed_by`]), whether a change concerns a step (`paths`), and
//! running one: its environment, working directory, time limit (the whole
//! process group is killed) and bounded, redacted output. It does not
//! decide when a failed step is tried again or remember what is owed
//! (`job`, `store`): a step run here is one try.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::outcome::Outcome;
use crate::redact::{self, Secret};

/// Characters of a step's output kept (its tail): enough to see why it
/// failed, small enough for history and a message.
pub const OUTPUT_KEPT: usize = redact::MAX_TEXT;

/// How a step is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A program and its arguments, started directly.
    Argv(Vec<String>),
    /// A string for `sh -c`.
    Shell(String),
}

/// Which pulls a step follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// A pull that moved the checkout (cloned or updated).
    Changed,
    /// A pull that failed.
    Failed,
    /// Every pull.
    Always,
}

impl When {
    /// Reads `changed`, `failed` or `always`.
    pub fn parse(text: &str) -> Option<When> {
        match text {
            "changed" => Some(When::Changed),
            "failed" => Some(When::Failed),
            "always" => Some(When::Always),
            _ => None,
        }
    }

    fn follows(self, outcome: Outcome) -> bool {
        match self {
            When::Changed => matches!(outcome, Outcome::Cloned | Outcome::Updated),
            When::Failed => outcome == Outcome::Failed,
            When::Always => true,
        }
    }
}

/// One configured step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Unique within its repository; what history and events call it.
    pub name: String,
    /// What runs.
    pub program: Program,
    /// After which pulls.
    pub when: When,
    /// Only when a changed file matches one of these git pathspecs
    /// (`conf/**`, `docs/`); empty: always. Not applied to failed pulls,
    /// which change nothing.
    pub paths: Vec<String>,
    /// Killed (with everything it started) after this long.
    pub timeout: Duration,
    /// Runs in the new revision before it is published and gates the
    /// publication (`publish = "symlink"` only).
    pub before_publish: bool,
    /// What it finds in its environment besides the basics.
    pub env: StepEnv,
    /// In a fleet where every replica pulls every repository: whether it
    /// runs on each replica or once for the fleet.
    pub once: Once,
}

/// Where a step runs when several replicas keep the same checkout
/// (`[fleet] mode = "replicate"`); elsewhere it always runs where it is
/// owed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Once {
    /// On every replica (a reload of its own web server).
    #[default]
    Replica,
    /// On one replica for each revision (a migration, a cache purge).
    Fleet,
}

/// A step's environment beyond [`BASE_ENV`] and the `GITPULSE_*` variables.
/// gitpulse's own environment holds tokens, receiver secrets and
/// passwords, so a step inherits nothing it was not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepEnv {
    /// `env = { NAME = "value" }`: set as given.
    pub set: std::collections::BTreeMap<String, String>,
    /// `pass_env = ["NAME"]`: passed on from gitpulse's environment when set.
    pub pass: Vec<String>,
}

/// What every step inherits from gitpulse's environment: where programs
/// are, the home directory, the user, the locale and the time zone.
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ"];

/// Whether `name` is passed on as part of the locale (`LC_ALL`, `LC_CTYPE`, …).
fn is_locale(name: &str) -> bool {
    name.starts_with("LC_")
}

/// The steps a pull that ended in `outcome` owes, in order (those that
/// gate a publication run before it, not after).
pub fn owed_by(steps: &[Step], outcome: Outcome) -> impl Iterator<Item = &Step> {
    steps
        .iter()
        .filter(move |s| !s.before_publish && s.when.follows(outcome))
}

/// Whether `changed` concerns a step with these `paths` (git pathspecs, as
/// `git diff -- PATHS` reads them).
pub fn concerns(paths: &[String], changed: &[String]) -> Result<bool, String> {
    if paths.is_empty() {
        return Ok(true);
    }
    let spec = git2::Pathspec::new(paths.iter()).map_err(|e| e.message().to_string())?;
    Ok(changed
        .iter()
        .any(|p| spec.matches_path(Path::new(p), git2::PathspecFlags::DEFAULT)))
}

/// Why a pathspec cannot be used, if it cannot.
pub fn bad_paths(paths: &[String]) -> Option<String> {
    git2::Pathspec::new(paths.iter())
        .err()
        .map(|e| e.message().to_string())
}

/// The revision a step runs for, and where.
#[derive(Debug, Clone)]
pub struct Revision {
    /// The repository's name (`GITPULSE_REPO`).
    pub repo: String,
    /// The checkout (`GITPULSE_DIR`, and the working directory).
    pub dir: PathBuf,
    /// The commit before (`GITPULSE_OLD`, empty on a clone).
    pub old: Option<String>,
    /// The commit now (`GITPULSE_NEW`, empty when the pull failed first).
    pub new: Option<String>,
    /// What the checkout follows (`GITPULSE_REF`).
    pub reference: String,
    /// The file listing the changed paths (`GITPULSE_CHANGED_FILES`).
    pub changed_files: Option<PathBuf>,
}

/// How one try of a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Exit status 0.
    Succeeded,
    /// A non-zero exit status.
    Exited(i32),
    /// Killed by a signal it did not expect.
    Signalled(i32),
    /// Killed at its time limit.
    TimedOut,
    /// It could not be started (no such program, no permission).
    NotStarted(String),
    /// Stopped because gitpulse is shutting down: still owed.
    Cancelled,
}

impl Status {
    /// Whether the step did its work.
    pub fn ok(&self) -> bool {
        *self == Status::Succeeded
    }

    /// The name history and JSON use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Exited(_) => "failed",
            Status::Signalled(_) => "killed",
            Status::TimedOut => "timeout",
            Status::NotStarted(_) => "not-started",
            Status::Cancelled => "cancelled",
        }
    }

    /// The exit status, when it exited.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Status::Succeeded => Some(0),
            Status::Exited(code) => Some(*code),
            _ => None,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Succeeded => write!(f, "succeeded"),
            Status::Exited(code) => write!(f, "exited with status {code}"),
            Status::Signalled(signal) => write!(f, "killed by signal {signal}"),
            Status::TimedOut => write!(f, "timed out and was killed"),
            Status::NotStarted(why) => write!(f, "could not start: {why}"),
            Status::Cancelled => write!(f, "was stopped: gitpulse is shutting down"),
        }
    }
}

/// How long a step's output is still read once it ended.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// One try of a step.
#[derive(Debug, Clone)]
pub struct Ran {
    /// How it ended.
    pub status: Status,
    /// How long it took.
    pub duration: Duration,
    /// The tail of its output (stdout and stderr as they came), redacted
    /// and printable; at most [`OUTPUT_KEPT`] bytes.
    pub output: String,
}

/// Runs `step` for `revision` in `cwd` and waits for it, at most its
/// timeout or until `cancel` is set. `secrets` never appear in the kept
/// output. Blocks.
pub fn run(
    step: &Step,
    revision: &Revision,
    cwd: &Path,
    secrets: &[&Secret],
    cancel: &AtomicBool,
) -> Ran {
    let started = Instant::now();
    let mut command = match &step.program {
        Program::Argv(argv) => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
        Program::Shell(script) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        }
    };
    let dir = revision.dir.to_string_lossy().into_owned();
    let listed = revision
        .changed_files
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    command.env_clear();
    for (name, value) in std::env::vars_os() {
        let Some(n) = name.to_str() else { continue };
        if BASE_ENV.contains(&n) || is_locale(n) || step.env.pass.iter().any(|p| p == n) {
            command.env(&name, value);
        }
    }
    command.envs(&step.env.set);
    command
        .current_dir(cwd)
        .env("GITPULSE_REPO", &revision.repo)
        .env("GITPULSE_DIR", dir)
        .env("GITPULSE_OLD", revision.old.as_deref().unwrap_or(""))
        .env("GITPULSE_NEW", revision.new.as_deref().unwrap_or(""))
        .env("GITPULSE_REF", &revision.reference)
        .env("GITPULSE_CHANGED_FILES", listed)
        .env("GITPULSE_STEP", &step.name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so a time limit kills what it started too.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Ran {
                status: Status::NotStarted(e.to_string()),
                duration: started.elapsed(),
                output: String::new(),
            }
        }
    };
    let tail = Arc::new(Mutex::new(Tail::default()));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut stream| {
        let tail = tail.clone();
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                tail.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(&buffer[..n]);
            }
            let _ = done.send(());
        })
    })
    .collect();
    drop(done_tx);
    let deadline = started + step.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(exit)) => {
                use std::os::unix::process::ExitStatusExt;
                break match (exit.code(), exit.signal()) {
                    (Some(0), _) => Status::Succeeded,
                    (Some(code), _) => Status::Exited(code),
                    (None, Some(signal)) => Status::Signalled(signal),
                    (None, None) => Status::Exited(-1),
                };
            }
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.wait();
                break Status::TimedOut;
            }
            Ok(None) if cancel.load(Ordering::Relaxed) => {
                kill_group(child.id());
                let _ = child.wait();
                break Status::Cancelled;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                kill_group(child.id());
                let _ = child.wait();
                break Status::NotStarted(e.to_string());
            }
        }
    };
    // What it started may hold the pipes open: they go with the group.
    // One that left the group (`setsid`) may keep them open for ever, so
    // the output is awaited a short while, not until the pipes close; a
    // reader still blocked then is left to end with that process.
    kill_group(child.id());
    let grace = Instant::now() + OUTPUT_GRACE;
    let mut open = readers.len();
    while open > 0 {
        let left = grace.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
        open -= 1;
    }
    if open == 0 {
        for reader in readers {
            let _ = reader.join();
        }
    }
    let bytes = std::mem::take(&mut tail.lock().unwrap_or_else(|p| p.into_inner()).bytes);
    Ran {
        status,
        duration: started.elapsed(),
        output: shown_tail(&String::from_utf8_lossy(&bytes), secrets),
    }
}

/// The last [`OUTPUT_KEPT`] characters of `output` as they may be shown:
/// control characters out and secrets hidden first (so no cut or strip can
/// reveal one), then cut at a line start, then URL userinfo hidden.
fn shown_tail(output: &str, secrets: &[&Secret]) -> String {
    let mut visible = redact::printable(output, usize::MAX);
    for secret in secrets {
        if secret.expose().len() >= 4 {
            visible = visible.replace(secret.expose(), "***");
        }
    }
    let chars = visible.chars().count();
    if chars > OUTPUT_KEPT {
        let skip = chars - OUTPUT_KEPT;
        let start = visible.char_indices().nth(skip).map_or(0, |(i, _)| i);
        let cut = &visible[start..];
        let line = cut.find('\n').map_or(0, |n| n + 1);
        visible = cut[line..].to_string();
    }
    redact::text(&visible, secrets).trim_end().to_string()
}

/// Kills every process in the group `leader` leads.
fn kill_group(leader: u32) {
    // SAFETY: a plain syscall on a process group gitpulse created; a group
    // that is already gone returns ESRCH, which is fine.
    unsafe {
        libc::kill(-(leader as i32), libc::SIGKILL);
    }
}

/// The last bytes of a stream (a few times [`OUTPUT_KEPT`]).
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > OUTPUT_KEPT * 8 {
            let cut = self.bytes.len() - OUTPUT_KEPT * 4;
            self.bytes.drain(..cut);
        }
    }
}

impl Ran {
    /// The kept output, cut to its last `max` bytes at a character boundary.
    pub fn output_tail(&self, max: usize) -> &str {
        let text = self.output.as_str();
        let mut start = text.len().saturating_sub(max);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        &text[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(program: Program, timeout: Duration) -> Step {
        Step {
            name: "s".into(),
            program,
            when: When::Changed,
            paths: vec![],
            timeout,
            before_publish: false,
            env: StepEnv::default(),
            once: Once::Replica,
        }
    }

    /// Runs `step` for a revision in `dir`, with no secrets and no cancel.
    fn run_in(dir: &Path, step: &Step) -> Ran {
        run(step, &revision(dir), dir, &[], &AtomicBool::new(false))
    }

    fn revision(dir: &Path) -> Revision {
        Revision {
            repo: "app".into(),
            dir: dir.to_path_buf(),
            old: Some("a".repeat(40)),
            new: Some("b".repeat(40)),
            reference: "main".into(),
            changed_files: None,
        }
    }

    #[test]
    fn when_picks_the_pulls_a_step_follows() {
        let steps: Vec<Step> = [When::Changed, When::Failed, When::Always]
            .into_iter()
            .map(|when| Step {
                when,
                ..step(Program::Shell("true".into()), Duration::from_secs(1))
            })
            .collect();
        let owed = |o| owed_by(&steps, o).map(|s| s.when).collect::<Vec<_>>();
        assert_eq!(owed(Outcome::Updated), [When::Changed, When::Always]);
        assert_eq!(owed(Outcome::Cloned), [When::Changed, When::Always]);
        assert_eq!(owed(Outcome::Unchanged), [When::Always]);
        assert_eq!(owed(Outcome::Failed), [When::Failed, When::Always]);
        assert_eq!(When::parse("sometimes"), None);
    }

    #[test]
    fn paths_are_git_pathspecs() {
        let changed = vec!["conf/nginx/site.conf".to_string(), "README".to_string()];
        assert!(concerns(&[], &changed).unwrap());
        assert!(concerns(&["conf/**".into()], &changed).unwrap());
        assert!(concerns(&["conf/".into()], &changed).unwrap());
        assert!(concerns(&["*.conf".into()], &changed).unwrap());
        assert!(!concerns(&["docs/**".into()], &changed).unwrap());
        assert!(!concerns(&["conf/**".into()], &[]).unwrap());
    }

    #[test]
    fn a_step_sees_its_revision_and_its_output_is_kept_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new("s3cr3t-token-value");
        let script = "echo \"$GITPULSE_REPO $GITPULSE_REF ${GITPULSE_NEW%%bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb} $(pwd)\"; \
                      echo s3cr3t-token-value >&2; exit 3";
        let ran = run(
            &step(Program::Shell(script.into()), Duration::from_secs(10)),
            &revision(dir.path()),
            dir.path(),
            &[&secret],
            &AtomicBool::new(false),
        );
        assert_eq!(ran.status, Status::Exited(3));
        let cwd = dir.path().canonicalize().unwrap();
        assert!(
            ran.output
                .contains(&format!("app main bbbb {}", cwd.display())),
            "{}",
            ran.output
        );
        assert!(!ran.output.contains("s3cr3t"), "{}", ran.output);
    }

    #[test]
    fn a_step_inherits_only_the_basics_and_what_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        // Cargo sets CARGO_MANIFEST_DIR in the test process: it stands for
        // any variable of gitpulse's own (a token, a password).
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let script = "echo \"manifest=${CARGO_MANIFEST_DIR:-unset} path=${PATH:+set} \
                      own=${OWN:-unset} repo=$GITPULSE_REPO\"";
        let mut s = step(Program::Shell(script.into()), Duration::from_secs(10));
        let ran = run_in(dir.path(), &s);
        assert_eq!(ran.output, "manifest=unset path=set own=unset repo=app");
        s.env.pass = vec!["CARGO_MANIFEST_DIR".into()];
        s.env.set = [("OWN".to_string(), "given".to_string())].into();
        let ran = run_in(dir.path(), &s);
        assert_eq!(
            ran.output,
            format!(
                "manifest={} path=set own=given repo=app",
                env!("CARGO_MANIFEST_DIR")
            )
        );
    }

    #[test]
    fn a_descendant_that_left_the_group_does_not_hold_the_step_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("escaped.pid");
        // `setsid` puts sleep in a session of its own, out of reach of the
        // group kill, with the output pipes still open.
        let script = format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 30' & wait",
            pid_file.display()
        );
        let ran = run_in(
            dir.path(),
            &step(Program::Shell(script), Duration::from_millis(500)),
        );
        assert_eq!(ran.status, Status::TimedOut);
        assert!(ran.duration < Duration::from_secs(20), "{:?}", ran.duration);
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: the sleep this test started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }

    #[test]
    fn a_step_past_its_limit_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let ran = run_in(
            dir.path(),
            &step(Program::Shell(script), Duration::from_millis(300)),
        );
        assert_eq!(ran.status, Status::TimedOut);
        assert!(ran.duration < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Gone, or a zombie waiting for init to reap it: not running. (A
        // SIGKILL lands asynchronously: give it a moment.)
        let running = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !stat.is_empty() && !state.starts_with('Z')
        };
        let until = Instant::now() + Duration::from_secs(5);
        while running() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!running(), "the step's own child was left running");
    }

    #[test]
    fn a_missing_program_and_endless_output_are_reported_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ran = run(
            &step(
                Program::Argv(vec!["/nonexistent/prog".into()]),
                Duration::from_secs(5),
            ),
            &revision(dir.path()),
            dir.path(),
            &[],
            &AtomicBool::new(false),
        );
        assert!(matches!(ran.status, Status::NotStarted(_)), "{ran:?}");
        let ran = run(
            &step(
                Program::Shell("yes 0123456789 | head -c 1000000; echo END".into()),
                Duration::from_secs(20),
            ),
            &revision(dir.path()),
            dir.path(),
            &[],
            &AtomicBool::new(false),
        );
        assert!(ran.status.ok());
        assert!(
            ran.output.chars().count() <= OUTPUT_KEPT,
            "{}",
            ran.output.len()
        );
        assert!(ran.output.ends_with("END"));
        assert_eq!(ran.output_tail(3), "END");
    }
}
