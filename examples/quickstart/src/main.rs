//! The gitpulse quickstart: everything local, nothing to configure.
//!
//! Creates an upstream repository, serves it over smart HTTP (the real
//! `git http-backend`) behind a proxy that answers 503 once, and runs the
//! same pull `gitpulse pull` runs: a clone that is retried, an update that
//! picks up new commits, and a no-op. Pass a directory to keep the files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gitpulse::cli::{Cli, Command};
use gitpulse::outcome::PullReport;
use gitpulse::{pull, report};
use gitpulse_testkit::{Fault, FaultProxy, GitHttpServer, Upstream};

fn main() -> anyhow::Result<()> {
    let keep = std::env::args().nth(1).map(PathBuf::from);
    let temp = tempfile::tempdir().context("creating a scratch directory")?;
    let root = match &keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => temp.path().to_path_buf(),
    };

    let mut upstream = Upstream::new(&root, "demo");
    upstream.commit("add the first feature");
    let server = GitHttpServer::start(&root);
    let proxy = FaultProxy::start(server.addr());
    let url = proxy.url("demo");
    let checkout = root.join("checkout");

    println!("gitpulse quickstart");
    println!(
        "  upstream   {} (served by git http-backend)",
        upstream.bare.display()
    );
    println!("  remote     {url} (a proxy that will answer 503 once)");
    println!("  checkout   {}\n", checkout.display());

    proxy.push(Fault::Status(503));
    step(
        1,
        "first pull: the server fails once, gitpulse classifies it and retries",
    );
    run(&url, &checkout)?;

    upstream.commit("fix a bug");
    upstream.commit("add a second feature");
    step(2, "two commits land upstream; the next pull fast-forwards");
    run(&url, &checkout)?;

    step(3, "nothing new: one request, no download");
    let last = run(&url, &checkout)?;

    println!("\nThe same pull as a CI step prints one JSON object (`--json`):");
    println!("{}", serde_json::to_string_pretty(&last)?);
    println!("\nNext: `cargo run -p gitpulse -- pull --help` lists every option;");
    println!("`gitpulse pull https://github.com/rust-lang/log.git ./log` pulls a real remote.");
    if keep.is_some() {
        println!("Files kept in {}", root.display());
    }
    Ok(())
}

fn step(n: u32, text: &str) {
    println!("── step {n}: {text}");
}

fn run(url: &str, dir: &std::path::Path) -> anyhow::Result<PullReport> {
    let args = [
        "gitpulse",
        "pull",
        url,
        &dir.display().to_string(),
        "--backoff-base",
        "500ms",
    ]
    .map(String::from);
    let Command::Pull(args) = <Cli as clap::Parser>::parse_from(args).command else {
        anyhow::bail!("not a pull command");
    };
    let (options, mut policy) = args.options()?;
    let mut terminal = report::Terminal::new(true);
    let result = pull::pull(&options, &mut policy, &mut terminal, Arc::default())?;
    println!("{}", report::summary(&result));
    anyhow::ensure!(result.outcome.is_success(), "the quickstart pull failed");
    std::thread::sleep(Duration::from_millis(200));
    Ok(result)
}
