//! The native module `_ferrum_python`: the small set of server-facing operations that
//! `triton_python_backend_utils.py` (the `pb_utils` a model imports) is written on top of.
//!
//! A request crosses into Python as a [`PyRequest`]: its context, its inputs (fixed-size types
//! as read-only buffers over the server's memory, `BYTES` as lists of `bytes`), cancellation,
//! and `send`, which writes a response's outputs straight into buffers the server allocates.

use std::borrow::Cow;
use std::ffi::c_void;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ferrum_backend_api::{
    BackendError, CorrelationId, DataType, ErrorCode, HostCall, LogLevel, MemoryKind, ParamValue,
    Parameter, Request, Response, Tensor, bytes, host_start as host_start_call,
};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString};

/// Name under which the module is registered in `sys.modules`.
pub const MODULE: &str = "_ferrum_python";

/// Outputs at least this large are copied with the GIL released.
const DETACHED_COPY_BYTES: usize = 64 * 1024;

/// One request of a batch, shared by every Python object that refers to it (the request, its
/// response sender, the buffers of its inputs): the inputs stay valid while any of them lives.
pub struct Shared {
    /// The server's request.
    request: Request,
    /// Set once the request's final response (or final error) was sent.
    closed: AtomicBool,
}

impl Shared {
    /// Wraps a request handed to `execute`.
    pub fn new(request: Request) -> Arc<Self> {
        Arc::new(Shared {
            request,
            closed: AtomicBool::new(false),
        })
    }

    /// Sends `error` as the request's final response unless it already has one.
    pub fn fail(&self, error: BackendError) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.request.responder().send_error(error, true);
        }
    }
}

/// A request as Python sees it (`_ferrum_python.Request`).
#[pyclass(name = "Request", module = "_ferrum_python", frozen)]
pub struct PyRequest {
    /// The request and its state.
    shared: Arc<Shared>,
}

impl PyRequest {
    /// A Python handle for a request.
    pub fn new(shared: Arc<Shared>) -> Self {
        PyRequest { shared }
    }
}

/// Turns a backend error into a Python `RuntimeError`.
fn runtime_error(e: BackendError) -> PyErr {
    PyRuntimeError::new_err(e.message.to_string())
}

#[pymethods]
impl PyRequest {
    /// The client's request id.
    fn id(&self) -> String {
        self.shared.request.id().to_string()
    }

    /// The sequence correlation id: an int (0 for none) or a string.
    fn correlation_id<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.shared.request.correlation_id() {
            CorrelationId::U64(n) => n.into_pyobject(py)?.into_any(),
            CorrelationId::Str(s) => PyString::new(py, s).into_any(),
            _ => 0u64.into_pyobject(py)?.into_any(),
        })
    }

    /// Sequence start/end bits.
    fn flags(&self) -> u32 {
        self.shared.request.flags()
    }

    /// The request's timeout in microseconds (0: none).
    fn timeout(&self) -> u64 {
        self.shared.request.timeout_microseconds()
    }

    /// The request's parameters as a JSON object text, as Triton's `parameters()` gives them.
    fn parameters(&self) -> String {
        let mut map = serde_json::Map::new();
        for p in self.shared.request.parameters() {
            let value = match p.value {
                ParamValue::Bool(b) => serde_json::Value::Bool(b),
                ParamValue::Int(i) => serde_json::Value::from(i),
                ParamValue::Double(d) => serde_json::Value::from(d),
                ParamValue::Str(s) => serde_json::Value::String(s),
                _ => continue,
            };
            map.insert(p.key, value);
        }
        serde_json::Value::Object(map).to_string()
    }

    /// Names of the outputs the client asked for (empty: all).
    fn requested_outputs(&self) -> Vec<String> {
        self.shared
            .request
            .requested_outputs()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Whether the client cancelled the request (or went away).
    fn is_cancelled(&self) -> bool {
        self.shared.request.is_cancelled()
    }

    /// Whether the request's final response was sent.
    fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// The inputs: `(name, datatype code, shape, data)`, where data is a read-only buffer over
    /// the input's bytes (copied only when they are spread over several buffers or sit in a
    /// client's shared memory region) or, for `BYTES`, a list of `bytes`.
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for tensor in self.shared.request.inputs() {
            if tensor.memory().kind == MemoryKind::GPU {
                return Err(PyValueError::new_err(format!(
                    "input '{}' is in GPU memory; the python backend takes CPU tensors",
                    tensor.name
                )));
            }
            let data = if tensor.datatype == DataType::BYTES {
                let raw = tensor.data();
                let items = bytes::decode(&raw).map_err(runtime_error)?;
                PyList::new(py, items.into_iter().map(|b| PyBytes::new(py, b)))?.into_any()
            } else {
                let buffer = match tensor.data() {
                    Cow::Borrowed(slice) => InputBuffer {
                        ptr: slice.as_ptr() as usize,
                        len: slice.len(),
                        _owner: Some(Arc::clone(&self.shared)),
                        _owned: None,
                    },
                    Cow::Owned(vec) => InputBuffer {
                        ptr: vec.as_ptr() as usize,
                        len: vec.len(),
                        _owner: None,
                        _owned: Some(vec),
                    },
                };
                Bound::new(py, buffer)?.into_any()
            };
            list.append((tensor.name, tensor.datatype.0, tensor.shape.to_vec(), data))?;
        }
        Ok(list)
    }

    /// Fails the request with this error code and message unless it is answered already.
    fn fail(&self, py: Python<'_>, code: u32, message: &str) {
        let error = BackendError::new(ErrorCode(code), message.to_string());
        py.detach(|| self.shared.fail(error));
    }

    /// Sends one response. `outputs` is a list of `(name, datatype code, shape, payload)`
    /// (payload: a C-contiguous byte buffer, or a list of `bytes` for `BYTES`), `error` a
    /// `(code, message)` pair sent instead, `parameters` a list of `(key, value)`; with neither
    /// outputs nor error only the flags are sent. `final` ends the request.
    #[pyo3(signature = (outputs, error, parameters, r#final))]
    fn send(
        &self,
        py: Python<'_>,
        outputs: Option<Bound<'_, PyList>>,
        error: Option<(u32, String)>,
        parameters: Option<Bound<'_, PyList>>,
        r#final: bool,
    ) -> PyResult<()> {
        let closed = if r#final {
            self.shared.closed.swap(true, Ordering::AcqRel)
        } else {
            self.shared.closed.load(Ordering::Acquire)
        };
        if closed {
            return Err(PyRuntimeError::new_err(
                "Unable to send response. Response sender has been closed.",
            ));
        }
        let responder = self.shared.request.responder();
        if let Some((code, message)) = error {
            py.detach(|| {
                responder.send_error(BackendError::new(ErrorCode(code), message), r#final)
            });
            return Ok(());
        }
        let Some(outputs) = outputs else {
            if r#final {
                py.detach(|| responder.finish());
            }
            return Ok(());
        };
        let mut response = responder.response();
        for item in outputs.iter() {
            if let Err(e) = add_output(py, &mut response, &item) {
                response.fail(e);
                break;
            }
        }
        if let Some(parameters) = parameters {
            for item in parameters.iter() {
                match item
                    .extract::<(String, Bound<'_, PyAny>)>()
                    .and_then(|(key, value)| Ok((key, param_value(&value)?)))
                {
                    Ok((key, value)) => response.parameter(&key, value),
                    Err(e) => response.fail(BackendError::invalid_argument(format!(
                        "bad response parameter: {e}"
                    ))),
                }
            }
        }
        py.detach(move || response.send(r#final));
        Ok(())
    }
}

/// A response parameter's value from a Python bool, int, float or str.
fn param_value(value: &Bound<'_, PyAny>) -> PyResult<ParamValue> {
    if value.is_instance_of::<PyBool>() {
        Ok(ParamValue::Bool(value.extract()?))
    } else if value.is_instance_of::<PyInt>() {
        Ok(ParamValue::Int(value.extract()?))
    } else if value.is_instance_of::<PyFloat>() {
        Ok(ParamValue::Double(value.extract()?))
    } else if value.is_instance_of::<PyString>() {
        Ok(ParamValue::Str(value.extract()?))
    } else {
        Err(PyTypeError::new_err(
            "response parameter values must be bool, int, float or str",
        ))
    }
}

/// Adds one `(name, datatype code, shape, payload)` output to a response, written once into
/// the buffer the server allocates for it.
fn add_output(
    py: Python<'_>,
    response: &mut Response,
    item: &Bound<'_, PyAny>,
) -> Result<(), BackendError> {
    let (name, code, shape, payload): (String, u32, Vec<i64>, Bound<'_, PyAny>) = item
        .extract()
        .map_err(|e| BackendError::internal(format!("malformed output description: {e}")))?;
    let datatype = DataType(code);
    if datatype == DataType::BYTES {
        let list = payload.cast::<PyList>().map_err(|_| {
            BackendError::internal(format!("BYTES output '{name}' must be a list of bytes"))
        })?;
        let mut items = Vec::with_capacity(list.len());
        for element in list.iter() {
            let element = element.cast_into::<PyBytes>().map_err(|_| {
                BackendError::invalid_argument(format!(
                    "an element of BYTES output '{name}' is not bytes"
                ))
            })?;
            items.push(element);
        }
        let total = items.iter().map(|b| 4 + b.as_bytes().len()).sum();
        let buffer = response.output_with_size(&name, datatype, &shape, total)?;
        let mut at = 0;
        for element in &items {
            let data = element.as_bytes();
            let len = u32::try_from(data.len()).map_err(|_| {
                BackendError::invalid_argument(format!(
                    "an element of BYTES output '{name}' is larger than 4 GiB"
                ))
            })?;
            buffer[at..at + 4].copy_from_slice(&len.to_le_bytes());
            buffer[at + 4..at + 4 + data.len()].copy_from_slice(data);
            at += 4 + data.len();
        }
        return Ok(());
    }
    let size = datatype.element_size().ok_or_else(|| {
        BackendError::invalid_argument(format!(
            "output '{name}' has data type {datatype}, which the python backend cannot send"
        ))
    })?;
    let source = PyBuffer::<u8>::get(&payload)
        .map_err(|e| BackendError::internal(format!("output '{name}' is not a buffer: {e}")))?;
    if !source.is_c_contiguous() {
        return Err(BackendError::internal(format!(
            "output '{name}' is not contiguous"
        )));
    }
    let len = source.len_bytes();
    let expected = ferrum_backend_api::element_count(&shape).saturating_mul(size);
    if shape.iter().any(|&d| d < 0) || len != expected {
        return Err(BackendError::invalid_argument(format!(
            "output '{name}' of shape {shape:?} and type {datatype} needs {expected} bytes, its array holds {len}"
        )));
    }
    let target = response.output_with_size(&name, datatype, &shape, len)?;
    let (from, to) = (source.buf_ptr() as usize, target.as_mut_ptr() as usize);
    let copy = move || {
        if len > 0 {
            // SAFETY: `source` (kept alive by the caller until after the copy) exports `len`
            // contiguous readable bytes at `from`; `target` is a distinct server buffer of
            // exactly `len` bytes.
            unsafe { std::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, len) };
        }
    };
    if len >= DETACHED_COPY_BYTES {
        py.detach(copy);
    } else {
        copy();
    }
    drop(source);
    Ok(())
}

/// A read-only view of an input's bytes that numpy can wrap without a copy
/// (`_ferrum_python.InputBuffer`). It keeps the request (or its own copy) alive.
#[pyclass(name = "InputBuffer", module = "_ferrum_python", frozen)]
pub struct InputBuffer {
    /// Address of the first byte.
    ptr: usize,
    /// Length in bytes.
    len: usize,
    /// The request whose input buffer this is; the bytes are valid while it lives.
    _owner: Option<Arc<Shared>>,
    /// A private copy, when the input could not be lent.
    _owned: Option<Vec<u8>>,
}

#[pymethods]
impl InputBuffer {
    /// Exports the bytes read-only through the buffer protocol.
    unsafe fn __getbuffer__(
        slf: PyRef<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no buffer view to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "an input tensor is read-only; copy it (numpy.array(x)) to change it",
            ));
        }
        let len = isize::try_from(slf.len)
            .map_err(|_| PyBufferError::new_err("input too large for a buffer"))?;
        // An empty buffer still needs a non-null address.
        let ptr = if slf.len == 0 {
            std::ptr::NonNull::<u8>::dangling().as_ptr() as *mut c_void
        } else {
            slf.ptr as *mut c_void
        };
        // SAFETY: `view` is the caller's buffer struct; the bytes at `ptr` stay valid while
        // this object lives, and FillInfo takes a reference to it for the view's lifetime.
        let rc = unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr, len, 1, flags) };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// The number of bytes.
    fn __len__(&self) -> usize {
        self.len
    }
}

/// An input of an inference a model starts on another model (BLS), owned while the call
/// borrows it.
struct OwnedInput {
    /// The input's name.
    name: String,
    /// Its data type.
    datatype: DataType,
    /// Its shape.
    shape: Vec<i64>,
    /// Its bytes (`BYTES` elements length-prefixed).
    data: Vec<u8>,
}

/// An inference on another model that a Python model started (`_ferrum_python.HostCall`):
/// `next()` waits for its next response, `cancel()` stops it.
#[pyclass(name = "HostCall", module = "_ferrum_python", frozen)]
pub struct PyHostCall {
    /// The call, none once it ended. It borrows `inputs`: declared first, so dropped first.
    call: Mutex<Option<HostCall<'static>>>,
    /// The inputs the call borrows; their heap memory does not move while it runs.
    _inputs: Box<[OwnedInput]>,
}

/// The bytes of one `(name, datatype code, shape, payload)` input given by pb_utils.
fn owned_input(item: &Bound<'_, PyAny>) -> PyResult<OwnedInput> {
    let (name, code, shape, payload): (String, u32, Vec<i64>, Bound<'_, PyAny>) = item.extract()?;
    let datatype = DataType(code);
    let data = if datatype == DataType::BYTES {
        let list = payload
            .cast::<PyList>()
            .map_err(|_| PyTypeError::new_err(format!("BYTES input '{name}' must be a list")))?;
        let mut items = Vec::with_capacity(list.len());
        for element in list.iter() {
            let element = element.cast_into::<PyBytes>().map_err(|_| {
                PyTypeError::new_err(format!("an element of BYTES input '{name}' is not bytes"))
            })?;
            items.push(element.as_bytes().to_vec());
        }
        bytes::encode(&items)
    } else {
        let buffer = PyBuffer::<u8>::get(&payload)?;
        buffer.to_vec(item.py())?
    };
    Ok(OwnedInput {
        name,
        datatype,
        shape,
        data,
    })
}

/// Starts an inference on `model` (version -1: the latest) with `inputs` (as `send` takes
/// outputs), the outputs named in `outputs` (empty: all) and `parameters` (a list of
/// `(key, value)`), and returns the call at once. An error (no such model, bad inputs)
/// raises `RuntimeError` with its code and message as arguments.
#[pyfunction]
#[pyo3(signature = (model, version, inputs, outputs, parameters))]
fn host_start(
    py: Python<'_>,
    model: &str,
    version: i64,
    inputs: Bound<'_, PyList>,
    outputs: Vec<String>,
    parameters: Bound<'_, PyList>,
) -> PyResult<PyHostCall> {
    let owned = inputs
        .iter()
        .map(|item| owned_input(&item))
        .collect::<PyResult<Vec<_>>>()?
        .into_boxed_slice();
    let mut params = Vec::with_capacity(parameters.len());
    for item in parameters.iter() {
        let (key, value): (String, Bound<'_, PyAny>) = item.extract()?;
        params.push(Parameter {
            key,
            value: param_value(&value)?,
        });
    }
    // SAFETY: the tensors borrow the names, shapes and bytes in `owned`, which live on the
    // heap, never move and are dropped only after the call (field order of `PyHostCall`,
    // and `Drop` of `HostCall` waits until the server let go of them).
    let borrowed: &'static [OwnedInput] =
        unsafe { std::slice::from_raw_parts(owned.as_ptr(), owned.len()) };
    let tensors: Vec<Tensor<'static>> = borrowed
        .iter()
        .map(|i| Tensor::from_bytes(&i.name, i.datatype, &i.shape, &i.data))
        .collect();
    let requested: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let model = model.to_string();
    let started = py.detach(|| host_start_call(&model, version, &tensors, &requested, &params));
    match started {
        Ok(call) => Ok(PyHostCall {
            call: Mutex::new(Some(call)),
            _inputs: owned,
        }),
        Err(e) => Err(PyRuntimeError::new_err((e.code.0, e.message.to_string()))),
    }
}

#[pymethods]
impl PyHostCall {
    /// Waits for the next response: `None` after the last, else `(outputs, error,
    /// parameters)` where outputs is a list of `(name, datatype code, shape, data)` (data:
    /// `bytes`, or a list of `bytes` for `BYTES`), error `(code, message)` or `None`, and
    /// parameters a list of `(key, value)`.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let next = py.detach(|| {
            let mut call = self.call.lock().unwrap_or_else(|e| e.into_inner());
            let item = call.as_mut()?.next();
            if item.is_none() {
                *call = None;
            }
            item
        });
        let Some(item) = next else {
            return Ok(None);
        };
        let result = match item {
            Ok(result) => result,
            Err(e) => {
                let error = (e.code.0, e.message.to_string());
                return Ok(Some(
                    (py.None(), error, py.None()).into_pyobject(py)?.into_any(),
                ));
            }
        };
        let outputs = PyList::empty(py);
        for tensor in result.outputs() {
            if tensor.memory().kind == MemoryKind::GPU {
                return Err(PyValueError::new_err(format!(
                    "output '{}' is in GPU memory; the python backend takes CPU tensors",
                    tensor.name
                )));
            }
            let raw = tensor.data();
            let data = if tensor.datatype == DataType::BYTES {
                let items = bytes::decode(&raw).map_err(runtime_error)?;
                PyList::new(py, items.into_iter().map(|b| PyBytes::new(py, b)))?.into_any()
            } else {
                PyBytes::new(py, &raw).into_any()
            };
            outputs.append((tensor.name, tensor.datatype.0, tensor.shape.to_vec(), data))?;
        }
        let parameters = PyList::empty(py);
        for p in result.parameters() {
            let value = match p.value {
                ParamValue::Bool(b) => PyBool::new(py, b).to_owned().into_any(),
                ParamValue::Int(i) => i.into_pyobject(py)?.into_any(),
                ParamValue::Double(d) => PyFloat::new(py, d).into_any(),
                ParamValue::Str(s) => PyString::new(py, &s).into_any(),
                _ => continue,
            };
            parameters.append((p.key, value))?;
        }
        Ok(Some(
            (outputs, py.None(), parameters)
                .into_pyobject(py)?
                .into_any(),
        ))
    }

    /// Cancels the call (if it still runs) and waits until the server let go of its inputs.
    fn cancel(&self, py: Python<'_>) {
        py.detach(|| {
            let taken = self.call.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(taken);
        });
    }
}

/// Writes a line to the server's log (level: 0 error, 1 warning, 2 info, 3 verbose).
#[pyfunction]
fn log(py: Python<'_>, level: u32, message: &str) {
    let message = message.to_string();
    py.detach(move || ferrum_backend_api::log(LogLevel(level), &message));
}

/// Creates the module and registers it in `sys.modules`.
pub fn register(py: Python<'_>) -> PyResult<()> {
    let module = PyModule::new(py, MODULE)?;
    module.add_class::<PyRequest>()?;
    module.add_class::<InputBuffer>()?;
    module.add_class::<PyHostCall>()?;
    module.add_function(wrap_pyfunction!(log, &module)?)?;
    module.add_function(wrap_pyfunction!(host_start, &module)?)?;
    py.import("sys")?
        .getattr("modules")?
        .set_item(MODULE, module)?;
    Ok(())
}
