//! gitpulse against `git` itself, in one run, through the same local
//! smart-HTTP server (`git http-backend`):
//!
//! - a no-op pull of an unchanged repository vs `git fetch` + `git merge --ff-only`,
//!   once with every request through `git http-backend` and once with the
//!   ref listing answered in the server's process;
//! - a clone of a generated repository (default ~20k commits / ~100 MB) vs `git clone`;
//! - that clone reshaped to depth 1 (`gitpulse pull --depth 1` vs `git fetch
//!   --depth 1` + `git gc --prune=now` with unreachable reflogs expired): time,
//!   and the object store's size before and after.
//!
//! Prints a table: median wall time with its CPU time, peak RSS, and the
//! gitpulse/git ratio.
//! Sizes: `GITPULSE_BENCH_COMMITS` (20000), `GITPULSE_BENCH_BLOB_KB` (5),
//! `GITPULSE_BENCH_NOOP_RUNS` (30), `GITPULSE_BENCH_CLONE_RUNS` (3).
//! The generated repository is cached under the target directory.

// A benchmark: a panic is how it fails, and it has no API to document.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gitpulse_testkit::{git_ok, GitHttpServer, Upstream};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How long a command took: on the wall, and of CPU (user and system,
/// its children included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

impl std::ops::Add for Took {
    type Output = Took;
    fn add(self, other: Took) -> Took {
        Took {
            wall: self.wall + other.wall,
            cpu: self.cpu + other.cpu,
        }
    }
}

fn cpu_of(usage: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Wall and CPU time and peak RSS (KiB) of one command, children included.
fn measure(cmd: &mut Command) -> (Took, u64) {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
    let start = Instant::now();
    // Reaped below by wait4, which also reports its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn");
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = start.elapsed();
    assert_eq!(rc, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    (
        Took {
            wall: took,
            cpu: cpu_of(&usage),
        },
        usage.ru_maxrss as u64,
    )
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

/// A bare repository of `commits` commits, each rewriting one of 100 files
/// with `blob_kb` KiB of incompressible data, written by `git fast-import`.
fn big_fixture(root: &Path, commits: usize, blob_kb: usize) -> PathBuf {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-big-{commits}-{blob_kb}.git"));
    let link = root.join("big.git");
    if !cache.join("gitpulse-fixture-complete").exists() {
        let _ = std::fs::remove_dir_all(&cache);
        eprintln!("generating {commits} commits × {blob_kb} KiB (cached for next time) …");
        git_ok(
            root,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                cache.to_str().unwrap(),
            ],
        );
        let mut child = Command::new("git")
            .args(["fast-import", "--quiet"])
            .current_dir(&cache)
            .stdin(Stdio::piped())
            .spawn()
            .expect("git fast-import");
        let mut input = std::io::BufWriter::new(child.stdin.take().unwrap());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut blob = vec![0u8; blob_kb * 1024];
        for n in 1..=commits {
            for chunk in blob.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            let msg = format!("commit {n}\n");
            write!(input, "commit refs/heads/main\nmark :{n}\ncommitter Bench <bench@example.com> {} +0000\ndata {}\n{msg}", 1_700_000_000 + n, msg.len()).unwrap();
            if n > 1 {
                writeln!(input, "from :{}", n - 1).unwrap();
            }
            let file = n % 100;
            write!(
                input,
                "M 100644 inline d{}/f{}.bin\ndata {}\n",
                file / 10,
                file,
                blob.len()
            )
            .unwrap();
            input.write_all(&blob).unwrap();
            input.write_all(b"\n\n").unwrap();
        }
        drop(input);
        assert!(child.wait().unwrap().success(), "fast-import failed");
        std::fs::write(cache.join("gitpulse-fixture-complete"), "").unwrap();
    }
    std::os::unix::fs::symlink(&cache, &link).unwrap();
    cache
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

struct Row {
    name: &'static str,
    ours: (Took, u64),
    git: (Took, u64),
    target: f64,
}

/// A no-op pull of `url` by gitpulse against `git fetch` + `git merge
/// --ff-only` by git, each from its own clone under `dir`.
fn noop(gitpulse: &str, url: &str, dir: &Path, runs: usize, name: &'static str) -> Row {
    let ours_dir = dir.join("gitpulse");
    let git_dir = dir.join("git");
    measure(Command::new(gitpulse).args(["pull", url]).arg(&ours_dir));
    measure(Command::new("git").args(["clone", "-q", url]).arg(&git_dir));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ours_rss, mut git_rss) = (0, 0);
    for _ in 0..runs {
        let (t, rss) = measure(Command::new(gitpulse).args(["pull", url]).arg(&ours_dir));
        ours.push(t);
        ours_rss = ours_rss.max(rss);
        let (t1, r1) = measure(
            Command::new("git")
                .arg("-C")
                .arg(&git_dir)
                .args(["fetch", "-q", "origin"]),
        );
        let (t2, r2) = measure(Command::new("git").arg("-C").arg(&git_dir).args([
            "merge",
            "-q",
            "--ff-only",
            "origin/main",
        ]));
        theirs.push(t1 + t2);
        git_rss = git_rss.max(r1).max(r2);
    }
    Row {
        name,
        ours: (median(ours), ours_rss),
        git: (median(theirs), git_rss),
        target: 0.3,
    }
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: skip the heavy work.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let gitpulse = env!("CARGO_BIN_EXE_gitpulse");
    let commits = env_or("GITPULSE_BENCH_COMMITS", 20_000);
    let blob_kb = env_or("GITPULSE_BENCH_BLOB_KB", 5);
    let noop_runs = env_or("GITPULSE_BENCH_NOOP_RUNS", 30);
    let clone_runs = env_or("GITPULSE_BENCH_CLONE_RUNS", 3);

    let root = tempfile::tempdir().unwrap();
    let mut small = Upstream::new(root.path(), "small");
    for i in 0..50 {
        small.commit(&format!("c{i}"));
    }
    let big = big_fixture(root.path(), commits, blob_kb);
    let server = GitHttpServer::start(root.path());
    let mut rows = Vec::new();

    // No-op pull of an unchanged repository, through git's CGI for every
    // request, then with the ref listing answered in the server's process
    // (as a hosting service answers it): the second row leaves out the
    // server's process start, which the first charges to both sides.
    let listing = GitHttpServer::start_listing_in_process(root.path());
    for (served_by, dir, name) in [
        (&server, "noop", "no-op pull (unchanged)"),
        (
            &listing,
            "noop-listing",
            "no-op pull, listing served in process",
        ),
    ] {
        let dir = root.path().join(dir);
        rows.push(noop(
            gitpulse,
            &served_by.url("small"),
            &dir,
            noop_runs,
            name,
        ));
    }

    // A one-shot clone of a small repository over file://: start-up
    // dominates (process start, config reads, the local transport).
    let mut tiny = Upstream::new(root.path(), "tiny");
    for i in 0..199 {
        tiny.commit(&format!("t{i}"));
    }
    let url = tiny.file_url();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ours_rss, mut git_rss) = (0, 0);
    for i in 0..7 {
        let a = root.path().join(format!("tiny-gitpulse-{i}"));
        let (t, rss) = measure(Command::new(gitpulse).args(["pull", &url]).arg(&a));
        ours.push(t);
        ours_rss = ours_rss.max(rss);
        let b = root.path().join(format!("tiny-git-{i}"));
        let (t, rss) = measure(Command::new("git").args(["clone", "-q", &url]).arg(&b));
        theirs.push(t);
        git_rss = git_rss.max(rss);
    }
    rows.push(Row {
        name: "small clone (200 commits, file://)",
        ours: (median(ours), ours_rss),
        git: (median(theirs), git_rss),
        target: 1.0,
    });

    // Clone of the big repository.
    let url = server.url("big");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ours_rss, mut git_rss) = (0, 0);
    for i in 0..clone_runs {
        let a = root.path().join(format!("clone-gitpulse-{i}"));
        let (t, rss) = measure(Command::new(gitpulse).args(["pull", &url]).arg(&a));
        ours.push(t);
        ours_rss = ours_rss.max(rss);
        assert_eq!(
            git_ok(&a, &["rev-list", "--count", "HEAD"]),
            commits.to_string()
        );
        std::fs::remove_dir_all(&a).unwrap();
        let b = root.path().join(format!("clone-git-{i}"));
        let (t, rss) = measure(Command::new("git").args(["clone", "-q", &url]).arg(&b));
        theirs.push(t);
        git_rss = git_rss.max(rss);
        std::fs::remove_dir_all(&b).unwrap();
    }
    let name = "clone (generated repo)";
    rows.push(Row {
        name,
        ours: (median(ours), ours_rss),
        git: (median(theirs), git_rss),
        target: 1.0,
    });

    // The clone reshaped to depth 1: history cut, and what it held freed.
    let (a, b) = (
        root.path().join("reshape-gitpulse"),
        root.path().join("reshape-git"),
    );
    measure(Command::new(gitpulse).args(["pull", &url]).arg(&a));
    measure(Command::new("git").args(["clone", "-q", &url]).arg(&b));
    let before = (
        dir_size(&a.join(".git/objects")),
        dir_size(&b.join(".git/objects")),
    );
    let (ours_t, ours_rss) = measure(
        Command::new(gitpulse)
            .args(["pull", "--depth", "1", &url])
            .arg(&a),
    );
    let mut git_t = Took::default();
    let mut git_rss = 0;
    for args in [
        &["fetch", "-q", "--depth", "1", "origin", "main"][..],
        &[
            "-c",
            "gc.reflogExpireUnreachable=now",
            "-c",
            "gc.reflogExpire=now",
            "gc",
            "-q",
            "--prune=now",
        ][..],
    ] {
        let (took, rss) = measure(Command::new("git").arg("-C").arg(&b).args(args));
        git_t = git_t + took;
        git_rss = git_rss.max(rss);
    }
    let after = (
        dir_size(&a.join(".git/objects")),
        dir_size(&b.join(".git/objects")),
    );
    assert_eq!(git_ok(&a, &["rev-list", "--count", "HEAD"]), "1");
    rows.push(Row {
        name: "reshape the clone to depth 1",
        ours: (ours_t, ours_rss),
        git: (git_t, git_rss),
        target: 1.0,
    });

    println!();
    println!("repository for the clone: {commits} commits, {:.0} MB on disk; server: git http-backend on 127.0.0.1 (the second no-op row answers ref listings in its own process)", dir_size(&big) as f64 / 1e6);
    println!("no-op: median of {noop_runs} runs; small clone: median of 7 alternating runs; clone: median of {clone_runs} runs (medians by wall time, with that run's CPU: user + system, children included); RSS: peak, children included");
    println!();
    println!("| benchmark | gitpulse wall | gitpulse CPU | git wall | git CPU | ratio (wall) | target | gitpulse RSS | git RSS |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for r in &rows {
        let ratio = r.ours.0.wall.as_secs_f64() / r.git.0.wall.as_secs_f64();
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} {} | ≤ {} | {:.1} MB | {:.1} MB |",
            r.name,
            ms(r.ours.0.wall),
            ms(r.ours.0.cpu),
            ms(r.git.0.wall),
            ms(r.git.0.cpu),
            ratio,
            if ratio <= r.target { "✓" } else { "✗" },
            r.target,
            r.ours.1 as f64 / 1024.0,
            r.git.1 as f64 / 1024.0,
        );
    }
    println!();
    println!("| objects on disk, depth 1 | before | after |");
    println!("|---|---:|---:|");
    println!(
        "| gitpulse | {:.1} MB | {:.1} MB |",
        before.0 as f64 / 1e6,
        after.0 as f64 / 1e6
    );
    println!(
        "| git (fetch --depth 1, gc --prune=now) | {:.1} MB | {:.1} MB |",
        before.1 as f64 / 1e6,
        after.1 as f64 / 1e6
    );
}
