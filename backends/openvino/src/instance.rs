//! One instance: a compiled model and its infer request, run one request at a time.

use std::sync::Arc;

use ferrum_backend_api::prelude::*;
use openvino::{CompiledModel, InferRequest, Shape};

use crate::model::{IoSpec, Shared};
use crate::ports::shape_text;
use crate::runtime::ov_error;

/// An execution instance. Fields drop in order: the request before the compiled model.
pub struct OvInstance {
    /// The infer request every inference of this instance goes through.
    request: InferRequest,
    /// The compiled model the request belongs to.
    _compiled: CompiledModel,
    /// The model's inputs, outputs and batching.
    shared: Arc<Shared>,
}

/// An input checked against its spec: the shape OpenVINO gets and the bytes to put there.
struct Prepared<'a> {
    spec: &'a IoSpec,
    shape: Vec<i64>,
    data: &'a [u8],
}

impl OvInstance {
    /// Creates the instance's infer request.
    pub fn new(mut compiled: CompiledModel, shared: Arc<Shared>) -> Result<Self, BackendError> {
        let request = compiled.create_infer_request().map_err(ov_error(format!(
            "OpenVINO cannot create an infer request for model '{}'",
            shared.model
        )))?;
        Ok(OvInstance {
            request,
            _compiled: compiled,
            shared,
        })
    }

    /// Checks one input against its spec; returns its shape and bytes, and its batch size.
    fn prepare<'a>(
        &self,
        request: &Request<'a>,
        spec: &'a IoSpec,
    ) -> Result<(Prepared<'a>, Option<i64>), BackendError> {
        let shared = &self.shared;
        let input = request.require_input(&spec.name)?;
        if input.datatype != spec.datatype {
            return Err(BackendError::invalid_argument(format!(
                "input '{}' has type {}, model '{}' expects {}",
                spec.name, input.datatype, shared.model, spec.datatype
            )));
        }
        let shape = input.shape();
        if let Some(d) = shape.iter().find(|&&d| d < 0) {
            return Err(BackendError::invalid_argument(format!(
                "input '{}' has a negative dimension {d} in shape {shape:?}",
                spec.name
            )));
        }
        let expected_bytes = shape
            .iter()
            .try_fold(spec.element_size, |acc, &d| {
                usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
            })
            .ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "input '{}' shape {shape:?} is too large",
                    spec.name
                ))
            })?;
        if input.data().len() != expected_bytes {
            return Err(BackendError::invalid_argument(format!(
                "input '{}' holds {} bytes; shape {shape:?} of {} needs {expected_bytes}",
                spec.name,
                input.data().len(),
                spec.datatype
            )));
        }
        let batch = if shared.max_batch_size > 0 {
            match shape.first() {
                Some(&b) if b >= 1 && b <= shared.max_batch_size => Some(b),
                _ => {
                    return Err(BackendError::invalid_argument(format!(
                        "input '{}' shape {shape:?} needs a batch size of 1..={} first",
                        spec.name, shared.max_batch_size
                    )));
                }
            }
        } else {
            None
        };
        let mut ov_shape = shape.to_vec();
        let short_batch = batch.filter(|&b| shared.static_batch && b != shared.max_batch_size);
        if let Some(b) = short_batch {
            if !shared.batch_padding {
                return Err(BackendError::invalid_argument(format!(
                    "input '{}' has batch size {b}, but model '{}' runs only batches of \
                     exactly {} (SKIP_OV_DYNAMIC_BATCHSIZE; set ENABLE_BATCH_PADDING to YES \
                     to pad smaller batches)",
                    spec.name, shared.model, shared.max_batch_size
                )));
            }
            ov_shape[0] = shared.max_batch_size;
        }
        if let Some(dims) = &spec.dims {
            let fits = dims.len() == ov_shape.len()
                && dims.iter().zip(&ov_shape).all(|(&m, &s)| m < 0 || m == s);
            if !fits {
                return Err(BackendError::invalid_argument(format!(
                    "input '{}' has shape {shape:?}; model '{}' takes {}",
                    spec.name,
                    shared.model,
                    shape_text(dims)
                )));
            }
        }
        Ok((
            Prepared {
                spec,
                shape: ov_shape,
                data: input.data(),
            },
            batch,
        ))
    }

    /// Copies one input into a fresh OpenVINO tensor (zero-filled beyond the data: padding).
    fn set_input(&mut self, input: &Prepared<'_>) -> Result<(), BackendError> {
        let name = &input.spec.name;
        let shape = Shape::new(&input.shape).map_err(ov_error(format!(
            "input '{name}' shape {:?} is not a valid OpenVINO shape",
            input.shape
        )))?;
        let mut tensor = openvino::Tensor::new(input.spec.element, &shape)
            .map_err(ov_error(format!("cannot allocate input '{name}'")))?;
        if !input.data.is_empty() {
            let buffer = tensor
                .get_raw_data_mut()
                .map_err(ov_error(format!("cannot fill input '{name}'")))?;
            let available = buffer.len();
            let target = buffer.get_mut(..input.data.len()).ok_or_else(|| {
                BackendError::internal(format!(
                    "input '{name}' tensor holds {available} bytes, fewer than the request's {}",
                    input.data.len()
                ))
            })?;
            target.copy_from_slice(input.data);
        }
        self.request
            .set_input_tensor_by_index(input.spec.index, &tensor)
            .map_err(ov_error(format!("OpenVINO refuses input '{name}'")))
    }

    /// Reads one output after inference, cutting a padded batch back to `batch` rows.
    fn get_output(&self, spec: &IoSpec, batch: Option<i64>) -> Result<OutputTensor, BackendError> {
        let name = &spec.name;
        let tensor = self
            .request
            .get_output_tensor_by_index(spec.index)
            .map_err(ov_error(format!("cannot read output '{name}'")))?;
        let element = tensor
            .get_element_type()
            .map_err(ov_error(format!("cannot read the type of output '{name}'")))?;
        if element != spec.element {
            return Err(BackendError::internal(format!(
                "output '{name}' came back as {element}, not {} as the model declares",
                spec.element
            )));
        }
        let mut shape = tensor
            .get_shape()
            .map_err(ov_error(format!(
                "cannot read the shape of output '{name}'"
            )))?
            .get_dimensions()
            .to_vec();
        let size = tensor
            .get_byte_size()
            .map_err(ov_error(format!("cannot read the size of output '{name}'")))?;
        let mut data = if size == 0 {
            Vec::new()
        } else {
            tensor
                .get_raw_data()
                .map_err(ov_error(format!("cannot read output '{name}'")))?
                .to_vec()
        };
        // A padded batch: keep the first `b` rows.
        let padded = batch
            .filter(|_| self.shared.static_batch)
            .zip(shape.first().copied())
            .filter(|&(b, rows)| rows > b)
            .and_then(|(b, rows)| Some((b, usize::try_from(b).ok()?, usize::try_from(rows).ok()?)));
        if let Some((b, keep, rows)) = padded {
            data.truncate(data.len() / rows * keep);
            shape[0] = b;
        }
        Ok(OutputTensor::new(name, spec.datatype, shape, data))
    }
}

impl Instance for OvInstance {
    fn infer(&mut self, request: &Request<'_>) -> Result<Vec<OutputTensor>, BackendError> {
        let shared = Arc::clone(&self.shared);
        let mut prepared = Vec::with_capacity(shared.inputs.len());
        let mut batch: Option<(i64, &str)> = None;
        for spec in &shared.inputs {
            let (input, input_batch) = self.prepare(request, spec)?;
            if let Some(b) = input_batch {
                match batch {
                    Some((first, other)) if first != b => {
                        return Err(BackendError::invalid_argument(format!(
                            "input '{}' has batch size {b} but input '{other}' has {first}",
                            spec.name
                        )));
                    }
                    Some(_) => {}
                    None => batch = Some((b, &spec.name)),
                }
            }
            prepared.push(input);
        }
        for input in &prepared {
            self.set_input(input)?;
        }
        self.request.infer().map_err(ov_error(format!(
            "OpenVINO inference of model '{}' failed",
            shared.model
        )))?;
        shared
            .outputs
            .iter()
            .filter(|spec| request.wants_output(&spec.name))
            .map(|spec| self.get_output(spec, batch.map(|(b, _)| b)))
            .collect()
    }
}
