//! A plugin that misbehaves on purpose, as its `mode` setting says:
//! `loop` (never returns), `bomb` (allocates without end), `trap` (panics),
//! `years` (asks to wait ten years), `huge-reason` (a 1 MB stop reason),
//! `huge-template` (a 1 MB template), `text-template` (a body that is
//! not JSON, so wrong for webhooks), `log` (logs a warning and behaves),
//! `snoop` (tries files, environment and network, and logs what it got),
//! `sleep` (sleeps three seconds, and logs how long that really took),
//! `budget` (logs the retry budget it is told, then behaves),
//! anything else behaves like the standard policy.

use gitpulse_plugin_sdk::types::*;
use gitpulse_plugin_sdk::{backoff, export, helpers, host, notify, retry};

/// Misbehaves on purpose, as its `mode` setting says (the host must stay safe).
pub struct Misbehave;

fn mode() -> String {
    host::config_get("mode").unwrap_or_default()
}

fn misbehave() {
    match mode().as_str() {
        "loop" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(3));
            }
        }
        "bomb" => {
            // Reserve without writing: the memory cap, not the CPU budget,
            // must be what stops it, however slow the machine.
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(Vec::with_capacity(4 << 20));
                std::hint::black_box(&hoard);
            }
        }
        // Host calls cost the host time that fuel does not count; every
        // 100,000 of them are logged (a sound host stops it long before).
        "host-loop" => {
            let mut n: u64 = 0;
            loop {
                std::hint::black_box(host::random());
                n += 1;
                if n.is_multiple_of(100_000) {
                    host::log(host::Level::Warn, &format!("misbehave: {n} host calls"));
                }
            }
        }
        "trap" => panic!("misbehave: trap on purpose"),
        "log" => host::log(host::Level::Warn, "misbehave: a warning from the plugin"),
        "snoop" => snoop(),
        "sleep" => {
            let started = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_secs(3));
            host::log(
                host::Level::Warn,
                &format!("misbehave: slept {} ms", started.elapsed().as_millis()),
            );
        }
        _ => {}
    }
}

/// Reports what the sandbox let through; a sound host lets nothing through.
fn snoop() {
    let file = match std::fs::read_to_string("/etc/hostname") {
        Ok(text) => format!("READ {} bytes", text.len()),
        Err(e) => format!("denied ({e})"),
    };
    let env = match std::env::vars().next() {
        Some((k, _)) => format!("VISIBLE {k}"),
        None => "empty".to_string(),
    };
    let net = match std::net::TcpStream::connect("127.0.0.1:1") {
        Ok(_) => "CONNECTED".to_string(),
        Err(e) => format!("denied ({e})"),
    };
    host::log(
        host::Level::Warn,
        &format!("snoop: file {file}; env {env}; net {net}"),
    );
}

impl retry::Guest for Misbehave {
    fn decide(ctx: AttemptContext) -> Decision {
        misbehave();
        if mode() == "budget" {
            host::log(
                host::Level::Warn,
                &format!(
                    "misbehave: budget {}/{}",
                    ctx.budget.remaining, ctx.budget.capacity
                ),
            );
        }
        match mode().as_str() {
            "years" => Decision::Retry(RetryAfter {
                delay_ms: 10 * 365 * 86_400_000,
                timeout_ms: None,
            }),
            "huge-reason" => Decision::Stop(StopReason::Policy("x".repeat(1 << 20))),
            _ => helpers::standard_decide(&ctx, 1000, ctx.max_delay_ms),
        }
    }
}

impl backoff::Guest for Misbehave {
    fn delay_ms(ctx: AttemptContext) -> u64 {
        misbehave();
        match mode().as_str() {
            "years" => 10 * 365 * 86_400_000,
            _ => helpers::full_jitter(helpers::ceiling_ms(1000, ctx.max_delay_ms, ctx.attempt)),
        }
    }
}

impl notify::Guest for Misbehave {
    fn choose(_event: Event, _channel: Channel) -> NotifyChoice {
        misbehave();
        match mode().as_str() {
            "huge-template" => NotifyChoice::Send(Message {
                template: Some(Template {
                    subject: "s".into(),
                    body: "b".repeat(1 << 20),
                }),
                vars: vec![],
            }),
            // Eight nested loops over the repository's five fields: 390,625
            // iterations.
            "loop-template" => NotifyChoice::Send(Message {
                template: Some(Template {
                    subject: "s".into(),
                    body: "{{#each @root.repo}}".repeat(8) + "x" + &"{{/each}}".repeat(8),
                }),
                vars: vec![],
            }),
            // Thousands of variables, each looped over all of them.
            "vars-bomb" => NotifyChoice::Send(Message {
                template: Some(Template {
                    subject: "s".into(),
                    body: "{{#each vars}}{{#each ../vars}}{{/each}}{{/each}}".into(),
                }),
                vars: (0..1000)
                    .map(|i| (format!("v{i}"), "x".repeat(16)))
                    .collect(),
            }),
            "text-template" => NotifyChoice::Send(Message {
                template: Some(Template {
                    subject: "{{repo.name}}".into(),
                    body: "Pulled {{repo.name}}".into(),
                }),
                vars: vec![],
            }),
            _ => NotifyChoice::Send(Message {
                template: None,
                vars: vec![],
            }),
        }
    }
}

export!(Misbehave);
