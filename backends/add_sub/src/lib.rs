//! The `add_sub` backend: Triton's classic `simple` model.
//! `OUTPUT0 = INPUT0 + INPUT1` and `OUTPUT1 = INPUT0 - INPUT1`, element-wise over INT32.

use ferrum_backend_api::prelude::*;

/// The add/sub model; it holds no state.
struct AddSub;

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
        let a = input0.to_vec::<i32>()?;
        let b = input1.to_vec::<i32>()?;
        let sum: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
        let diff: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x.wrapping_sub(*y)).collect();
        let shape = input0.shape().to_vec();
        Ok(vec![
            OutputTensor::from_elements("OUTPUT0", shape.clone(), &sum),
            OutputTensor::from_elements("OUTPUT1", shape, &diff),
        ])
    }
}

export_model!(AddSub);
