//! Any push delivery (headers and body) to any kind of receiver: verifying
//! and reading it answers with a delivery or an error, never a panic.
#![no_main]

use gitpulse::config::HookKind;
use gitpulse::receiver;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<(String, String)>, &[u8])| {
    let (headers, body) = input;
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .take(32)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for kind in [
        HookKind::GitHub,
        HookKind::GitLab,
        HookKind::Gitea,
        HookKind::Bitbucket,
        HookKind::GenericHmac,
    ] {
        let _ = receiver::signed(kind, &pairs);
        let _ = receiver::verify(kind, &pairs, body, "s3cret");
        let _ = receiver::read(kind, &pairs, body);
        let _ = receiver::delivery_id(&pairs);
    }
});
