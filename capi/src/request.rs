//! Inference requests (`FERRUM_InferenceRequest`) and running them: synchronously, or
//! asynchronously with a callback per response.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferrum_backend_api::{DataType, ParamValue, Parameter};
use ferrum_core::Error;
use ferrum_core::server::{InferRequest, InputData, InputTensor, LentBytes};

use crate::error::{FERRUM_Error, guard};
use crate::handles::{self, Kind, SendPtr};
use crate::response::{
    Allocation, FERRUM_InferenceResponse, FERRUM_ResponseAllocator, error_response, new_response,
};
use crate::server::FERRUM_Server;
use crate::{FERRUM_MEMORY_CPU, FERRUM_MEMORY_CPU_PINNED, FERRUM_MemoryType};

/// Flag of the request release callback: the server is done with the whole request.
pub const FERRUM_REQUEST_RELEASE_ALL: u32 = 1;
/// Flag of the response callback: this is the request's last call.
pub const FERRUM_RESPONSE_COMPLETE_FINAL: u32 = 1;

/// Called once the server no longer needs the request object (its inputs were taken): the
/// caller may then delete or reuse it. Called on a server thread.
pub type FERRUM_InferenceRequestReleaseFn = Option<
    unsafe extern "C" fn(request: *mut FERRUM_InferenceRequest, flags: u32, userp: *mut c_void),
>;

/// Called for each response of an asynchronous inference, on a server thread. `response` is
/// owned by the callee (free it with `FERRUM_InferenceResponseDelete`) and may be NULL on the
/// last call, whose `flags` has `FERRUM_RESPONSE_COMPLETE_FINAL`.
pub type FERRUM_InferenceResponseCompleteFn = Option<
    unsafe extern "C" fn(response: *mut FERRUM_InferenceResponse, flags: u32, userp: *mut c_void),
>;

/// A piece of an input's data.
enum Chunk {
    /// Bytes copied from the caller.
    Copied(Bytes),
    /// The caller's bytes at (address, length), lent until the release callback.
    Borrowed(usize, usize),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Copied(b) => b.len(),
            Chunk::Borrowed(_, len) => *len,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Copied(b) => b,
            Chunk::Borrowed(_, 0) => &[],
            // SAFETY: the caller lends `len` readable bytes until the release callback.
            Chunk::Borrowed(ptr, len) => unsafe {
                std::slice::from_raw_parts(*ptr as *const u8, *len)
            },
        }
    }
}

/// A release callback with its arguments.
type Release = (
    unsafe extern "C" fn(*mut FERRUM_InferenceRequest, u32, *mut c_void),
    SendPtr,
);

/// Calls the request's release callback when the last reference is dropped: the inference's
/// own, and those of borrowed input bytes the core still holds. Disarmed, it calls nothing.
struct ReleaseGuard {
    /// The request object's address (passed to the callback).
    request: SendPtr,
    /// The callback.
    release: Option<Release>,
    /// Whether dropping calls it.
    armed: std::sync::atomic::AtomicBool,
}

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            released(self.release, self.request);
        }
    }
}

/// An input being assembled.
struct Input {
    /// Name.
    name: String,
    /// Element type.
    datatype: DataType,
    /// Shape.
    shape: Vec<i64>,
    /// Appended chunks.
    chunks: Vec<Chunk>,
}

/// An inference request being assembled; free it with `FERRUM_InferenceRequestDelete`. It
/// may be reused for further inferences once released.
pub struct FERRUM_InferenceRequest {
    /// Target model.
    model: String,
    /// Target version (none: the server's choice).
    version: Option<i64>,
    /// Request id.
    id: String,
    /// Inputs.
    inputs: Vec<Input>,
    /// Requested outputs (none: all).
    outputs: Vec<String>,
    /// Parameters.
    parameters: Vec<Parameter>,
    /// Release callback and its `userp`.
    release: Option<Release>,
    /// Response callback and its `userp`.
    complete: Option<(
        unsafe extern "C" fn(*mut FERRUM_InferenceResponse, u32, *mut c_void),
        SendPtr,
    )>,
    /// Output allocator.
    allocation: Option<Allocation>,
}

impl FERRUM_InferenceRequest {
    /// The core request this describes. An input made of one borrowed chunk is lent to the
    /// core (no copy) and holds `guard` until the core drops it; other inputs are shared or
    /// joined into one buffer.
    fn to_core(&self, guard: &Arc<ReleaseGuard>) -> Result<InferRequest, Error> {
        let borrows = self
            .inputs
            .iter()
            .any(|i| i.chunks.iter().any(|c| matches!(c, Chunk::Borrowed(..))));
        if borrows && self.release.is_none() {
            return Err(Error::invalid(
                "borrowed input data needs a release callback \
                 (FERRUM_InferenceRequestSetReleaseCallback) to tell when it may be reused",
            ));
        }
        let inputs = self
            .inputs
            .iter()
            .map(|i| {
                let data = match i.chunks.as_slice() {
                    [] => InputData::Owned(Bytes::new()),
                    [Chunk::Copied(one)] => InputData::Owned(one.clone()),
                    [Chunk::Borrowed(ptr, len)] => {
                        let release: Arc<dyn Send + Sync> = guard.clone();
                        // SAFETY: the caller lends the bytes until the release callback, which
                        // runs only after the last clone of `release` is dropped.
                        InputData::Lent(unsafe {
                            LentBytes::new(*ptr as *const u8, *len, false, release)
                        })
                    }
                    many => {
                        let mut all = BytesMut::with_capacity(many.iter().map(Chunk::len).sum());
                        for c in many {
                            all.extend_from_slice(c.bytes());
                        }
                        InputData::Owned(all.freeze())
                    }
                };
                InputTensor {
                    name: i.name.clone(),
                    datatype: i.datatype,
                    shape: i.shape.clone(),
                    data,
                }
            })
            .collect();
        Ok(InferRequest {
            model_name: self.model.clone(),
            model_version: self.version,
            id: self.id.clone(),
            parameters: self.parameters.clone(),
            inputs,
            outputs: self.outputs.clone(),
            delivery: Vec::new(),
            allocator: None,
        })
    }

    /// A guard that calls this request's release callback, armed.
    fn guard(&self, request: *mut FERRUM_InferenceRequest) -> Arc<ReleaseGuard> {
        Arc::new(ReleaseGuard {
            request: SendPtr(request.cast()),
            release: self.release,
            armed: std::sync::atomic::AtomicBool::new(true),
        })
    }
}

/// Creates a request for `model` at `version` (-1 or 0: the server's choice). `server` is
/// checked but not kept: pass it again to `FERRUM_ServerInfer*`.
///
/// # Safety
/// `request` must be valid for a write and `model` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestNew(
    request: *mut *mut FERRUM_InferenceRequest,
    server: *mut FERRUM_Server,
    model: *const c_char,
    version: i64,
) -> *mut FERRUM_Error {
    guard(|| {
        if request.is_null() {
            return Err(Error::invalid("request is NULL"));
        }
        handles::check(server, Kind::Server)?;
        // SAFETY: the caller passes a NUL-terminated string.
        let model = unsafe { handles::string(model, "model") }?.to_string();
        let ptr = handles::register(
            Kind::Request,
            FERRUM_InferenceRequest {
                model,
                version: (version > 0).then_some(version),
                id: String::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                parameters: Vec::new(),
                release: None,
                complete: None,
                allocation: None,
            },
        );
        // SAFETY: checked non-NULL; the caller passes a valid pointer.
        unsafe { request.write(ptr) };
        Ok(())
    })
}

/// Frees a request. Deleting it twice is detected and reported.
///
/// # Safety
/// `request` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestDelete(
    request: *mut FERRUM_InferenceRequest,
) -> *mut FERRUM_Error {
    // SAFETY: checked against the registry.
    guard(|| unsafe { handles::take(request, Kind::Request) }.map(drop))
}

/// The input that data for `name` is appended to, once the buffer is checked: CPU memory,
/// and not NULL unless empty.
fn input_to_append<'a>(
    r: &'a mut FERRUM_InferenceRequest,
    name: &str,
    base: *const c_void,
    byte_size: usize,
    memory_type: FERRUM_MemoryType,
    memory_type_id: i64,
) -> Result<&'a mut Input, Error> {
    if memory_type != FERRUM_MEMORY_CPU && memory_type != FERRUM_MEMORY_CPU_PINNED {
        return Err(Error::new(
            ferrum_core::ErrorKind::Unsupported,
            format!(
                "input '{name}': only CPU memory is supported (got type {memory_type}, id {memory_type_id})"
            ),
        ));
    }
    if base.is_null() && byte_size > 0 {
        return Err(Error::invalid("base is NULL"));
    }
    r.inputs
        .iter_mut()
        .find(|i| i.name == name)
        .ok_or_else(|| Error::not_found(format!("no input '{name}': add it first")))
}

fn with_request(
    request: *mut FERRUM_InferenceRequest,
    f: impl FnOnce(&mut FERRUM_InferenceRequest) -> Result<(), Error>,
) -> *mut FERRUM_Error {
    // SAFETY: checked against the registry.
    guard(|| f(unsafe { handles::get_mut(request, Kind::Request) }?))
}

/// Sets the request's id (echoed in its responses).
///
/// # Safety
/// `id` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestSetId(
    request: *mut FERRUM_InferenceRequest,
    id: *const c_char,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        // SAFETY: the caller passes a NUL-terminated string.
        r.id = unsafe { handles::string(id, "id") }?.to_string();
        Ok(())
    })
}

/// Adds an input: its name, datatype name ("INT32", "FP32", "BYTES"...) and shape of
/// `dim_count` dimensions (the full shape, batch dimension included where the model batches).
///
/// # Safety
/// `name` and `datatype` must be NUL-terminated strings; `shape` must hold `dim_count` values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestAddInput(
    request: *mut FERRUM_InferenceRequest,
    name: *const c_char,
    datatype: *const c_char,
    shape: *const i64,
    dim_count: u64,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        // SAFETY: the caller passes NUL-terminated strings.
        let name = unsafe { handles::string(name, "name") }?;
        // SAFETY: as above.
        let datatype = unsafe { handles::string(datatype, "datatype") }?;
        let datatype = DataType::from_name(datatype)
            .ok_or_else(|| Error::invalid(format!("unknown datatype '{datatype}'")))?;
        if shape.is_null() && dim_count > 0 {
            return Err(Error::invalid("shape is NULL"));
        }
        if dim_count > 64 {
            return Err(Error::invalid(format!(
                "{dim_count} dimensions are too many"
            )));
        }
        let shape = if dim_count == 0 {
            Vec::new()
        } else {
            // SAFETY: the caller passes `dim_count` values.
            unsafe { std::slice::from_raw_parts(shape, dim_count as usize) }.to_vec()
        };
        if r.inputs.iter().any(|i| i.name == name) {
            return Err(Error::new(
                ferrum_core::ErrorKind::AlreadyExists,
                format!("input '{name}' was already added"),
            ));
        }
        r.inputs.push(Input {
            name: name.to_string(),
            datatype,
            shape,
            chunks: Vec::new(),
        });
        Ok(())
    })
}

/// Removes an input (and its data).
///
/// # Safety
/// `name` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestRemoveInput(
    request: *mut FERRUM_InferenceRequest,
    name: *const c_char,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        // SAFETY: the caller passes a NUL-terminated string.
        let name = unsafe { handles::string(name, "name") }?;
        let before = r.inputs.len();
        r.inputs.retain(|i| i.name != name);
        if r.inputs.len() == before {
            return Err(Error::not_found(format!("no input '{name}'")));
        }
        Ok(())
    })
}

/// Removes every input.
///
/// # Safety
/// `request` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestRemoveAllInputs(
    request: *mut FERRUM_InferenceRequest,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        r.inputs.clear();
        Ok(())
    })
}

/// Appends `byte_size` bytes at `base` to an input's data (little-endian elements; BYTES
/// elements each as a 4-byte length then the bytes). The bytes are copied: `base` may be
/// reused as soon as this returns. Only CPU memory is accepted.
///
/// # Safety
/// `name` must be a NUL-terminated string and `base` valid for `byte_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestAppendInputData(
    request: *mut FERRUM_InferenceRequest,
    name: *const c_char,
    base: *const c_void,
    byte_size: usize,
    memory_type: FERRUM_MemoryType,
    memory_type_id: i64,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        // SAFETY: the caller passes a NUL-terminated string.
        let name = unsafe { handles::string(name, "name") }?;
        let input = input_to_append(r, name, base, byte_size, memory_type, memory_type_id)?;
        if byte_size > 0 {
            // SAFETY: the caller passes `byte_size` readable bytes.
            let bytes = unsafe { std::slice::from_raw_parts(base.cast::<u8>(), byte_size) };
            input
                .chunks
                .push(Chunk::Copied(Bytes::copy_from_slice(bytes)));
        }
        Ok(())
    })
}

/// Appends `byte_size` bytes at `base` to an input's data **without copying** them (Triton's
/// behaviour): they must stay valid and unchanged until the request's release callback runs
/// (required; it may run after `FERRUM_ServerInferSync` returns). An input made of exactly one
/// borrowed buffer reaches the backend with no copy; mixed or several buffers are joined (one
/// copy). Only CPU memory is accepted.
///
/// # Safety
/// `name` must be a NUL-terminated string and `base` valid for `byte_size` bytes until the
/// release callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestAppendInputDataBorrowed(
    request: *mut FERRUM_InferenceRequest,
    name: *const c_char,
    base: *const c_void,
    byte_size: usize,
    memory_type: FERRUM_MemoryType,
    memory_type_id: i64,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        // SAFETY: the caller passes a NUL-terminated string.
        let name = unsafe { handles::string(name, "name") }?;
        let input = input_to_append(r, name, base, byte_size, memory_type, memory_type_id)?;
        if byte_size > 0 {
            input.chunks.push(Chunk::Borrowed(base as usize, byte_size));
        }
        Ok(())
    })
}

/// Asks for an output by name; without any, every output is returned.
///
/// # Safety
/// `name` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestAddRequestedOutput(
    request: *mut FERRUM_InferenceRequest,
    name: *const c_char,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        // SAFETY: the caller passes a NUL-terminated string.
        let name = unsafe { handles::string(name, "name") }?;
        if !r.outputs.iter().any(|o| o == name) {
            r.outputs.push(name.to_string());
        }
        Ok(())
    })
}

/// Removes every requested output (every output is returned again).
///
/// # Safety
/// `request` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestRemoveAllRequestedOutputs(
    request: *mut FERRUM_InferenceRequest,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        r.outputs.clear();
        Ok(())
    })
}

fn set_parameter(
    request: *mut FERRUM_InferenceRequest,
    key: *const c_char,
    value: impl FnOnce() -> Result<ParamValue, Error>,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        // SAFETY: the caller passes a NUL-terminated string.
        let key = unsafe { handles::string(key, "key") }?.to_string();
        let value = value()?;
        r.parameters.retain(|p| p.key != key);
        r.parameters.push(Parameter { key, value });
        Ok(())
    })
}

/// Sets a string parameter (replacing one of the same key).
///
/// # Safety
/// `key` and `value` must be NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestSetStringParameter(
    request: *mut FERRUM_InferenceRequest,
    key: *const c_char,
    value: *const c_char,
) -> *mut FERRUM_Error {
    set_parameter(request, key, || {
        // SAFETY: the caller passes a NUL-terminated string.
        Ok(ParamValue::Str(
            unsafe { handles::string(value, "value") }?.to_string(),
        ))
    })
}

/// Sets an integer parameter (for example `sequence_id`).
///
/// # Safety
/// `key` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestSetIntParameter(
    request: *mut FERRUM_InferenceRequest,
    key: *const c_char,
    value: i64,
) -> *mut FERRUM_Error {
    set_parameter(request, key, || Ok(ParamValue::Int(value)))
}

/// Sets a boolean parameter (for example `sequence_start`).
///
/// # Safety
/// `key` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestSetBoolParameter(
    request: *mut FERRUM_InferenceRequest,
    key: *const c_char,
    value: bool,
) -> *mut FERRUM_Error {
    set_parameter(request, key, || Ok(ParamValue::Bool(value)))
}

/// Sets a floating point parameter.
///
/// # Safety
/// `key` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestSetDoubleParameter(
    request: *mut FERRUM_InferenceRequest,
    key: *const c_char,
    value: f64,
) -> *mut FERRUM_Error {
    set_parameter(request, key, || Ok(ParamValue::Double(value)))
}

/// Sets the callback told when the server is done with the request object (NULL: none).
///
/// # Safety
/// `request` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestSetReleaseCallback(
    request: *mut FERRUM_InferenceRequest,
    release_fn: FERRUM_InferenceRequestReleaseFn,
    userp: *mut c_void,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        r.release = release_fn.map(|f| (f, SendPtr(userp)));
        Ok(())
    })
}

/// Sets the output allocator (NULL: outputs stay in the server's memory) with its `userp`,
/// and the callback that receives each response of `FERRUM_ServerInferAsync` with its `userp`.
///
/// # Safety
/// `request` and `allocator` are any pointers; they are checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_InferenceRequestSetResponseCallback(
    request: *mut FERRUM_InferenceRequest,
    allocator: *mut FERRUM_ResponseAllocator,
    allocator_userp: *mut c_void,
    response_fn: FERRUM_InferenceResponseCompleteFn,
    response_userp: *mut c_void,
) -> *mut FERRUM_Error {
    with_request(request, |r| {
        r.allocation = if allocator.is_null() {
            None
        } else {
            // SAFETY: checked against the registry there.
            Some(unsafe { Allocation::new(allocator, allocator_userp) }?)
        };
        r.complete = response_fn.map(|f| (f, SendPtr(response_userp)));
        Ok(())
    })
}

/// Runs the release callback of a request, if it has one.
fn released(release: Option<Release>, request: SendPtr) {
    if let Some((f, userp)) = release {
        // SAFETY: the caller's function, with its own pointers.
        unsafe { f(request.0.cast(), FERRUM_REQUEST_RELEASE_ALL, userp.0) };
    }
}

/// Runs an inference of a model that is not decoupled and waits for its response, written to
/// `*response` (owned by the caller). An inference failure is returned as the error (no
/// response is written). The release callback, if set, runs once the request ran, successful
/// or not: before this returns, or later while the core still holds borrowed input bytes.
/// Must not be called from a response callback.
///
/// # Safety
/// `response` must be valid for a write; the objects are checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerInferSync(
    server: *mut FERRUM_Server,
    request: *mut FERRUM_InferenceRequest,
    response: *mut *mut FERRUM_InferenceResponse,
) -> *mut FERRUM_Error {
    guard(|| {
        if response.is_null() {
            return Err(Error::invalid("response is NULL"));
        }
        // SAFETY: checked against the registry.
        let s = unsafe { handles::get(server, Kind::Server) }?;
        let (core_request, guard, allocation) = {
            // SAFETY: checked against the registry.
            let r = unsafe { handles::get(request, Kind::Request) }?;
            let guard = r.guard(request);
            (r.to_core(&guard)?, guard, r.allocation)
        };
        let core = Arc::clone(&s.core);
        let result = s.block_on(async move { core.infer(core_request).await });
        if result.is_err() {
            // Not run (called from a callback): the caller keeps the request, no release comes.
            guard
                .armed
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        // The release callback runs now, or once the core drops the last borrowed input,
        // whether the inference succeeded or failed.
        drop(guard);
        let result = result?;
        let out = new_response(result?, allocation);
        // SAFETY: checked non-NULL; the caller passes a valid pointer.
        unsafe { response.write(out) };
        Ok(())
    })
}

/// Starts an inference and returns at once; the request's response callback (required, see
/// `FERRUM_InferenceRequestSetResponseCallback`) is then called on a server thread once per
/// response (several for a decoupled model), the last call with
/// `FERRUM_RESPONSE_COMPLETE_FINAL` (and possibly no response). A failure to start is
/// returned here and no callback runs. The release callback runs once the core holds no
/// borrowed input bytes: before the first response when all input data was copied, else
/// when the backend is done with the request (possibly after the final response).
///
/// # Safety
/// The objects are checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerInferAsync(
    server: *mut FERRUM_Server,
    request: *mut FERRUM_InferenceRequest,
) -> *mut FERRUM_Error {
    guard(|| {
        // SAFETY: checked against the registry.
        let s = unsafe { handles::get(server, Kind::Server) }?;
        let (core_request, guard, complete, allocation) = {
            // SAFETY: checked against the registry.
            let r = unsafe { handles::get(request, Kind::Request) }?;
            let complete = r.complete.ok_or_else(|| {
                Error::invalid(
                    "the request has no response callback: call FERRUM_InferenceRequestSetResponseCallback",
                )
            })?;
            let guard = r.guard(request);
            (r.to_core(&guard)?, guard, complete, r.allocation)
        };
        let runtime = s.handle()?;
        let started = {
            let _entered = runtime.enter();
            s.core.infer_stream(core_request)
        };
        let mut stream = match started {
            Ok(stream) => stream,
            Err(e) => {
                // Not started: the caller keeps the request, and no release callback comes.
                guard
                    .armed
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                return Err(e);
            }
        };
        runtime.spawn(async move {
            let (callback, userp) = complete;
            let deliver = move |response: *mut FERRUM_InferenceResponse, flags: u32| {
                // SAFETY: the caller's function; the response is handed over to it.
                unsafe { callback(response, flags, userp.get()) };
            };
            // The release callback runs now, or once the core drops the last borrowed input.
            drop(guard);
            let mut finished = false;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(item) => {
                        let flags = if item.is_final {
                            FERRUM_RESPONSE_COMPLETE_FINAL
                        } else {
                            0
                        };
                        if item.response.is_none() && !item.is_final {
                            continue;
                        }
                        let response = item
                            .response
                            .map_or(std::ptr::null_mut(), |r| new_response(r, allocation));
                        deliver(response, flags);
                        if item.is_final {
                            finished = true;
                            break;
                        }
                    }
                    Err(e) => deliver(error_response(e), 0),
                }
            }
            if !finished {
                deliver(std::ptr::null_mut(), FERRUM_RESPONSE_COMPLETE_FINAL);
            }
        });
        Ok(())
    })
}
