//! Keeping the proxy's resident memory to what serving needs.
//!
//! Reading a config (descriptor-driven decoding and validation, compiling
//! routes, clusters and TLS contexts) needs the descriptor pool of Envoy's
//! whole API, about 26 MiB of heap, and allocates and frees tens of MiB more.
//! None of it serves a request. After startup the pool is dropped (a later
//! reading decodes it again, see `legate_api::pool`), and freed heap pages
//! are given back to the kernel, which glibc's allocator otherwise keeps
//! mapped for the process's whole life.

use std::time::Duration;

/// The process's allocator: the system's (glibc's), wrapped to count the
/// bytes in use, which the overload manager's `fixed_heap` monitor reads
/// (Envoy reads tcmalloc's figures). The count is one atomic add or
/// subtract per allocation and free.
#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Heap bytes allocated and not yet freed.
pub fn heap_allocated() -> usize {
    HEAP.allocated()
}

/// How long after startup the pool is dropped: by then the workers have
/// built their listeners.
const AFTER_STARTUP: Duration = Duration::from_millis(300);
/// A pool unused this long is dropped (xDS updates often come in bursts).
const POOL_IDLE: Duration = Duration::from_secs(30);
/// How often the idle pool is looked for.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Runs on the main thread for the process's life: drops the descriptor
/// pool after startup and whenever it has been idle for [`POOL_IDLE`], then
/// returns the freed memory to the kernel.
pub async fn keep_lean() {
    tokio::time::sleep(AFTER_STARTUP).await;
    legate_api::pool::release_if_idle(Duration::ZERO);
    release_free();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if legate_api::pool::release_if_idle(POOL_IDLE) {
            release_free();
        }
    }
}

/// Returns the allocator's free pages to the kernel (glibc `malloc_trim`).
/// Costs a walk of the heap (about a millisecond); called off the hot path.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) takes an integer, touches only the allocator's
    // own state under its own locks, and may be called from any thread at
    // any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
