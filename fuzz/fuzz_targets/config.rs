//! Any text as a config file: parsing answers with a config or with
//! problems, never a panic, and no problem message repeats a value that
//! looks like a secret.
#![no_main]

use std::path::Path;

use gitpulse::config::{self, Scope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let secret = "ghp_CANARY0123456789abcdefCANARY";
    let planted = text.replace("SECRET", secret);
    if let Err(problems) = config::parse(
        Path::new("fuzz.toml"),
        &planted,
        &|_| None,
        Scope::Structure,
    ) {
        let report = problems.to_string();
        assert!(!report.contains(secret), "{planted:?} -> {report}");
    }
});
