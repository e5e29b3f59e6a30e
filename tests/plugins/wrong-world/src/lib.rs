//! A valid component that is not a gitpulse policy.
// Generated bindings of a contract made for this test: nothing to document.
#![allow(missing_docs)]

wit_bindgen::generate!({ path: "wit", world: "tool" });

// Only exported in WebAssembly: natively the crate just has to compile.
#[allow(dead_code)]
struct Tool;

impl exports::acme::other::run::Guest for Tool {
    fn go() -> u32 {
        42
    }
}

#[cfg(target_arch = "wasm32")]
export!(Tool);
