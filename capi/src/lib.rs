//! Ferrum's in-process C API (`libferrum.so` / `libferrum.a`, header `ferrum.h`), shaped like
//! Triton's `tritonserver.h` so that a Triton user recognises it: `FERRUM_ServerOptions*`,
//! `FERRUM_Server*`, `FERRUM_InferenceRequest*`, `FERRUM_InferenceResponse*`, allocators and
//! errors as objects. The server runs its own tokio runtime and opens no socket.
//!
//! Rules every entry point keeps:
//! - it returns a `FERRUM_Error*` (NULL on success) that the caller frees with
//!   `FERRUM_ErrorDelete`, except the few accessors documented otherwise;
//! - every object pointer is checked against the registry of live objects before use, so a
//!   NULL pointer, an object of the wrong type or an object already deleted is an error, not
//!   a crash;
//! - no panic crosses the boundary: each entry point runs under `catch_unwind`.
//!
//! See `docs/embedding.md` for the ownership rules and an example.

#![allow(non_camel_case_types, non_snake_case)]

mod error;
mod handles;
mod request;
mod response;
mod server;

pub use error::*;
pub use request::*;
pub use response::*;
pub use server::*;

/// Major version of this C API; a change means incompatible changes.
pub const FERRUM_API_VERSION_MAJOR: u32 = 1;
/// Minor version of this C API; a change means additions only.
pub const FERRUM_API_VERSION_MINOR: u32 = 0;

/// Where a tensor's bytes live (Triton's `TRITONSERVER_MemoryType`).
pub type FERRUM_MemoryType = u32;
/// Ordinary CPU memory.
pub const FERRUM_MEMORY_CPU: FERRUM_MemoryType = 0;
/// Pinned CPU memory (not produced by this version; accepted as CPU on input).
pub const FERRUM_MEMORY_CPU_PINNED: FERRUM_MemoryType = 1;
/// GPU memory (not supported by this version).
pub const FERRUM_MEMORY_GPU: FERRUM_MemoryType = 2;

/// Writes the C API's version into `major` and `minor` (either may be NULL).
///
/// # Safety
/// Non-NULL pointers must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ApiVersion(major: *mut u32, minor: *mut u32) -> *mut FERRUM_Error {
    error::guard(|| {
        // SAFETY: the caller passes valid pointers or NULL.
        unsafe {
            handles::write_out(major, FERRUM_API_VERSION_MAJOR);
            handles::write_out(minor, FERRUM_API_VERSION_MINOR);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::ptr::null_mut;

    use super::*;

    /// The code of an error object, which it frees; `None` for success.
    fn code(e: *mut FERRUM_Error) -> Option<FERRUM_Error_Code> {
        if e.is_null() {
            return None;
        }
        // SAFETY: an error object from the API.
        let code = unsafe { FERRUM_ErrorCode(e) };
        // SAFETY: as above.
        unsafe { FERRUM_ErrorDelete(e) };
        Some(code)
    }

    #[test]
    fn misuse_is_an_error_not_a_crash() {
        let mut options = null_mut();
        // SAFETY: the calls under test check their arguments.
        unsafe {
            assert_eq!(code(FERRUM_ServerOptionsNew(&mut options)), None);
            assert_eq!(
                code(FERRUM_ServerIsReady(null_mut(), null_mut())),
                Some(FERRUM_ERROR_INVALID_ARG)
            );
            // An options object passed as a server is refused by type.
            let mut ready = false;
            assert_eq!(
                code(FERRUM_ServerIsReady(options.cast(), &mut ready)),
                Some(FERRUM_ERROR_INVALID_ARG)
            );
            // No repository: refused before any runtime starts.
            let mut server = null_mut();
            assert_eq!(
                code(FERRUM_ServerNew(&mut server, options)),
                Some(FERRUM_ERROR_INVALID_ARG)
            );
            assert_eq!(code(FERRUM_ServerOptionsDelete(options)), None);
            assert_eq!(
                code(FERRUM_ServerOptionsDelete(options)),
                Some(FERRUM_ERROR_INVALID_ARG)
            );
            // Deleting an error twice, or a NULL one, is harmless.
            let e = FERRUM_ErrorNew(FERRUM_ERROR_NOT_FOUND, c"gone".as_ptr());
            assert_eq!(FERRUM_ErrorCode(e), FERRUM_ERROR_NOT_FOUND);
            FERRUM_ErrorDelete(e);
            FERRUM_ErrorDelete(e);
            FERRUM_ErrorDelete(null_mut());
            assert_eq!(FERRUM_ErrorCode(e), FERRUM_ERROR_INVALID_ARG);
        }
    }

    #[test]
    fn a_panic_becomes_an_internal_error() {
        let e = error::guard(|| panic!("boom"));
        // SAFETY: an error object from the guard.
        let message = unsafe { std::ffi::CStr::from_ptr(FERRUM_ErrorMessage(e)) };
        assert!(message.to_string_lossy().contains("boom"));
        assert_eq!(code(e), Some(FERRUM_ERROR_INTERNAL));
    }
}
