//! Any text as a config file: parsing answers with a config or with
//! problems, never a panic, and no problem message repeats a value that
//! looks like a secret.
#![no_main]

use std::path::Path;

use gitpulse::config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let secret = "ghp_CANARY0123456789abcdefCANARY";
    let planted = text.replace("SECRET", secret);
    // The file, then what it needs from the machine (as the daemon starts):
    // neither kind of problem may repeat the secret.
    let (read, needs) = config::parse_needing(Path::new("fuzz.toml"), &planted, &|_| None);
    if let Err(problems) = gitpulse::validate::with_needs_met(read, &needs, &|_| None) {
        let report = problems.to_string();
        assert!(!report.contains(secret), "{planted:?} -> {report}");
    }
});
