//! Safe wrappers over `shim.cpp`: what tch does not expose of libtorch.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::marker::PhantomData;

unsafe extern "C" {
    fn ferrum_torch_guard_enter(
        inference_mode: c_int,
        optimize: c_int,
        error: *mut c_char,
        error_length: usize,
    ) -> *mut c_void;
    fn ferrum_torch_guard_exit(guard: *mut c_void);
    fn ferrum_torch_set_jit_executor(enabled: c_int);
    fn ferrum_torch_set_intra_op_threads(
        threads: c_int,
        error: *mut c_char,
        error_length: usize,
    ) -> c_int;
    fn ferrum_torch_set_inter_op_threads(
        threads: c_int,
        error: *mut c_char,
        error_length: usize,
    ) -> c_int;
}

/// Room for a C++ exception message.
const ERROR_BUFFER: usize = 1024;

fn message(buffer: &[c_char; ERROR_BUFFER]) -> String {
    // SAFETY: the buffer is zeroed and the shim writes at most ERROR_BUFFER - 1 bytes and a NUL.
    let text = unsafe { CStr::from_ptr(buffer.as_ptr()) };
    let text = text.to_string_lossy();
    if text.is_empty() {
        "libtorch reported an error without a message".to_string()
    } else {
        text.into_owned()
    }
}

/// Inference mode (or no-grad mode) and the graph optimizer setting for one execution, undone
/// when dropped. Bound to the thread that entered it.
pub struct ExecutionGuard {
    guard: *mut c_void,
    /// Not `Send`: libtorch's guards are thread-local.
    _thread: PhantomData<*mut ()>,
}

impl ExecutionGuard {
    /// Enters the guards: `inference_mode` picks InferenceMode over NoGradGuard, `optimize`
    /// turns the TorchScript graph optimizer on or off for this thread.
    pub fn enter(inference_mode: bool, optimize: bool) -> Result<Self, String> {
        let mut error = [0 as c_char; ERROR_BUFFER];
        // SAFETY: the buffer outlives the call and its length is passed along.
        let guard = unsafe {
            ferrum_torch_guard_enter(
                c_int::from(inference_mode),
                c_int::from(optimize),
                error.as_mut_ptr(),
                ERROR_BUFFER,
            )
        };
        if guard.is_null() {
            return Err(message(&error));
        }
        Ok(ExecutionGuard {
            guard,
            _thread: PhantomData,
        })
    }
}

impl Drop for ExecutionGuard {
    fn drop(&mut self) {
        // SAFETY: the pointer came from ferrum_torch_guard_enter and is released once, here,
        // on the thread that created it (the type is not Send).
        unsafe { ferrum_torch_guard_exit(self.guard) }
    }
}

/// Chooses the profiling JIT executor (true) or the simple one (false), process-wide.
pub fn set_jit_executor(enabled: bool) {
    // SAFETY: sets an atomic flag; cannot fail.
    unsafe { ferrum_torch_set_jit_executor(c_int::from(enabled)) }
}

/// Sets the intra-op thread pool size, process-wide.
pub fn set_intra_op_threads(threads: i32) -> Result<(), String> {
    let mut error = [0 as c_char; ERROR_BUFFER];
    // SAFETY: the buffer outlives the call and its length is passed along.
    let rc =
        unsafe { ferrum_torch_set_intra_op_threads(threads, error.as_mut_ptr(), ERROR_BUFFER) };
    if rc == 0 {
        Ok(())
    } else {
        Err(message(&error))
    }
}

/// Sets the inter-op thread pool size, process-wide; fails once inter-op work has started.
pub fn set_inter_op_threads(threads: i32) -> Result<(), String> {
    let mut error = [0 as c_char; ERROR_BUFFER];
    // SAFETY: the buffer outlives the call and its length is passed along.
    let rc =
        unsafe { ferrum_torch_set_inter_op_threads(threads, error.as_mut_ptr(), ERROR_BUFFER) };
    if rc == 0 {
        Ok(())
    } else {
        Err(message(&error))
    }
}
