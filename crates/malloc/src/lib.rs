//! glibc's allocator, tuned so that a ragmesh daemon's memory follows its work.
//!
//! With its defaults, glibc keeps freed memory: it raises its mmap threshold each time a large
//! block is freed, so the next large blocks (the index writer's 1 MB pages, its hash tables)
//! come from per-thread arenas, and an arena only shrinks from its top. An agent that indexed a
//! few thousand documents then sits at about 4x the memory it uses (measured by the
//! `agent_memory` bench: 142 MB of anonymous memory after the writer was released, 31 MB with
//! the settings below).
//!
//! [`tune`] sets, at the start of `main` before other threads exist:
//! - `M_MMAP_THRESHOLD` = 128 KiB (glibc's initial value, now fixed): larger blocks are mapped
//!   on their own and unmapped when freed;
//! - `M_ARENA_MAX` = 2: fewer per-thread arenas to hold fragments (tokio's and tantivy's threads
//!   share them).
//!
//! Each is left to glibc when the operator set its environment variable (`MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_ARENA_MAX`), which glibc reads itself; `RAGMESH_MALLOC_TUNING=off` leaves both to glibc
//! (its defaults, as before this tuning). [`trim`] returns the free pages at the top of
//! the heaps (after a large structure was dropped). On other platforms both do nothing.

/// Bytes from which a block is mapped on its own (and unmapped when freed).
pub const MMAP_THRESHOLD_BYTES: i32 = 128 * 1024;
/// Most malloc arenas.
pub const ARENA_MAX: i32 = 2;

/// What [`tune`] did to each setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// Set to the value above.
    Applied,
    /// The operator's environment variable decides (or `RAGMESH_MALLOC_TUNING=off`).
    FromEnvironment,
    /// glibc refused the value, or this is not glibc.
    NotApplied,
}

/// The outcome of [`tune`], for the daemon's startup log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// `M_MMAP_THRESHOLD`.
    pub mmap_threshold: Setting,
    /// `M_ARENA_MAX`.
    pub arena_max: Setting,
}

/// Environment variable that turns the tuning off when set to `off`.
pub const TUNING_VARIABLE: &str = "RAGMESH_MALLOC_TUNING";

/// Tunes the allocator (see the module docs). Call it first thing in `main`.
pub fn tune() -> Tuning {
    if std::env::var_os(TUNING_VARIABLE).is_some_and(|v| v == "off") {
        return Tuning { mmap_threshold: Setting::FromEnvironment, arena_max: Setting::FromEnvironment };
    }
    Tuning {
        mmap_threshold: set("MALLOC_MMAP_THRESHOLD_", Option::MmapThreshold, MMAP_THRESHOLD_BYTES),
        arena_max: set("MALLOC_ARENA_MAX", Option::ArenaMax, ARENA_MAX),
    }
}

/// Returns the free memory at the top of every heap to the system; whether any was.
pub fn trim() -> bool {
    imp::trim()
}

/// The mallopt options [`tune`] sets.
#[derive(Debug, Clone, Copy)]
enum Option {
    MmapThreshold,
    ArenaMax,
}

fn set(variable: &str, option: Option, value: i32) -> Setting {
    if std::env::var_os(variable).is_some() {
        return Setting::FromEnvironment;
    }
    if imp::mallopt(option, value) { Setting::Applied } else { Setting::NotApplied }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::Option;

    pub(super) fn mallopt(option: Option, value: i32) -> bool {
        let param = match option {
            Option::MmapThreshold => libc::M_MMAP_THRESHOLD,
            Option::ArenaMax => libc::M_ARENA_MAX,
        };
        // SAFETY: mallopt takes two integers and only changes allocator settings; glibc
        // documents it as safe to call at any time (it takes the arena locks itself).
        #[allow(unsafe_code)]
        let applied = unsafe { libc::mallopt(param, value) };
        applied == 1
    }

    pub(super) fn trim() -> bool {
        // SAFETY: malloc_trim takes a size and only releases free memory (under the arena locks).
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    use super::Option;

    pub(super) fn mallopt(_option: Option, _value: i32) -> bool {
        false
    }

    pub(super) fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_applies_unless_the_environment_decides() {
        let tuning = tune();
        let expected = |variable: &str| {
            if std::env::var_os(variable).is_some() || std::env::var_os(TUNING_VARIABLE).is_some_and(|v| v == "off") {
                Setting::FromEnvironment
            } else if cfg!(all(target_os = "linux", target_env = "gnu")) {
                Setting::Applied
            } else {
                Setting::NotApplied
            }
        };
        assert_eq!(tuning.mmap_threshold, expected("MALLOC_MMAP_THRESHOLD_"));
        assert_eq!(tuning.arena_max, expected("MALLOC_ARENA_MAX"));
        // Memory still works, large blocks (mapped on their own) included.
        let large = vec![7u8; 4 << 20];
        assert_eq!(large.iter().map(|b| u64::from(*b)).sum::<u64>(), 7 * (4 << 20));
        drop(large);
        let _ = trim();
    }
}
