//! Giving freed heap memory back to the kernel once startup is done.
//!
//! Loading a bootstrap (descriptor-driven validation, compiling routes,
//! clusters and TLS contexts) allocates and frees tens of MiB; glibc's
//! allocator keeps freed pages mapped until asked to return them, and they
//! would count in the proxy's resident size for its whole life.

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
