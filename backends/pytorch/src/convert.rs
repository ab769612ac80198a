//! Tensors across the boundary: request bytes into libtorch tensors, libtorch tensors into
//! response bytes. Every check that request data could fail returns an error naming the tensor.

use std::borrow::Cow;

use ferrum_backend_api::{BackendError, DataType, OutputTensor, Tensor};
use tch::Kind;

/// The element types this backend moves in and out of libtorch, as config type names.
pub const SUPPORTED_CONFIG_TYPES: [&str; 10] = [
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_BF16",
    "TYPE_FP32",
    "TYPE_FP64",
];

/// The libtorch element type for a protocol data type, if libtorch has one we support.
pub fn kind_of(datatype: DataType) -> Option<Kind> {
    Some(match datatype {
        DataType::BOOL => Kind::Bool,
        DataType::UINT8 => Kind::Uint8,
        DataType::INT8 => Kind::Int8,
        DataType::INT16 => Kind::Int16,
        DataType::INT32 => Kind::Int,
        DataType::INT64 => Kind::Int64,
        DataType::FP16 => Kind::Half,
        DataType::BF16 => Kind::BFloat16,
        DataType::FP32 => Kind::Float,
        DataType::FP64 => Kind::Double,
        _ => return None,
    })
}

/// The protocol data type for a libtorch element type, if it has one.
pub fn datatype_of(kind: Kind) -> Option<DataType> {
    Some(match kind {
        Kind::Bool => DataType::BOOL,
        Kind::Uint8 => DataType::UINT8,
        Kind::Int8 => DataType::INT8,
        Kind::Int16 => DataType::INT16,
        Kind::Int => DataType::INT32,
        Kind::Int64 => DataType::INT64,
        Kind::Half => DataType::FP16,
        Kind::BFloat16 => DataType::BF16,
        Kind::Float => DataType::FP32,
        Kind::Double => DataType::FP64,
        _ => return None,
    })
}

/// An input's bytes as one request (or a batch of requests, joined) holds them.
#[derive(Clone, Copy, Debug)]
pub struct InputData<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type the client sent.
    pub datatype: DataType,
    /// Shape the client sent.
    pub shape: &'a [i64],
    /// Contiguous little-endian elements.
    pub data: &'a [u8],
}

/// Checks an input's type, shape and byte count against the declared type; returns the
/// libtorch element type.
pub fn check_input(
    name: &str,
    datatype: DataType,
    shape: &[i64],
    byte_size: usize,
    declared: DataType,
) -> Result<Kind, BackendError> {
    if datatype != declared {
        return Err(BackendError::invalid_argument(format!(
            "input '{name}' has type {datatype}, but the model expects {declared}"
        )));
    }
    let kind = kind_of(declared).ok_or_else(|| {
        BackendError::invalid_argument(format!(
            "input '{name}' has type {declared}, which the pytorch backend does not support"
        ))
    })?;
    if let Some(dim) = shape.iter().find(|&&d| d < 0) {
        return Err(BackendError::invalid_argument(format!(
            "input '{name}' has a negative dimension {dim} in shape {shape:?}"
        )));
    }
    let expected = shape
        .iter()
        .try_fold(kind.elt_size_in_bytes(), |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
        .ok_or_else(|| {
            BackendError::invalid_argument(format!("input '{name}' shape {shape:?} is too large"))
        })?;
    if byte_size != expected {
        return Err(BackendError::invalid_argument(format!(
            "input '{name}' holds {byte_size} bytes, but shape {shape:?} of {declared} needs {expected}"
        )));
    }
    Ok(kind)
}

/// Copies input bytes into a new libtorch tensor of the declared type.
pub fn to_torch(input: &InputData<'_>, declared: DataType) -> Result<tch::Tensor, BackendError> {
    let InputData {
        name,
        datatype,
        shape,
        data,
    } = *input;
    let kind = check_input(name, datatype, shape, data.len(), declared)?;
    // A libtorch bool is one byte that must be 0 or 1; the wire allows any nonzero byte.
    let data: Cow<'_, [u8]> = if kind == Kind::Bool && data.iter().any(|&b| b > 1) {
        Cow::Owned(data.iter().map(|&b| u8::from(b != 0)).collect())
    } else {
        Cow::Borrowed(data)
    };
    tch::Tensor::f_from_data_size(&data, shape, kind).map_err(|e| {
        BackendError::invalid_argument(format!(
            "input '{name}' cannot be made into a tensor: {}",
            crate::torch_message(&e)
        ))
    })
}

/// Copies a request's input (a view of the server's buffers) into a new libtorch tensor.
pub fn tensor_to_torch(
    input: &Tensor<'_>,
    declared: DataType,
) -> Result<tch::Tensor, BackendError> {
    check_input(
        input.name,
        input.datatype,
        input.shape,
        input.byte_size(),
        declared,
    )?;
    let data = input.data();
    to_torch(
        &InputData {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            data: &data,
        },
        declared,
    )
}

/// Checks a tensor the model returned against the declared type and makes it a contiguous
/// CPU tensor, ready to be copied out.
pub fn output_tensor(
    name: &str,
    tensor: &tch::Tensor,
    declared: DataType,
) -> Result<tch::Tensor, BackendError> {
    if !tensor.defined() {
        return Err(BackendError::internal(format!(
            "the model returned an undefined tensor for output '{name}'"
        )));
    }
    let kind = tensor.f_kind().map_err(|e| {
        BackendError::internal(format!(
            "output '{name}' has an element type the pytorch backend cannot read: {}",
            crate::torch_message(&e)
        ))
    })?;
    let actual = datatype_of(kind);
    if actual != Some(declared) {
        let actual = actual.map_or_else(|| format!("{kind:?}"), |dt| dt.to_string());
        return Err(BackendError::internal(format!(
            "output '{name}' is {actual}, but the model config declares {declared}"
        )));
    }
    tensor
        .f_to(tch::Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(|e| {
            BackendError::internal(format!(
                "output '{name}' cannot be read: {}",
                crate::torch_message(&e)
            ))
        })
}

/// Copies the bytes of a tensor from [`output_tensor`] into `out`, which must be exactly
/// their size.
pub fn copy_output(name: &str, tensor: &tch::Tensor, out: &mut [u8]) -> Result<(), BackendError> {
    let numel = tensor.numel();
    let size = tensor
        .f_kind()
        .map(|k| numel.saturating_mul(k.elt_size_in_bytes()))
        .map_err(|e| {
            BackendError::internal(format!(
                "output '{name}' cannot be read: {}",
                crate::torch_message(&e)
            ))
        })?;
    if out.len() != size {
        return Err(BackendError::internal(format!(
            "output '{name}' holds {size} bytes, but its buffer has room for {}",
            out.len()
        )));
    }
    if size == 0 {
        return Ok(());
    }
    tensor.f_copy_data_u8(out, numel).map_err(|e| {
        BackendError::internal(format!(
            "output '{name}' cannot be copied: {}",
            crate::torch_message(&e)
        ))
    })
}

/// Copies a tensor the model returned into an owned output of the declared type.
pub fn from_torch(
    name: &str,
    tensor: &tch::Tensor,
    declared: DataType,
) -> Result<OutputTensor, BackendError> {
    let tensor = output_tensor(name, tensor, declared)?;
    let size = tensor
        .numel()
        .saturating_mul(declared.element_size().unwrap_or(1));
    let mut data = vec![0u8; size];
    copy_output(name, &tensor, &mut data)?;
    Ok(OutputTensor::new(name, declared, tensor.size(), data))
}
