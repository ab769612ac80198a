//! The `add_sub` backend: Triton's classic `simple` models.
//! `OUTPUT0 = INPUT0 + INPUT1` and `OUTPUT1 = INPUT0 - INPUT1`, element-wise, in the inputs'
//! data type: INT32 (`simple`), INT8 (`simple_int8`), the other integer types and FP32, and
//! BYTES (`simple_string`: every element the decimal text of an integer, answered as text).

use ferrum_backend_api::prelude::*;
use ferrum_backend_api::{DataType, Element, bytes};

/// The add/sub model; it holds no state.
struct AddSub;

/// Integer types add and subtract with wrap-around, as the C++ example models do.
trait Arith: Element {
    /// `self + other`.
    fn add(self, other: Self) -> Self;
    /// `self - other`.
    fn sub(self, other: Self) -> Self;
}

macro_rules! wrapping_arith {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            fn add(self, other: Self) -> Self { self.wrapping_add(other) }
            fn sub(self, other: Self) -> Self { self.wrapping_sub(other) }
        }
    )*};
}
wrapping_arith!(i8, i16, i32, i64, u8, u16, u32, u64);

impl Arith for f32 {
    fn add(self, other: Self) -> Self {
        self + other
    }
    fn sub(self, other: Self) -> Self {
        self - other
    }
}

/// Adds and subtracts two inputs of element type `T`.
fn numeric<T: Arith>(a: &Tensor<'_>, b: &Tensor<'_>) -> Result<Vec<OutputTensor>, BackendError> {
    let (a, b, shape) = (a.to_vec::<T>()?, b.to_vec::<T>()?, a.shape().to_vec());
    let sum: Vec<T> = a.iter().zip(&b).map(|(x, y)| x.add(*y)).collect();
    let diff: Vec<T> = a.iter().zip(&b).map(|(x, y)| x.sub(*y)).collect();
    Ok(vec![
        OutputTensor::from_elements("OUTPUT0", shape.clone(), &sum),
        OutputTensor::from_elements("OUTPUT1", shape, &diff),
    ])
}

/// The integers a BYTES input's elements spell.
fn integers(tensor: &Tensor<'_>) -> Result<Vec<i64>, BackendError> {
    let data = tensor.data();
    bytes::decode(&data)?
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            std::str::from_utf8(item)
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    BackendError::invalid_argument(format!(
                        "element {i} of {} is '{}', not the text of an integer",
                        tensor.name,
                        String::from_utf8_lossy(item)
                    ))
                })
        })
        .collect()
}

/// Adds and subtracts two BYTES inputs whose elements are integers written as text.
fn strings(a: &Tensor<'_>, b: &Tensor<'_>) -> Result<Vec<OutputTensor>, BackendError> {
    let (x, y, shape) = (integers(a)?, integers(b)?, a.shape().to_vec());
    if x.len() != y.len() {
        return Err(BackendError::invalid_argument(format!(
            "INPUT0 holds {} elements and INPUT1 {}; they must match",
            x.len(),
            y.len()
        )));
    }
    let text = |f: fn(i64, i64) -> i64| -> Vec<u8> {
        bytes::encode(x.iter().zip(&y).map(|(p, q)| f(*p, *q).to_string()))
    };
    Ok(vec![
        OutputTensor::new(
            "OUTPUT0",
            DataType::BYTES,
            shape.clone(),
            text(i64::wrapping_add),
        ),
        OutputTensor::new("OUTPUT1", DataType::BYTES, shape, text(i64::wrapping_sub)),
    ])
}

impl SimpleModel for AddSub {
    fn load(_ctx: &ModelContext) -> Result<Self, BackendError> {
        Ok(AddSub)
    }

    fn infer(&self, request: &Request) -> Result<Vec<OutputTensor>, BackendError> {
        let input0 = request.require_input("INPUT0")?;
        let input1 = request.require_input("INPUT1")?;
        if input0.shape() != input1.shape() {
            return Err(BackendError::invalid_argument(format!(
                "INPUT0 has shape {:?} but INPUT1 has shape {:?}; they must match",
                input0.shape(),
                input1.shape()
            )));
        }
        if input0.datatype != input1.datatype {
            return Err(BackendError::invalid_argument(format!(
                "INPUT0 has type {} but INPUT1 has type {}; they must match",
                input0.datatype, input1.datatype
            )));
        }
        match input0.datatype {
            DataType::INT32 => numeric::<i32>(&input0, &input1),
            DataType::INT8 => numeric::<i8>(&input0, &input1),
            DataType::INT16 => numeric::<i16>(&input0, &input1),
            DataType::INT64 => numeric::<i64>(&input0, &input1),
            DataType::UINT8 => numeric::<u8>(&input0, &input1),
            DataType::UINT16 => numeric::<u16>(&input0, &input1),
            DataType::UINT32 => numeric::<u32>(&input0, &input1),
            DataType::UINT64 => numeric::<u64>(&input0, &input1),
            DataType::FP32 => numeric::<f32>(&input0, &input1),
            DataType::BYTES => strings(&input0, &input1),
            other => Err(BackendError::invalid_argument(format!(
                "add_sub takes integer, FP32 or BYTES inputs, not {other}"
            ))),
        }
    }
}

export_model!(AddSub);
