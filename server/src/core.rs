//! The one API both frontends call: requests and responses in the server's own terms, and
//! the operations of the protocol (health, metadata, config, index, infer).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use ferrum_backend_api::{DataType, HostInferRequest, OutputTensor, Parameter, Response};

use crate::error::{Error, Result};
use crate::models::{IndexEntry, LiveModel, ModelManager};
use crate::scheduler::RequestTiming;
use crate::stats::{FailureReason, ModelStats};

/// The server's name in its metadata.
pub const SERVER_NAME: &str = "ferrum";
/// The server's version in its metadata.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol extensions the server supports.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
];

/// An input tensor of a request; its bytes are shared with the wire buffer where possible.
#[derive(Clone, Debug)]
pub struct InputTensor {
    /// Input name.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Full shape.
    pub shape: Vec<i64>,
    /// Little-endian elements; for BYTES, length-prefixed strings.
    pub data: Bytes,
}

/// Parses a model version as the protocol carries it ("" means the server's choice).
pub fn parse_version(version: &str) -> Result<Option<i64>> {
    if version.is_empty() {
        return Ok(None);
    }
    version
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .map(Some)
        .ok_or_else(|| Error::invalid(format!("'{version}' is not a valid model version")))
}

/// Most elements one tensor may have (2^32).
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 32;

/// Number of elements a shape describes, or an error for negative, overflowing or oversized
/// shapes.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize> {
    let count = element_count_unchecked(name, shape)?;
    if count > MAX_TENSOR_ELEMENTS {
        return Err(Error::invalid(format!(
            "tensor '{name}' shape {shape:?} has {count} elements, more than the limit of {MAX_TENSOR_ELEMENTS}"
        )));
    }
    Ok(count)
}

fn element_count_unchecked(name: &str, shape: &[i64]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d)
            .map_err(|_| Error::invalid(format!("input '{name}' has a negative dimension {d}")))?;
        acc.checked_mul(d)
            .ok_or_else(|| Error::invalid(format!("input '{name}' shape {shape:?} is too large")))
    })
}

impl InputTensor {
    /// Checks that the bytes hold exactly what the shape and type describe.
    pub fn check_byte_size(&self) -> Result<()> {
        let count = element_count(&self.name, &self.shape)?;
        match self.datatype.element_size() {
            Some(size) => {
                let expected = count.checked_mul(size).ok_or_else(|| {
                    Error::invalid(format!(
                        "input '{}' shape {:?} is too large",
                        self.name, self.shape
                    ))
                })?;
                if self.data.len() != expected {
                    return Err(Error::invalid(format!(
                        "input '{}' got unexpected byte size {}, expected {expected} for {count} {} elements",
                        self.name,
                        self.data.len(),
                        self.datatype
                    )));
                }
            }
            None => {
                let items = ferrum_backend_api::bytes::decode(&self.data)
                    .map_err(|e| Error::invalid(format!("input '{}': {}", self.name, e.message)))?;
                if items.len() != count {
                    return Err(Error::invalid(format!(
                        "input '{}' holds {} BYTES elements but its shape {:?} needs {count}",
                        self.name,
                        items.len(),
                        self.shape
                    )));
                }
            }
        }
        Ok(())
    }
}

/// An inference request in the server's terms.
#[derive(Clone, Debug, Default)]
pub struct InferRequest {
    /// Target model.
    pub model_name: String,
    /// Target version; none picks the highest ready one.
    pub model_version: Option<i64>,
    /// Client's request id.
    pub id: String,
    /// Request parameters.
    pub parameters: Vec<Parameter>,
    /// Inputs.
    pub inputs: Vec<InputTensor>,
    /// Requested output names (empty: all).
    pub outputs: Vec<String>,
    /// How requested outputs are delivered (classification, shared memory); frontend-side only.
    pub delivery: Vec<OutputDelivery>,
}

impl InferRequest {
    /// Copies a backend's in-process request into an owned one.
    pub fn from_host(request: &HostInferRequest<'_>) -> Self {
        InferRequest {
            model_name: request.model_name.to_string(),
            model_version: (request.model_version > 0).then_some(request.model_version),
            id: request.id.to_string(),
            parameters: request.parameters.to_vec(),
            inputs: request
                .inputs
                .iter()
                .map(|t| InputTensor {
                    name: t.name.to_string(),
                    datatype: t.datatype,
                    shape: t.shape.to_vec(),
                    data: Bytes::copy_from_slice(t.data.as_slice()),
                })
                .collect(),
            outputs: request
                .requested_outputs
                .iter()
                .map(|s| s.to_string())
                .collect(),
            delivery: Vec::new(),
        }
    }
}

/// An output tensor of a response.
#[derive(Clone, Debug)]
pub struct OutputData {
    /// Output name.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Full shape.
    pub shape: Vec<i64>,
    /// Little-endian elements; for BYTES, length-prefixed strings.
    pub data: Bytes,
    /// Set when the output was written into a shared memory region (name, bytes written)
    /// instead of being carried in `data`.
    pub shm: Option<(String, usize)>,
}

/// Where and how one requested output is delivered to the client.
#[derive(Clone, Debug, Default)]
pub struct OutputDelivery {
    /// Output name.
    pub name: String,
    /// Classification extension: return the top-k classes instead of the tensor.
    pub classification: Option<usize>,
    /// Shared memory extension: write the output into this region.
    pub shm: Option<ShmTarget>,
}

/// A place in a registered shared memory region.
#[derive(Clone)]
pub struct ShmTarget {
    /// The region.
    pub region: Arc<crate::shm::Region>,
    /// Offset inside the region.
    pub offset: usize,
    /// Bytes available from the offset.
    pub byte_size: usize,
}

impl std::fmt::Debug for ShmTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ShmTarget({}, {}+{})",
            self.region.name, self.offset, self.byte_size
        )
    }
}

/// An inference response in the server's terms.
#[derive(Clone, Debug)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// Its version.
    pub model_version: i64,
    /// The request's id.
    pub id: String,
    /// Response parameters from the backend.
    pub parameters: Vec<Parameter>,
    /// Outputs, in the order the backend produced them.
    pub outputs: Vec<OutputData>,
}

impl InferResponse {
    /// Converts back into the ABI's response type (for backend-initiated inference).
    pub fn into_backend_response(self) -> Response {
        let outputs = self
            .outputs
            .into_iter()
            .map(|o| OutputTensor::new(&o.name, o.datatype, o.shape, o.data.to_vec()))
            .collect();
        Response {
            outputs,
            parameters: self.parameters.into(),
        }
    }
}

/// Model metadata: name, ready versions, platform, inputs and outputs.
#[derive(Clone, Debug)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Ready versions.
    pub versions: Vec<String>,
    /// Platform or backend name.
    pub platform: String,
    /// Inputs as (name, datatype, shape).
    pub inputs: Vec<(String, String, Vec<i64>)>,
    /// Outputs as (name, datatype, shape).
    pub outputs: Vec<(String, String, Vec<i64>)>,
}

/// The server core: models, readiness, and the operations the frontends expose.
pub struct Core {
    /// Models and their routing table.
    pub models: Arc<ModelManager>,
    /// Set once start-up loading is done.
    ready: AtomicBool,
    /// Set when shutdown begins.
    shutting_down: AtomicBool,
    /// Registered system shared memory regions.
    pub shm: crate::shm::SharedMemory,
    /// Samples and writes request traces.
    pub tracer: Arc<crate::trace::Tracer>,
    /// The log switches the logging extension changes.
    pub logging: Arc<crate::logging::LogSettings>,
    /// Metrics fed at request time (latency histograms).
    pub metrics: Arc<crate::metrics::ServerMetrics>,
    /// How the repository is managed; decides whether the load/unload API is allowed.
    control_mode: crate::cli::ControlMode,
}

impl Core {
    /// A core over these models, not ready yet.
    pub fn new(
        models: Arc<ModelManager>,
        control_mode: crate::cli::ControlMode,
        tracer: Arc<crate::trace::Tracer>,
        logging: Arc<crate::logging::LogSettings>,
        metrics: Arc<crate::metrics::ServerMetrics>,
    ) -> Self {
        Core {
            control_mode,
            models,
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            shm: Default::default(),
            tracer,
            logging,
            metrics,
        }
    }

    /// Marks start-up as finished.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Marks the start of shutdown: readiness goes false.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether the server is live.
    pub fn is_live(&self) -> bool {
        true
    }

    /// Whether the server is ready for inference.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.shutting_down.load(Ordering::SeqCst)
    }

    /// Whether a model (version) is ready.
    pub fn model_ready(&self, name: &str, version: Option<i64>) -> bool {
        self.models.is_ready(name, version)
    }

    /// A model's metadata.
    pub fn model_metadata(&self, name: &str, version: Option<i64>) -> Result<ModelMetadata> {
        let live = self.models.get(name, version)?;
        let describe = |specs: &[crate::models::TensorSpec]| {
            specs
                .iter()
                .map(|s| (s.name.clone(), s.datatype.to_string(), live.client_shape(s)))
                .collect()
        };
        Ok(ModelMetadata {
            name: live.name.clone(),
            versions: self
                .models
                .ready_versions(name)
                .iter()
                .map(i64::to_string)
                .collect(),
            platform: live.platform().to_string(),
            inputs: describe(&live.inputs),
            outputs: describe(&live.outputs),
        })
    }

    /// A model's live config.
    pub fn model_config(&self, name: &str, version: Option<i64>) -> Result<Arc<LiveModel>> {
        self.models.get(name, version)
    }

    /// The repository index.
    pub fn repository_index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut rows = self.models.index();
        if ready_only {
            rows.retain(|r| r.state == crate::models::ModelState::Ready);
        }
        rows
    }

    fn check_explicit(&self) -> Result<()> {
        if self.control_mode == crate::cli::ControlMode::Explicit {
            return Ok(());
        }
        Err(Error::unsupported(format!(
            "explicit model load / unload is not allowed in model control mode '{}'; \
             start the server with --model-control-mode=explicit",
            self.control_mode.as_str()
        )))
    }

    /// Loads or reloads a model (repository extension); returns once it serves or failed.
    pub async fn load_model(&self, name: String, over: crate::models::LoadOverride) -> Result<()> {
        self.check_explicit()?;
        let models = Arc::clone(&self.models);
        tokio::task::spawn_blocking(move || models.load(&name, over))
            .await
            .map_err(|e| Error::internal(format!("model load was interrupted: {e}")))?
    }

    /// Unloads a model (repository extension); in-flight requests finish first.
    pub async fn unload_model(&self, name: String) -> Result<()> {
        self.check_explicit()?;
        let models = Arc::clone(&self.models);
        tokio::task::spawn_blocking(move || models.unload(&name))
            .await
            .map_err(|e| Error::internal(format!("model unload was interrupted: {e}")))?
    }

    /// Statistics of the ready versions of one model (or of every model).
    pub fn statistics(
        &self,
        name: Option<&str>,
        version: Option<i64>,
    ) -> Result<Vec<Arc<ModelStats>>> {
        if let Some(name) = name {
            // Fails with NOT_FOUND / UNAVAILABLE for unknown models and versions.
            self.models.get(name, version)?;
        }
        let ready: std::collections::HashSet<(String, i64)> = self
            .models
            .index()
            .into_iter()
            .filter(|r| r.state == crate::models::ModelState::Ready)
            .filter_map(|r| r.version.map(|v| (r.name, v)))
            .collect();
        Ok(self
            .models
            .stats
            .all()
            .into_iter()
            .filter(|s| ready.contains(&(s.name.clone(), s.version)))
            .filter(|s| name.is_none_or(|n| s.name == n))
            .filter(|s| version.is_none_or(|v| s.version == v))
            .collect())
    }

    /// Runs one inference and returns its response.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        let received = Instant::now();
        let model = self
            .models
            .get(&request.model_name, request.model_version)?;
        tracing::debug!(model = %model.name, version = model.version, id = %request.id, "inference request");
        let mut record = InFlight::new(Arc::clone(&model.stats), received);
        match self.infer_on(&model, request).await {
            Ok((response, timing)) => {
                record.succeeded(timing);
                self.metrics
                    .observe_latency(&model.name, model.version, received.elapsed());
                self.tracer
                    .record(&model.name, model.version, received, timing.as_ref());
                Ok(response)
            }
            Err((error, reason)) => {
                record.failed(reason);
                Err(error)
            }
        }
    }

    async fn infer_on(
        &self,
        model: &Arc<LiveModel>,
        mut request: InferRequest,
    ) -> std::result::Result<(InferResponse, Option<RequestTiming>), (Error, FailureReason)> {
        let other = |e: Error| (e, FailureReason::Other);
        model.validate(&request).map_err(other)?;
        model.to_backend_shapes(&mut request).map_err(other)?;
        let requested = request.outputs.clone();
        let delivery = std::mem::take(&mut request.delivery);
        let id = request.id.clone();
        let mut responses = model
            .submit(request)
            .map_err(|e| (e, FailureReason::Rejected))?;
        let mut first: Option<crate::scheduler::Outputs> = None;
        let timing = loop {
            let message = responses.recv().await.ok_or_else(|| {
                let e = Error::internal("the backend ended the request without a final response");
                (e, FailureReason::Backend)
            })?;
            let reason = if message.rejected {
                FailureReason::Rejected
            } else {
                FailureReason::Backend
            };
            let response = message.result.map_err(|e| (e, reason))?;
            if first.is_none() {
                first = Some(response);
            }
            if message.is_final {
                break message.timing;
            }
        };
        let response = first.unwrap_or_default();
        let mut outputs = collect_outputs(model, response.outputs, &requested)
            .map_err(|e| (e, FailureReason::Backend))?;
        deliver(model, &mut outputs, &delivery).map_err(|e| (e, FailureReason::Other))?;
        let response = InferResponse {
            model_name: model.name.clone(),
            model_version: model.version,
            id,
            parameters: response.parameters,
            outputs,
        };
        Ok((response, timing))
    }
}

/// Accounts for one request in its model's statistics, whichever way it ends; a request
/// dropped before it finished (its client went away) counts as cancelled.
struct InFlight {
    /// The model version's statistics.
    stats: Arc<ModelStats>,
    /// When the request arrived.
    received: Instant,
    /// Whether the outcome is already recorded.
    done: bool,
}

impl InFlight {
    fn new(stats: Arc<ModelStats>, received: Instant) -> Self {
        stats.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats,
            received,
            done: false,
        }
    }

    fn succeeded(&mut self, timing: Option<RequestTiming>) {
        let timing = timing.unwrap_or_default();
        self.stats
            .record_success(self.received.elapsed(), timing.queue, timing.compute);
        self.done = true;
    }

    fn failed(&mut self, reason: FailureReason) {
        self.stats.record_failure(self.received.elapsed(), reason);
        self.done = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.stats
                .record_failure(self.received.elapsed(), FailureReason::Canceled);
        }
        self.stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Applies the classification and shared memory extensions to the outputs.
fn deliver(
    model: &LiveModel,
    outputs: &mut [OutputData],
    delivery: &[OutputDelivery],
) -> Result<()> {
    for output in outputs.iter_mut() {
        let Some(how) = delivery.iter().find(|d| d.name == output.name) else {
            continue;
        };
        if let Some(k) = how.classification {
            let labels = model
                .outputs
                .iter()
                .find(|s| s.name == output.name)
                .and_then(|s| s.labels.as_deref());
            *output = crate::models::classify(output, k, model.batches(), labels)?;
        }
        if let Some(target) = &how.shm {
            if output.data.len() > target.byte_size {
                return Err(Error::invalid(format!(
                    "output '{}' needs {} bytes but its shared memory region '{}' allows {}",
                    output.name,
                    output.data.len(),
                    target.region.name,
                    target.byte_size
                )));
            }
            target.region.write(target.offset, &output.data)?;
            output.shm = Some((target.region.name.clone(), output.data.len()));
            output.data = Bytes::new();
        }
    }
    Ok(())
}

/// Keeps the requested outputs (all when none were named), in the client's shapes.
fn collect_outputs(
    model: &LiveModel,
    outputs: Vec<OutputData>,
    requested: &[String],
) -> Result<Vec<OutputData>> {
    let mut kept = Vec::with_capacity(outputs.len());
    for mut output in outputs {
        if !requested.is_empty() && !requested.iter().any(|r| r == &output.name) {
            continue;
        }
        output.shape = model.to_client_shape(&output.name, output.shape)?;
        kept.push(output);
    }
    if let Some(missing) = requested
        .iter()
        .find(|r| !kept.iter().any(|o| &o.name == *r))
    {
        return Err(Error::internal(format!(
            "model '{}' did not produce the requested output '{missing}'",
            model.name
        )));
    }
    Ok(kept)
}
