//! Moving tensor data between the server's encoding and ONNX Runtime values: data types,
//! input values built from one or more requests, and output values read back as bytes.

use std::ffi::c_void;

use ferrum_backend_api::{BackendError, DataType, Tensor, bytes};
use ort::AsPointer;
use ort::memory::Allocator;
use ort::value::{DynTensor, DynValue, TensorElementType, ValueType};

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
/// dimension; `shape` is the joined shape. The parts have been checked against their shapes.
pub fn input_value(
    element: TensorElementType,
    datatype: DataType,
    shape: &[i64],
    parts: &[&Tensor<'_>],
) -> Result<DynTensor, BackendError> {
    let mut value = DynTensor::new(&Allocator::default(), element, shape.to_vec())
        .map_err(|e| ort_error("allocate an input tensor", e))?;
    if datatype == DataType::BYTES {
        let mut index = 0usize;
        for part in parts {
            for item in bytes::decode(part.data())? {
                let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
                // SAFETY: `value` is a string tensor with at least `index + 1` elements (the
                // element counts were checked); ONNX Runtime sizes element `index` to
                // `item.len()` bytes and returns its buffer.
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
                        std::ptr::copy_nonoverlapping(
                            item.as_ptr(),
                            buffer.cast::<u8>(),
                            item.len(),
                        )
                    };
                }
                index += 1;
            }
        }
        return Ok(value);
    }
    let total: usize = parts.iter().map(|p| p.data().len()).sum();
    if total == 0 {
        return Ok(value);
    }
    let expected = checked_count(shape).and_then(|n| element.byte_size(n));
    if expected != Some(total) {
        return Err(BackendError::internal(format!(
            "input data is {total} bytes but its joined shape {shape:?} needs {expected:?}"
        )));
    }
    let base = data_pointer(value.ptr())?.cast::<u8>();
    if base.is_null() {
        return Err(ort_error("allocate an input tensor", "no data buffer"));
    }
    let mut offset = 0usize;
    for part in parts {
        let data = part.data();
        // SAFETY: the tensor buffer holds `total` bytes and the parts add up to `total`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset), data.len()) };
        offset += data.len();
    }
    if datatype == DataType::BOOL {
        // ONNX Runtime's bool is one byte that must be 0 or 1; the protocol allows any non-zero.
        // SAFETY: the buffer holds `total` initialised bytes, written above.
        let written = unsafe { std::slice::from_raw_parts_mut(base, total) };
        for b in written {
            *b = u8::from(*b != 0);
        }
    }
    Ok(value)
}

/// An output read back from ONNX Runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputData {
    /// The Triton data type.
    pub datatype: DataType,
    /// The full shape.
    pub shape: Vec<i64>,
    /// The elements.
    pub body: Body,
}

/// Output elements: fixed-size little-endian values, or strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Contiguous elements.
    Fixed(Vec<u8>),
    /// All strings back to back, and where each starts (one more entry: the end).
    Strings {
        /// The strings' bytes.
        content: Vec<u8>,
        /// Start of each string, then the total length.
        offsets: Vec<usize>,
    },
}

impl OutputData {
    /// Reads an output value (a CPU tensor).
    pub fn read(value: &DynValue) -> Result<OutputData, BackendError> {
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
        let body = if element == TensorElementType::String {
            read_strings(value, count)?
        } else {
            let len = element.byte_size(count).ok_or_else(|| {
                BackendError::internal(format!("no byte size for {element:?} outputs"))
            })?;
            let mut data = Vec::with_capacity(len);
            if len > 0 {
                let ptr = data_pointer(value.ptr())?;
                if ptr.is_null() {
                    return Err(ort_error("read an output", "no data buffer"));
                }
                // SAFETY: a CPU tensor of `count` elements of this type holds `len` bytes at
                // `ptr`, alive while `value` is.
                data.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(ptr.cast::<u8>(), len)
                });
            }
            Body::Fixed(data)
        };
        Ok(OutputData {
            datatype,
            shape,
            body,
        })
    }

    /// The whole output as the server's tensor.
    pub fn into_tensor(self, name: &str) -> ferrum_backend_api::OutputTensor {
        let data = match self.body {
            Body::Fixed(data) => data,
            Body::Strings { content, offsets } => encode_strings(&content, &offsets),
        };
        ferrum_backend_api::OutputTensor::new(name, self.datatype, self.shape, data)
    }

    /// Rows `start..start + rows` of the first dimension as the server's tensor; `None` when the
    /// output has no first dimension to split.
    pub fn rows(
        &self,
        name: &str,
        start: usize,
        rows: usize,
    ) -> Option<ferrum_backend_api::OutputTensor> {
        let total = usize::try_from(*self.shape.first()?).ok()?;
        if start.checked_add(rows)? > total {
            return None;
        }
        let mut shape = self.shape.clone();
        shape[0] = i64::try_from(rows).ok()?;
        let per_row = checked_count(&self.shape[1..])?;
        let data = match &self.body {
            Body::Fixed(data) => {
                let row_bytes = data.len().checked_div(total).unwrap_or(0);
                data.get(start * row_bytes..(start + rows) * row_bytes)?
                    .to_vec()
            }
            Body::Strings { content, offsets } => {
                let first = start * per_row;
                let last = (start + rows) * per_row;
                encode_strings(content, offsets.get(first..=last)?)
            }
        };
        Some(ferrum_backend_api::OutputTensor::new(
            name,
            self.datatype,
            shape,
            data,
        ))
    }
}

/// Triton's BYTES encoding of the strings between consecutive `offsets`.
fn encode_strings(content: &[u8], offsets: &[usize]) -> Vec<u8> {
    bytes::encode(
        offsets
            .windows(2)
            .map(|w| content.get(w[0]..w[1]).unwrap_or_default()),
    )
}

/// A string tensor's bytes and offsets, taken as they are (not required to be UTF-8).
fn read_strings(value: &DynValue, count: usize) -> Result<Body, BackendError> {
    if count == 0 {
        return Ok(Body::Strings {
            content: Vec::new(),
            offsets: vec![0],
        });
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
    Ok(Body::Strings { content, offsets })
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
    fn rows_split_fixed_and_string_outputs() {
        let fixed = OutputData {
            datatype: DataType::INT16,
            shape: vec![3, 2],
            body: Body::Fixed((0u8..12).collect()),
        };
        let t = fixed.rows("y", 1, 2).unwrap();
        assert_eq!(t.shape.as_slice(), &[2, 2]);
        assert_eq!(t.data.as_slice(), &[4, 5, 6, 7, 8, 9, 10, 11]);
        assert!(fixed.rows("y", 2, 2).is_none());
        let strings = OutputData {
            datatype: DataType::BYTES,
            shape: vec![2, 2],
            body: Body::Strings {
                content: b"abcdefg".to_vec(),
                offsets: vec![0, 1, 3, 6, 7],
            },
        };
        let t = strings.rows("s", 1, 1).unwrap();
        assert_eq!(t.shape.as_slice(), &[1, 2]);
        assert_eq!(
            bytes::decode(t.data.as_slice()).unwrap(),
            vec![&b"def"[..], b"g"]
        );
        let all = strings.into_tensor("s");
        assert_eq!(
            bytes::decode(all.data.as_slice()).unwrap(),
            vec![&b"a"[..], b"bc", b"def", b"g"]
        );
    }
}
