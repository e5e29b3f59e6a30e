//! What one plugin instance may hold of the host's memory.
//!
//! wasmtime's stock `StoreLimits` caps each linear memory on its own and
//! leaves tables unlimited, so a component with several memories, or one
//! table grown to a billion entries, holds far more than the configured cap.
//! [`Allowance`] counts every memory and every table of the store against
//! one byte budget, and allows only as many instances, memories and tables
//! as a component built with the SDK uses (with room to spare). It owns the
//! counting; the caller decides the budget and what a refusal becomes.

use wasmtime::ResourceLimiter;

/// Host bytes one table element costs: a `funcref` slot is a pointer, an
/// `externref` slot a little more; counting 16 keeps either under the cap.
const TABLE_ELEMENT_BYTES: usize = 16;

/// An SDK-built component instantiates its own module plus the canonical
/// ABI shims: a handful of core instances, one or two memories and tables.
const MAX_INSTANCES: usize = 16;
const MAX_MEMORIES: usize = 2;
const MAX_TABLES: usize = 8;

/// Resources (streams, pollables …) one instance may hold at once in the
/// host's resource table; the contract needs none, WASI's stdio a few.
pub const MAX_RESOURCES: usize = 1024;

/// Why a grow was refused: the instance would pass its memory budget.
#[derive(Debug, thiserror::Error)]
#[error("plugin memory limit: growing by {asked} bytes would pass the cap of {cap} bytes (memories and tables together)")]
pub struct OverAllowance {
    /// Bytes the refused grow asked for.
    pub asked: usize,
    /// The cap it would have passed.
    pub cap: usize,
}

/// The store's resource limiter: one byte budget for every memory and
/// table of one instance.
#[derive(Debug)]
pub struct Allowance {
    cap: usize,
    used: usize,
}

impl Allowance {
    /// A budget of `cap` bytes, nothing used yet.
    pub fn new(cap: usize) -> Self {
        Allowance { cap, used: 0 }
    }

    fn grow(&mut self, bytes: usize) -> wasmtime::Result<bool> {
        match self.used.checked_add(bytes) {
            Some(total) if total <= self.cap => {
                self.used = total;
                Ok(true)
            }
            // An error, not `false`: the call traps instead of the plugin
            // seeing a failed grow and carrying on, so the fault is
            // reported as a memory fault.
            _ => Err(OverAllowance {
                asked: bytes,
                cap: self.cap,
            }
            .into()),
        }
    }
}

impl ResourceLimiter for Allowance {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current))
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Config, Engine, Instance, Module, Store};

    fn engine() -> Engine {
        let mut config = Config::new();
        config.wasm_multi_memory(true);
        Engine::new(&config).unwrap()
    }

    /// Instantiates `wat` under an allowance of `cap` bytes and, when it
    /// exports `grow`, calls it.
    fn run(wat: &str, cap: usize) -> Result<(), wasmtime::Error> {
        let engine = engine();
        let module = Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
        let mut store = Store::new(&engine, Allowance::new(cap));
        store.limiter(|a| a);
        let instance = Instance::new(&mut store, &module, &[])?;
        if let Ok(grow) = instance.get_typed_func::<(), i32>(&mut store, "grow") {
            grow.call(&mut store, ())?;
        }
        Ok(())
    }

    fn refused(result: Result<(), wasmtime::Error>) -> bool {
        match result {
            Err(e) => format!("{e:#}").contains("plugin memory limit"),
            Ok(()) => false,
        }
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn a_huge_table_is_refused_at_instantiation() {
        // 100 M funcref slots: about 800 MB of host memory unchecked.
        assert!(refused(run("(module (table 100000000 funcref))", MIB)));
        assert!(run("(module (table 1000 funcref))", MIB).is_ok());
    }

    #[test]
    fn a_table_grown_past_the_cap_traps() {
        let wat = r#"(module (table 1 funcref)
            (func (export "grow") (result i32)
              (table.grow (ref.null func) (i32.const 50000000))))"#;
        assert!(refused(run(wat, MIB)));
    }

    #[test]
    fn memories_and_tables_share_one_budget() {
        // 12 pages (768 KiB) of memory plus 32 Ki table slots (512 KiB):
        // each fits under 1 MiB alone, not together.
        assert!(run("(module (memory 12))", MIB).is_ok());
        assert!(run("(module (table 32768 funcref))", MIB).is_ok());
        assert!(refused(run(
            "(module (memory 12) (table 32768 funcref))",
            MIB
        )));
    }

    #[test]
    fn two_memories_cannot_double_the_cap() {
        // Each memory is 10 pages (640 KiB), under 1 MiB on its own; the
        // stock per-memory cap accepted both.
        assert!(refused(run("(module (memory 10) (memory 10))", MIB)));
        assert!(run("(module (memory 5) (memory 5))", MIB).is_ok());
    }

    #[test]
    fn more_memories_than_a_component_needs_are_refused() {
        let wat = "(module (memory 0) (memory 0) (memory 0))";
        let err = run(wat, MIB).unwrap_err();
        assert!(format!("{err:#}").contains("memory"), "{err:#}");
    }

    #[test]
    fn memory_grown_past_the_cap_traps() {
        let wat = r#"(module (memory 1)
            (func (export "grow") (result i32) (memory.grow (i32.const 100))))"#;
        assert!(refused(run(wat, MIB)));
    }
}
