//! Errors as objects (`FERRUM_Error`), as Triton's `TRITONSERVER_Error`, and the guard every
//! entry point runs under.

use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use ferrum_core::{Error, ErrorKind};

use crate::handles::{self, Kind};

/// An error: a code and a message. Returned by entry points (NULL means success); the caller
/// owns it and frees it with `FERRUM_ErrorDelete`.
pub struct FERRUM_Error {
    /// The code.
    code: FERRUM_Error_Code,
    /// The message, NUL-terminated.
    message: CString,
}

/// The kind of an error (Triton's `TRITONSERVER_Error_Code`).
pub type FERRUM_Error_Code = u32;
/// Unknown failure.
pub const FERRUM_ERROR_UNKNOWN: FERRUM_Error_Code = 0;
/// A bug, or a backend failure.
pub const FERRUM_ERROR_INTERNAL: FERRUM_Error_Code = 1;
/// A named model, version, input or object does not exist.
pub const FERRUM_ERROR_NOT_FOUND: FERRUM_Error_Code = 2;
/// A bad argument: NULL pointer, wrong object type, malformed request.
pub const FERRUM_ERROR_INVALID_ARG: FERRUM_Error_Code = 3;
/// The target exists but cannot serve now.
pub const FERRUM_ERROR_UNAVAILABLE: FERRUM_Error_Code = 4;
/// The operation is not supported.
pub const FERRUM_ERROR_UNSUPPORTED: FERRUM_Error_Code = 5;
/// Something already exists.
pub const FERRUM_ERROR_ALREADY_EXISTS: FERRUM_Error_Code = 6;
/// The request was cancelled.
pub const FERRUM_ERROR_CANCELLED: FERRUM_Error_Code = 7;
/// A limit was exceeded (for example a full queue).
pub const FERRUM_ERROR_RESOURCE_EXHAUSTED: FERRUM_Error_Code = 8;

/// The C code of a core error kind.
pub(crate) fn code_of(kind: ErrorKind) -> FERRUM_Error_Code {
    match kind {
        ErrorKind::InvalidArgument => FERRUM_ERROR_INVALID_ARG,
        ErrorKind::NotFound => FERRUM_ERROR_NOT_FOUND,
        ErrorKind::Unavailable => FERRUM_ERROR_UNAVAILABLE,
        ErrorKind::Unsupported => FERRUM_ERROR_UNSUPPORTED,
        ErrorKind::AlreadyExists => FERRUM_ERROR_ALREADY_EXISTS,
        ErrorKind::ResourceExhausted => FERRUM_ERROR_RESOURCE_EXHAUSTED,
        ErrorKind::Cancelled => FERRUM_ERROR_CANCELLED,
        ErrorKind::Internal => FERRUM_ERROR_INTERNAL,
    }
}

/// A C string of `s`, with any NUL byte replaced.
pub(crate) fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

fn new_error(code: FERRUM_Error_Code, message: &str) -> *mut FERRUM_Error {
    handles::register(
        Kind::Error,
        FERRUM_Error {
            code,
            message: c_string(message),
        },
    )
}

/// A new error object for a core error.
pub(crate) fn to_c(e: &Error) -> *mut FERRUM_Error {
    new_error(code_of(e.kind), &e.message)
}

/// A core error for the error object a C callback returned, which it frees.
///
/// # Safety
/// `e` is NULL or a pointer the callback got from this API.
pub(crate) unsafe fn from_c(e: *mut FERRUM_Error, what: &str) -> Option<Error> {
    if e.is_null() {
        return None;
    }
    // SAFETY: checked against the registry.
    match unsafe { handles::take(e, Kind::Error) } {
        Ok(err) => Some(Error::internal(format!(
            "{what}: {}",
            err.message.to_string_lossy()
        ))),
        Err(_) => Some(Error::internal(format!(
            "{what} returned something that is not a FERRUM_Error"
        ))),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs an entry point's body: its error (or a caught panic) becomes an error object.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Error>) -> *mut FERRUM_Error {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(e)) => to_c(&e),
        Err(payload) => {
            let message = format!("internal error (panic): {}", panic_message(&*payload));
            // Building the error object itself must not unwind either.
            catch_unwind(|| new_error(FERRUM_ERROR_INTERNAL, &message))
                .unwrap_or(std::ptr::null_mut())
        }
    }
}

/// Runs an accessor's body, with `fallback` where it fails or panics.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> Option<T>) -> T {
    catch_unwind(AssertUnwindSafe(body))
        .ok()
        .flatten()
        .unwrap_or(fallback)
}

/// Creates an error object with this code and message (for callbacks that must return one).
/// Returns NULL if `message` is NULL or not UTF-8.
///
/// # Safety
/// A non-NULL `message` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ErrorNew(
    code: FERRUM_Error_Code,
    message: *const c_char,
) -> *mut FERRUM_Error {
    guard_value(std::ptr::null_mut(), || {
        // SAFETY: the caller passes a NUL-terminated string.
        let message = unsafe { handles::string(message, "message") }.ok()?;
        Some(new_error(code, message))
    })
}

/// The error's code; `FERRUM_ERROR_INVALID_ARG` for something that is not a live error.
///
/// # Safety
/// `error` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ErrorCode(error: *const FERRUM_Error) -> FERRUM_Error_Code {
    guard_value(FERRUM_ERROR_INVALID_ARG, || {
        // SAFETY: checked against the registry.
        Some(unsafe { handles::get(error, Kind::Error) }.ok()?.code)
    })
}

/// The error code's name ("NOT_FOUND"), a static string.
///
/// # Safety
/// `error` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ErrorCodeString(error: *const FERRUM_Error) -> *const c_char {
    // SAFETY: the pointer is checked there.
    let name: &'static [u8] = match unsafe { FERRUM_ErrorCode(error) } {
        FERRUM_ERROR_INTERNAL => b"INTERNAL\0",
        FERRUM_ERROR_NOT_FOUND => b"NOT_FOUND\0",
        FERRUM_ERROR_INVALID_ARG => b"INVALID_ARG\0",
        FERRUM_ERROR_UNAVAILABLE => b"UNAVAILABLE\0",
        FERRUM_ERROR_UNSUPPORTED => b"UNSUPPORTED\0",
        FERRUM_ERROR_ALREADY_EXISTS => b"ALREADY_EXISTS\0",
        FERRUM_ERROR_CANCELLED => b"CANCELLED\0",
        FERRUM_ERROR_RESOURCE_EXHAUSTED => b"RESOURCE_EXHAUSTED\0",
        _ => b"UNKNOWN\0",
    };
    name.as_ptr().cast()
}

/// The error's message, valid until the error is deleted; a static text for something that
/// is not a live error.
///
/// # Safety
/// `error` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ErrorMessage(error: *const FERRUM_Error) -> *const c_char {
    const NOT_AN_ERROR: &[u8] = b"(not a live FERRUM_Error)\0";
    guard_value(NOT_AN_ERROR.as_ptr().cast(), || {
        // SAFETY: checked against the registry.
        Some(
            unsafe { handles::get(error, Kind::Error) }
                .ok()?
                .message
                .as_ptr(),
        )
    })
}

/// Frees an error. NULL is ignored; deleting an error twice is detected and ignored.
///
/// # Safety
/// `error` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ErrorDelete(error: *mut FERRUM_Error) {
    guard_value((), || {
        if !error.is_null() {
            // SAFETY: checked against the registry.
            drop(unsafe { handles::take(error, Kind::Error) });
        }
        Some(())
    })
}

/// Frees a string the API returned (metadata, config, statistics JSON). NULL is ignored.
///
/// # Safety
/// `s` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_StringDelete(s: *mut c_char) -> *mut FERRUM_Error {
    guard(|| {
        if s.is_null() {
            return Ok(());
        }
        handles::forget(s, Kind::String)?;
        // SAFETY: registered strings come from `CString::into_raw`.
        drop(unsafe { CString::from_raw(s) });
        Ok(())
    })
}

/// A string handed to C, freed with `FERRUM_StringDelete`.
pub(crate) fn owned_string(s: &str) -> *mut c_char {
    handles::register_raw(Kind::String, c_string(s).into_raw())
}
