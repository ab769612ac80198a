//! The safe view of a request: its context, parameters and input tensors.

use std::borrow::Cow;

use abi_stable::std_types::RStr;

use crate::ffi::{InferResultBox, RequestBox};
use crate::response::{OutputTensor, Responder, Response};
use crate::types::{
    BUFFER_SHARED, BackendError, BufferRef, CorrelationKind, CorrelationRef, DataType, Memory,
    ParamKind, ParamRef, TensorInfo,
};

/// A parameter value: the protocol's bool, int64, double or string.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    /// A boolean parameter.
    Bool(bool),
    /// An integer parameter.
    Int(i64),
    /// A floating point parameter.
    Double(f64),
    /// A string parameter.
    Str(String),
}

impl ParamValue {
    /// Reads a parameter as it crossed the boundary; `None` for a kind this version does not know.
    pub fn from_ffi(p: &ParamRef<'_>) -> Option<ParamValue> {
        Some(match p.kind {
            ParamKind::BOOL => ParamValue::Bool(p.boolean),
            ParamKind::INT => ParamValue::Int(p.int),
            ParamKind::DOUBLE => ParamValue::Double(p.double),
            ParamKind::STRING => ParamValue::Str(p.text.as_str().to_string()),
            _ => return None,
        })
    }

    /// The value as it crosses the boundary under `key`.
    pub fn to_ffi<'a>(&'a self, key: &'a str) -> ParamRef<'a> {
        let mut p = ParamRef {
            key: RStr::from_str(key),
            kind: ParamKind::BOOL,
            boolean: false,
            int: 0,
            double: 0.0,
            text: RStr::from_str(""),
        };
        match self {
            ParamValue::Bool(b) => p.boolean = *b,
            ParamValue::Int(i) => {
                p.kind = ParamKind::INT;
                p.int = *i;
            }
            ParamValue::Double(d) => {
                p.kind = ParamKind::DOUBLE;
                p.double = *d;
            }
            ParamValue::Str(s) => {
                p.kind = ParamKind::STRING;
                p.text = RStr::from_str(s);
            }
        }
        p
    }
}

/// A named request or response parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Parameter {
    /// The parameter's key.
    pub key: String,
    /// The parameter's value.
    pub value: ParamValue,
}

impl Parameter {
    /// Reads a parameter as it crossed the boundary; `None` for a kind this version does not know.
    pub fn from_ffi(p: &ParamRef<'_>) -> Option<Parameter> {
        Some(Parameter {
            key: p.key.as_str().to_string(),
            value: ParamValue::from_ffi(p)?,
        })
    }
}

/// A sequence correlation id.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorrelationId<'a> {
    /// The request is not part of a sequence (or its id is of a kind this version does not know).
    None,
    /// A numeric correlation id.
    U64(u64),
    /// A string correlation id.
    Str(&'a str),
}

impl<'a> CorrelationId<'a> {
    /// Reads a correlation id as it crossed the boundary.
    pub fn from_ffi(c: CorrelationRef<'a>) -> Self {
        match c.kind {
            CorrelationKind::U64 => CorrelationId::U64(c.number),
            CorrelationKind::STRING => CorrelationId::Str(c.text.as_str()),
            _ => CorrelationId::None,
        }
    }
}

/// Where a tensor view's buffers come from.
#[derive(Clone, Copy)]
enum Source<'r> {
    /// An input of a request.
    Request(&'r RequestBox),
    /// An output of a host inference result.
    Result(&'r InferResultBox),
    /// Bytes the backend holds itself.
    Bytes(&'r [u8]),
}

/// A read-only view of one tensor lent by the server (a request's input, or an output of an
/// inference the backend ran through the host).
#[derive(Clone, Copy)]
pub struct Tensor<'r> {
    /// Tensor name as in the model config.
    pub name: &'r str,
    /// Element type.
    pub datatype: DataType,
    /// Full shape, including the batch dimension when the model batches.
    pub shape: &'r [i64],
    /// Total bytes.
    byte_size: usize,
    /// Number of buffers.
    buffer_count: u32,
    /// Index of the tensor in its source.
    index: usize,
    /// Where the buffers are read from.
    source: Source<'r>,
}

impl std::fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("datatype", &self.datatype)
            .field("shape", &self.shape)
            .field("byte_size", &self.byte_size)
            .finish()
    }
}

impl<'r> Tensor<'r> {
    fn new(info: TensorInfo<'r>, index: usize, source: Source<'r>) -> Self {
        Tensor {
            name: info.name.as_str(),
            datatype: info.datatype,
            shape: info.shape.as_slice(),
            byte_size: usize::try_from(info.byte_size).unwrap_or(usize::MAX),
            buffer_count: info.buffer_count,
            index,
            source,
        }
    }

    /// A tensor over bytes the backend holds, for example an input of an inference it
    /// starts through the host ([`crate::host_start`]): lent to the server, not copied.
    /// `data` holds the elements in the data type's layout (`BYTES` length-prefixed, see
    /// [`crate::bytes`]). Author-side only: no change to the ABI.
    pub fn from_bytes(name: &'r str, datatype: DataType, shape: &'r [i64], data: &'r [u8]) -> Self {
        Tensor {
            name,
            datatype,
            shape,
            byte_size: data.len(),
            buffer_count: 1,
            index: 0,
            source: Source::Bytes(data),
        }
    }

    /// The tensor's name.
    pub fn name(&self) -> &'r str {
        self.name
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &'r [i64] {
        self.shape
    }

    /// Number of elements the shape describes.
    pub fn element_count(&self) -> usize {
        crate::element_count(self.shape)
    }

    /// Total bytes over all buffers.
    pub fn byte_size(&self) -> usize {
        self.byte_size
    }

    /// The raw buffers that, concatenated, hold the tensor's bytes.
    pub fn buffers(&self) -> impl Iterator<Item = BufferRef> + 'r {
        let (source, index) = (self.source, self.index);
        (0..self.buffer_count as usize).filter_map(move |b| match source {
            Source::Request(r) => r.input_buffer(index, b).into_option(),
            Source::Result(r) => r.output_buffer(index, b).into_option(),
            Source::Bytes(data) => Some(BufferRef {
                ptr: data.as_ptr(),
                len: data.len(),
                memory: Memory::CPU,
                flags: 0,
            }),
        })
    }

    /// Where the first buffer's bytes live (CPU for an empty tensor).
    pub fn memory(&self) -> Memory {
        self.buffers().next().map_or(Memory::CPU, |b| b.memory)
    }

    /// The tensor's bytes: borrowed when they sit in one private host buffer, copied when they
    /// are spread over several buffers or live in memory a client can change (shared memory).
    pub fn data(&self) -> Cow<'r, [u8]> {
        let mut buffers = self.buffers();
        let first = buffers.next();
        if self.buffer_count == 1
            && let Some(b) = first
            && b.flags & BUFFER_SHARED == 0
            && b.memory.kind == crate::MemoryKind::CPU
        {
            // SAFETY: the server keeps a private, unchanging host buffer alive as long as the
            // request (or result) this view borrows from.
            return Cow::Borrowed(unsafe { raw_slice(b.ptr, b.len) });
        }
        let mut out = Vec::with_capacity(self.byte_size);
        for b in first.into_iter().chain(buffers) {
            copy_buffer(&b, &mut out);
        }
        Cow::Owned(out)
    }

    /// Copies the tensor's bytes into `out`, which must be exactly [`Tensor::byte_size`] long.
    pub fn copy_to(&self, out: &mut [u8]) -> Result<(), BackendError> {
        if out.len() != self.byte_size {
            return Err(BackendError::internal(format!(
                "tensor '{}' holds {} bytes, the destination {}",
                self.name,
                self.byte_size,
                out.len()
            )));
        }
        let mut at = 0;
        for b in self.buffers() {
            let end = at + b.len;
            if end > out.len() {
                return Err(BackendError::internal(format!(
                    "tensor '{}' buffers hold more than its byte size",
                    self.name
                )));
            }
            // SAFETY: the server guarantees `len` readable bytes at `ptr` while the tensor's
            // owner lives; a raw copy never forms a reference to shared memory.
            unsafe { std::ptr::copy_nonoverlapping(b.ptr, out[at..end].as_mut_ptr(), b.len) };
            at = end;
        }
        Ok(())
    }
}

/// Appends a buffer's bytes with a raw copy (safe for memory other processes may write).
fn copy_buffer(b: &BufferRef, out: &mut Vec<u8>) {
    if b.len == 0 || b.ptr.is_null() {
        return;
    }
    out.reserve(b.len);
    // SAFETY: the server guarantees `len` readable bytes at `ptr` while the owner lives; the
    // destination has room for them after `reserve`.
    unsafe {
        std::ptr::copy_nonoverlapping(b.ptr, out.as_mut_ptr().add(out.len()), b.len);
        out.set_len(out.len() + b.len);
    }
}

/// # Safety
/// `ptr` must point to `len` bytes that stay valid and unchanged for `'a`.
pub(crate) unsafe fn raw_slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        return &[];
    }
    // SAFETY: upheld by the caller.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// One inference request as a backend sees it, owned by the backend: its context, its inputs,
/// and where its responses go.
pub struct Request {
    /// The server's handle.
    obj: RequestBox,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("id", &self.id()).finish()
    }
}

impl Request {
    /// Wraps the server's handle.
    pub fn from_ffi(obj: RequestBox) -> Self {
        Request { obj }
    }

    /// The client's request id (may be empty).
    pub fn id(&self) -> &str {
        self.obj.id().as_str()
    }

    /// The sequence correlation id.
    pub fn correlation_id(&self) -> CorrelationId<'_> {
        CorrelationId::from_ffi(self.obj.correlation_id())
    }

    /// [`crate::SEQUENCE_START`] / [`crate::SEQUENCE_END`] bits.
    pub fn flags(&self) -> u32 {
        self.obj.flags()
    }

    /// The request's parameters, in the order the client sent them.
    pub fn parameters(&self) -> impl Iterator<Item = Parameter> + '_ {
        (0..self.obj.parameter_count())
            .filter_map(|i| Parameter::from_ffi(&self.obj.parameter(i).into_option()?))
    }

    /// The request parameter with this key.
    pub fn parameter(&self, key: &str) -> Option<ParamValue> {
        (0..self.obj.parameter_count())
            .filter_map(|i| self.obj.parameter(i).into_option())
            .find(|p| p.key.as_str() == key)
            .and_then(|p| ParamValue::from_ffi(&p))
    }

    /// The input tensors, in the order the client sent them.
    pub fn inputs(&self) -> impl Iterator<Item = Tensor<'_>> + '_ {
        (0..self.obj.input_count()).filter_map(|i| {
            let info = self.obj.input(i).into_option()?;
            Some(Tensor::new(info, i, Source::Request(&self.obj)))
        })
    }

    /// The input with this name.
    pub fn input(&self, name: &str) -> Option<Tensor<'_>> {
        self.inputs().find(|t| t.name == name)
    }

    /// The input with this name, or an invalid-argument error naming it.
    pub fn require_input(&self, name: &str) -> Result<Tensor<'_>, BackendError> {
        self.input(name)
            .ok_or_else(|| BackendError::invalid_argument(format!("missing input '{name}'")))
    }

    /// Names of the outputs the client asked for (empty: all).
    pub fn requested_outputs(&self) -> Vec<&str> {
        (0..self.obj.requested_output_count())
            .filter_map(|i| self.obj.requested_output(i).into_option())
            .map(|s| s.as_str())
            .collect()
    }

    /// Whether the client asked for this output (true when it asked for none in particular).
    pub fn wants_output(&self, name: &str) -> bool {
        let count = self.obj.requested_output_count();
        count == 0
            || (0..count).any(|i| {
                self.obj
                    .requested_output(i)
                    .into_option()
                    .is_some_and(|o| o.as_str() == name)
            })
    }

    /// Whether the client cancelled the request (or went away).
    pub fn is_cancelled(&self) -> bool {
        self.obj.is_cancelled()
    }

    /// The request's timeout in microseconds (0: none).
    pub fn timeout_microseconds(&self) -> u64 {
        self.obj.timeout_microseconds()
    }

    /// Where this request's responses go; it may be kept after the request is dropped.
    pub fn responder(&self) -> Responder {
        Responder::from_ffi(self.obj.responder())
    }

    /// A new response for this request, its outputs allocated by the server.
    pub fn response(&self) -> Response {
        self.responder().response()
    }

    /// Sends the request's one and only response: these outputs, or the error.
    pub fn respond(&self, result: Result<Vec<OutputTensor>, BackendError>) {
        self.responder().respond(result);
    }

    /// Builds the request's one and only response with `fill` (under a panic guard) and sends
    /// it, or sends the error `fill` returned.
    pub fn respond_with(&self, fill: impl FnOnce(&mut Response) -> Result<(), BackendError>) {
        let mut response = self.response();
        match crate::guard(|| fill(&mut response)) {
            Ok(()) => response.send(true),
            Err(e) => self.responder().send_error(e, true),
        }
    }
}

/// One response of an inference a backend ran through the host.
pub struct InferResult {
    /// The server's handle.
    obj: InferResultBox,
}

impl InferResult {
    /// Wraps the server's handle.
    pub fn from_ffi(obj: InferResultBox) -> Self {
        InferResult { obj }
    }

    /// The response's outputs.
    pub fn outputs(&self) -> impl Iterator<Item = Tensor<'_>> + '_ {
        (0..self.obj.output_count()).filter_map(|i| {
            let info = self.obj.output(i).into_option()?;
            Some(Tensor::new(info, i, Source::Result(&self.obj)))
        })
    }

    /// The output with this name.
    pub fn output(&self, name: &str) -> Option<Tensor<'_>> {
        self.outputs().find(|t| t.name == name)
    }

    /// The response's parameters.
    pub fn parameters(&self) -> impl Iterator<Item = Parameter> + '_ {
        (0..self.obj.parameter_count())
            .filter_map(|i| Parameter::from_ffi(&self.obj.parameter(i).into_option()?))
    }
}
