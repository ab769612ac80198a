//! The safe side of answering: a request's responder, responses whose output buffers the
//! server allocates, and an owned output tensor for backends that build outputs first.

use abi_stable::std_types::{RSlice, RStr};

use crate::ffi::{self, ResponseBox};
use crate::request::{ParamValue, Tensor};
use crate::types::{BackendError, DataType, Memory, RESPONSE_FINAL};

/// Sends the responses of one request. Cheap to clone; clones may be kept after `execute`
/// returns, to answer later or several times (decoupled models).
#[derive(Clone)]
pub struct Responder {
    /// The server's handle.
    obj: ffi::ResponderHandle,
}

impl Responder {
    /// Wraps the server's handle.
    pub fn from_ffi(obj: ffi::ResponderHandle) -> Self {
        Responder { obj }
    }

    /// A new, empty response.
    pub fn response(&self) -> Response {
        Response {
            obj: Some(self.obj.new_response()),
            responder: self.obj.clone(),
            failed: None,
        }
    }

    /// Sends an error; `is_final` ends the request.
    pub fn send_error(&self, error: BackendError, is_final: bool) {
        self.obj
            .send_error(error, if is_final { RESPONSE_FINAL } else { 0 });
    }

    /// Ends the request without a further response (the final flag alone).
    pub fn finish(&self) {
        self.obj.send_flags(RESPONSE_FINAL);
    }

    /// Whether the client cancelled the request (or went away).
    pub fn is_cancelled(&self) -> bool {
        self.obj.is_cancelled()
    }

    /// Sends these outputs as one response (copied into server buffers); `is_final` ends the
    /// request.
    pub fn send_outputs(
        &self,
        outputs: &[OutputTensor],
        is_final: bool,
    ) -> Result<(), BackendError> {
        let mut response = self.response();
        for output in outputs {
            response.add_tensor(output)?;
        }
        response.send(is_final);
        Ok(())
    }

    /// Sends the request's one and only response: these outputs, or the error.
    pub fn respond(&self, result: Result<Vec<OutputTensor>, BackendError>) {
        let sent = result.and_then(|outputs| self.send_outputs(&outputs, true));
        if let Err(e) = sent {
            self.send_error(e, true);
        }
    }
}

/// One response being built. Each output is written straight into a buffer the server
/// allocated for it (the client's shared memory region when it asked for one). A response
/// can be marked failed ([`Response::fail`]); sending it then sends the error instead, so one
/// request's failure in a batch stays its own.
pub struct Response {
    /// The server's handle; `None` once sent.
    obj: Option<ResponseBox>,
    /// The request's responder, to send an error instead of the response.
    responder: ffi::ResponderHandle,
    /// Set when building the response failed.
    failed: Option<BackendError>,
}

impl Response {
    /// Adds an output of a fixed-size type and returns its buffer (zeroed or not: write it all).
    pub fn output(
        &mut self,
        name: &str,
        datatype: DataType,
        shape: &[i64],
    ) -> Result<&mut [u8], BackendError> {
        let size = datatype.element_size().ok_or_else(|| {
            BackendError::invalid_argument(format!(
                "output '{name}' of type {datatype} has no fixed element size; use output_with_size"
            ))
        })?;
        let bytes = crate::element_count(shape)
            .checked_mul(size)
            .ok_or_else(|| {
                BackendError::invalid_argument(format!("output '{name}' is too large"))
            })?;
        self.output_with_size(name, datatype, shape, bytes)
    }

    /// Adds an output of exactly `byte_size` bytes (any type, `BYTES` included) and returns its
    /// buffer.
    pub fn output_with_size(
        &mut self,
        name: &str,
        datatype: DataType,
        shape: &[i64],
        byte_size: usize,
    ) -> Result<&mut [u8], BackendError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let obj = self
            .obj
            .as_mut()
            .ok_or_else(|| BackendError::internal("response used after it was sent"))?;
        let buffer = obj
            .add_output(
                RStr::from_str(name),
                datatype,
                RSlice::from_slice(shape),
                byte_size,
                Memory::CPU,
            )
            .into_result()?;
        if buffer.len != byte_size || (byte_size > 0 && buffer.ptr.is_null()) {
            return Err(BackendError::internal(format!(
                "the server gave output '{name}' {} bytes, {byte_size} were asked for",
                buffer.len
            )));
        }
        if byte_size == 0 {
            return Ok(&mut []);
        }
        // SAFETY: the server allocated `len` writable bytes for this output, reserved for this
        // response until it is sent or dropped; the borrow of `self` keeps it unsent.
        Ok(unsafe { std::slice::from_raw_parts_mut(buffer.ptr, buffer.len) })
    }

    /// Adds an output holding a copy of these bytes.
    pub fn output_from(
        &mut self,
        name: &str,
        datatype: DataType,
        shape: &[i64],
        data: &[u8],
    ) -> Result<(), BackendError> {
        self.output_with_size(name, datatype, shape, data.len())?
            .copy_from_slice(data);
        Ok(())
    }

    /// Adds an output holding a copy of an input (or any tensor view) under another name.
    pub fn output_copy_of(&mut self, name: &str, tensor: &Tensor<'_>) -> Result<(), BackendError> {
        let buffer =
            self.output_with_size(name, tensor.datatype, tensor.shape, tensor.byte_size())?;
        tensor.copy_to(buffer)
    }

    /// Adds an owned output tensor (copied).
    pub fn add_tensor(&mut self, tensor: &OutputTensor) -> Result<(), BackendError> {
        self.output_from(&tensor.name, tensor.datatype, &tensor.shape, &tensor.data)
    }

    /// Adds a response parameter.
    pub fn parameter(&mut self, key: &str, value: ParamValue) {
        if let Some(obj) = self.obj.as_mut() {
            obj.add_parameter(value.to_ffi(key));
        }
    }

    /// Marks the response failed (the first error is kept): sending it sends the error.
    pub fn fail(&mut self, error: BackendError) {
        if self.failed.is_none() {
            self.failed = Some(error);
        }
    }

    /// The error the response was marked failed with, if any.
    pub fn failure(&self) -> Option<&BackendError> {
        self.failed.as_ref()
    }

    /// Sends the response (or its failure); `is_final` ends the request.
    pub fn send(mut self, is_final: bool) {
        let flags = if is_final { RESPONSE_FINAL } else { 0 };
        let Some(mut obj) = self.obj.take() else {
            return;
        };
        match self.failed.take() {
            Some(error) => self.responder.send_error(error, flags),
            None => obj.send(flags),
        }
    }
}

/// An output tensor a backend built in its own memory; copied into the server's buffer when
/// sent. Prefer [`Response::output`] to write outputs in place.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputTensor {
    /// Tensor name as in the model config.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Full shape, including the batch dimension when the model batches.
    pub shape: Vec<i64>,
    /// Contiguous little-endian elements; for `BYTES`, length-prefixed strings.
    pub data: Vec<u8>,
}

impl OutputTensor {
    /// An output from raw bytes.
    pub fn new(name: &str, datatype: DataType, shape: Vec<i64>, data: Vec<u8>) -> Self {
        OutputTensor {
            name: name.to_string(),
            datatype,
            shape,
            data,
        }
    }

    /// An output from typed elements.
    pub fn from_elements<T: crate::Element>(name: &str, shape: Vec<i64>, values: &[T]) -> Self {
        let mut data = Vec::with_capacity(std::mem::size_of_val(values));
        for v in values {
            v.write_le(&mut data);
        }
        Self::new(name, T::DATATYPE, shape, data)
    }

    /// A copy of an input under another name.
    pub fn copy_of(name: &str, input: &Tensor<'_>) -> Self {
        OutputTensor {
            name: name.to_string(),
            datatype: input.datatype,
            shape: input.shape.to_vec(),
            data: input.data().into_owned(),
        }
    }
}
