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
/// How often parked connections' freed buffers are looked for.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Parked HTTP/1 connections (16 KiB of buffers each) that make a second's
/// freed heap worth returning to the kernel.
const TRIM_AFTER_PARKS: usize = 64;

/// Runs on the main thread for the process's life: drops the descriptor
/// pool after startup and whenever it has been idle for [`POOL_IDLE`], then
/// returns the freed memory to the kernel; returns it too after idle
/// connections gave their buffers back (`listener::park`).
pub async fn keep_lean() {
    tokio::time::sleep(AFTER_STARTUP).await;
    legate_api::pool::release_if_idle(Duration::ZERO);
    release_free();
    release_code_pages();
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pool_checked = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if pool_checked.elapsed() >= CHECK_EVERY {
            pool_checked = tokio::time::Instant::now();
            if legate_api::pool::release_if_idle(POOL_IDLE) {
                release_free();
                release_code_pages();
                continue;
            }
        }
        if crate::listener::park::take_parked() >= TRIM_AFTER_PARKS {
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

/// Takes the pages of code and read-only data that reading the config
/// touched out of the process's resident set. Startup runs most of the
/// binary once (decoding and validating Envoy's whole API, compiling every
/// kind of resource) and never again; its pages would otherwise stay
/// mapped, and counted as the proxy's memory, for the process's life. The
/// pages stay in the page cache: what serving runs is mapped again on its
/// first use, by a minor fault.
///
/// Only read-only, file-backed mappings none of whose pages was ever
/// written (no `Anonymous` pages in `/proc/self/smaps`) are given back, so
/// what is read again is what was there: the kernel does the same to them
/// under memory pressure. Relocated read-only data (RELRO) has written pages
/// and is left alone.
pub fn release_code_pages() {
    #[cfg(target_os = "linux")]
    if let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") {
        for (start, end) in clean_read_only_mappings(&smaps) {
            // SAFETY: the range is a whole mapping of a file, mapped without
            // write permission and never written (no anonymous pages), so
            // MADV_DONTNEED only drops its page-table entries: a later
            // access faults in the same bytes from the file, as after the
            // kernel reclaimed them. No Rust object is moved or changed.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// The address ranges of the file-backed mappings in `smaps` that are
/// neither writable nor hold anonymous (copied-on-write) pages.
fn clean_read_only_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read when it qualifies so far, and whether its
    // `Anonymous: 0 kB` line was seen (a mapping without one is kept).
    let mut current: Option<((usize, usize), bool)> = None;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            match current.as_mut() {
                Some((_, clean)) if kb.trim() == "0 kB" => *clean = true,
                _ => current = None,
            }
            continue;
        }
        // A mapping's header line: address range, perms, offset, device,
        // inode, path. Other lines are `Key: value`.
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        if perms.len() != 4 {
            continue;
        }
        if let Some((done, true)) = current.take() {
            out.push(done);
        }
        let path = fields.nth(3);
        let read_only = perms.starts_with('r') && !perms.contains('w') && perms.ends_with('p');
        if read_only && path.is_some_and(|p| p.starts_with('/')) && end > start {
            current = Some(((start, end), false));
        }
    }
    if let Some((done, true)) = current {
        out.push(done);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0400000 r--p 00000000 08:01 1234 /usr/bin/legate
Size:               4096 kB
Anonymous:             0 kB
55d0c0400000-55d0c1000000 r-xp 00400000 08:01 1234 /usr/bin/legate
Size:              12288 kB
Anonymous:             0 kB
55d0c1000000-55d0c1100000 r--p 01000000 08:01 1234 /usr/bin/legate
Size:               1024 kB
Anonymous:           512 kB
55d0c1100000-55d0c1200000 rw-p 01100000 08:01 1234 /usr/bin/legate
Anonymous:             8 kB
55d0c1200000-55d0c1300000 rw-p 00000000 00:00 0 [heap]
Anonymous:           900 kB
7f0000000000-7f0000001000 r--p 00000000 00:00 0 [vvar]
Anonymous:             0 kB
7f0000001000-7f0000002000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7f0000002000-7f0000003000 r--s 00000000 08:01 99 /dev/shm/x
Anonymous:             0 kB
7f0000003000-7f0000004000 r-xp 00000000 08:01 77 /lib/libc.so.6
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        assert_eq!(
            clean_read_only_mappings(SMAPS),
            vec![(0x55d0c0000000, 0x55d0c0400000), (0x55d0c0400000, 0x55d0c1000000), (0x7f0000003000, 0x7f0000004000),]
        );
    }

    #[test]
    fn a_mapping_without_its_anonymous_line_is_kept() {
        let smaps = "55d0c0000000-55d0c0400000 r--p 00000000 08:01 1234 /usr/bin/legate\nSize: 4 kB\n";
        assert!(clean_read_only_mappings(smaps).is_empty());
    }

    #[test]
    fn released_code_still_runs() {
        let before = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        assert!(!clean_read_only_mappings(&before).is_empty(), "the test binary's own code is found");
        release_code_pages();
        // Code and constants read after the release are the same bytes.
        let table: &[u32] = &[0xbeef, 0xcafe];
        assert_eq!(format!("{:x}{:x}", table[0], table[1]), "beefcafe");
    }
}
