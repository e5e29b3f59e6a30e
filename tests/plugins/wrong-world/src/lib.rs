//! A valid component that is not a gitpulse policy.

wit_bindgen::generate!({ path: "wit", world: "tool" });

struct Tool;

impl exports::acme::other::run::Guest for Tool {
    fn go() -> u32 {
        42
    }
}

export!(Tool);
