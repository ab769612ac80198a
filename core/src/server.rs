//! The one API both frontends call: requests and responses in the server's own terms, and
//! the operations of the protocol (health, metadata, config, index, infer, repository,
//! statistics, trace settings). Frontends translate their wire formats to these calls and
//! hold no rules of their own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrum_backend_api::{DataType, Parameter};

use crate::error::{Error, Result};
use crate::models::{IndexEntry, LiveModel, ModelManager, RepositoryParameter};
use crate::repository::ControlMode;
use crate::scheduler::{RequestTiming, ResponseRx, Ticket};
use crate::stats::{FailureReason, ModelStatistics, ModelStats};
use crate::trace::TraceSettings;

/// The server's name in its metadata.
pub const SERVER_NAME: &str = "ferrum";
/// The server's version in its metadata.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol extensions the server implements, by their Triton names; `GET /v2` and gRPC
/// ServerMetadata list exactly these.
pub const EXTENSIONS: &[&str] = &[
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
    "schedule_policy",
    "sequence",
    "generate",
];

/// The bytes of an input: shared with the wire buffer, or lent from a client's shared memory
/// region (read only through raw pointers, since the client may change them meanwhile).
#[derive(Clone, Debug)]
pub enum InputData {
    /// Bytes the server owns (the request body, or a copy).
    Owned(Bytes),
    /// Bytes in a registered shared memory region.
    Shared(crate::shm::SharedBytes),
    /// Bytes a backend lends to an inference it started (business logic), until the server
    /// drops its last reference.
    Lent(LentBytes),
}

/// Bytes a backend lends to an inference it runs through the host: valid, and unchanged,
/// until every clone of this is dropped (the backend waits for that before it reuses them).
#[derive(Clone)]
pub struct LentBytes {
    /// First byte (an address: the bytes belong to the backend).
    ptr: usize,
    /// Length.
    len: usize,
    /// The bytes may change (they are a client's shared memory the backend got).
    pub shared: bool,
    /// Tells the backend's call when the last reference is gone.
    _release: Arc<dyn Send + Sync>,
}

impl std::fmt::Debug for LentBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LentBytes({} bytes)", self.len)
    }
}

impl LentBytes {
    /// Bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay valid until every clone of the result (and of `release`)
    /// is dropped.
    pub unsafe fn new(
        ptr: *const u8,
        len: usize,
        shared: bool,
        release: Arc<dyn Send + Sync>,
    ) -> Self {
        LentBytes {
            ptr: ptr as usize,
            len,
            shared,
            _release: release,
        }
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr as *const u8
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len];
        // SAFETY: valid for `len` bytes while this lives (the contract of `new`); read once,
        // without forming a slice over memory a client might change.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr(), out.as_mut_ptr(), self.len) };
        out
    }
}

impl InputData {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            InputData::Owned(b) => b.len(),
            InputData::Shared(s) => s.len(),
            InputData::Lent(l) => l.len(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes as an owned buffer (a copy for shared memory).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            InputData::Owned(b) => b.clone(),
            InputData::Shared(s) => Bytes::from(s.to_vec()),
            InputData::Lent(l) => Bytes::from(l.to_vec()),
        }
    }
}

impl Default for InputData {
    fn default() -> Self {
        InputData::Owned(Bytes::new())
    }
}

impl From<Bytes> for InputData {
    fn from(bytes: Bytes) -> Self {
        InputData::Owned(bytes)
    }
}

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
    pub data: InputData,
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
                let data = self.data.to_bytes();
                let items = ferrum_backend_api::bytes::decode(&data)
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
    /// Where the outputs are written (none: the server allocates them).
    pub allocator: Option<Allocator>,
}

/// Gives the memory a request's outputs are written into: an embedding program's own
/// buffers, so that the backend writes each output there and no copy follows.
pub trait OutputAllocator: Send + Sync {
    /// A buffer of exactly `byte_size` bytes for output `name`, or none to let the server
    /// allocate it. The backend writes the output into it, and the response hands it back as
    /// the output's `data` (`Vec::<u8>::from(data)` returns the same allocation).
    fn allocate(
        &self,
        name: &str,
        datatype: DataType,
        shape: &[i64],
        byte_size: usize,
    ) -> Option<Vec<u8>>;
}

/// A request's output allocator.
#[derive(Clone)]
pub struct Allocator(pub Arc<dyn OutputAllocator>);

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Allocator")
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
    control_mode: ControlMode,
    /// The repositories served, which poll and watch modes follow.
    repositories: Vec<PathBuf>,
    /// Models loaded at start-up in explicit mode (`*`: all).
    startup_models: Vec<String>,
    /// Time between rescans in poll mode (and the safety-net rescan in watch mode).
    poll_interval: Duration,
}

/// The parts a [`Core`] is made of; see [`crate::CoreBuilder`].
pub(crate) struct CoreParts {
    /// Models and their routing table.
    pub models: Arc<ModelManager>,
    /// Request traces.
    pub tracer: Arc<crate::trace::Tracer>,
    /// Log switches.
    pub logging: Arc<crate::logging::LogSettings>,
    /// Metrics registry.
    pub metrics: Arc<crate::metrics::ServerMetrics>,
    /// Repository control mode.
    pub control_mode: ControlMode,
    /// Repositories served.
    pub repositories: Vec<PathBuf>,
    /// Explicit mode's start-up models.
    pub startup_models: Vec<String>,
    /// Poll interval.
    pub poll_interval: Duration,
}

impl Core {
    /// A core made of these parts, not ready yet.
    pub(crate) fn new(parts: CoreParts) -> Self {
        Core {
            control_mode: parts.control_mode,
            models: parts.models,
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            shm: Default::default(),
            tracer: parts.tracer,
            logging: parts.logging,
            metrics: parts.metrics,
            repositories: parts.repositories,
            startup_models: parts.startup_models,
            poll_interval: parts.poll_interval,
        }
    }

    /// Loads the models the control mode starts with (every model, or in explicit mode the
    /// start-up models), then marks the core ready.
    pub async fn load_startup_models(&self) -> Result<()> {
        let models = Arc::clone(&self.models);
        let explicit =
            (self.control_mode == ControlMode::Explicit).then(|| self.startup_models.clone());
        tokio::task::spawn_blocking(move || models.load_startup(explicit.as_deref()))
            .await
            .map_err(|e| Error::internal(format!("model loading panicked: {e}")))??;
        self.set_ready();
        tracing::info!(
            "ready: {} model version(s) serving",
            self.repository_index(true).len()
        );
        Ok(())
    }

    /// Follows the repository as the control mode says: rescans whenever the change detector
    /// (a timer in poll mode, a file watcher in watch mode) asks. Runs until dropped; in the
    /// modes that never rescan on their own it does nothing.
    pub async fn follow_repository(&self) {
        let detector = crate::repository::watch::spawn_detector(
            self.control_mode,
            self.repositories.clone(),
            self.poll_interval,
        );
        let Some(mut detector) = detector else {
            return std::future::pending().await;
        };
        while detector.recv().await.is_some() {
            let models = Arc::clone(&self.models);
            match tokio::task::spawn_blocking(move || models.poll()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("repository rescan failed: {}", e.message),
                Err(e) => tracing::error!("repository rescan panicked: {e}"),
            }
        }
    }

    /// Unloads every model; in-flight requests finish first. The last step of a shutdown.
    pub async fn unload_all(&self) -> Result<()> {
        let models = Arc::clone(&self.models);
        tokio::task::spawn_blocking(move || models.unload_all())
            .await
            .map_err(|e| Error::internal(format!("unloading panicked: {e}")))
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
        if self.control_mode == ControlMode::Explicit {
            return Ok(());
        }
        Err(Error::unsupported(format!(
            "explicit model load / unload is not allowed in model control mode '{}'; \
             start the server with --model-control-mode=explicit",
            self.control_mode.as_str()
        )))
    }

    /// Loads or reloads a model (repository extension) with the request's parameters
    /// (`config`, `file:<path>`); returns once it serves or failed.
    pub async fn load_model(
        &self,
        name: String,
        parameters: Vec<(String, RepositoryParameter)>,
    ) -> Result<()> {
        // Every load error says "failed to load" and the model's name, as Triton's do
        // (clients, Triton's examples among them, look for it).
        let failed = |name: &str, e: Error| {
            if e.message.contains("failed to load") {
                e
            } else {
                Error {
                    kind: e.kind,
                    message: format!("failed to load '{name}': {}", e.message),
                }
            }
        };
        let over = crate::models::LoadOverride::from_parameters(parameters)
            .map_err(|e| failed(&name, e))?;
        self.check_explicit()?;
        let models = Arc::clone(&self.models);
        let task_name = name.clone();
        tokio::task::spawn_blocking(move || models.load(&task_name, over))
            .await
            .map_err(|e| Error::internal(format!("model load was interrupted: {e}")))?
            .map_err(|e| failed(&name, e))
    }

    /// Unloads a model (repository extension); in-flight requests finish first.
    pub async fn unload_model(
        &self,
        name: String,
        parameters: &[(String, RepositoryParameter)],
    ) -> Result<()> {
        crate::models::check_unload_parameters(parameters)?;
        self.check_explicit()?;
        let with_members = parameters.iter().any(|(key, value)| {
            key == "unload_dependents" && matches!(value, RepositoryParameter::Bool(true))
        });
        let models = Arc::clone(&self.models);
        tokio::task::spawn_blocking(move || {
            if with_members {
                models.unload_with_members(&name)
            } else {
                models.unload(&name)
            }
        })
        .await
        .map_err(|e| Error::internal(format!("model unload was interrupted: {e}")))?
    }

    /// Statistics of the ready versions of one model (or of every model), ordered by model
    /// and version.
    pub fn statistics(
        &self,
        name: Option<&str>,
        version: Option<i64>,
    ) -> Result<Vec<ModelStatistics>> {
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
            .map(|s| s.snapshot())
            .collect())
    }

    /// The trace settings in force for a model (which must exist) or the global ones.
    pub fn trace_settings(&self, model: Option<&str>) -> Result<TraceSettings> {
        if let Some(m) = model {
            self.models.get(m, None)?;
        }
        Ok(self.tracer.settings(model))
    }

    /// Changes the trace settings of a model (which must exist) or the global ones; a `None`
    /// value resets its key (for a model: to the global value). No changes only reads them.
    pub fn update_trace_settings(
        &self,
        model: Option<&str>,
        changes: &BTreeMap<String, Option<Vec<String>>>,
    ) -> Result<TraceSettings> {
        if changes.is_empty() {
            return self.trace_settings(model);
        }
        if let Some(m) = model {
            self.models.get(m, None)?;
        }
        self.tracer.update(model, changes)
    }

    /// Registers a CUDA shared memory region: always refused, this server has no GPU support.
    pub fn register_cuda_shared_memory(&self) -> Result<()> {
        Err(Error::unsupported(crate::shm::CUDA_SHM_UNSUPPORTED))
    }

    /// Starts an inference and returns the stream of its responses (0..N, then the final
    /// flag). Dropping the stream before the final response cancels the request.
    pub fn infer_stream(&self, request: InferRequest) -> Result<ResponseStream> {
        let received = Instant::now();
        let model = self
            .models
            .get(&request.model_name, request.model_version)?;
        self.start(model, request, received)
    }

    /// Runs one inference of a model that is not decoupled and returns its response.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        let received = Instant::now();
        let model = self
            .models
            .get(&request.model_name, request.model_version)?;
        if model.decoupled() {
            return Err(Error::unsupported(format!(
                "model '{}' is decoupled (it may send several responses per request); \
                 call it with the streaming gRPC API (ModelStreamInfer)",
                model.name
            )));
        }
        // The response cache: a hit answers without running the backend.
        let cached = match crate::cache::global() {
            Some(cache) if model.caches() && request.allocator.is_none() => {
                crate::cache::ResponseCache::key(&request, model.version).map(|key| (cache, key))
            }
            _ => None,
        };
        let mut lookup = Duration::ZERO;
        if let Some((cache, key)) = &cached {
            let started = Instant::now();
            if let Some(mut response) = cache.get(key).await {
                let now = Instant::now();
                model.stats.record_cache_hit(now - received, now - started);
                response.id = request.id.clone();
                return Ok(response);
            }
            lookup = started.elapsed();
        }
        let stats = Arc::clone(&model.stats);
        let mut stream = self.start(model, request, received)?;
        let mut last = None;
        while let Some(item) = stream.next().await {
            let item = item?;
            if item.response.is_some() {
                last = item.response;
            }
            if item.is_final {
                break;
            }
        }
        let response = last
            .ok_or_else(|| Error::internal("the backend ended the request without a response"))?;
        if let Some((cache, key)) = cached {
            let started = Instant::now();
            cache.put(key, &response).await;
            stats.cache_miss.add(lookup + started.elapsed());
        }
        Ok(response)
    }

    /// The version a request runs on: for a request inside an open sequence, the version the
    /// sequence started on (it may have been replaced by a reload since).
    fn sequence_route(&self, model: Arc<LiveModel>, request: &InferRequest) -> Arc<LiveModel> {
        if !model.sequences || request.model_version.is_some() {
            return model;
        }
        match crate::scheduler::sequence_fields(request) {
            Ok((Some(id), false, _)) => self
                .models
                .sequences
                .owner(&model.name, &id)
                .unwrap_or(model),
            _ => model,
        }
    }

    /// Records the version a request that starts a sequence runs on; returns its id.
    fn claim_sequence(
        &self,
        model: &Arc<LiveModel>,
        request: &InferRequest,
    ) -> Option<crate::scheduler::SequenceId> {
        if !model.sequences {
            return None;
        }
        let (Some(id), true, _) = crate::scheduler::sequence_fields(request).ok()? else {
            return None;
        };
        self.models.sequences.claim(&model.name, id.clone(), model);
        Some(id)
    }

    fn start(
        &self,
        model: Arc<LiveModel>,
        mut request: InferRequest,
        received: Instant,
    ) -> Result<ResponseStream> {
        let model = self.sequence_route(model, &request);
        tracing::debug!(model = %model.name, version = model.version, id = %request.id, "inference request");
        let mut record = InFlight::new(Arc::clone(&model.stats), received);
        let checked = model
            .validate(&request)
            .and_then(|()| model.to_backend_shapes(&mut request));
        if let Err(e) = checked {
            record.failed(FailureReason::Other);
            return Err(e);
        }
        let deadline = match crate::scheduler::queue_deadline(&model.config, &request, received) {
            Ok(deadline) => deadline,
            Err(e) => {
                record.failed(FailureReason::Other);
                return Err(e);
            }
        };
        let ticket = Ticket {
            cancelled: Arc::new(AtomicBool::new(false)),
            delivery: std::mem::take(&mut request.delivery).into(),
            allocator: request.allocator.take(),
            deadline,
        };
        let requested = request.outputs.clone();
        let id = request.id.clone();
        let claimed = self.claim_sequence(&model, &request);
        let rx = match model.submit(request, ticket.clone()) {
            Ok(rx) => rx,
            Err(e) => {
                if let Some(sequence) = claimed {
                    self.models
                        .sequences
                        .release(&model.name, &sequence, model.serial);
                }
                record.failed(FailureReason::Rejected);
                return Err(e);
            }
        };
        Ok(ResponseStream {
            model,
            rx,
            ticket,
            record,
            received,
            requested,
            id,
            done: false,
            metrics: Arc::clone(&self.metrics),
            tracer: Arc::clone(&self.tracer),
        })
    }
}

/// One item of a response stream: a response (none when the backend sent the final flag
/// alone) and whether it is the request's last.
#[derive(Debug)]
pub struct StreamItem {
    /// The response.
    pub response: Option<InferResponse>,
    /// No more responses follow.
    pub is_final: bool,
}

/// The responses of one request as they arrive. Dropping it before the final response
/// cancels the request: a queued request never runs, and a running one sees the
/// cancellation through its handle.
pub struct ResponseStream {
    /// The model version that runs the request.
    model: Arc<LiveModel>,
    /// Responses from the scheduler.
    rx: ResponseRx,
    /// Cancellation and output delivery.
    ticket: Ticket,
    /// The request's statistics record.
    record: InFlight,
    /// When the request arrived.
    received: Instant,
    /// The outputs the client asked for.
    requested: Vec<String>,
    /// The request id.
    id: String,
    /// The final response (or an error that ends the request) was returned.
    done: bool,
    /// Latency histograms.
    metrics: Arc<crate::metrics::ServerMetrics>,
    /// Request traces.
    tracer: Arc<crate::trace::Tracer>,
}

impl ResponseStream {
    /// Cancels the request; the stream then ends with the backend's last word or a
    /// cancellation error.
    pub fn cancel(&self) {
        self.ticket.cancelled.store(true, Ordering::SeqCst);
    }

    /// The next response, or `None` after the final one.
    pub async fn next(&mut self) -> Option<Result<StreamItem>> {
        if self.done {
            return None;
        }
        // The deadline is watched where a runtime's timer is at hand; a backend thread reading
        // its host call (BLS) has none, and there the instance's own check at dequeue is what
        // keeps an expired request from running.
        let watched = match &self.ticket.deadline {
            Some(deadline) if tokio::runtime::Handle::try_current().is_ok() => {
                Some(Arc::clone(deadline))
            }
            _ => None,
        };
        let message = match watched {
            None => self.rx.recv().await,
            Some(deadline) => {
                let at = tokio::time::Instant::from_std(deadline.at());
                let first = tokio::select! {
                    message = self.rx.recv() => Some(message),
                    () = tokio::time::sleep_until(at) => None,
                };
                match first {
                    Some(message) => message,
                    // The deadline passed before the request started: it never will.
                    None if deadline.expire() => {
                        self.done = true;
                        self.record.failed(FailureReason::Rejected);
                        return Some(Err(crate::scheduler::queue_timeout(&self.model.name)));
                    }
                    // An instance took it in time: wait for its answer.
                    None => self.rx.recv().await,
                }
            }
        };
        // Once a message arrived (or the request started in time) the deadline is settled.
        self.ticket.deadline = None;
        let Some(message) = message else {
            self.done = true;
            self.record.failed(FailureReason::Backend);
            return Some(Err(Error::internal(
                "the backend ended the request without a final response",
            )));
        };
        let reason = if message.rejected {
            FailureReason::Rejected
        } else {
            FailureReason::Backend
        };
        let built = match message.result {
            Ok(Some(outputs)) => self.build(outputs).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match built {
            Err(e) => {
                if message.is_final {
                    self.done = true;
                    self.record.failed(reason);
                }
                Some(Err(e))
            }
            Ok(response) => {
                if message.is_final {
                    self.done = true;
                    let timing = message.timing;
                    self.record.succeeded(timing);
                    self.metrics.observe_latency(
                        &self.model.name,
                        self.model.version,
                        self.received.elapsed(),
                    );
                    self.tracer.record(
                        &self.model.name,
                        self.model.version,
                        self.received,
                        timing.as_ref(),
                    );
                }
                Some(Ok(StreamItem {
                    response,
                    is_final: message.is_final,
                }))
            }
        }
    }

    fn build(&self, response: crate::scheduler::Outputs) -> Result<InferResponse> {
        let mut outputs = collect_outputs(&self.model, response.outputs, &self.requested)?;
        deliver(&self.model, &mut outputs, &self.ticket.delivery)?;
        Ok(InferResponse {
            model_name: self.model.name.clone(),
            model_version: self.model.version,
            id: self.id.clone(),
            parameters: response.parameters,
            outputs,
        })
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if !self.done {
            self.cancel();
        }
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
        if output.shm.is_some() {
            // The backend wrote it straight into the region.
            continue;
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
