//! Any template and any plugin variables: rendering ends within its bounds
//! (iterations, nesting, output, time) with a message or an error, never a
//! panic, a hang or an unbounded allocation.
#![no_main]

use gitpulse::events::EventKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, Vec<(String, String)>)| {
    let (subject, body, vars) = input;
    let vars: Vec<(String, String)> = vars.into_iter().take(64).collect();
    for channel in ["log", "webhook", "email"] {
        let _ = gitpulse::notify::check_plugin_template(
            EventKind::Changed,
            channel,
            subject,
            body,
            &vars,
        );
    }
});
