//! Responses (`FERRUM_InferenceResponse`) and the response allocator that lets the caller
//! choose where output bytes are placed.

use std::ffi::{CString, c_char, c_void};

use bytes::Bytes;
use ferrum_core::Error;
use ferrum_core::server::InferResponse;

use crate::error::{FERRUM_Error, c_string, guard, to_c};
use crate::handles::{self, Kind, SendPtr};
use crate::{FERRUM_MEMORY_CPU, FERRUM_MEMORY_CPU_PINNED, FERRUM_MemoryType};

/// Asks the caller for a buffer of `byte_size` bytes for output `tensor_name`: write it to
/// `*buffer` (NULL is allowed for 0 bytes), any pointer of yours to `*buffer_userp`, and where
/// it lives to `*actual_memory_type` / `*actual_memory_type_id` (only CPU memory is supported).
/// Return NULL, or an error (created with `FERRUM_ErrorNew`; the server frees it) to fail the
/// response. Called on a server thread.
pub type FERRUM_ResponseAllocatorAllocFn = Option<
    unsafe extern "C" fn(
        allocator: *mut FERRUM_ResponseAllocator,
        tensor_name: *const c_char,
        byte_size: usize,
        memory_type: FERRUM_MemoryType,
        memory_type_id: i64,
        userp: *mut c_void,
        buffer: *mut *mut c_void,
        buffer_userp: *mut *mut c_void,
        actual_memory_type: *mut FERRUM_MemoryType,
        actual_memory_type_id: *mut i64,
    ) -> *mut FERRUM_Error,
>;

/// Gives back a buffer the alloc function handed out, when its response is deleted. Return
/// NULL or an error (which the server frees and ignores).
pub type FERRUM_ResponseAllocatorReleaseFn = Option<
    unsafe extern "C" fn(
        allocator: *mut FERRUM_ResponseAllocator,
        buffer: *mut c_void,
        buffer_userp: *mut c_void,
        byte_size: usize,
        memory_type: FERRUM_MemoryType,
        memory_type_id: i64,
    ) -> *mut FERRUM_Error,
>;

/// A caller-provided output allocator (Triton's `TRITONSERVER_ResponseAllocator`): outputs
/// are copied into the buffers it hands out instead of staying in the server's memory.
pub struct FERRUM_ResponseAllocator {
    /// Hands out buffers.
    alloc: FERRUM_ResponseAllocatorAllocFn,
    /// Takes them back.
    release: FERRUM_ResponseAllocatorReleaseFn,
}

/// An allocator as a request uses it: its functions, its address and the request's `userp`.
#[derive(Clone, Copy)]
pub(crate) struct Allocation {
    /// The allocator object's address (passed back to its functions).
    allocator: SendPtr,
    /// Alloc function.
    alloc: unsafe extern "C" fn(
        *mut FERRUM_ResponseAllocator,
        *const c_char,
        usize,
        FERRUM_MemoryType,
        i64,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
        *mut FERRUM_MemoryType,
        *mut i64,
    ) -> *mut FERRUM_Error,
    /// Release function.
    release: FERRUM_ResponseAllocatorReleaseFn,
    /// The request's allocator `userp`.
    userp: SendPtr,
}

impl Allocation {
    /// The allocation of a live allocator object.
    ///
    /// # Safety
    /// `allocator` is any pointer; it is checked.
    pub(crate) unsafe fn new(
        allocator: *mut FERRUM_ResponseAllocator,
        userp: *mut c_void,
    ) -> Result<Allocation, Error> {
        // SAFETY: checked against the registry.
        let a = unsafe { handles::get(allocator, Kind::Allocator) }?;
        let alloc = a
            .alloc
            .ok_or_else(|| Error::invalid("the allocator has no alloc function"))?;
        Ok(Allocation {
            allocator: SendPtr(allocator.cast()),
            alloc,
            release: a.release,
            userp: SendPtr(userp),
        })
    }
}

/// Creates a response allocator from its alloc function (required) and release function
/// (may be NULL when buffers need no release); free it with `FERRUM_ResponseAllocatorDelete`
/// (responses that used it keep working).
///
/// # Safety
/// `allocator` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ResponseAllocatorNew(
    allocator: *mut *mut FERRUM_ResponseAllocator,
    alloc_fn: FERRUM_ResponseAllocatorAllocFn,
    release_fn: FERRUM_ResponseAllocatorReleaseFn,
) -> *mut FERRUM_Error {
    guard(|| {
        if allocator.is_null() {
            return Err(Error::invalid("allocator is NULL"));
        }
        if alloc_fn.is_none() {
            return Err(Error::invalid("alloc_fn is NULL"));
        }
        let ptr = handles::register(
            Kind::Allocator,
            FERRUM_ResponseAllocator {
                alloc: alloc_fn,
                release: release_fn,
            },
        );
        // SAFETY: checked non-NULL; the caller passes a valid pointer.
        unsafe { allocator.write(ptr) };
        Ok(())
    })
}

/// Frees a response allocator.
///
/// # Safety
/// `allocator` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ResponseAllocatorDelete(
    allocator: *mut FERRUM_ResponseAllocator,
) -> *mut FERRUM_Error {
    // SAFETY: checked against the registry.
    guard(|| unsafe { handles::take(allocator, Kind::Allocator) }.map(drop))
}

/// A buffer the caller's allocator handed out.
struct Placed {
    /// The allocation that made it.
    by: Allocation,
    /// The buffer.
    buffer: SendPtr,
    /// The caller's pointer for it.
    buffer_userp: SendPtr,
    /// Its size.
    byte_size: usize,
    /// Where it lives.
    memory_type: FERRUM_MemoryType,
    /// Which device.
    memory_type_id: i64,
}

impl Placed {
    fn release(&self) {
        if let Some(release) = self.by.release {
            // SAFETY: the caller's function, with the values its alloc function gave.
            let e = unsafe {
                release(
                    self.by.allocator.0.cast(),
                    self.buffer.0,
                    self.buffer_userp.0,
                    self.byte_size,
                    self.memory_type,
                    self.memory_type_id,
                )
            };
            // SAFETY: an error object from the API, or NULL.
            drop(unsafe { crate::error::from_c(e, "release") });
        }
    }
}

/// One output of a response.
struct Output {
    /// Name.
    name: CString,
    /// Datatype name ("INT32").
    datatype: CString,
    /// Shape.
    shape: Vec<i64>,
    /// The bytes, when the server holds them.
    data: Bytes,
    /// The caller's buffer, when an allocator placed them.
    placed: Option<Placed>,
}

/// An inference response: outputs, or an error. Owned by the caller once handed over; free it
/// with `FERRUM_InferenceResponseDelete`.
pub struct FERRUM_InferenceResponse {
    /// The error that ended the request, if any.
    error: Option<Error>,
    /// The model that answered.
    model: CString,
    /// Its version.
    version: i64,
    /// The request id.
    id: CString,
    /// Outputs.
    outputs: Vec<Output>,
}

impl Drop for FERRUM_InferenceResponse {
    fn drop(&mut self) {
        for output in &self.outputs {
            if let Some(placed) = &output.placed {
                placed.release();
            }
        }
    }
}

/// A response object carrying an error.
pub(crate) fn error_response(e: Error) -> *mut FERRUM_InferenceResponse {
    handles::register(
        Kind::Response,
        FERRUM_InferenceResponse {
            error: Some(e),
            model: CString::default(),
            version: 0,
            id: CString::default(),
            outputs: Vec::new(),
        },
    )
}

/// A response object for a core response, its outputs placed by `allocation` if any (an
/// allocator failure becomes an error response).
pub(crate) fn new_response(
    r: InferResponse,
    allocation: Option<Allocation>,
) -> *mut FERRUM_InferenceResponse {
    let mut response = FERRUM_InferenceResponse {
        error: None,
        model: c_string(&r.model_name),
        version: r.model_version,
        id: c_string(&r.id),
        outputs: Vec::with_capacity(r.outputs.len()),
    };
    for o in r.outputs {
        let mut output = Output {
            name: c_string(&o.name),
            datatype: c_string(&o.datatype.to_string()),
            shape: o.shape,
            data: o.data,
            placed: None,
        };
        if let Some(a) = allocation {
            match place(&a, &output.name, &output.data) {
                Ok(placed) => {
                    output.data = Bytes::new();
                    output.placed = Some(placed);
                }
                Err(e) => {
                    // Dropping the response releases the buffers placed so far.
                    drop(response);
                    return error_response(e);
                }
            }
        }
        response.outputs.push(output);
    }
    handles::register(Kind::Response, response)
}

/// Copies `data` into a buffer from the caller's allocator.
fn place(a: &Allocation, name: &CString, data: &Bytes) -> Result<Placed, Error> {
    let mut buffer: *mut c_void = std::ptr::null_mut();
    let mut buffer_userp: *mut c_void = std::ptr::null_mut();
    let mut memory_type = FERRUM_MEMORY_CPU;
    let mut memory_type_id = 0i64;
    // SAFETY: the caller's function, with valid out-pointers.
    let e = unsafe {
        (a.alloc)(
            a.allocator.0.cast(),
            name.as_ptr(),
            data.len(),
            FERRUM_MEMORY_CPU,
            0,
            a.userp.0,
            &mut buffer,
            &mut buffer_userp,
            &mut memory_type,
            &mut memory_type_id,
        )
    };
    // SAFETY: an error object from the API, or NULL.
    if let Some(e) = unsafe { crate::error::from_c(e, "the response allocator failed") } {
        return Err(e);
    }
    let placed = Placed {
        by: *a,
        buffer: SendPtr(buffer),
        buffer_userp: SendPtr(buffer_userp),
        byte_size: data.len(),
        memory_type,
        memory_type_id,
    };
    if memory_type != FERRUM_MEMORY_CPU && memory_type != FERRUM_MEMORY_CPU_PINNED {
        placed.release();
        return Err(Error::new(
            ferrum_core::ErrorKind::Unsupported,
            format!(
                "output '{}': only CPU memory is supported",
                name.to_string_lossy()
            ),
        ));
    }
    if buffer.is_null() && !data.is_empty() {
        return Err(Error::internal(format!(
            "the response allocator returned no buffer for output '{}'",
            name.to_string_lossy()
        )));
    }
    if !data.is_empty() {
        // SAFETY: the allocator promised `data.len()` writable bytes at `buffer`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buffer.cast::<u8>(), data.len()) };
    }
    Ok(placed)
}

fn with_response(
    response: *mut FERRUM_InferenceResponse,
    f: impl FnOnce(&FERRUM_InferenceResponse) -> Result<(), Error>,
) -> *mut FERRUM_Error {
    // SAFETY: checked against the registry.
    guard(|| f(unsafe { handles::get(response, Kind::Response) }?))
}

/// Writes the response's error into `*error`: NULL when it carries outputs, else a new error
/// object the caller frees with `FERRUM_ErrorDelete` (unlike Triton, where the response owns
/// it). The return value reports a bad argument only.
///
/// # Safety
/// `error` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceResponseError(
    response: *mut FERRUM_InferenceResponse,
    error: *mut *mut FERRUM_Error,
) -> *mut FERRUM_Error {
    with_response(response, |r| {
        let e = r.error.as_ref().map_or(std::ptr::null_mut(), to_c);
        // SAFETY: the caller passes a valid pointer.
        unsafe { handles::write_required(error, e, "error") }
    })
}

/// Writes the answering model's name (valid until the response is deleted) and version;
/// either pointer may be NULL.
///
/// # Safety
/// Non-NULL pointers must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceResponseModel(
    response: *mut FERRUM_InferenceResponse,
    model_name: *mut *const c_char,
    model_version: *mut i64,
) -> *mut FERRUM_Error {
    with_response(response, |r| {
        // SAFETY: the caller passes valid pointers or NULL.
        unsafe {
            handles::write_out(model_name, r.model.as_ptr());
            handles::write_out(model_version, r.version);
        }
        Ok(())
    })
}

/// Writes the request's id (valid until the response is deleted).
///
/// # Safety
/// `id` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceResponseId(
    response: *mut FERRUM_InferenceResponse,
    id: *mut *const c_char,
) -> *mut FERRUM_Error {
    with_response(response, |r| {
        // SAFETY: the caller passes a valid pointer.
        unsafe { handles::write_required(id, r.id.as_ptr(), "id") }
    })
}

/// Writes the number of outputs.
///
/// # Safety
/// `count` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceResponseOutputCount(
    response: *mut FERRUM_InferenceResponse,
    count: *mut u32,
) -> *mut FERRUM_Error {
    with_response(response, |r| {
        // SAFETY: the caller passes a valid pointer.
        unsafe { handles::write_required(count, r.outputs.len() as u32, "count") }
    })
}

/// Describes output `index`: name, datatype name ("INT32"), shape and its dimension count,
/// the bytes (`base`, `byte_size`), where they live, and the allocator's `buffer_userp` (NULL
/// without an allocator). Every pointer written stays valid until the response is deleted;
/// any out-pointer may be NULL.
///
/// # Safety
/// Non-NULL pointers must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceResponseOutput(
    response: *mut FERRUM_InferenceResponse,
    index: u32,
    name: *mut *const c_char,
    datatype: *mut *const c_char,
    shape: *mut *const i64,
    dim_count: *mut u64,
    base: *mut *const c_void,
    byte_size: *mut usize,
    memory_type: *mut FERRUM_MemoryType,
    memory_type_id: *mut i64,
    userp: *mut *mut c_void,
) -> *mut FERRUM_Error {
    with_response(response, |r| {
        let o = r.outputs.get(index as usize).ok_or_else(|| {
            Error::invalid(format!(
                "output index {index} is out of range (the response has {})",
                r.outputs.len()
            ))
        })?;
        let (ptr, size, kind, id, user) = match &o.placed {
            Some(p) => (
                p.buffer.0.cast_const(),
                p.byte_size,
                p.memory_type,
                p.memory_type_id,
                p.buffer_userp.0,
            ),
            None => (
                o.data.as_ptr().cast::<c_void>(),
                o.data.len(),
                FERRUM_MEMORY_CPU,
                0,
                std::ptr::null_mut(),
            ),
        };
        // SAFETY: the caller passes valid pointers or NULL.
        unsafe {
            handles::write_out(name, o.name.as_ptr());
            handles::write_out(datatype, o.datatype.as_ptr());
            handles::write_out(shape, o.shape.as_ptr());
            handles::write_out(dim_count, o.shape.len() as u64);
            handles::write_out(base, ptr);
            handles::write_out(byte_size, size);
            handles::write_out(memory_type, kind);
            handles::write_out(memory_type_id, id);
            handles::write_out(userp, user);
        }
        Ok(())
    })
}

/// Frees a response (and gives its allocator's buffers back through the release function).
///
/// # Safety
/// `response` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceResponseDelete(
    response: *mut FERRUM_InferenceResponse,
) -> *mut FERRUM_Error {
    // SAFETY: checked against the registry.
    guard(|| unsafe { handles::take(response, Kind::Response) }.map(drop))
}
