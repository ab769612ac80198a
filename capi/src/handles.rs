//! The registry of live objects handed to C: every pointer the API returns is recorded with
//! its type, and every pointer it receives is checked against the record before use. A NULL
//! pointer, a pointer of another type, or one already deleted is refused with an error.

use std::collections::HashMap;
use std::ffi::{CStr, c_char};
use std::sync::{LazyLock, Mutex};

use ferrum_core::Error;

/// The type of a live object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `FERRUM_Error`.
    Error,
    /// `FERRUM_ServerOptions`.
    Options,
    /// `FERRUM_Server`.
    Server,
    /// `FERRUM_InferenceRequest`.
    Request,
    /// `FERRUM_InferenceResponse`.
    Response,
    /// `FERRUM_ResponseAllocator`.
    Allocator,
    /// A string returned by the API (`FERRUM_StringDelete`).
    String,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Error => "FERRUM_Error",
            Kind::Options => "FERRUM_ServerOptions",
            Kind::Server => "FERRUM_Server",
            Kind::Request => "FERRUM_InferenceRequest",
            Kind::Response => "FERRUM_InferenceResponse",
            Kind::Allocator => "FERRUM_ResponseAllocator",
            Kind::String => "string",
        }
    }
}

/// The registry's key for an address: its complement, so that the registry does not hold the
/// object's address and a leak checker (valgrind) still reports objects the caller leaked.
fn key<T>(ptr: *const T) -> usize {
    !(ptr as usize)
}

/// Address → type of every live object.
static LIVE: LazyLock<Mutex<HashMap<usize, Kind>>> = LazyLock::new(Default::default);

fn live() -> std::sync::MutexGuard<'static, HashMap<usize, Kind>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Boxes `value`, records it as a live object of `kind`, and returns its address.
pub(crate) fn register<T>(kind: Kind, value: T) -> *mut T {
    let ptr = Box::into_raw(Box::new(value));
    live().insert(key(ptr), kind);
    ptr
}

/// Records an address owned elsewhere (a `CString::into_raw`) as a live object.
pub(crate) fn register_raw(kind: Kind, ptr: *mut c_char) -> *mut c_char {
    live().insert(key(ptr), kind);
    ptr
}

/// Whether `ptr` is a live object of `kind`; an error saying why not otherwise.
pub(crate) fn check<T>(ptr: *const T, kind: Kind) -> Result<(), Error> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{} is NULL", kind.name())));
    }
    match live().get(&key(ptr)) {
        Some(k) if *k == kind => Ok(()),
        Some(other) => Err(Error::invalid(format!(
            "expected a {}, got a {}",
            kind.name(),
            other.name()
        ))),
        None => Err(Error::invalid(format!(
            "{} {ptr:p} is not a live object (never created, or already deleted)",
            kind.name()
        ))),
    }
}

/// The object behind `ptr`, after checking it is a live object of `kind`.
///
/// # Safety
/// The object must not be deleted while the reference is used (the API's callers do not
/// delete an object while another call on it runs).
pub(crate) unsafe fn get<'a, T>(ptr: *const T, kind: Kind) -> Result<&'a T, Error> {
    check(ptr, kind)?;
    // SAFETY: registered addresses come from `Box::into_raw` of a `T` of this kind.
    Ok(unsafe { &*ptr })
}

/// Mutable access to the object behind `ptr`, after checking it.
///
/// # Safety
/// As [`get`], and no other reference to the object may be in use.
pub(crate) unsafe fn get_mut<'a, T>(ptr: *mut T, kind: Kind) -> Result<&'a mut T, Error> {
    check(ptr, kind)?;
    // SAFETY: registered addresses come from `Box::into_raw` of a `T` of this kind.
    Ok(unsafe { &mut *ptr })
}

/// Takes the object behind `ptr` back (it is no longer live), after checking it.
///
/// # Safety
/// `ptr` must have been returned by [`register`] with a `T` of this kind.
pub(crate) unsafe fn take<T>(ptr: *mut T, kind: Kind) -> Result<Box<T>, Error> {
    {
        let mut map = live();
        match map.get(&key(ptr)) {
            Some(k) if *k == kind => {
                map.remove(&key(ptr));
            }
            _ => {
                drop(map);
                check(ptr, kind)?;
                return Err(Error::internal("object registry changed meanwhile"));
            }
        }
    }
    // SAFETY: registered addresses come from `Box::into_raw` of a `T` of this kind.
    Ok(unsafe { Box::from_raw(ptr) })
}

/// Forgets a raw address (a string) if it is a live object of `kind`.
pub(crate) fn forget(ptr: *const c_char, kind: Kind) -> Result<(), Error> {
    check(ptr, kind)?;
    live().remove(&key(ptr));
    Ok(())
}

/// Writes `value` through `out` unless it is NULL.
///
/// # Safety
/// A non-NULL `out` must be valid for a write.
pub(crate) unsafe fn write_out<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: the caller passes a valid pointer.
        unsafe { out.write(value) };
    }
}

/// Writes `value` through `out`, which must not be NULL.
///
/// # Safety
/// A non-NULL `out` must be valid for a write.
pub(crate) unsafe fn write_required<T>(out: *mut T, value: T, what: &str) -> Result<(), Error> {
    if out.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a valid pointer.
    unsafe { out.write(value) };
    Ok(())
}

/// A C string argument as UTF-8, or an error naming it.
///
/// # Safety
/// A non-NULL `s` must point to a NUL-terminated string.
pub(crate) unsafe fn string<'a>(s: *const c_char, what: &str) -> Result<&'a str, Error> {
    if s.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| Error::invalid(format!("{what} is not UTF-8")))
}

/// A raw pointer that may travel to the runtime's threads (a C caller's `userp`).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut std::ffi::c_void);

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut std::ffi::c_void {
        self.0
    }
}

// SAFETY: the C API's contract: user pointers handed to callbacks may be used from any thread.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
