//! Giving freed memory back to the system.
//!
//! With glibc's allocator, a large buffer freed once (a decompressed batch, a body near
//! `server.max_body_bytes`) raises the size above which buffers get their own mapping, so
//! later large buffers come from the per-thread arenas, and what is freed there stays
//! in the process. After a burst of large requests the server then holds hundreds of MB
//! it no longer uses. Three settings keep its memory near what it uses:
//! * a fixed mapping threshold, [`MMAP_THRESHOLD`]: a buffer at least that large is
//!   mapped on its own and unmapped when freed. Typical batches (a few hundred KB of
//!   JSON) stay below it and reuse arena memory, which is faster; bombs and bodies near
//!   the limits are above it;
//! * a fixed trim threshold, [`TRIM_THRESHOLD`]: free memory at the top of an arena
//!   beyond it is handed back when a buffer is freed there. `malloc_trim` hands back the
//!   free pages *inside* every arena but the top of the main arena only: the top of a
//!   thread's arena is trimmed by `free` alone, so this threshold bounds what each of
//!   them keeps;
//! * at most [`arena_max`] arenas (glibc's own limit is 8 per core): every arena keeps
//!   up to the trim threshold at its top, and the server's threads are few.
//!
//! A trim of the arenas every [`TRIM_EVERY`] hands back the free pages inside them.
//!
//! Other allocators and C libraries are left as they are.

use std::time::Duration;

/// How often the arenas are trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Buffers at least this large get their own mapping.
pub const MMAP_THRESHOLD: i32 = 4 << 20;

/// Free memory an arena keeps at its top before `free` gives it back. Fixing the mapping
/// threshold also fixes this one, at glibc's 128 KiB, and batch-sized buffers freed at
/// the top would then be handed back and faulted in again on every request; at 4 MiB a
/// batch's buffers stay, and each arena keeps at most this much free at its top.
pub const TRIM_THRESHOLD: i32 = 4 << 20;

/// The most arenas: two per core, at least 2.
pub fn arena_max() -> i32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).clamp(2, 64) as i32
}

/// Set the fixed thresholds and the arena limit. Call once, before the first threads
/// start: glibc fixes its arena limit when it first creates a thread's arena.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, arena_max());
    }
}

/// Hand the arenas' free pages back to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trim every [`TRIM_EVERY`] on a blocking thread until `shutdown`.
pub fn spawn_trimmer(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TRIM_EVERY) => {
                    let _ = tokio::task::spawn_blocking(trim).await;
                }
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
        }
    });
}
