//! `gitpulse plugin new | check | simulate`.

use crate::*;

pub(crate) fn plugin_new(args: &NewArgs) -> Result<(), Failure> {
    let role = match args.role {
        RoleArg::Retry => authoring::Role::Retry,
        RoleArg::Backoff => authoring::Role::Backoff,
        RoleArg::Notify => authoring::Role::Notify,
        RoleArg::Full => authoring::Role::Full,
    };
    let path = authoring::scaffold(&args.name, &args.dir, role).map_err(usage)?;
    println!("created {}", path.display());
    println!("next:");
    println!("  cd {}", path.display());
    println!("  cargo test                                        # unit tests, natively");
    println!("  cargo build --release --target wasm32-wasip2      # the component");
    println!(
        "  gitpulse plugin check target/wasm32-wasip2/release/{}.wasm",
        args.name.replace('-', "_")
    );
    Ok(())
}

pub(crate) fn load(
    file: &Path,
    opts: &PluginOptions,
    seed: Option<u64>,
) -> Result<Plugin, Failure> {
    let settings = authoring::parse_settings(&opts.config).map_err(usage)?;
    // The one loader, as the daemon, `validate` and the hooks load theirs.
    plugin::Registry::new(opts.cache(), opts.sandbox())
        .get(file, PluginEnv::new(settings, seed))
        .map_err(usage)
}

pub(crate) fn plugin_check(args: &CheckArgs) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let mut plugin = load(&args.file, &args.plugin, Some(1))?;
    let load_time = started.elapsed();
    println!("plugin     {}", plugin.path.display());
    println!("roles      {}", plugin.roles);
    println!(
        "contract   gitpulse:policy@{} (this host accepts {})",
        plugin.contract,
        plugin::ACCEPTED
    );
    println!("size       {:.1} KiB", plugin.size as f64 / 1024.0);
    println!(
        "load       {:.1} ms ({})",
        load_time.as_secs_f64() * 1e3,
        if plugin.cached {
            "compile cache hit"
        } else {
            "compiled"
        }
    );
    let told = Told {
        max_attempts: 5,
        max_delay: Duration::from_secs(60),
    };
    let mut smoke = authoring::smoke(&mut plugin, told);
    for t in &smoke.templates {
        if let Err(e) =
            gitpulse::notify::check_plugin_template(t.kind, t.channel, &t.subject, &t.body, &t.vars)
        {
            smoke.faults.push(format!(
                "notify template for {} on {} (rendered with a sample event): {e}",
                t.kind, t.channel
            ));
        }
    }
    println!("\nsmoke trace: {} calls", smoke.calls);
    for line in &smoke.lines {
        println!("  {line}");
    }
    let mut logs: Vec<(String, usize)> = Vec::new();
    for line in plugin.env().take_logs() {
        let text = format!("log {}: {}", line.level_name(), line.message);
        match logs.iter_mut().find(|(t, _)| *t == text) {
            Some((_, n)) => *n += 1,
            None => logs.push((text, 1)),
        }
    }
    for (text, n) in logs {
        match n {
            1 => println!("  {text}"),
            n => println!("  {text} (×{n})"),
        }
    }
    if smoke.faults.is_empty() {
        println!("\nok: no faults");
        return Ok(());
    }
    println!("\n{} fault(s):", smoke.faults.len());
    for f in smoke.faults.iter().take(20) {
        println!("  {f}");
    }
    Err(Failure::Reported)
}

pub(crate) fn plugin_simulate(args: &SimulateArgs) -> Result<(), Failure> {
    let trace = match (&args.trace, &args.classes) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            authoring::parse_trace(&path.display().to_string(), &text)
        }
        (None, Some(list)) => authoring::classes_trace(list),
        (None, None) => return Err(usage("give --trace FILE or --classes LIST")),
    }
    .map_err(usage)?;
    if args.backoff_base > args.backoff_max {
        return Err(usage("--backoff-base is larger than --backoff-max"));
    }
    let plugin = load(&args.file, &args.plugin, Some(args.seed))?;
    let backoff = Backoff {
        base: args.backoff_base,
        max: args.backoff_max,
    };
    let builtin = Builtin::new(backoff, args.max_attempts, Some(args.seed));
    let told = Told {
        max_attempts: args.max_attempts,
        max_delay: args.backoff_max,
    };
    let repo = RepoRef::new(
        "simulated",
        "https://git.example.com/simulated.git",
        Some("main"),
        Default::default(),
    );
    let (path, roles, env) = (plugin.path.clone(), plugin.roles, plugin.env().clone());
    let mut policy = WasmPolicy::new(plugin, builtin, repo, told);
    let steps = authoring::simulate(&mut policy, &trace, told);
    if args.json {
        for step in &steps {
            println!("{}", serde_json::to_string(step).map_err(failed)?);
        }
    } else {
        println!("{} ({roles}), seed {}\n", path.display(), args.seed);
        print!("{}", authoring::render_timeline(&steps));
    }
    for line in env.take_logs() {
        eprintln!("plugin log {}: {}", line.level_name(), line.message);
    }
    Ok(())
}
