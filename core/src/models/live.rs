//! One loaded model version: its config, its backend model, its instances and their queue,
//! and the checks every request must pass before it reaches the backend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RStr};
use ferrum_backend_api::{
    DataType, InstanceInfoObj, InstanceInfoObj_TO, InstanceKind, InstanceObj_TO, ModelBox,
    ModelInfoBox, ModelInfoObj, ModelInfoObj_TO,
};

use crate::config::{self, ModelConfig};
use crate::error::{Error, Result};
use crate::plugins::LoadedBackend;
use crate::proto::inference::model_instance_group::Kind;
use crate::scheduler::Scheduler;
use crate::server::InferRequest;

impl Drop for LiveModel {
    fn drop(&mut self) {
        // Stopping instances joins their threads, which may still be finishing a request
        // whose client went away: never do that on an async worker thread.
        let Some(engine) = self.engine.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || crate::memory::drop_and_release(engine));
            }
            Err(_) => crate::memory::drop_and_release(engine),
        }
    }
}

/// A tensor as the model config declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Dims without the batch dimension; -1 is any size.
    pub dims: Vec<i64>,
    /// Whether a request may leave the input out.
    pub optional: bool,
    /// The shape the backend sees instead of `dims` (Triton's `reshape`), batch dim excluded.
    pub reshape: Option<Vec<i64>>,
    /// Class labels from the output's `label_filename`, one per line.
    pub labels: Option<Vec<String>>,
}

/// The parts of a live model that run backend code. Fields drop in order: the instances
/// stop before the backend's model is released, and that before the backend.
struct Engine {
    /// The queue and instance threads.
    scheduler: Scheduler,
    /// The backend's model object (none when the instances run in child processes).
    _model: Option<ModelBox>,
    /// The backend library, kept alive while its code may run.
    backend: Arc<LoadedBackend>,
}

/// A loaded, serving model version.
pub struct LiveModel {
    /// Scheduler, model and backend; taken out on drop to be released off the async runtime.
    engine: Option<Engine>,
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: i64,
    /// The version's statistics.
    pub stats: Arc<crate::stats::ModelStats>,
    /// The completed config.
    pub config: ModelConfig,
    /// The config as Triton's JSON.
    pub config_json: serde_json::Value,
    /// Declared inputs.
    pub inputs: Vec<TensorSpec>,
    /// Declared outputs.
    pub outputs: Vec<TensorSpec>,
    /// Tells this loaded version from every other (for sequence ownership).
    pub serial: u64,
    /// Whether the model has a sequence batcher.
    pub sequences: bool,
    /// The graph, for an ensemble (which has no engine of its own).
    ensemble: Option<Arc<super::ensemble::Ensemble>>,
    /// Whether the version still serves (an isolated one stops after repeated crashes).
    health: Arc<crate::isolation::Health>,
}

/// A declared tensor as (name, data_type, dims, optional, reshape).
type Declared = (String, i32, Vec<i64>, bool, Option<Vec<i64>>);

fn specs(list: impl Iterator<Item = Declared>) -> Result<Vec<TensorSpec>> {
    list.map(|(name, data_type, dims, optional, reshape)| {
        let datatype = config::datatype_of(data_type)
            .ok_or_else(|| Error::invalid(format!("tensor '{name}' has no valid data_type")))?;
        Ok(TensorSpec {
            name,
            datatype,
            dims,
            optional,
            reshape,
            labels: None,
        })
    })
    .collect()
}

/// What the server tells a backend about a model version (the handle behind `ModelInfoBox`).
struct ModelInfo {
    name: String,
    version: i64,
    config_json: String,
    model_path: String,
    version_path: String,
}

impl ModelInfoObj for ModelInfo {
    fn name(&self) -> RStr<'_> {
        RStr::from_str(&self.name)
    }
    fn version(&self) -> i64 {
        self.version
    }
    fn config_json(&self) -> RStr<'_> {
        RStr::from_str(&self.config_json)
    }
    fn model_path(&self) -> RStr<'_> {
        RStr::from_str(&self.model_path)
    }
    fn version_path(&self) -> RStr<'_> {
        RStr::from_str(&self.version_path)
    }
}

fn model_info(
    name: &str,
    version: i64,
    config_json: &str,
    model_path: &str,
    version_path: &str,
) -> ModelInfoBox {
    ModelInfoObj_TO::from_value(
        ModelInfo {
            name: name.to_string(),
            version,
            config_json: config_json.to_string(),
            model_path: model_path.to_string(),
            version_path: version_path.to_string(),
        },
        TD_Opaque,
    )
}

/// What the server tells a model about an instance (the handle behind `InstanceInfoBox`).
struct InstanceInfo {
    name: String,
    index: u32,
    kind: InstanceKind,
    device_id: i32,
}

impl InstanceInfoObj for InstanceInfo {
    fn name(&self) -> RStr<'_> {
        RStr::from_str(&self.name)
    }
    fn index(&self) -> u32 {
        self.index
    }
    fn kind(&self) -> InstanceKind {
        self.kind
    }
    fn device_id(&self) -> i32 {
        self.device_id
    }
}

/// Asks the backend to complete a config from the model file of the highest version.
pub fn auto_complete(
    backend: &LoadedBackend,
    config: ModelConfig,
    name: &str,
    model_path: &Path,
    folders: &BTreeMap<i64, PathBuf>,
) -> Result<ModelConfig> {
    let Some((&version, version_path)) = folders.iter().next_back() else {
        return Ok(config);
    };
    let json = config::to_json(&config)?.to_string();
    let (model_path, version_path) = (model_path.to_string_lossy(), version_path.to_string_lossy());
    let info = model_info(name, version, &json, &model_path, &version_path);
    match backend.backend.auto_complete_config(info).into_result() {
        Ok(ROption::RSome(completed)) => config::parse_json(completed.as_str()).map_err(|e| {
            Error::invalid(format!(
                "backend '{}' completed the config wrongly: {}",
                backend.name, e.message
            ))
        }),
        Ok(ROption::RNone) => Ok(config),
        Err(e) => Err(Error::invalid(format!(
            "backend '{}' could not complete the config: {}",
            backend.name, e.message
        ))),
    }
}

/// What the server gives a version it loads, beside the model itself.
pub struct Serving<'a> {
    /// Where the version's statistics go.
    pub stats: Arc<crate::stats::ModelStats>,
    /// Bound of its queue where the config sets none.
    pub queue_limit: usize,
    /// Where its open sequences are recorded.
    pub owners: &'a Arc<super::SequenceOwners>,
    /// The server's services (isolated instances run their backend's calls through it).
    pub host: &'a crate::plugins::ServerHost,
}

impl LiveModel {
    /// An ensemble version: its graph checked against the members loaded now.
    pub fn ensemble(
        config: &ModelConfig,
        version: i64,
        stats: Arc<crate::stats::ModelStats>,
        host: crate::plugins::ServerHost,
        member: impl Fn(&str) -> Option<ModelConfig>,
    ) -> Result<LiveModel> {
        let ensemble = super::ensemble::Ensemble::new(config, host, member)?;
        let declared = |list: Vec<Declared>| specs(list.into_iter());
        let inputs = declared(
            config
                .input
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        t.data_type,
                        t.dims.clone(),
                        t.optional,
                        None,
                    )
                })
                .collect(),
        )?;
        let outputs = declared(
            config
                .output
                .iter()
                .map(|t| (t.name.clone(), t.data_type, t.dims.clone(), false, None))
                .collect(),
        )?;
        let live = LiveModel {
            engine: None,
            name: config.name.clone(),
            version,
            stats,
            config: config.clone(),
            config_json: config::to_json(config)?,
            inputs,
            outputs,
            serial: super::sequences::next_serial(),
            sequences: false,
            ensemble: Some(Arc::new(ensemble)),
            health: Default::default(),
        };
        live.announce_cache();
        Ok(live)
    }

    /// Loads a version through its backend and starts its instances.
    pub fn load(
        config: &ModelConfig,
        backend: Arc<LoadedBackend>,
        model_path: &Path,
        version: i64,
        version_path: &Path,
        serving: Serving<'_>,
    ) -> Result<LiveModel> {
        let Serving {
            stats,
            queue_limit,
            owners,
            host,
        } = serving;
        let serial = super::sequences::next_serial();
        let sequence_end: crate::scheduler::SequenceEnd = {
            let (owners, name) = (Arc::clone(owners), config.name.clone());
            Arc::new(move |id| owners.release(&name, id, serial))
        };
        // A sequence model's backend also sees the control inputs and state tensors.
        let config_json = config::to_json(&crate::scheduler::backend_config(config))?;
        let json_text = config_json.to_string();
        let version_dir = version_path;
        let (model_path, version_path) =
            (model_path.to_string_lossy(), version_path.to_string_lossy());
        let info = model_info(
            &config.name,
            version,
            &json_text,
            &model_path,
            &version_path,
        );
        let isolation = crate::isolation::Isolation::from_config(config)?;
        let health = Arc::new(crate::isolation::Health::default());
        // An isolated model is loaded by its instances' processes, not here.
        let model = match isolation {
            None => Some(backend.backend.load_model(info).into_result()?),
            Some(_) => None,
        };
        let mut instances = Vec::new();
        let mut index = 0u32;
        for group in &config.instance_group {
            let kind = match Kind::try_from(group.kind) {
                Ok(Kind::Gpu) => InstanceKind::GPU,
                Ok(Kind::Model) => InstanceKind::MODEL,
                _ => InstanceKind::CPU,
            };
            for i in 0..group.count {
                let name = format!("{}_{i}", group.name);
                let instance = match &model {
                    Some(model) => {
                        let info = InstanceInfoObj_TO::from_value(
                            InstanceInfo {
                                name: name.clone(),
                                index,
                                kind,
                                device_id: 0,
                            },
                            TD_Opaque,
                        );
                        model.create_instance(info).into_result().map_err(|e| {
                            Error::internal(format!(
                                "creating instance '{name}' failed: {}",
                                e.message
                            ))
                        })?
                    }
                    None => {
                        let Some(isolation) = &isolation else {
                            return Err(Error::internal("the model object is missing"));
                        };
                        let spec = crate::isolation::InstanceSpec {
                            backend: backend.name.clone(),
                            library: backend.load_path.clone(),
                            backend_config: backend.config_json.clone(),
                            model: config.name.clone(),
                            version,
                            config_json: json_text.clone(),
                            model_path: model_path.to_string(),
                            version_path: version_path.to_string(),
                            instance: name.clone(),
                            index,
                            kind: kind.0,
                            stats: Arc::clone(&stats),
                            host: host.clone(),
                        };
                        let isolated = crate::isolation::IsolatedInstance::start(
                            spec,
                            isolation.clone(),
                            Arc::clone(&health),
                        )?;
                        InstanceObj_TO::from_value(isolated, TD_Opaque)
                    }
                };
                instances.push((name, instance));
                index += 1;
            }
        }
        let scheduler = Scheduler::start(
            config,
            instances,
            Arc::clone(&stats),
            queue_limit,
            version_dir,
            sequence_end,
        )?;
        let inputs = specs(config.input.iter().map(|t| {
            let reshape = t.reshape.as_ref().map(|r| r.shape.clone());
            (
                t.name.clone(),
                t.data_type,
                t.dims.clone(),
                t.optional,
                reshape,
            )
        }))?;
        let outputs = specs(config.output.iter().map(|t| {
            let reshape = t.reshape.as_ref().map(|r| r.shape.clone());
            (t.name.clone(), t.data_type, t.dims.clone(), false, reshape)
        }))?;
        let mut outputs = outputs;
        for (spec, declared) in outputs.iter_mut().zip(&config.output) {
            if declared.label_filename.is_empty() {
                continue;
            }
            let path = std::path::Path::new(model_path.as_ref()).join(&declared.label_filename);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::invalid(format!(
                    "output '{}': cannot read label file '{}': {e}",
                    spec.name,
                    path.display()
                ))
            })?;
            spec.labels = Some(text.lines().map(str::to_string).collect());
        }
        let live = LiveModel {
            stats,
            engine: Some(Engine {
                scheduler,
                _model: model,
                backend,
            }),
            health,
            name: config.name.clone(),
            version,
            config: config.clone(),
            config_json,
            inputs,
            outputs,
            serial,
            ensemble: None,
            sequences: matches!(
                config.scheduling_choice,
                Some(crate::proto::inference::model_config::SchedulingChoice::SequenceBatching(_))
            ),
        };
        live.announce_cache();
        Ok(live)
    }

    /// Whether this version runs on that backend library (the same loaded copy).
    pub fn uses_backend(&self, backend: &Arc<LoadedBackend>) -> bool {
        self.engine
            .as_ref()
            .is_some_and(|e| Arc::ptr_eq(&e.backend, backend))
    }

    /// Queues a request on this version's instances.
    pub fn submit(
        &self,
        request: InferRequest,
        ticket: crate::scheduler::Ticket,
    ) -> Result<crate::scheduler::ResponseRx> {
        if let Some(ensemble) = &self.ensemble {
            return ensemble.submit(request, ticket);
        }
        match &self.engine {
            Some(engine) => engine.scheduler.submit(request, ticket),
            None => Err(Error::unavailable(format!(
                "model '{}' is unloading",
                self.name
            ))),
        }
    }

    /// Whether this version answers from the response cache: its config enables it, the
    /// server has a cache, and it is neither decoupled, sequence-batched nor an ensemble.
    pub fn caches(&self) -> bool {
        self.config.response_cache.is_some_and(|c| c.enable) && self.cache_refusal().is_none()
    }

    /// Why the response cache cannot serve this version, if it cannot.
    fn cache_refusal(&self) -> Option<&'static str> {
        if crate::cache::global().is_none() {
            Some("the server has no cache (--cache-config local,size=<bytes>)")
        } else if self.decoupled() {
            Some("the model is decoupled")
        } else if self.sequences {
            Some("the model uses the sequence batcher")
        } else if self.ensemble.is_some() {
            Some("it is an ensemble")
        } else {
            None
        }
    }

    /// Says at load whether the response cache serves this version, and if not, why.
    fn announce_cache(&self) {
        if !self.config.response_cache.is_some_and(|c| c.enable) {
            return;
        }
        match self.cache_refusal() {
            Some(why) => tracing::warn!(
                model = %self.name,
                version = self.version,
                "response_cache is enabled but not used: {why}"
            ),
            None => {
                self.stats
                    .caching
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(model = %self.name, version = self.version, "responses are cached");
            }
        }
    }

    /// Why this version stopped serving (an isolated instance kept crashing), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.health.failure()
    }

    /// Whether the model may send several responses per request.
    pub fn decoupled(&self) -> bool {
        config::is_decoupled(&self.config) || self.ensemble.as_ref().is_some_and(|e| e.decoupled())
    }

    /// Whether the model takes a batch dimension.
    pub fn batches(&self) -> bool {
        self.config.max_batch_size > 0
    }

    /// The full shape a client sees for a declared tensor (batch dimension first, as -1).
    pub fn client_shape(&self, spec: &TensorSpec) -> Vec<i64> {
        if self.batches() {
            std::iter::once(-1)
                .chain(spec.dims.iter().copied())
                .collect()
        } else {
            spec.dims.clone()
        }
    }

    /// The platform name reported in metadata: the config's platform, else its backend.
    pub fn platform(&self) -> &str {
        if self.config.platform.is_empty() {
            &self.config.backend
        } else {
            &self.config.platform
        }
    }

    /// Rewrites the request's input shapes into the shapes the backend sees (`reshape`).
    pub fn to_backend_shapes(&self, request: &mut InferRequest) -> Result<()> {
        for input in &mut request.inputs {
            let Some(spec) = self.inputs.iter().find(|s| s.name == input.name) else {
                continue;
            };
            if let Some(reshape) = &spec.reshape {
                input.shape = self.map_batched(&input.name, &input.shape, &spec.dims, reshape)?;
            }
        }
        Ok(())
    }

    /// The shape a client sees for an output the backend produced with `shape`.
    pub fn to_client_shape(&self, name: &str, shape: Vec<i64>) -> Result<Vec<i64>> {
        match self.outputs.iter().find(|s| s.name == name) {
            Some(TensorSpec {
                reshape: Some(reshape),
                dims,
                ..
            }) => self.map_batched(name, &shape, reshape, dims),
            _ => Ok(shape),
        }
    }

    /// Maps a shape between two declarations, keeping the batch dimension in front.
    fn map_batched(&self, name: &str, shape: &[i64], from: &[i64], to: &[i64]) -> Result<Vec<i64>> {
        let (batch, rest) = match (self.batches(), shape.split_first()) {
            (true, Some((b, rest))) => (Some(*b), rest),
            _ => (None, shape),
        };
        let mapped = super::reshape::map_shape(name, rest, from, to)?;
        Ok(batch.into_iter().chain(mapped).collect())
    }

    /// Checks a request against the config: known inputs, types, shapes, byte sizes, batch
    /// size, required inputs and requested outputs.
    pub fn validate(&self, request: &InferRequest) -> Result<()> {
        let model = &self.name;
        let mut batch: Option<i64> = None;
        let mut seen = std::collections::HashSet::new();
        for input in &request.inputs {
            let spec = self
                .inputs
                .iter()
                .find(|s| s.name == input.name)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "unexpected inference input '{}' for model '{model}'",
                        input.name
                    ))
                })?;
            if !seen.insert(input.name.as_str()) {
                return Err(Error::invalid(format!(
                    "input '{}' appears more than once",
                    input.name
                )));
            }
            if input.datatype != spec.datatype {
                return Err(Error::invalid(format!(
                    "inference input '{}' data-type is '{}', but model '{model}' expects '{}'",
                    input.name, input.datatype, spec.datatype
                )));
            }
            let dims = if self.batches() {
                let (&first, rest) = input.shape.split_first().ok_or_else(|| {
                    Error::invalid(format!(
                        "input '{}' has an empty shape; model '{model}' expects a batch dimension first",
                        input.name
                    ))
                })?;
                if first < 1 || first > i64::from(self.config.max_batch_size) {
                    return Err(Error::invalid(format!(
                        "input '{}' batch size {first} is outside 1..={} for model '{model}'",
                        input.name, self.config.max_batch_size
                    )));
                }
                if let Some(b) = batch.filter(|&b| b != first) {
                    return Err(Error::invalid(format!(
                        "input '{}' has batch size {first} but another input has {b}",
                        input.name
                    )));
                }
                batch = Some(first);
                rest
            } else {
                input.shape.as_slice()
            };
            let shape_ok = dims.len() == spec.dims.len()
                && dims
                    .iter()
                    .zip(&spec.dims)
                    .all(|(&d, &s)| d >= 0 && (s == -1 || d == s));
            if !shape_ok {
                return Err(Error::invalid(format!(
                    "unexpected shape for input '{}' for model '{model}'. Expected {:?}, got {:?}",
                    input.name,
                    self.client_shape(spec),
                    input.shape
                )));
            }
            input.check_byte_size()?;
        }
        let missing: Vec<&str> = self
            .inputs
            .iter()
            .filter(|s| !s.optional && !seen.contains(s.name.as_str()))
            .map(|s| s.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid(format!(
                "expected {} inputs but got {} inputs for model '{model}'; missing required input(s) {missing:?}",
                self.inputs.iter().filter(|s| !s.optional).count(),
                request.inputs.len()
            )));
        }
        for name in &request.outputs {
            if !self.outputs.iter().any(|s| &s.name == name) {
                return Err(Error::invalid(format!(
                    "unexpected inference output '{name}' for model '{model}'"
                )));
            }
        }
        Ok(())
    }
}
