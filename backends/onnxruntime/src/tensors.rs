//! Moving tensor data between the server's encoding and ONNX Runtime values: data types,
//! input values built from the inputs of one or more requests, and output values read back in
//! the server's encoding.

use std::borrow::Cow;
use std::ffi::c_void;

use ferrum_backend_api::{BackendError, DataType, Tensor, bytes};
use ort::AsPointer;
use ort::memory::Allocator;
use ort::value::{DynTensor, DynValue, TensorElementType, ValueType};

use crate::model::IoInfo;

/// The Triton data type of an ONNX element type, where Triton has one.
pub fn triton_type(element: TensorElementType) -> Option<DataType> {
    use TensorElementType as E;
    Some(match element {
        E::Bool => DataType::BOOL,
        E::Uint8 => DataType::UINT8,
        E::Uint16 => DataType::UINT16,
        E::Uint32 => DataType::UINT32,
        E::Uint64 => DataType::UINT64,
        E::Int8 => DataType::INT8,
        E::Int16 => DataType::INT16,
        E::Int32 => DataType::INT32,
        E::Int64 => DataType::INT64,
        E::Float16 => DataType::FP16,
        E::Bfloat16 => DataType::BF16,
        E::Float32 => DataType::FP32,
        E::Float64 => DataType::FP64,
        E::String => DataType::BYTES,
        _ => return None,
    })
}

/// The element type and shape (-1 for a dynamic dimension) of a tensor value type.
pub fn tensor_signature(ty: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

/// Number of elements of a shape whose dimensions are all non-negative; `None` on overflow
/// or a negative dimension.
pub fn checked_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).ok()?;
        acc.checked_mul(d)
    })
}

/// An internal error for a failed ONNX Runtime call.
fn ort_error(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::internal(format!("ONNX Runtime failed to {what}: {e}"))
}

/// Turns an `OrtStatus` into a result.
fn check(status: ort::sys::OrtStatusPtr, what: &str) -> Result<(), BackendError> {
    // SAFETY: `status` was just returned by an ONNX Runtime call; this takes ownership of it.
    unsafe { ort::Error::result_from_status(status) }.map_err(|e| ort_error(what, e))
}

/// The data pointer of a (CPU) tensor value.
fn data_pointer(value: *const ort::sys::OrtValue) -> Result<*mut c_void, BackendError> {
    let mut data: *mut c_void = std::ptr::null_mut();
    // SAFETY: `value` is a live tensor value; ONNX Runtime only writes the out pointer.
    let status = unsafe { (ort::api().GetTensorMutableData)(value.cast_mut(), &mut data) };
    check(status, "find a tensor's data")?;
    Ok(data)
}

/// Builds one model input from the same input of one or more requests, joined along the first
/// dimension; `shape` is the joined shape. Bytes are copied straight into the new value.
pub fn input_value(
    info: &IoInfo,
    shape: &[i64],
    parts: &[Tensor<'_>],
) -> Result<DynTensor, BackendError> {
    let name = &info.name;
    let count = checked_count(shape).ok_or_else(|| {
        BackendError::internal(format!("input '{name}' has an impossible shape {shape:?}"))
    })?;
    let mut value = DynTensor::new(&Allocator::default(), info.element, shape.to_vec())
        .map_err(|e| ort_error("allocate an input tensor", e))?;
    if info.datatype == DataType::BYTES {
        write_strings(&mut value, name, count, parts)?;
        return Ok(value);
    }
    let total: usize = parts.iter().map(Tensor::byte_size).sum();
    let expected = info.element.byte_size(count);
    if expected != Some(total) {
        return Err(BackendError::internal(format!(
            "input '{name}' is {total} bytes but its joined shape {shape:?} needs {expected:?}"
        )));
    }
    if total == 0 {
        return Ok(value);
    }
    let base = data_pointer(value.ptr())?.cast::<u8>();
    if base.is_null() {
        return Err(ort_error("allocate an input tensor", "no data buffer"));
    }
    // SAFETY: ONNX Runtime allocated the `total` bytes this shape and type need at `base`; they
    // stay alive with `value`, which nothing else touches while this slice is in use.
    let buffer = unsafe { std::slice::from_raw_parts_mut(base, total) };
    let mut at = 0;
    for part in parts {
        let end = at + part.byte_size();
        part.copy_to(&mut buffer[at..end])?;
        at = end;
    }
    if info.datatype == DataType::BOOL {
        // ONNX Runtime's bool is one byte that must be 0 or 1; the protocol allows any non-zero.
        for b in buffer {
            *b = u8::from(*b != 0);
        }
    }
    Ok(value)
}

/// Fills a string tensor of `count` elements with the strings of the parts, in order. The
/// strings are counted again here: shared memory may have changed since the request was checked.
fn write_strings(
    value: &mut DynTensor,
    name: &str,
    count: usize,
    parts: &[Tensor<'_>],
) -> Result<(), BackendError> {
    let mut index = 0usize;
    for part in parts {
        let data = part.data();
        let items = bytes::decode(&data).map_err(|e| {
            BackendError::invalid_argument(format!("input '{name}': {}", e.message))
        })?;
        for item in items {
            if index >= count {
                return Err(BackendError::invalid_argument(format!(
                    "input '{name}' holds more strings than its shape {shape:?} allows",
                    shape = part.shape
                )));
            }
            let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
            // SAFETY: `value` is a string tensor of `count` elements and `index < count`;
            // ONNX Runtime sizes element `index` to `item.len()` bytes and returns its buffer.
            let status = unsafe {
                (ort::api().GetResizedStringTensorElementBuffer)(
                    value.ptr_mut(),
                    index,
                    item.len(),
                    &mut buffer,
                )
            };
            check(status, "size a string element")?;
            if !item.is_empty() {
                if buffer.is_null() {
                    return Err(ort_error("size a string element", "no buffer"));
                }
                // SAFETY: `buffer` holds `item.len()` writable bytes, distinct from `item`.
                unsafe {
                    std::ptr::copy_nonoverlapping(item.as_ptr(), buffer.cast::<u8>(), item.len())
                };
            }
            index += 1;
        }
    }
    if index != count {
        return Err(BackendError::invalid_argument(format!(
            "input '{name}' holds {index} strings but its shape needs {count}"
        )));
    }
    Ok(())
}

/// An output read back from ONNX Runtime, in the server's encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputData<'v> {
    /// The Triton data type.
    pub datatype: DataType,
    /// The full shape.
    pub shape: Vec<i64>,
    /// The elements: for fixed-size types borrowed from the ONNX Runtime value, for `BYTES`
    /// each string after its 4-byte length.
    pub data: Cow<'v, [u8]>,
}

impl<'v> OutputData<'v> {
    /// Reads an output value (a CPU tensor).
    pub fn read(value: &'v DynValue) -> Result<OutputData<'v>, BackendError> {
        let (element, shape) = tensor_signature(value.dtype()).ok_or_else(|| {
            BackendError::unsupported(format!(
                "the model produced a {} where a tensor was expected",
                value.dtype()
            ))
        })?;
        let datatype = triton_type(element).ok_or_else(|| {
            BackendError::unsupported(format!(
                "the model produced a tensor of {element:?}, which has no Triton data type"
            ))
        })?;
        let count = checked_count(&shape).ok_or_else(|| {
            BackendError::internal(format!("the model produced an output of shape {shape:?}"))
        })?;
        if element == TensorElementType::String {
            let (content, offsets) = read_strings(value, count)?;
            return Ok(OutputData::strings(shape, &content, &offsets));
        }
        let len = element.byte_size(count).ok_or_else(|| {
            BackendError::internal(format!("no byte size for {element:?} outputs"))
        })?;
        let data: &'v [u8] = if len == 0 {
            &[]
        } else {
            let ptr = data_pointer(value.ptr())?;
            if ptr.is_null() {
                return Err(ort_error("read an output", "no data buffer"));
            }
            // SAFETY: a CPU tensor of `count` elements of this type holds `len` bytes at `ptr`,
            // owned by `value` and left unchanged while it is borrowed.
            unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
        };
        Ok(OutputData {
            datatype,
            shape,
            data: Cow::Borrowed(data),
        })
    }

    /// A `BYTES` output from the strings between consecutive `offsets` of `content`.
    fn strings(shape: Vec<i64>, content: &[u8], offsets: &[usize]) -> OutputData<'static> {
        let data = bytes::encode(
            offsets
                .windows(2)
                .map(|w| content.get(w[0]..w[1]).unwrap_or_default()),
        );
        OutputData {
            datatype: DataType::BYTES,
            shape,
            data: Cow::Owned(data),
        }
    }
}

/// A string tensor's bytes and the offset where each string starts, then the end; taken as
/// they are (not required to be UTF-8).
fn read_strings(value: &DynValue, count: usize) -> Result<(Vec<u8>, Vec<usize>), BackendError> {
    if count == 0 {
        return Ok((Vec::new(), vec![0]));
    }
    let mut total = 0usize;
    // SAFETY: `value` is a live string tensor; ONNX Runtime writes the length.
    let status = unsafe { (ort::api().GetStringTensorDataLength)(value.ptr(), &mut total) };
    check(status, "measure a string output")?;
    let mut content = vec![0u8; total];
    let mut offsets = vec![0usize; count + 1];
    // SAFETY: `content` holds `total` bytes and `offsets` at least `count` entries, as asked.
    let status = unsafe {
        (ort::api().GetStringTensorContent)(
            value.ptr(),
            content.as_mut_ptr().cast(),
            total,
            offsets.as_mut_ptr(),
            count,
        )
    };
    check(status, "read a string output")?;
    offsets[count] = total;
    if offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(ort_error("read a string output", "offsets out of order"));
    }
    Ok((content, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_triton_type_has_an_onnx_type() {
        use TensorElementType as E;
        let all = [
            E::Bool,
            E::Uint8,
            E::Uint16,
            E::Uint32,
            E::Uint64,
            E::Int8,
            E::Int16,
            E::Int32,
            E::Int64,
            E::Float16,
            E::Bfloat16,
            E::Float32,
            E::Float64,
            E::String,
        ];
        let mapped: Vec<DataType> = all.iter().filter_map(|e| triton_type(*e)).collect();
        for dt in DataType::ALL {
            assert!(mapped.contains(&dt), "{dt} has no ONNX type");
        }
        assert_eq!(triton_type(E::Complex64), None);
    }

    #[test]
    fn counts_reject_overflow_and_negative_dims() {
        assert_eq!(checked_count(&[]), Some(1));
        assert_eq!(checked_count(&[2, 3]), Some(6));
        assert_eq!(checked_count(&[2, -1]), None);
        assert_eq!(checked_count(&[i64::MAX, i64::MAX]), None);
    }

    #[test]
    fn string_outputs_are_encoded_as_bytes_tensors() {
        // Two rows of two strings: "a", "bc" | "def", "g".
        let strings = OutputData::strings(vec![2, 2], b"abcdefg", &[0, 1, 3, 6, 7]);
        assert_eq!(
            bytes::decode(&strings.data).unwrap(),
            vec![&b"a"[..], b"bc", b"def", b"g"]
        );
        let empty = OutputData::strings(vec![0, 3], b"", &[0]);
        assert!(empty.data.is_empty());
    }
}
