//! Giving freed memory back to the operating system once a model version is gone.
//!
//! glibc's malloc keeps freed memory inside its arenas for reuse rather than returning it to
//! the kernel. After a model version unloads, the blocks its runtime and its queue used lie
//! free in whichever arenas the threads that allocated them used, and stay resident:
//! `malloc_trim` gives back every whole free page inside the arenas' heaps and the free top of
//! the main heap. The backends' native runtimes allocate through the same malloc, so this
//! covers their memory too. (What it cannot reach is the free top of a thread arena's heap:
//! glibc only shrinks that on a `free` that leaves more than the trim threshold there, which
//! it raises as it sees larger blocks, up to 64 MiB. See docs/reliability.md.)

/// Returns the free pages of the malloc arenas to the system (glibc's `malloc_trim(0)`).
/// A no-op where the C library has no such call.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and may be called from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Drops `value` and then gives the memory it held back to the system ([`release_freed`]).
pub fn drop_and_release<T>(value: T) {
    drop(value);
    release_freed();
}

#[cfg(test)]
mod tests {
    #[test]
    fn releasing_after_a_large_free_keeps_the_heap_usable() {
        let block = vec![7u8; 8 << 20];
        super::drop_and_release(block);
        let again = vec![1u8; 8 << 20];
        assert!(again.iter().all(|&b| b == 1));
        super::release_freed();
    }
}
