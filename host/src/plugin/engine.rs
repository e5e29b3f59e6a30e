//! The one WebAssembly engine of the process, the wall-clock backstop
//! that ticks its epoch while plugin calls run, and the one linker every
//! plugin is instantiated with (WASI without network, pollables that never
//! block, the host interface of the contract).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::state::PluginState;
use super::v0_1;

/// Granularity of the wall-clock backstop.
pub(super) const TICK: Duration = Duration::from_millis(1);

pub(super) fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true);
        // Only fails for contradictory settings, which these are not.
        Engine::new(&config).unwrap_or_else(|e| panic!("wasmtime engine: {e}"))
    })
}

/// The wall-clock backstop's clock: it ticks the engine's epoch every
/// [`TICK`] while plugin calls run, and parks when none has run for
/// [`LINGER`], so an idle daemon with plugins loaded wakes nobody (a
/// ticker running forever costs a thousand wake-ups a second). Lingering
/// keeps a burst of calls from paying a thread wake-up (a futex syscall,
/// more than the call itself) each.
pub(super) struct Ticker {
    /// Calls running now. Counted without the lock: a call pays two atomic
    /// operations, and the lock only when the clock is parked.
    active: AtomicUsize,
    /// The clock waits for a call to wake it (set and cleared under `parked_lock`).
    parked: AtomicBool,
    parked_lock: Mutex<()>,
    wake: std::sync::Condvar,
}

/// How long the clock keeps ticking after the last call.
const LINGER: Duration = Duration::from_millis(50);

impl Ticker {
    fn get() -> &'static Ticker {
        static TICKER: OnceLock<Ticker> = OnceLock::new();
        TICKER.get_or_init(|| {
            let spawned = std::thread::Builder::new()
                .name("gitpulse-epoch".into())
                .spawn(|| {
                    let ticker = Ticker::get();
                    let mut busy = std::time::Instant::now();
                    loop {
                        if ticker.active.load(Ordering::SeqCst) > 0 {
                            busy = std::time::Instant::now();
                        } else if busy.elapsed() >= LINGER {
                            ticker.park();
                            busy = std::time::Instant::now();
                        }
                        engine().increment_epoch();
                        std::thread::sleep(TICK);
                    }
                });
            if let Err(e) = spawned {
                // Fuel still bounds every call; only the backstop is lost.
                tracing::warn!("plugin wall-clock backstop unavailable: {e}");
            }
            Ticker {
                active: AtomicUsize::new(0),
                parked: AtomicBool::new(false),
                parked_lock: Mutex::new(()),
                wake: std::sync::Condvar::new(),
            }
        })
    }

    /// Waits until a call runs. `parked` is raised before `active` is read
    /// (both sequentially consistent), so a call that starts meanwhile
    /// either is seen here or sees `parked` and wakes the clock; the lock
    /// keeps its wake-up from falling between the check and the wait.
    fn park(&self) {
        let mut guard = self.parked_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.parked.store(true, Ordering::SeqCst);
        while self.active.load(Ordering::SeqCst) == 0 {
            guard = self.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Keeps the clock ticking until the guard is dropped; wakes it only
    /// when it is parked.
    pub(super) fn running() -> Running {
        let ticker = Ticker::get();
        ticker.active.fetch_add(1, Ordering::SeqCst);
        if ticker.parked.load(Ordering::SeqCst) {
            let _guard = ticker.parked_lock.lock().unwrap_or_else(|p| p.into_inner());
            ticker.wake.notify_one();
        }
        Running(ticker)
    }
}

/// A plugin call in progress (see [`Ticker`]).
pub(super) struct Running(&'static Ticker);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) fn linker() -> Result<&'static Linker<PluginState>, String> {
    static LINKER: OnceLock<Result<Linker<PluginState>, String>> = OnceLock::new();
    LINKER
        .get_or_init(|| {
            let mut linker = Linker::new(engine());
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| e.to_string())?;
            never_block(&mut linker).map_err(|e| e.to_string())?;
            v0_1::FullPolicy::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                .map_err(|e| e.to_string())?;
            Ok(linker)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Makes every WASI pollable ready at once. A plugin that sleeps
/// (`std::thread::sleep` is a monotonic-clock pollable it blocks on) or
/// waits on anything would otherwise block inside a host call, where
/// neither fuel nor the epoch deadline reaches: one such plugin could stall
/// `plugin check` for minutes or the daemon for good. Now a wait returns at
/// once and the plugin's own budget bounds whatever it does instead.
/// (`now-ms` is the contract's clock; plugins have no reason to wait.)
fn never_block(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    linker.allow_shadowing(true);
    let mut poll = linker.instance("wasi:io/poll@0.2.12")?;
    poll.func_wrap(
        "[method]pollable.block",
        |_, (_,): (Resource<DynPollable>,)| Ok(()),
    )?;
    poll.func_wrap(
        "[method]pollable.ready",
        |_, (_,): (Resource<DynPollable>,)| Ok((true,)),
    )?;
    poll.func_wrap("poll", |_, (list,): (Vec<Resource<DynPollable>>,)| {
        Ok(((0..list.len() as u32).collect::<Vec<u32>>(),))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}
