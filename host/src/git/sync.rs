//! One attempt: lock, recover, look at the remote, fetch what is missing,
//! move the checkout, all or nothing.
//!
//! A clone is built in a scratch directory beside DIR and renamed into place
//! only when complete, so a killed clone leaves no DIR at all. An update
//! records its intent in the [`journal`](super::journal) before it touches
//! the worktree, so the next attempt can finish it. A repository that turns
//! out to be damaged is re-cloned beside the old one and swapped in; the
//! damaged copy is kept, not deleted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use git2::build::CheckoutBuilder;
use git2::{
    AutotagOption, Cred, CredentialType, Direction, FetchOptions, Oid, RemoteCallbacks, Repository,
    RepositoryOpenFlags,
};

use super::classify::classify;
use super::http::{self, Credentials, HttpSession};
use super::journal::{self, Intent};
use super::lock::{io_failure, RepoLock};
use super::probe;
use super::sparse::{Matcher, Sparse};
use super::target::{self, Advertised, ObjectId, Target};
use super::{
    url_user, AttemptControl, AttemptError, Auth, Change, FailureClass, GitFailure, Mode,
    SpecError, SyncSpec, Synced, Transfer,
};
use crate::redact::{self, Secret};

/// Makes one attempt at bringing `spec.dir` up to date with `spec.url`.
///
/// Blocks the calling thread for at most the attempt's time limit (plus the
/// time to write what was already downloaded). `on_transfer` sees download
/// progress. A [`SpecError`] means the pull must not be retried.
pub fn sync(
    spec: &SyncSpec,
    control: &AttemptControl,
    on_transfer: &mut dyn FnMut(Transfer),
) -> Result<Synced, AttemptError> {
    let _socket_limit = SocketTimeouts::enter(&spec.url, control);
    let lock = RepoLock::acquire(&spec.dir, spec.lock_wait, control)?;
    lock.sweep_leftovers()
        .map_err(|e| io_failure(&spec.dir, e))?;

    let mut credentials: Vec<Credentials> = Vec::new();
    if let Auth::Token(token) = &spec.auth {
        let origin = http::origin(&spec.url).unwrap_or_default();
        credentials.push(Credentials {
            user: spec
                .username
                .clone()
                .or_else(|| url_user(&spec.url))
                .unwrap_or_else(|| "x-access-token".into()),
            password: token.clone(),
            prefix: origin.clone(),
            origin,
        });
    }
    // Read now, at every attempt: a rotated token file takes effect at the
    // next attempt, without a restart.
    for c in &spec.credentials {
        let password = c.secret.read().map_err(|why| {
            AttemptError::Failed(GitFailure {
                class: FailureClass::Auth,
                http_status: None,
                retry_after: None,
                message: format!("the credential for {}: {why}", redact::url(&c.url_prefix)),
            })
        })?;
        credentials.push(Credentials {
            user: c
                .username
                .clone()
                .unwrap_or_else(|| "x-access-token".into()),
            password,
            origin: http::origin(&c.url_prefix).unwrap_or_default(),
            prefix: c.url_prefix.clone(),
        });
    }
    let shown: Vec<Secret> = credentials.iter().map(|c| c.password.clone()).collect();
    let secrets: Vec<&Secret> = shown.iter().collect();
    let session = HttpSession::new(credentials, control.clone());
    let attempt = Attempt {
        spec,
        control,
        lock: &lock,
        shape: probe::shape(spec, &strip_userinfo(&spec.url).0),
        session: session.clone(),
    };
    let result = http::with_session(session.clone(), || attempt.run(on_transfer));
    result.map_err(|fail| match fail {
        Fail::Git(err) => classify(&err, session.failure(), control, &secrets).into(),
        Fail::Failure(f) => GitFailure {
            message: redact::text(&f.message, &secrets),
            ..f
        }
        .into(),
        Fail::Spec(e) => e.into(),
        Fail::Damaged(reason) => GitFailure {
            class: FailureClass::CorruptRepo,
            http_status: None,
            retry_after: None,
            message: redact::text(&reason, &secrets),
        }
        .into(),
    })
}

/// libgit2's socket timeouts (git://, ssh://) are process-wide settings,
/// read when a socket is created. With attempts running at once (the
/// daemon), one attempt setting its own limit would overwrite another's.
/// So the setting is the shortest time left among the running attempts
/// that use those sockets, recomputed whenever one starts or ends: no
/// socket waits longer than its own attempt may run. (A long attempt
/// beside a short one may get a shorter inactivity limit on a socket it
/// opens meanwhile; a server that sends nothing for that long is stalled
/// anyway.) HTTP(S) goes through gitpulse's own transport, which limits
/// each request by its own attempt.
struct SocketTimeouts;

/// Ends of the running attempts that use libgit2's sockets, by ticket.
static RUNNING_ENDS: std::sync::Mutex<BTreeMap<u64, (std::time::Instant, std::time::Duration)>> =
    std::sync::Mutex::new(BTreeMap::new());

/// An attempt counted in [`RUNNING_ENDS`] until dropped.
struct SocketLimit(Option<u64>);

impl SocketTimeouts {
    fn enter(url: &str, control: &AttemptControl) -> SocketLimit {
        if is_http(url) {
            return SocketLimit(None);
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let ticket = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut ends = RUNNING_ENDS.lock().unwrap_or_else(|p| p.into_inner());
        // A socket silent for the stall window is given up on, as git's
        // lowSpeedTime does; never later than the attempt's end.
        let idle = control.idle_limit();
        ends.insert(
            ticket,
            (std::time::Instant::now() + control.remaining(), idle),
        );
        SocketTimeouts::apply(&ends);
        SocketLimit(Some(ticket))
    }

    /// Sets libgit2's timeouts to the shortest time left (called with the
    /// lock held, so settings are never applied out of order).
    fn apply(ends: &BTreeMap<u64, (std::time::Instant, std::time::Duration)>) {
        let now = std::time::Instant::now();
        let Some(left) = ends
            .values()
            .map(|(end, idle)| end.saturating_duration_since(now).min(*idle))
            .min()
        else {
            return; // the last setting stays; the next attempt replaces it
        };
        let millis = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: plain integer settings, written under RUNNING_ENDS's lock.
        unsafe {
            let _ = git2::opts::set_server_timeout_in_milliseconds(millis);
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(millis);
        }
    }
}

impl Drop for SocketLimit {
    fn drop(&mut self) {
        if let Some(ticket) = self.0 {
            let mut ends = RUNNING_ENDS.lock().unwrap_or_else(|p| p.into_inner());
            ends.remove(&ticket);
            SocketTimeouts::apply(&ends);
        }
    }
}

/// The user a token is sent as: the one the URL names
/// (`https://deploy@host/x.git`), which servers that check the user need.
/// The owner of `dir` (a name when the system knows one) if it is not the
/// user this process runs as.
fn foreign_owner(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = crate::model::current_uid()?;
    let owner = fs::metadata(dir).ok()?.uid();
    if owner == me {
        return None;
    }
    let name = fs::read_to_string("/etc/passwd").ok().and_then(|passwd| {
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid: u32 = fields.nth(1)?.parse().ok()?;
            (uid == owner).then(|| name.to_string())
        })
    });
    Some(match name {
        Some(name) => format!("{name} (uid {owner})"),
        None => format!("uid {owner}"),
    })
}

/// Whether the worktree differs from HEAD: edits, deletions, untracked
/// files (ignored ones and submodules aside). Files a sparse set leaves
/// out are not "deleted" (libgit2 does not read skip-worktree).
fn worktree_dirty(repo: &Repository, sparse: Option<&Matcher>) -> Result<bool, git2::Error> {
    let mut options = git2::StatusOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(false)
        .include_ignored(false)
        .exclude_submodules(true);
    let statuses = repo.statuses(Some(&mut options))?;
    Ok(statuses.iter().any(|entry| {
        let left_out = entry.status() == git2::Status::WT_DELETED
            && sparse.is_some_and(|m| entry.path().is_ok_and(|p| !m.includes(p)));
        !left_out
    }))
}

/// The refs a connected remote advertised, and the branch its HEAD names.
fn advertised(connection: &git2::RemoteConnection<'_, '_, '_>) -> Result<Advertised, git2::Error> {
    let head = connection
        .default_branch()
        .ok()
        .and_then(|b| b.as_str().ok().map(String::from));
    Ok(Advertised::from_heads(
        connection
            .list()?
            .iter()
            .map(|h| (h.name(), ObjectId::from_git(h.oid()))),
        head,
    ))
}

/// Whether gitpulse's own transport serves `url`.
fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Whether `url` reads this machine's files: `file://` or a plain path.
fn is_local(url: &str) -> bool {
    url.starts_with("file:") || url.starts_with('/') || url.starts_with('.') || !url.contains(':')
}

/// Why the attempt stopped, before classification.
enum Fail {
    Git(git2::Error),
    /// The local repository cannot be read: re-clone it.
    Damaged(String),
    Failure(GitFailure),
    Spec(SpecError),
}

impl From<git2::Error> for Fail {
    fn from(e: git2::Error) -> Self {
        Fail::Git(e)
    }
}

fn io_fail(path: &Path) -> impl FnOnce(std::io::Error) -> Fail + '_ {
    move |e| Fail::Failure(io_failure(path, e))
}

fn failure(class: FailureClass, message: String) -> Fail {
    Fail::Failure(GitFailure {
        class,
        http_status: None,
        retry_after: None,
        message,
    })
}

/// An HTTP status by which a server refuses a protocol-v2 request as
/// such, rather than the repository or the client.
fn refuses_v2(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403 | 404 | 408 | 429)
}

/// What DIR holds before the attempt.
enum Found {
    Nothing,
    Repo(Repository),
    /// A repository libgit2 cannot open or read: re-clone it.
    Damaged(String),
}

struct Attempt<'a> {
    spec: &'a SyncSpec,
    control: &'a AttemptControl,
    lock: &'a RepoLock,
    /// What the checkout looks like once synced, but for the tip (see
    /// [`probe::shape`]).
    shape: String,
    session: Arc<HttpSession>,
}

impl Attempt<'_> {
    fn run(&self, on_transfer: &mut dyn FnMut(Transfer)) -> Result<Synced, Fail> {
        if let Some(unchanged) = self.no_op()? {
            return Ok(unchanged);
        }
        http::register();
        let mut synced = self.full(on_transfer)?;
        if let Some(depth) = self.spec.depth.filter(|d| *d > 0) {
            synced.notices.extend(self.keep_shallow(depth));
        }
        synced.notices.extend(self.collect_if_due());
        if self.spec.group_write && synced.change != Change::Unchanged {
            if let Err(e) = super::modes::share_with_group(&self.spec.dir) {
                synced
                    .notices
                    .push(format!("giving the group access to the checkout: {e}"));
            }
        }
        if probe::applies(self.spec) {
            // Without the stamp the next pull takes the full road again:
            // slower, not wrong, so a write that fails is no failure.
            let _ = probe::stamp(&self.spec.dir.join(".git"), &self.shape);
        }
        Ok(synced)
    }

    /// Shortens the history to `depth` when it is deeper (a smaller
    /// `--depth` than before, or a depth given to a full clone) and then
    /// collects what was cut. Says what it did; a failure is a notice, not
    /// a failed pull: the checkout is at the right commit either way.
    fn keep_shallow(&self, depth: u32) -> Option<String> {
        let repo = match Repository::open(&self.spec.dir) {
            Ok(repo) => repo,
            Err(e) => return Some(format!("shortening the history: {}", e.message())),
        };
        let shortened = match super::reshape::shorten(&repo, depth) {
            Ok(Some(shortened)) => shortened,
            Ok(None) => return None,
            Err(e) => return Some(format!("shortening the history: {}", e.message())),
        };
        let git_dir = repo.path().to_path_buf();
        drop(repo);
        let mut said = format!(
            "history shortened to depth {depth}: {} of {} commits kept",
            shortened.after, shortened.before
        );
        match super::reshape::collect(&git_dir) {
            Ok(c) => said.push_str(&format!(
                "; objects {} -> {}",
                indicatif::HumanBytes(c.before),
                indicatif::HumanBytes(c.after)
            )),
            Err(e) => said.push_str(&format!("; what was cut stays on disk ({})", e.message())),
        }
        Some(said)
    }

    /// Collects the object store when it has grown as `git gc --auto`
    /// would notice (libgit2 never repacks: every fetch adds a pack).
    /// Says so only when something went wrong.
    fn collect_if_due(&self) -> Option<String> {
        // Two directory reads decide, without opening the repository.
        let git_dir = match self.spec.mode {
            Mode::Mirror => self.spec.dir.clone(),
            _ => self.spec.dir.join(".git"),
        };
        if !super::reshape::due(&git_dir) {
            return None;
        }
        match super::reshape::collect(&git_dir) {
            Ok(_) => None,
            Err(e) => Some(format!("collecting the object store: {}", e.message())),
        }
    }

    /// The no-op check ([`probe`]): `Some` when the remote's followed ref
    /// is where the checkout already is, told without opening the
    /// repository. `None`: the full sync decides.
    fn no_op(&self) -> Result<Option<Synced>, Fail> {
        if !probe::applies(self.spec) {
            return Ok(None);
        }
        let git_dir = self.spec.dir.join(".git");
        // Whatever the full sync would refuse or repair, it must see.
        if !probe::stamped(&git_dir, &self.shape) || foreign_owner(&self.spec.dir).is_some() {
            return Ok(None);
        }
        let Some(checkout) = probe::checkout_head(&git_dir) else {
            return Ok(None);
        };
        if !journal::quiet(&git_dir, checkout.branch.as_deref()) {
            return Ok(None);
        }
        let prefixes = probe::prefixes(&self.spec.follow, checkout.branch.as_deref());
        let url = &self.spec.url;
        let ads = if is_http(url) {
            if probe::knows_only_v0(url) {
                return Ok(None);
            }
            let request = probe::ls_refs_request(&prefixes);
            let listed = match http::v2_command(self.session.clone(), url, &request) {
                Ok(answer) => probe::parse_ls_refs(&answer),
                // A server that refuses the request itself (not the
                // repository, not the client) may only want protocol v0.
                Err(f) if f.http_status.is_some_and(refuses_v2) => None,
                Err(f) => return Err(Fail::Failure(f)),
            };
            match listed {
                Some(ads) => ads,
                None => {
                    probe::note_only_v0(url);
                    return Ok(None);
                }
            }
        } else {
            self.ls_remote()?
        };
        let Ok(target) = target::resolve(&self.spec.follow, &ads, checkout.branch.as_deref())
        else {
            // The full sync reports it, with the whole advertisement.
            return Ok(None);
        };
        if !probe::is_current(&target, &checkout) {
            return Ok(None);
        }
        let head = checkout.head.to_string();
        Ok(Some(Synced {
            change: Change::Unchanged,
            old: Some(head.clone()),
            new: head,
            commits: 0,
            notices: Vec::new(),
        }))
    }

    /// The remote's refs, as `git ls-remote` lists them, without a
    /// repository (ssh, git and local remotes).
    fn ls_remote(&self) -> Result<Advertised, Fail> {
        let mut remote = git2::Remote::create_detached(self.spec.url.as_str())?;
        let connection = remote.connect_auth(Direction::Fetch, Some(self.callbacks(None)), None)?;
        Ok(advertised(&connection)?)
    }

    fn full(&self, on_transfer: &mut dyn FnMut(Transfer)) -> Result<Synced, Fail> {
        match self.inspect()? {
            Found::Nothing => {
                let synced = self.clone_beside(on_transfer).inspect_err(|_| {
                    // A failed clone leaves nothing behind (a retry starts
                    // afresh); a killed one is swept by the next attempt.
                    let _ = fs::remove_dir_all(self.lock.scratch_path("clone"));
                })?;
                self.swap_in(None)?;
                Ok(synced)
            }
            Found::Damaged(reason) => self.repair(&reason, on_transfer),
            Found::Repo(repo) => match self.update(&repo, on_transfer) {
                Err(Fail::Git(err)) if is_local_damage(&err) => {
                    drop(repo);
                    self.repair(err.message(), on_transfer)
                }
                Err(Fail::Damaged(reason)) => {
                    drop(repo);
                    self.repair(&reason, on_transfer)
                }
                other => other,
            },
        }
    }

    fn inspect(&self) -> Result<Found, Fail> {
        let dir = &self.spec.dir;
        let is_empty_dir = fs::read_dir(dir)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if !dir.exists() || is_empty_dir {
            return Ok(Found::Nothing);
        }
        // Another user's checkout is theirs: not ours to "repair" (re-clone
        // and move their work aside), whatever libgit2 thinks of it.
        if let Some(owner) = foreign_owner(dir) {
            return Err(Fail::Spec(SpecError::ForeignOwner {
                path: dir.clone(),
                owner,
            }));
        }
        let bare_expected = self.spec.mode == Mode::Mirror;
        let looks_like_git = if bare_expected {
            dir.join("HEAD").exists() && dir.join("objects").is_dir()
        } else {
            dir.join(".git").exists()
        };
        let opened = Repository::open_ext(
            dir,
            RepositoryOpenFlags::NO_SEARCH,
            std::iter::empty::<&std::ffi::OsStr>(),
        );
        match opened {
            Ok(repo) => {
                if repo.is_bare() && !bare_expected {
                    return Err(Fail::Spec(SpecError::UnexpectedBare(dir.clone())));
                }
                if !repo.is_bare() && bare_expected {
                    return Err(Fail::Spec(SpecError::UnexpectedWorktree(dir.clone())));
                }
                Ok(Found::Repo(repo))
            }
            Err(err) if looks_like_git => Ok(Found::Damaged(err.message().to_string())),
            Err(_) => Err(Fail::Spec(SpecError::NotARepository(dir.clone()))),
        }
    }

    /// Re-clones beside the damaged repository, swaps the fresh one in and
    /// keeps the damaged one for inspection.
    fn repair(&self, reason: &str, on_transfer: &mut dyn FnMut(Transfer)) -> Result<Synced, Fail> {
        let mut synced = self.clone_beside(on_transfer)?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = self.lock.scratch_path(&format!("damaged-{stamp}"));
        self.swap_in(Some(&aside))?;
        synced.notices.push(format!(
            "{} was damaged ({}); re-cloned it and kept the damaged copy at {}",
            self.spec.dir.display(),
            reason.trim(),
            aside.display()
        ));
        Ok(synced)
    }

    /// Clones into the scratch directory. Nothing is visible at DIR yet.
    fn clone_beside(&self, on_transfer: &mut dyn FnMut(Transfer)) -> Result<Synced, Fail> {
        let scratch = self.lock.scratch_path("clone");
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(io_fail(&scratch))?;
        }
        let repo = if self.spec.mode == Mode::Mirror {
            Repository::init_bare(&scratch)?
        } else {
            Repository::init(&scratch)?
        };
        // The stored URL never carries credentials; gitpulse passes them per pull.
        let (clean_url, _) = strip_userinfo(&self.spec.url);
        if self.spec.mode == Mode::Mirror {
            repo.remote_with_fetch("origin", &clean_url, "+refs/*:refs/*")?;
            repo.config()?.set_bool("remote.origin.mirror", true)?;
        } else {
            repo.remote("origin", &clean_url)?;
        }
        let mut synced = self.update(&repo, on_transfer)?;
        synced.change = Change::Cloned;
        synced.old = None;
        Ok(synced)
    }

    /// Moves the finished clone to DIR; `aside` receives what was there.
    fn swap_in(&self, aside: Option<&Path>) -> Result<(), Fail> {
        let dir = &self.spec.dir;
        let scratch = self.lock.scratch_path("clone");
        match aside {
            Some(aside) => fs::rename(dir, aside).map_err(io_fail(dir))?,
            None if dir.exists() => fs::remove_dir(dir).map_err(io_fail(dir))?,
            None => {}
        }
        fs::rename(&scratch, dir).map_err(io_fail(dir))
    }

    fn update(
        &self,
        repo: &Repository,
        on_transfer: &mut dyn FnMut(Transfer),
    ) -> Result<Synced, Fail> {
        let mut notices = Vec::new();
        if let Some(notice) = recover(repo)? {
            notices.push(notice);
        }
        let old = head_commit(repo)?;
        let current_branch = repo
            .find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().ok().flatten().map(String::from))
            .and_then(|t| t.strip_prefix("refs/heads/").map(String::from));

        // A pinned commit the checkout already has needs no remote at all.
        if self.spec.mode != Mode::Mirror {
            if let Some(pin) = self.spec.follow.local_pin() {
                if let Some(tip) = local_commit(repo, pin)? {
                    return self.move_detached(repo, tip, old, notices);
                }
            }
        }

        let mut remote = repo.remote_anonymous(&self.spec.url)?;
        let mut connection =
            remote.connect_auth(Direction::Fetch, Some(self.callbacks(None)), None)?;
        let ads = advertised(&connection)?;

        if self.spec.mode == Mode::Mirror {
            let advertised = ads
                .refs
                .into_iter()
                .map(|(name, id)| Ok((name, id.to_git()?)))
                .collect::<Result<_, git2::Error>>()?;
            return self.update_mirror(
                repo,
                connection.remote(),
                advertised,
                ads.head,
                old,
                notices,
                on_transfer,
            );
        }

        let on_a_branch = current_branch.as_deref().filter(|_| old.is_some());
        let target = target::resolve(&self.spec.follow, &ads, on_a_branch)
            .map_err(|message| failure(FailureClass::RefNotFound, message))?;
        let (branch, tip) = match target {
            Target::Branch { name, tip } => (name, tip.to_git()?),
            Target::Tag {
                name,
                object,
                peeled: _,
            } => {
                let object = object.to_git()?;
                let local_tag = format!("refs/tags/{name}");
                if repo.find_object(object, None).is_err() {
                    journal::begin(repo, &Intent::Busy).map_err(io_fail(repo.path()))?;
                    let refspec = format!("+{local_tag}:{local_tag}");
                    let mut options = self.fetch_options(on_transfer);
                    connection
                        .remote()
                        .download(&[refspec.as_str()], Some(&mut options))?;
                    connection.remote().disconnect()?;
                }
                drop(connection);
                let tip = repo.find_object(object, None)?.peel_to_commit()?.id();
                self.check_tag_move(repo, &name, object, tip)?;
                let synced = self.move_detached(repo, tip, old, notices)?;
                set_ref_if_changed(repo, &local_tag, object)?;
                return Ok(synced);
            }
            Target::Commit(prefix) => {
                if local_commit(repo, &prefix)?.is_none() {
                    // A tip with exactly that SHA: fetch that ref alone;
                    // else every branch and tag, and look again.
                    let refspecs: Vec<String> =
                        match ads.refs.iter().find(|(_, oid)| oid.to_string() == prefix) {
                            Some((name, _)) => vec![name.clone()],
                            None => vec![
                                "+refs/heads/*:refs/remotes/origin/*".into(),
                                "+refs/tags/*:refs/tags/*".into(),
                            ],
                        };
                    let refspecs: Vec<&str> = refspecs.iter().map(String::as_str).collect();
                    journal::begin(repo, &Intent::Busy).map_err(io_fail(repo.path()))?;
                    let mut options = self.fetch_options(on_transfer);
                    connection
                        .remote()
                        .download(&refspecs, Some(&mut options))?;
                    connection.remote().disconnect()?;
                }
                drop(connection);
                let Some(tip) = local_commit(repo, &prefix)? else {
                    journal::finish(repo).map_err(io_fail(repo.path()))?;
                    let shallow = match self.spec.depth {
                        Some(depth) => format!(" (with depth {depth}, only the last {depth} commits of each are fetched)"),
                        None => String::new(),
                    };
                    return Err(failure(
                        FailureClass::RefNotFound,
                        format!("commit `{prefix}` not found on the remote: no branch or tag it advertises reaches it{shallow}"),
                    ));
                };
                return self.move_detached(repo, tip, old, notices);
            }
        };
        let remote_ref = format!("refs/heads/{branch}");
        let local_ref = format!("refs/heads/{branch}");
        let tracking_ref = format!("refs/remotes/origin/{branch}");
        let on_branch = current_branch.as_deref() == Some(branch.as_str());

        // A depth that changed reshapes the history even when the tip did
        // not move: deepen to the new depth, or unshallow without one.
        let reshape = self.reshape(repo, tip);
        if on_branch && old == Some(tip) && reshape.is_none() && !self.sparse_changed(repo) {
            drop(connection);
            set_ref_if_changed(repo, &tracking_ref, tip)?;
            return self.stay(repo, tip, &local_ref, notices);
        }

        if repo.find_commit(tip).is_err() || reshape.is_some() {
            journal::begin(repo, &Intent::Busy).map_err(io_fail(repo.path()))?;
            let refspec = format!("+{remote_ref}:{tracking_ref}");
            let mut options = self.fetch_options(on_transfer);
            if let Some(depth) = reshape {
                options.depth(depth);
            }
            connection
                .remote()
                .download(&[refspec.as_str()], Some(&mut options))?;
            connection.remote().disconnect()?;
        }
        drop(connection);
        let previous_tracking = repo.refname_to_id(&tracking_ref).ok();
        set_ref_if_changed(repo, &tracking_ref, tip)?;

        let local = repo.refname_to_id(&local_ref).ok();
        let fresh = old.is_none();
        if self.spec.mode == Mode::FastForward && !fresh {
            if let Some(local) = local {
                // A shallow history may not reach back to `local`; then the
                // branch still sitting where the last fetch left it proves
                // there are no local commits to lose.
                let untouched_shallow = repo.is_shallow() && previous_tracking == Some(local);
                if local != tip && !untouched_shallow && !repo.graph_descendant_of(tip, local)? {
                    journal::finish(repo).map_err(io_fail(repo.path()))?;
                    let (ahead, behind) = repo.graph_ahead_behind(local, tip).unwrap_or((0, 0));
                    return Err(failure(
                        FailureClass::Diverged,
                        format!(
                            "local branch `{branch}` has {ahead} commit(s) the remote does not (remote is {behind} ahead); \
                             fast-forward impossible — use --mode reset to discard local commits"
                        ),
                    ));
                }
            }
        }

        self.move_to(repo, tip, &local_ref, old, fresh, notices)
    }

    /// Refuses, in fast-forward mode, a tag that upstream moved to a
    /// commit not descending from where it was: following it backwards
    /// takes `--mode reset`. A tag seen for the first time is followed.
    fn check_tag_move(
        &self,
        repo: &Repository,
        name: &str,
        object: Oid,
        tip: Oid,
    ) -> Result<(), Fail> {
        if self.spec.mode != Mode::FastForward {
            return Ok(());
        }
        let Ok(before) = repo.refname_to_id(&format!("refs/tags/{name}")) else {
            return Ok(());
        };
        if before == object {
            return Ok(());
        }
        let was = repo.find_object(before, None)?.peel_to_commit()?.id();
        if was != tip && !repo.graph_descendant_of(tip, was)? {
            return Err(failure(
                FailureClass::Diverged,
                format!(
                    "tag `{name}` moved upstream from {was} to {tip}, which does not descend from it; \
                     fast-forward impossible — use --mode reset to follow the tag wherever it goes"
                ),
            ));
        }
        Ok(())
    }

    /// Moves the checkout to `tip` with HEAD detached (a tag or a commit
    /// is followed, not a branch). Local edits block it unless in reset
    /// mode, as for a branch.
    fn move_detached(
        &self,
        repo: &Repository,
        tip: Oid,
        old: Option<Oid>,
        notices: Vec<String>,
    ) -> Result<Synced, Fail> {
        let detached = repo.head_detached().unwrap_or(false);
        if detached && old == Some(tip) && !self.sparse_changed(repo) {
            return self.stay(repo, tip, "HEAD", notices);
        }
        self.move_to(repo, tip, "HEAD", old, old.is_none(), notices)
    }

    /// The checkout is where it should be. Reset mode makes it equal to
    /// `tip` even so: edits, deletions and untracked files go.
    fn stay(
        &self,
        repo: &Repository,
        tip: Oid,
        reference: &str,
        mut notices: Vec<String>,
    ) -> Result<Synced, Fail> {
        if self.spec.mode == Mode::Reset && self.dirty(repo)? {
            begin_checkout(repo, tip, reference)?;
            self.checkout(repo, tip, true)?;
            notices.push("reset mode: local changes and untracked files discarded".into());
        }
        journal::finish(repo).map_err(io_fail(repo.path()))?;
        Ok(Synced {
            change: Change::Unchanged,
            old: Some(tip.to_string()),
            new: tip.to_string(),
            commits: 0,
            notices,
        })
    }

    /// Moves the worktree and `reference` (a branch, or `HEAD` to detach
    /// it) to `tip`, journalled so a crash can be finished; then submodules.
    fn move_to(
        &self,
        repo: &Repository,
        tip: Oid,
        reference: &str,
        old: Option<Oid>,
        fresh: bool,
        notices: Vec<String>,
    ) -> Result<Synced, Fail> {
        begin_checkout(repo, tip, reference)?;
        self.checkout(repo, tip, fresh)?;
        move_branch(repo, reference, tip)?;
        journal::finish(repo).map_err(io_fail(repo.path()))?;
        if self.spec.submodules {
            self.update_submodules(repo, 0)?;
        }
        // Reshaped (depth, sparse set) without moving: nothing new to tell.
        let change = if old == Some(tip) {
            Change::Unchanged
        } else {
            Change::Updated
        };
        Ok(Synced {
            change,
            old: old.map(|o| o.to_string()),
            new: tip.to_string(),
            commits: count_new(repo, tip, old),
            notices,
        })
    }

    /// The sparse set the checkout keeps, recorded as git does when it is
    /// configured; `None`: not sparse.
    fn sparse(&self, repo: &Repository) -> Result<Option<Matcher>, Fail> {
        let wanted = match &self.spec.sparse {
            Some(sparse) => {
                if Sparse::of_checkout(repo).as_ref() != Some(sparse) {
                    sparse.write(repo)?;
                }
                sparse.clone()
            }
            None => match Sparse::of_checkout(repo) {
                Some(by_hand) => by_hand,
                None => return Ok(None),
            },
        };
        Matcher::new(&wanted)
            .map(Some)
            .map_err(|why| failure(FailureClass::Other, format!("sparse checkout: {why}")))
    }

    /// Whether the worktree has local changes (see [`worktree_dirty`]).
    fn dirty(&self, repo: &Repository) -> Result<bool, Fail> {
        let sparse = self.sparse(repo)?;
        Ok(worktree_dirty(repo, sparse.as_ref())?)
    }

    /// Whether the configured sparse set differs from the checkout's (it
    /// must be applied even if the tip did not move).
    fn sparse_changed(&self, repo: &Repository) -> bool {
        self.spec
            .sparse
            .as_ref()
            .is_some_and(|s| Sparse::of_checkout(repo).as_ref() != Some(s))
    }

    /// Writes `tip`'s tree to the worktree: forced for a fresh clone or in
    /// reset mode, else safe (local edits refuse it as `diverged`). A
    /// sparse checkout writes only the paths its set includes, and marks
    /// the rest skip-worktree in the index, as git does.
    fn checkout(&self, repo: &Repository, tip: Oid, fresh: bool) -> Result<(), Fail> {
        let mut checkout = CheckoutBuilder::new();
        if fresh || self.spec.mode == Mode::Reset {
            checkout
                .force()
                .remove_untracked(self.spec.mode == Mode::Reset);
        } else {
            checkout.safe();
        }
        let commit = repo.find_commit(tip)?;
        let sparse = self.sparse(repo)?;
        if let Some(matcher) = &sparse {
            let mut paths = tree_files(&commit.tree()?)?;
            if let Some(old) = head_commit(repo)? {
                paths.extend(tree_files(&repo.find_commit(old)?.tree()?)?);
            }
            paths.retain(|p| matcher.includes(p));
            // No path at all would mean "every path" to libgit2.
            paths.insert(".gitpulse-sparse-nothing".into());
            checkout.disable_pathspec_match(true).recreate_missing(true);
            for path in &paths {
                checkout.path(path);
            }
        }
        if let Err(err) = repo.checkout_tree(commit.as_object(), Some(&mut checkout)) {
            // A refused safe checkout writes nothing: nothing to finish.
            journal::finish(repo).map_err(io_fail(repo.path()))?;
            if err.code() == git2::ErrorCode::Conflict || err.class() == git2::ErrorClass::Checkout
            {
                return Err(failure(
                    FailureClass::Diverged,
                    format!(
                        "local changes in the worktree would be overwritten ({}); commit or discard them, or use --mode reset",
                        err.message()
                    ),
                ));
            }
            return Err(err.into());
        }
        if let Some(matcher) = &sparse {
            settle_sparse(repo, &commit, matcher)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn update_mirror(
        &self,
        repo: &Repository,
        remote: &mut git2::Remote<'_>,
        advertised: BTreeMap<String, Oid>,
        remote_head: Option<String>,
        old: Option<Oid>,
        notices: Vec<String>,
        on_transfer: &mut dyn FnMut(Transfer),
    ) -> Result<Synced, Fail> {
        let local: BTreeMap<String, Oid> = repo
            .references()?
            .flatten()
            .filter_map(|r| Some((r.name().ok()?.to_string(), r.target()?)))
            .filter(|(name, _)| name.starts_with("refs/"))
            .collect();
        let head_target = remote_head.clone();
        let new_head = head_target
            .as_ref()
            .and_then(|h| advertised.get(h).copied())
            .or(old);
        let head_matches = head_target.as_deref()
            == repo
                .find_reference("HEAD")
                .ok()
                .and_then(|h| h.symbolic_target().ok().flatten().map(String::from))
                .as_deref();
        if local == advertised && head_matches {
            remote.disconnect()?;
            let new = new_head.ok_or_else(|| {
                failure(FailureClass::RefNotFound, "the remote has no refs".into())
            })?;
            return Ok(Synced {
                change: Change::Unchanged,
                old: old.map(|o| o.to_string()),
                new: new.to_string(),
                commits: 0,
                notices,
            });
        }
        journal::begin(repo, &Intent::Busy).map_err(io_fail(repo.path()))?;
        if advertised
            .values()
            .any(|oid| repo.find_object(*oid, None).is_err())
        {
            let mut options = self.fetch_options(on_transfer);
            remote.download(&["+refs/*:refs/*"], Some(&mut options))?;
        }
        remote.disconnect()?;
        for (name, oid) in &advertised {
            if local.get(name) != Some(oid) {
                repo.reference(name, *oid, true, "gitpulse: mirror")?;
            }
        }
        for name in local.keys().filter(|n| !advertised.contains_key(*n)) {
            if let Ok(mut r) = repo.find_reference(name) {
                r.delete()?;
            }
        }
        if let Some(head) = &head_target {
            repo.set_head(head)?;
        }
        journal::finish(repo).map_err(io_fail(repo.path()))?;
        let new = new_head
            .ok_or_else(|| failure(FailureClass::RefNotFound, "the remote has no refs".into()))?;
        Ok(Synced {
            change: Change::Updated,
            old: old.map(|o| o.to_string()),
            new: new.to_string(),
            commits: count_new(repo, new, old),
            notices,
        })
    }

    fn update_submodules(&self, repo: &Repository, level: usize) -> Result<(), Fail> {
        const MAX_NESTING: usize = 8;
        if level >= MAX_NESTING {
            return Ok(());
        }
        let mut ignore = |_: Transfer| {};
        for mut sub in repo.submodules()? {
            let url = sub.url().ok().flatten().unwrap_or_default().to_string();
            // A relative URL (`../lib.git`) lives where the superproject does.
            let relative = url.starts_with("./") || url.starts_with("../");
            let local = if relative {
                is_local(&self.spec.url)
            } else {
                is_local(&url)
            };
            if !self.spec.local_submodules && local {
                // What upstream names in .gitmodules must not read this
                // machine's files (git refuses it too, since 2.38.1). A
                // refusal of access, as a 403 is: `auth`, not retried.
                return Err(failure(
                    FailureClass::Auth,
                    format!(
                        "submodule {} points at this machine ({}); refused unless local submodules are allowed",
                        sub.path().display(),
                        redact::url(&url)
                    ),
                ));
            }
            let mut options = git2::SubmoduleUpdateOptions::new();
            options.fetch(self.fetch_options(&mut ignore));
            if sub.open().is_err() {
                // Not cloned yet. libgit2's update would clone with the
                // submodule's path relative to the process's working
                // directory, and on failure delete that directory there:
                // outside DIR. Its clone step takes the absolute path.
                sub.init(false)?;
                if relative && local {
                    // libgit2 drops a slash resolving `../x` against a
                    // file:// superproject (`file://tmp/x`): resolved here
                    // as git does, into the local config, which wins over
                    // .gitmodules.
                    let resolved = resolve_relative_url(&self.spec.url, &url);
                    repo.config()?.set_str(
                        &format!("submodule.{}.url", sub.name().unwrap_or_default()),
                        &resolved,
                    )?;
                    let path = sub.path().to_string_lossy().into_owned();
                    sub = repo.find_submodule(&path)?;
                }
                sub.repo_init(true)?;
                sub.clone(Some(&mut options))?;
                options = git2::SubmoduleUpdateOptions::new();
                options.fetch(self.fetch_options(&mut ignore));
            }
            sub.update(false, Some(&mut options))?;
            let sub_repo = sub.open()?;
            self.update_submodules(&sub_repo, level + 1)?;
        }
        Ok(())
    }

    /// The depth to fetch with when the checkout's history no longer has
    /// the shape asked for: deeper than it is (`--depth` grew), or whole
    /// (no `--depth` any more, `UNSHALLOW`). `None`: as it should be.
    fn reshape(&self, repo: &Repository, tip: Oid) -> Option<i32> {
        /// libgit2's GIT_FETCH_DEPTH_UNSHALLOW.
        const UNSHALLOW: i32 = i32::MAX;
        if !repo.is_shallow() || repo.find_commit(tip).is_err() {
            return None;
        }
        match self.spec.depth {
            None | Some(0) => Some(UNSHALLOW),
            Some(depth) => {
                let mut walk = repo.revwalk().ok()?;
                walk.push(tip).ok()?;
                let have = walk.take(depth as usize).count();
                (have < depth as usize).then(|| depth.min(i32::MAX as u32 - 1) as i32)
            }
        }
    }

    fn fetch_options<'cb>(
        &'cb self,
        on_transfer: &'cb mut dyn FnMut(Transfer),
    ) -> FetchOptions<'cb> {
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(self.callbacks(Some(on_transfer)))
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        if let Some(depth) = self.spec.depth.filter(|d| *d > 0) {
            options.depth(depth.min(i32::MAX as u32) as i32);
        }
        options
    }

    fn callbacks<'cb>(
        &'cb self,
        on_transfer: Option<&'cb mut dyn FnMut(Transfer)>,
    ) -> RemoteCallbacks<'cb> {
        let control = self.control;
        let mut callbacks = RemoteCallbacks::new();
        if let Some(on_transfer) = on_transfer {
            callbacks.transfer_progress(move |p| {
                control.received_total(p.received_bytes() as u64);
                on_transfer(Transfer {
                    received_objects: p.received_objects(),
                    total_objects: p.total_objects(),
                    indexed_deltas: p.indexed_deltas(),
                    total_deltas: p.total_deltas(),
                    received_bytes: p.received_bytes(),
                });
                control.interrupted().is_none()
            });
        }
        callbacks.sideband_progress(move |_| control.interrupted().is_none());
        let auth = self.spec.auth.clone();
        let mut tries = 0;
        callbacks.credentials(move |_url, username, allowed| {
            tries += 1;
            if tries > 3 {
                return Err(git2::Error::new(
                    git2::ErrorCode::Auth,
                    git2::ErrorClass::Ssh,
                    "authentication failed: credentials refused",
                ));
            }
            let user = username.unwrap_or("git");
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(user);
            }
            match &auth {
                Auth::SshKey { key, .. } if allowed.contains(CredentialType::SSH_KEY) => {
                    Cred::ssh_key(user, None, key, None)
                }
                _ if allowed.contains(CredentialType::SSH_KEY) => Cred::ssh_key_from_agent(user),
                _ => Err(git2::Error::new(
                    git2::ErrorCode::Auth,
                    git2::ErrorClass::Net,
                    "the remote asks for credentials; pass --token-env, --token-file or --ssh-key",
                )),
            }
        });
        if let Auth::SshKey {
            known_hosts: Some(known_hosts),
            ..
        } = &self.spec.auth
        {
            let known_hosts = known_hosts.clone();
            let port = url::Url::parse(&self.spec.url).ok().and_then(|u| u.port());
            callbacks.certificate_check(move |cert, host| {
                super::ssh::check_host_key(&known_hosts, cert, host, port)
            });
        }
        callbacks
    }
}

/// Every file path of `tree` (`/`-separated).
fn tree_files(tree: &git2::Tree<'_>) -> Result<std::collections::BTreeSet<String>, Fail> {
    let mut files = std::collections::BTreeSet::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        if entry.kind() != Some(git2::ObjectType::Tree) {
            if let Ok(name) = entry.name() {
                files.insert(format!("{root}{name}"));
            }
        }
        git2::TreeWalkResult::Ok
    })?;
    Ok(files)
}

/// After a sparse checkout: the index holds the whole commit (so `git
/// status` compares against HEAD), excluded entries are skip-worktree,
/// and excluded files still on disk go unless someone changed them.
fn settle_sparse(
    repo: &Repository,
    commit: &git2::Commit<'_>,
    matcher: &Matcher,
) -> Result<(), Fail> {
    /// GIT_INDEX_ENTRY_SKIP_WORKTREE, in the extended flags.
    const SKIP_WORKTREE: u16 = 1 << 14;
    let workdir = repo.workdir().map(Path::to_path_buf).unwrap_or_default();
    let mut index = repo.index()?;
    let mut keep: BTreeMap<Vec<u8>, git2::IndexEntry> =
        index.iter().map(|e| (e.path.clone(), e)).collect();
    index.read_tree(&commit.tree()?)?;
    let entries: Vec<git2::IndexEntry> = index.iter().collect();
    for mut entry in entries {
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        if matcher.includes(&path) {
            // Keep what the checkout recorded (its stat data) when it matches.
            if let Some(mut known) = keep.remove(&entry.path).filter(|k| k.id == entry.id) {
                known.flags_extended &= !SKIP_WORKTREE;
                index.add(&known)?;
            }
            continue;
        }
        entry.flags_extended |= SKIP_WORKTREE;
        let on_disk = workdir.join(&path);
        if on_disk.is_file() {
            let same =
                Oid::hash_file(git2::ObjectType::Blob, &on_disk).is_ok_and(|id| id == entry.id);
            if same {
                fs::remove_file(&on_disk).map_err(io_fail(&on_disk))?;
                remove_empty_parents(&workdir, &on_disk);
            }
        }
        index.add(&entry)?;
    }
    index.write()?;
    Ok(())
}

/// Removes the directories above `file` that became empty, up to `top`.
fn remove_empty_parents(top: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir.filter(|d| *d != top && d.starts_with(top)) {
        if fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Journals a checkout of `branch` to `target` before the worktree moves.
fn begin_checkout(repo: &Repository, target: Oid, branch: &str) -> Result<(), Fail> {
    let intent = Intent::Checkout {
        target,
        branch: branch.to_string(),
    };
    journal::begin(repo, &intent).map_err(io_fail(repo.path()))
}

/// A submodule's relative URL (`../lib.git`, `./lib`) against its
/// superproject's, as git resolves it: each `../` drops one component of
/// the superproject's URL, `./` none, and the rest is appended.
fn resolve_relative_url(superproject: &str, relative: &str) -> String {
    let mut base = superproject.trim_end_matches('/').to_string();
    let mut rest = relative;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            if let Some(cut) = base.rfind('/') {
                base.truncate(cut);
            }
        } else {
            break;
        }
    }
    format!("{base}/{rest}")
}

/// Finishes or cleans up after a gitpulse that died in this repository.
fn recover(repo: &Repository) -> Result<Option<String>, Fail> {
    let git_dir = repo.path().to_path_buf();
    // Lock files nobody of ours can explain: another process's, kept.
    let someone_elses = |locks: Vec<PathBuf>| match locks.first() {
        Some(lock) => Err(failure(
            FailureClass::LockHeld,
            format!(
                "another git process is working in this repository ({} exists); \
                 if no git command is running, remove that file",
                lock.display()
            ),
        )),
        None => Ok(()),
    };
    let Some(intent) = journal::pending(&git_dir) else {
        someone_elses(journal::lock_files(&git_dir))?;
        return Ok(None);
    };
    someone_elses(
        journal::remove_leftovers(&git_dir, &intent, repo.is_bare()).map_err(io_fail(&git_dir))?,
    )?;
    let notice = match intent {
        Intent::Busy => "recovered from an interrupted fetch".to_string(),
        Intent::Checkout { target, branch } => {
            let commit = repo.find_commit(target)?;
            let mut checkout = CheckoutBuilder::new();
            checkout.force();
            // Finish only what the update was changing: the paths that
            // differ between where the branch still is and the target. A
            // local edit anywhere else is the user's, and stays.
            let mut changing = 0;
            if let Ok(Some(old)) = head_commit(repo) {
                let diff = repo.diff_tree_to_tree(
                    Some(&repo.find_commit(old)?.tree()?),
                    Some(&commit.tree()?),
                    None,
                )?;
                for delta in diff.deltas() {
                    for path in [delta.old_file().path(), delta.new_file().path()]
                        .into_iter()
                        .flatten()
                    {
                        checkout.path(path);
                        changing += 1;
                    }
                }
            } else {
                changing = usize::MAX; // no old commit: the whole tree
            }
            if changing > 0 {
                repo.checkout_tree(commit.as_object(), Some(&mut checkout))?;
            }
            move_branch(repo, &branch, target)?;
            format!("finished an interrupted update to {target}")
        }
    };
    journal::finish(repo).map_err(io_fail(&git_dir))?;
    Ok(Some(notice))
}

/// The commit `sha` (full or a unique prefix) names, if the repository
/// has it. An ambiguous prefix is `ref-not-found`: no guess is safe.
fn local_commit(repo: &Repository, sha: &str) -> Result<Option<Oid>, Fail> {
    match repo.revparse_single(sha) {
        Ok(object) if object.id().to_string().starts_with(sha) => {
            Ok(object.peel_to_commit().ok().map(|c| c.id()))
        }
        Ok(_) => Ok(None),
        Err(e) if e.code() == git2::ErrorCode::Ambiguous => Err(failure(
            FailureClass::RefNotFound,
            format!("commit prefix `{sha}` is ambiguous; give more of the SHA"),
        )),
        Err(_) => Ok(None),
    }
}

/// The commit HEAD points at; `None` for a new repository. A HEAD naming a
/// missing object means the repository is damaged.
fn head_commit(repo: &Repository) -> Result<Option<Oid>, Fail> {
    let head = match repo.head() {
        Ok(head) => head,
        Err(e) if e.code() == git2::ErrorCode::UnbornBranch => return Ok(None),
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let damaged = |e: git2::Error| Fail::Damaged(e.message().to_string());
    let commit = head.peel_to_commit().map_err(damaged)?;
    // Reading the tree catches a damaged object store before we build on it.
    commit.tree().map_err(damaged)?;
    Ok(Some(commit.id()))
}

fn set_ref_if_changed(repo: &Repository, name: &str, target: Oid) -> Result<(), Fail> {
    if repo.refname_to_id(name).ok() != Some(target) {
        repo.reference(name, target, true, "gitpulse: fetch")?;
    }
    Ok(())
}

/// Moves `branch_ref` and HEAD to `target`; `HEAD` itself detaches it.
fn move_branch(repo: &Repository, branch_ref: &str, target: Oid) -> Result<(), Fail> {
    if branch_ref == "HEAD" {
        repo.set_head_detached(target)?;
        return Ok(());
    }
    repo.reference(branch_ref, target, true, "gitpulse: update")?;
    repo.set_head(branch_ref)?;
    Ok(())
}

fn count_new(repo: &Repository, new: Oid, old: Option<Oid>) -> u64 {
    let Ok(mut walk) = repo.revwalk() else {
        return 0;
    };
    if walk.push(new).is_err() {
        return 0;
    }
    if let Some(old) = old {
        let _ = walk.hide(old);
    }
    walk.count() as u64
}

fn is_local_damage(err: &git2::Error) -> bool {
    use git2::ErrorClass::*;
    matches!(err.class(), Odb | Object | Zlib | Index | Repository)
        && err.code() != git2::ErrorCode::Locked
}

/// The URL to store as `origin`: HTTP(S) userinfo is a credential and is
/// dropped; an SSH user name is not and stays.
fn strip_userinfo(url: &str) -> (String, bool) {
    match url::Url::parse(url) {
        Ok(mut parsed)
            if matches!(parsed.scheme(), "http" | "https")
                && (!parsed.username().is_empty() || parsed.password().is_some()) =>
        {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            (parsed.to_string(), true)
        }
        // ssh:// and git:// keep their user (ssh logs in as it); a password
        // is never written to the repository's config, whatever the scheme.
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(None);
            (parsed.to_string(), true)
        }
        _ => (url.to_string(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_submodule_urls_resolve_against_the_superproject_as_git_does() {
        assert_eq!(
            resolve_relative_url("file:///srv/git/app.git", "../lib.git"),
            "file:///srv/git/lib.git"
        );
        assert_eq!(
            resolve_relative_url("file:///srv/git/app.git/", "./vendor"),
            "file:///srv/git/app.git/vendor"
        );
        assert_eq!(resolve_relative_url("/srv/git/app", "../../x"), "/srv/x");
    }
}
