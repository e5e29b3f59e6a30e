//! Whatever text surrounds them, a registered secret and a URL's password
//! never come out of redaction, nor do terminal escapes.
#![no_main]

use gitpulse::redact::{self, Secret};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "tok3n_V4lue";

fuzz_target!(|text: &str| {
    let token = Secret::new(TOKEN);
    let message = format!("{text}{TOKEN}{text}");
    let clean = redact::text(&message, &[&token]);
    assert!(!clean.contains(TOKEN), "{message:?} -> {clean:?}");
    assert!(!clean.contains('\u{1b}'), "{message:?} -> {clean:?}");

    // A newline ends a URL in text (and is not part of one).
    let password = format!("PW{}PW", text.replace(['\n', '\r'], ""));
    let url = format!("https://user:{password}@host/r.git");
    let shown = redact::url(&url);
    assert!(!shown.contains(&password), "{url:?} -> {shown:?}");
});
