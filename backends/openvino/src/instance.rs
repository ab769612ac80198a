//! One instance: a compiled model and its infer request. A batch of requests that can run
//! together (same inputs, same non-batch dims) runs as one inference on their joined inputs;
//! anything else runs one request at a time.

use std::sync::Arc;

use ferrum_backend_api::batch::{self, Batch};
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

/// Where the bytes of one input of a run come from.
enum Source<'a> {
    /// A request's own input (read straight from the server's buffers).
    View(Tensor<'a>),
    /// An input joined across the requests of a batch.
    Joined(&'a [u8]),
}

impl Source<'_> {
    /// Number of bytes.
    fn len(&self) -> usize {
        match self {
            Source::View(t) => t.byte_size(),
            Source::Joined(data) => data.len(),
        }
    }

    /// Copies the bytes into `out`, which is exactly [`Source::len`] long.
    fn copy_to(&self, out: &mut [u8]) -> Result<(), BackendError> {
        match self {
            Source::View(t) => t.copy_to(out),
            Source::Joined(data) => {
                out.copy_from_slice(data);
                Ok(())
            }
        }
    }
}

/// One output read back after an inference: its shape and how many of its bytes to keep.
struct Produced {
    /// The runtime's tensor, which owns the bytes.
    tensor: openvino::Tensor,
    /// Shape after any padding was cut off.
    shape: Vec<i64>,
    /// Bytes to keep from the start of the tensor.
    len: usize,
}

impl Produced {
    /// The bytes to send.
    fn data(&self, name: &str) -> Result<&[u8], BackendError> {
        if self.len == 0 {
            return Ok(&[]);
        }
        let raw = self
            .tensor
            .get_raw_data()
            .map_err(ov_error(format!("cannot read output '{name}'")))?;
        raw.get(..self.len).ok_or_else(|| {
            BackendError::internal(format!(
                "output '{name}' holds {} bytes, fewer than its {}",
                raw.len(),
                self.len
            ))
        })
    }
}

/// Whether a request's shape fits the dims the compiled model takes. With batching, the batch
/// dimension is left out: it is checked for the whole run.
fn fits(dims: &[i64], shape: &[i64], batching: bool) -> bool {
    let skip = usize::from(batching);
    dims.len() == shape.len()
        && dims
            .iter()
            .zip(shape)
            .skip(skip)
            .all(|(&m, &s)| m < 0 || m == s)
}

/// The first `rows` rows of an output of `total` rows: their byte length.
fn kept_bytes(len: usize, total: usize, rows: usize) -> usize {
    len.checked_div(total).map_or(0, |row| row * rows)
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

    /// Checks one input of a request against its spec; returns its batch size when the model
    /// batches.
    fn check_input(&self, input: &Tensor<'_>, spec: &IoSpec) -> Result<Option<i64>, BackendError> {
        let shared = &self.shared;
        if input.datatype != spec.datatype {
            return Err(BackendError::invalid_argument(format!(
                "input '{}' has type {}, model '{}' expects {}",
                spec.name, input.datatype, shared.model, spec.datatype
            )));
        }
        let shape = input.shape;
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
        if input.byte_size() != expected_bytes {
            return Err(BackendError::invalid_argument(format!(
                "input '{}' holds {} bytes; shape {shape:?} of {} needs {expected_bytes}",
                spec.name,
                input.byte_size(),
                spec.datatype
            )));
        }
        let batching = shared.max_batch_size > 0;
        let batch = if batching {
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
        if let Some(dims) = &spec.dims
            && !fits(dims, shape, batching)
        {
            return Err(BackendError::invalid_argument(format!(
                "input '{}' has shape {shape:?}; model '{}' takes {}",
                spec.name,
                shared.model,
                shape_text(dims)
            )));
        }
        Ok(batch)
    }

    /// Checks a request's inputs; returns its batch size when the model batches.
    fn check(&self, request: &Request) -> Result<Option<i64>, BackendError> {
        let mut batch: Option<(i64, &str)> = None;
        for spec in &self.shared.inputs {
            let input = request.require_input(&spec.name)?;
            let Some(b) = self.check_input(&input, spec)? else {
                continue;
            };
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
        Ok(batch.map(|(b, _)| b))
    }

    /// The batch size the compiled model runs for a batch of `rows` rows: `rows`, or
    /// `max_batch_size` when the batch dimension is fixed and smaller batches are padded.
    fn run_rows(&self, rows: Option<i64>) -> Result<Option<i64>, BackendError> {
        let shared = &self.shared;
        let short = rows.filter(|&b| shared.static_batch && b != shared.max_batch_size);
        let Some(b) = short else {
            return Ok(rows);
        };
        if !shared.batch_padding {
            let name = shared.inputs.first().map_or("", |s| s.name.as_str());
            return Err(BackendError::invalid_argument(format!(
                "input '{name}' has batch size {b}, but model '{}' runs only batches of \
                 exactly {} (SKIP_OV_DYNAMIC_BATCHSIZE; set ENABLE_BATCH_PADDING to YES \
                 to pad smaller batches)",
                shared.model, shared.max_batch_size
            )));
        }
        Ok(Some(shared.max_batch_size))
    }

    /// Copies one input into a fresh OpenVINO tensor of `shape` (zero-filled beyond the data:
    /// padding).
    fn set_input(
        &mut self,
        spec: &IoSpec,
        shape: &[i64],
        source: &Source<'_>,
    ) -> Result<(), BackendError> {
        let name = &spec.name;
        let ov_shape = Shape::new(shape).map_err(ov_error(format!(
            "input '{name}' shape {shape:?} is not a valid OpenVINO shape"
        )))?;
        let mut tensor = openvino::Tensor::new(spec.element, &ov_shape)
            .map_err(ov_error(format!("cannot allocate input '{name}'")))?;
        let len = source.len();
        if len > 0 {
            let buffer = tensor
                .get_raw_data_mut()
                .map_err(ov_error(format!("cannot fill input '{name}'")))?;
            let available = buffer.len();
            let target = buffer.get_mut(..len).ok_or_else(|| {
                BackendError::internal(format!(
                    "input '{name}' tensor holds {available} bytes, fewer than the request's {len}"
                ))
            })?;
            source.copy_to(target)?;
        }
        self.request
            .set_input_tensor_by_index(spec.index, &tensor)
            .map_err(ov_error(format!("OpenVINO refuses input '{name}'")))
    }

    /// Runs one inference on `inputs` (one per input spec, in order) of `rows` rows.
    fn run(
        &mut self,
        inputs: &[(&[i64], Source<'_>)],
        rows: Option<i64>,
    ) -> Result<(), BackendError> {
        let shared = Arc::clone(&self.shared);
        let run_rows = self.run_rows(rows)?;
        for (spec, (shape, source)) in shared.inputs.iter().zip(inputs) {
            let mut ov_shape = shape.to_vec();
            if let (Some(first), Some(b)) = (ov_shape.first_mut(), run_rows) {
                *first = b;
            }
            if let Some(dims) = &spec.dims
                && !fits(dims, &ov_shape, false)
            {
                return Err(BackendError::invalid_argument(format!(
                    "input '{}' has shape {shape:?}; model '{}' takes {}",
                    spec.name,
                    shared.model,
                    shape_text(dims)
                )));
            }
            self.set_input(spec, &ov_shape, source)?;
        }
        self.request.infer().map_err(ov_error(format!(
            "OpenVINO inference of model '{}' failed",
            shared.model
        )))
    }

    /// Reads one output after inference, cutting a padded batch back to `rows` rows.
    fn output(&self, spec: &IoSpec, rows: Option<i64>) -> Result<Produced, BackendError> {
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
        let mut len = tensor
            .get_byte_size()
            .map_err(ov_error(format!("cannot read the size of output '{name}'")))?;
        // A padded batch: keep the first `b` rows.
        let padded = rows
            .filter(|_| self.shared.static_batch)
            .zip(shape.first().copied())
            .filter(|&(b, total)| total > b)
            .and_then(|(b, total)| {
                Some((b, usize::try_from(b).ok()?, usize::try_from(total).ok()?))
            });
        if let Some((b, keep, total)) = padded {
            len = kept_bytes(len, total, keep);
            shape[0] = b;
        }
        Ok(Produced { tensor, shape, len })
    }

    /// Runs one request alone, writing its outputs straight into `response`.
    fn infer_into(
        &mut self,
        request: &Request,
        response: &mut Response,
    ) -> Result<(), BackendError> {
        let rows = self.check(request)?;
        let shared = Arc::clone(&self.shared);
        let inputs = shared
            .inputs
            .iter()
            .map(|spec| {
                let input = request.require_input(&spec.name)?;
                Ok((input.shape, Source::View(input)))
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        self.run(&inputs, rows)?;
        for spec in shared
            .outputs
            .iter()
            .filter(|s| request.wants_output(&s.name))
        {
            let produced = self.output(spec, rows)?;
            let data = produced.data(&spec.name)?;
            let buffer = response.output(&spec.name, spec.datatype, &produced.shape)?;
            if buffer.len() != data.len() {
                return Err(BackendError::internal(format!(
                    "output '{}' holds {} bytes, but its shape {:?} of {} needs {}",
                    spec.name,
                    data.len(),
                    produced.shape,
                    spec.datatype,
                    buffer.len()
                )));
            }
            buffer.copy_from_slice(data);
        }
        Ok(())
    }

    /// Runs one request alone and sends its response.
    fn run_alone(&mut self, request: &Request) {
        request.respond_with(|response| self.infer_into(request, response));
    }

    /// Runs checked, joinable requests as one inference, one response each.
    fn run_joined(&mut self, requests: &[Request]) -> Result<Vec<Response>, BackendError> {
        let shared = Arc::clone(&self.shared);
        let first = shared
            .inputs
            .first()
            .ok_or_else(|| BackendError::internal("a batching model without inputs"))?;
        let batch = Batch::of(requests, &first.name)?;
        let total = i64::try_from(batch.total())
            .map_err(|_| BackendError::internal("the batch holds too many rows"))?;
        let joined = shared
            .inputs
            .iter()
            .map(|spec| batch::join_input(requests, &spec.name))
            .collect::<Result<Vec<_>, _>>()?;
        let inputs: Vec<(&[i64], Source<'_>)> = joined
            .iter()
            .map(|j| (j.shape.as_slice(), Source::Joined(&j.data)))
            .collect();
        self.run(&inputs, Some(total))?;
        let mut responses: Vec<Response> = requests.iter().map(Request::response).collect();
        for spec in &shared.outputs {
            let wanted: Vec<bool> = requests
                .iter()
                .map(|r| r.wants_output(&spec.name))
                .collect();
            if !wanted.contains(&true) {
                continue;
            }
            let produced = self.output(spec, Some(total))?;
            let data = produced.data(&spec.name)?;
            batch::split_output_where(
                &mut responses,
                &batch,
                &wanted,
                &spec.name,
                spec.datatype,
                &produced.shape,
                data,
            )?;
        }
        Ok(responses)
    }
}

impl Instance for OvInstance {
    fn execute(&mut self, requests: Vec<Request>) -> Result<(), BackendError> {
        let max = usize::try_from(self.shared.max_batch_size).unwrap_or(0);
        if max == 0 || requests.len() == 1 {
            for request in &requests {
                self.run_alone(request);
            }
            return Ok(());
        }
        // Each request is checked on its own first, so that one bad request fails alone.
        let mut checked = Vec::with_capacity(requests.len());
        for request in requests {
            match self.check(&request) {
                Ok(_) => checked.push(request),
                Err(e) => request.responder().send_error(e, true),
            }
        }
        let first = self.shared.inputs.first().map(|s| s.name.clone());
        for group in batch::group(checked) {
            let batch = first.as_deref().map(|name| Batch::of(&group, name));
            let Some(Ok(batch)) = batch else {
                group.iter().for_each(|r| self.run_alone(r));
                continue;
            };
            let mut rest = group.into_iter();
            let mut rows = batch.rows();
            for count in batch::runs_within(rows, max) {
                let run: Vec<Request> = rest.by_ref().take(count).collect();
                let (run_rows, later) = rows.split_at(count.min(rows.len()));
                rows = later;
                // A model that runs only full batches: a run short of one would fail as a
                // whole; alone, each request is told about its own batch size.
                let short = self.shared.static_batch
                    && !self.shared.batch_padding
                    && run_rows.iter().sum::<usize>() != max;
                if run.len() == 1 || short {
                    run.iter().for_each(|r| self.run_alone(r));
                    continue;
                }
                match ferrum_backend_api::guard(|| self.run_joined(&run)) {
                    Ok(responses) => responses.into_iter().for_each(|r| r.send(true)),
                    Err(e) => {
                        for request in &run {
                            request.responder().send_error(e.clone(), true);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_fit_the_model_dims() {
        assert!(fits(&[-1, 4], &[3, 4], false));
        assert!(fits(&[8, 4], &[3, 4], true));
        assert!(!fits(&[8, 4], &[3, 4], false));
        assert!(!fits(&[-1, 4], &[3, 5], true));
        assert!(!fits(&[-1, 4], &[3, 4, 1], true));
        assert!(fits(&[], &[], false));
    }

    #[test]
    fn padded_outputs_keep_their_first_rows() {
        assert_eq!(kept_bytes(64, 8, 3), 24);
        assert_eq!(kept_bytes(64, 8, 8), 64);
        assert_eq!(kept_bytes(0, 0, 0), 0);
    }
}
