//! A retry plugin built against a future, incompatible contract (0.2.0).
// Generated bindings of a contract made for this test: nothing to document.
#![allow(missing_docs)]

wit_bindgen::generate!({ path: "wit", world: "retry-policy" });

use exports::gitpulse::policy::retry::Guest;
use gitpulse::policy::types::{AttemptContext, Decision, StopReason};

// Only exported in WebAssembly: natively the crate just has to compile.
#[allow(dead_code)]
struct Future;

impl Guest for Future {
    fn decide(_ctx: AttemptContext) -> Decision {
        Decision::Stop(StopReason::NotRetryable)
    }
}

#[cfg(target_arch = "wasm32")]
export!(Future);
