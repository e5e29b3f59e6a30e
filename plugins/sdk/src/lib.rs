//! Write gitpulse policy plugins in Rust.
//!
//! A plugin is a WebAssembly component (target `wasm32-wasip2`) that
//! implements one or more roles of the `gitpulse:policy@0.1` contract:
//! `retry` (is this failure worth another attempt?), `backoff` (how long to
//! wait) and `notify` (which message, or none). Choose the roles with this
//! crate's features (`retry`, `backoff`, `notify`, or `full` for all three),
//! implement the matching `Guest` traits and call [`export!`]:
//!
//! ```ignore
//! use gitpulse_plugin_sdk::{export, retry::Guest, types::*, helpers};
//!
//! struct Patient;
//! impl Guest for Patient {
//!     fn decide(ctx: AttemptContext) -> Decision {
//!         if helpers::is_permanent(ctx.failure.class) {
//!             return Decision::Stop(StopReason::NotRetryable);
//!         }
//!         let ceiling = helpers::ceiling_ms(2_000, 120_000, ctx.attempt);
//!         Decision::Retry(RetryAfter { delay_ms: helpers::full_jitter(ceiling), timeout_ms: None })
//!     }
//! }
//! export!(Patient);
//! ```
//!
//! Plugins reach the host only through [`host`] (log, settings, clock,
//! random, key-value store). Natively those calls go to the [`testing`]
//! harness, so a policy is unit-tested with plain `cargo test`.
//!
//! Build with `cargo build --release --target wasm32-wasip2`, one plugin per
//! cargo invocation (features of plugins built together would merge).

#[doc(hidden)]
pub mod bindings {
    /// Bindings for one world of the contract; only one is generated, so
    /// the component declares exactly the roles the plugin implements.
    macro_rules! world {
        ($world:literal) => {
            wit_bindgen::generate!({
                path: "../../wit",
                world: $world,
                pub_export_macro: true,
                export_macro_name: "export_policy",
                default_bindings_module: "gitpulse_plugin_sdk::bindings",
                additional_derives: [PartialEq],
            });
        };
    }

    #[cfg(any(
        feature = "full",
        all(feature = "retry", feature = "backoff"),
        all(feature = "retry", feature = "notify"),
        all(feature = "backoff", feature = "notify"),
        not(any(feature = "retry", feature = "backoff", feature = "notify"))
    ))]
    world!("full-policy");

    #[cfg(all(
        feature = "retry",
        not(any(feature = "full", feature = "backoff", feature = "notify"))
    ))]
    world!("retry-policy");

    #[cfg(all(
        feature = "backoff",
        not(any(feature = "full", feature = "retry", feature = "notify"))
    ))]
    world!("backoff-policy");

    #[cfg(all(
        feature = "notify",
        not(any(feature = "full", feature = "retry", feature = "backoff"))
    ))]
    world!("notify-policy");
}

/// The contract's shared types: failure classes, contexts, decisions, events.
pub mod types {
    pub use crate::bindings::gitpulse::policy::types::*;
}

/// The `retry` role.
#[cfg(any(
    feature = "retry",
    feature = "full",
    not(any(feature = "backoff", feature = "notify"))
))]
pub mod retry {
    pub use crate::bindings::exports::gitpulse::policy::retry::Guest;
}

/// The `backoff` role.
#[cfg(any(
    feature = "backoff",
    feature = "full",
    not(any(feature = "retry", feature = "notify"))
))]
pub mod backoff {
    pub use crate::bindings::exports::gitpulse::policy::backoff::Guest;
}

/// The `notify` role.
#[cfg(any(
    feature = "notify",
    feature = "full",
    not(any(feature = "retry", feature = "backoff"))
))]
pub mod notify {
    pub use crate::bindings::exports::gitpulse::policy::notify::Guest;
}

/// Exports `$ty` as the plugin's implementation of its roles. Expands to
/// nothing outside WebAssembly, so the crate also builds (and tests)
/// natively.
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::export_policy!($ty with_types_in $crate::bindings);
    };
}

pub mod helpers;
pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
