//! The safe side a backend author writes against: plain Rust traits, adapted to the ABI by
//! [`export_backend!`](crate::export_backend) with every call guarded against panics.

use std::any::Any;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};

use crate::ffi::{
    BackendBox, BackendLib, BackendLibRef, BackendObj, BackendObj_TO, Host, InstanceBox,
    InstanceInfoBox, InstanceObj, InstanceObj_TO, ModelBox, ModelInfoBox, ModelObj, ModelObj_TO,
    RequestBox,
};
use crate::request::{InferResult, Parameter, Request, Tensor};
use crate::response::{OutputTensor, Response};
use crate::types::{BackendError, ErrorCode, InstanceKind, LogLevel};

/// A backend library's entry point: one value per loaded library.
pub trait Backend: Send + Sync + Sized + 'static {
    /// The model type this backend loads.
    type Model: Model;

    /// Creates the backend. `config` is an object with `backend_directory` (the folder the
    /// library was loaded from, where runtime libraries shipped beside it live),
    /// `library_path`, and `cmdline` (this backend's `--backend-config` settings).
    fn new(config: &serde_json::Value) -> Result<Self, BackendError>;

    /// Loads one version of a model.
    fn load_model(&self, ctx: &ModelContext) -> Result<Self::Model, BackendError>;

    /// One line about the backend (its runtime and version) for the server's log.
    fn describe(&self) -> String {
        String::new()
    }

    /// Completes a model config from the model file; `None` keeps the config as it is.
    fn auto_complete_config(
        &self,
        _ctx: &ModelContext,
    ) -> Result<Option<serde_json::Value>, BackendError> {
        Ok(None)
    }
}

/// A loaded model version.
pub trait Model: Send + Sync + 'static {
    /// The instance type this model creates.
    type Instance: Instance;

    /// Creates one execution instance.
    fn create_instance(&self, ctx: &InstanceContext) -> Result<Self::Instance, BackendError>;
}

/// One execution instance, called from one thread at a time.
pub trait Instance: Send + 'static {
    /// Runs one request and returns its outputs (the common case).
    fn infer(&mut self, _request: &Request) -> Result<Vec<OutputTensor>, BackendError> {
        Err(BackendError::unsupported(
            "this backend implements execute, not infer",
        ))
    }

    /// Runs a batch of whole requests, which it now owns; by default calls
    /// [`Instance::infer`] on each and responds. Override it to run the batch in one call
    /// (see [`crate::batch`]), to send several responses per request, or to keep a request
    /// and answer it later. Every request must get a final response; an error returned here
    /// fails those that have none yet.
    fn execute(&mut self, requests: Vec<Request>) -> Result<(), BackendError> {
        for request in requests {
            let result = guard(|| self.infer(&request));
            request.respond(result);
        }
        Ok(())
    }
}

/// The simplest kind of model: loaded once, shared by every instance, one request at a time,
/// one response per request. Implement [`SimpleModel::respond`] to write outputs straight into
/// the server's buffers, or [`SimpleModel::infer`] to return them.
pub trait SimpleModel: Send + Sync + Sized + 'static {
    /// Loads the model.
    fn load(ctx: &ModelContext) -> Result<Self, BackendError>;

    /// Runs one request and returns its outputs.
    fn infer(&self, _request: &Request) -> Result<Vec<OutputTensor>, BackendError> {
        Err(BackendError::unsupported(
            "this backend implements respond, not infer",
        ))
    }

    /// Runs one request and adds its outputs to `response` (sent by the caller afterwards);
    /// by default adds what [`SimpleModel::infer`] returns.
    fn respond(&self, request: &Request, response: &mut Response) -> Result<(), BackendError> {
        for output in self.infer(request)? {
            response.add_tensor(&output)?;
        }
        Ok(())
    }
}

/// Adapts a [`SimpleModel`] into a full [`Backend`]; used by [`export_model!`](crate::export_model).
pub struct SimpleBackend<M>(std::marker::PhantomData<fn() -> M>);

/// The shared model behind every instance of a [`SimpleBackend`].
pub struct SimpleShared<M>(Arc<M>);

impl<M: SimpleModel> Backend for SimpleBackend<M> {
    type Model = SimpleShared<M>;

    fn new(_config: &serde_json::Value) -> Result<Self, BackendError> {
        Ok(SimpleBackend(std::marker::PhantomData))
    }

    fn load_model(&self, ctx: &ModelContext) -> Result<Self::Model, BackendError> {
        M::load(ctx).map(|m| SimpleShared(Arc::new(m)))
    }
}

impl<M: SimpleModel> Model for SimpleShared<M> {
    type Instance = SimpleShared<M>;

    fn create_instance(&self, _ctx: &InstanceContext) -> Result<Self::Instance, BackendError> {
        Ok(SimpleShared(Arc::clone(&self.0)))
    }
}

impl<M: SimpleModel> Instance for SimpleShared<M> {
    fn infer(&mut self, request: &Request) -> Result<Vec<OutputTensor>, BackendError> {
        self.0.infer(request)
    }

    fn execute(&mut self, requests: Vec<Request>) -> Result<(), BackendError> {
        for request in requests {
            request.respond_with(|response| self.0.respond(&request, response));
        }
        Ok(())
    }
}

/// What a backend knows about the model version it is loading.
pub struct ModelContext {
    /// The model's name.
    pub name: String,
    /// The version being loaded.
    pub version: i64,
    /// The model config (Triton's ModelConfig as JSON, snake_case names).
    pub config: serde_json::Value,
    /// The model folder.
    pub model_path: std::path::PathBuf,
    /// The version folder.
    pub version_path: std::path::PathBuf,
}

impl ModelContext {
    fn from_info(info: &ModelInfoBox) -> Result<Self, BackendError> {
        let config = serde_json::from_str(info.config_json().as_str()).map_err(|e| {
            BackendError::internal(format!(
                "model config handed to the backend is not JSON: {e}"
            ))
        })?;
        Ok(ModelContext {
            name: info.name().to_string(),
            version: info.version(),
            config,
            model_path: info.model_path().as_str().into(),
            version_path: info.version_path().as_str().into(),
        })
    }

    /// Whether the model is decoupled (`model_transaction_policy { decoupled: true }`): it may
    /// send any number of responses per request, then the final flag.
    pub fn is_decoupled(&self) -> bool {
        self.config
            .get("model_transaction_policy")
            .and_then(|p| p.get("decoupled"))
            .and_then(|d| d.as_bool())
            .unwrap_or(false)
    }

    /// The config's `max_batch_size` (0: the model does not batch).
    pub fn max_batch_size(&self) -> i64 {
        self.config
            .get("max_batch_size")
            .and_then(|v| v.as_i64())
            .unwrap_or(0)
    }

    /// Names of the config's inputs (or outputs, with `"output"`), in order.
    pub fn tensor_names(&self, section: &str) -> Vec<String> {
        self.config
            .get(section)
            .and_then(|v| v.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The config's `parameters { key: ... value: { string_value: ... } }` entry for a key.
    pub fn parameter(&self, key: &str) -> Option<&str> {
        self.config
            .get("parameters")?
            .get(key)?
            .get("string_value")?
            .as_str()
    }
}

/// What a model knows about the instance it is creating.
pub struct InstanceContext {
    /// Instance name.
    pub name: String,
    /// Index among the model's instances.
    pub index: u32,
    /// Placement kind.
    pub kind: InstanceKind,
    /// GPU ordinal for GPU instances.
    pub device_id: i32,
}

/// Runs backend code, turning a panic into an error so it never crosses the boundary.
pub fn guard<T>(f: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(BackendError::new(
            ErrorCode::INTERNAL,
            format!("backend panicked: {}", panic_message(&*payload)),
        )),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Holds a value whose drop runs under a panic guard.
struct Guarded<T>(ManuallyDrop<T>);

impl<T> Guarded<T> {
    fn new(value: T) -> Self {
        Guarded(ManuallyDrop::new(value))
    }
}

impl<T> std::ops::Deref for Guarded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Guarded<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        let inner = &mut self.0;
        // SAFETY: dropped exactly once, here; never used afterwards.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe { ManuallyDrop::drop(inner) }));
    }
}

static HOST: OnceLock<Host> = OnceLock::new();

/// This library's backend name (its folder in the backend directory), for log lines.
static NAME: OnceLock<String> = OnceLock::new();

/// Writes a message to the server's log, tagged with the backend's name (no-op before the
/// backend is created).
pub fn log(level: LogLevel, message: &str) {
    if let Some(host) = HOST.get() {
        let name = NAME.get().map_or("backend", String::as_str);
        host.log(level, RStr::from_str(name), RStr::from_str(message));
    }
}

/// Runs an inference on another model of the same server and returns all its responses.
/// Inputs in one host buffer are lent to it, not copied.
pub fn host_infer(
    model_name: &str,
    model_version: i64,
    inputs: &[Tensor<'_>],
    requested_outputs: &[&str],
    parameters: &[Parameter],
) -> Result<Vec<InferResult>, BackendError> {
    let mut request = host_request(
        model_name,
        model_version,
        inputs,
        requested_outputs,
        parameters,
    )?;
    let results = request.infer().into_result()?;
    Ok(results.into_iter().map(InferResult::from_ffi).collect())
}

/// Starts an inference on another model of the same server and returns at once: start
/// several, then wait on each, and they run at the same time (since 1.2). The inputs are
/// lent, not copied: the call borrows them until the inference has ended. Sequence fields
/// (`sequence_id`, `sequence_start`, `sequence_end`) go in `parameters` like any other.
pub fn host_start<'a>(
    model_name: &str,
    model_version: i64,
    inputs: &[Tensor<'a>],
    requested_outputs: &[&str],
    parameters: &[Parameter],
) -> Result<HostCall<'a>, BackendError> {
    let mut request = host_request(
        model_name,
        model_version,
        inputs,
        requested_outputs,
        parameters,
    )?;
    let call = request.start().into_result()?;
    Ok(HostCall {
        call: Some(call),
        _inputs: std::marker::PhantomData,
    })
}

/// A host request for another model, with its parameters, inputs and requested outputs.
fn host_request(
    model_name: &str,
    model_version: i64,
    inputs: &[Tensor<'_>],
    requested_outputs: &[&str],
    parameters: &[Parameter],
) -> Result<crate::ffi::HostRequestBox, BackendError> {
    let host = HOST
        .get()
        .ok_or_else(|| BackendError::internal("backend used before the server created it"))?;
    let mut request = host
        .new_request(RStr::from_str(model_name), model_version)
        .into_result()?;
    for p in parameters {
        request.add_parameter(p.value.to_ffi(&p.key));
    }
    add_inputs(&mut request, inputs);
    for o in requested_outputs {
        request.add_requested_output(RStr::from_str(o));
    }
    Ok(request)
}

/// Adds inputs to a host request: a tensor in one host buffer is lent (no copy; the call
/// borrows it until the inference has ended), anything else is copied.
fn add_inputs(request: &mut crate::ffi::HostRequestBox, inputs: &[Tensor<'_>]) {
    for t in inputs {
        let mut buffers = t.buffers();
        match (buffers.next(), buffers.next()) {
            (Some(b), None) if b.memory.kind == crate::MemoryKind::CPU => {
                request.add_input_lent(
                    RStr::from_str(t.name),
                    t.datatype,
                    RSlice::from_slice(t.shape),
                    b,
                );
            }
            _ => {
                let data = t.data();
                request.add_input(
                    RStr::from_str(t.name),
                    t.datatype,
                    RSlice::from_slice(t.shape),
                    RSlice::from_slice(&data),
                );
            }
        }
    }
}

/// An inference started with [`host_start`], borrowing its inputs; dropping it before its
/// last response cancels the inference (and waits until the server has let go of the
/// inputs).
pub struct HostCall<'a> {
    /// The call; none once it ended.
    call: Option<crate::ffi::HostCallBox>,
    /// The lent inputs.
    _inputs: std::marker::PhantomData<&'a [u8]>,
}

impl Iterator for HostCall<'_> {
    type Item = Result<InferResult, BackendError>;

    /// Waits for the next response (a decoupled model may send many); `None` after the last.
    fn next(&mut self) -> Option<Self::Item> {
        let call = self.call.as_mut()?;
        match call.next() {
            abi_stable::std_types::ROption::RNone => {
                self.call = None;
                None
            }
            abi_stable::std_types::ROption::RSome(r) => {
                Some(r.into_result().map(InferResult::from_ffi))
            }
        }
    }
}

impl HostCall<'_> {
    /// Waits for every response.
    pub fn wait(self) -> Result<Vec<InferResult>, BackendError> {
        self.collect()
    }

    /// Cancels the inference (and waits until the server has let go of the inputs).
    pub fn cancel(self) {}
}

impl Drop for HostCall<'_> {
    fn drop(&mut self) {
        if let Some(mut call) = self.call.take() {
            call.cancel();
            // The call ends (`next` gives none) only once the server dropped the lent inputs.
            while let abi_stable::std_types::ROption::RSome(_) = call.next() {}
        }
    }
}

struct BackendAdapter<B>(Guarded<B>);
struct ModelAdapter<M>(Guarded<M>);
struct InstanceAdapter<I>(Guarded<I>);

impl<B: Backend> BackendObj for BackendAdapter<B> {
    fn describe(&self) -> RString {
        guard(|| Ok(self.0.describe()))
            .map(RString::from)
            .unwrap_or_default()
    }

    fn load_model(&self, info: ModelInfoBox) -> RResult<ModelBox, BackendError> {
        guard(|| {
            let ctx = ModelContext::from_info(&info)?;
            let model = self.0.load_model(&ctx)?;
            Ok(ModelObj_TO::from_value(
                ModelAdapter(Guarded::new(model)),
                TD_Opaque,
            ))
        })
        .into()
    }

    fn auto_complete_config(&self, info: ModelInfoBox) -> RResult<ROption<RString>, BackendError> {
        guard(|| {
            let ctx = ModelContext::from_info(&info)?;
            Ok(match self.0.auto_complete_config(&ctx)? {
                Some(config) => ROption::RSome(RString::from(config.to_string())),
                None => ROption::RNone,
            })
        })
        .into()
    }
}

impl<M: Model> ModelObj for ModelAdapter<M> {
    fn create_instance(&self, info: InstanceInfoBox) -> RResult<InstanceBox, BackendError> {
        guard(|| {
            let ctx = InstanceContext {
                name: info.name().to_string(),
                index: info.index(),
                kind: info.kind(),
                device_id: info.device_id(),
            };
            let instance = self.0.create_instance(&ctx)?;
            Ok(InstanceObj_TO::from_value(
                InstanceAdapter(Guarded::new(instance)),
                TD_Opaque,
            ))
        })
        .into()
    }
}

impl<I: Instance> InstanceObj for InstanceAdapter<I> {
    fn execute(&mut self, requests: RVec<RequestBox>) -> RResult<(), BackendError> {
        let requests = requests.into_iter().map(Request::from_ffi).collect();
        guard(|| self.0.execute(requests)).into()
    }
}

/// The `create_backend` entry of a library's root module; used by [`export_backend!`](crate::export_backend).
pub extern "C" fn create_backend<B: Backend>(
    host: Host,
    config_json: RStr<'_>,
) -> RResult<BackendBox, BackendError> {
    let _ = HOST.set(host);
    guard(|| {
        let config = if config_json.is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(config_json.as_str())
                .map_err(|e| BackendError::internal(format!("backend config is not JSON: {e}")))?
        };
        let folder = config
            .get("backend_directory")
            .and_then(|d| d.as_str())
            .map(std::path::Path::new);
        if let Some(name) = folder.and_then(|d| d.file_name()).and_then(|n| n.to_str()) {
            let _ = NAME.set(name.to_string());
        }
        let backend = B::new(&config)?;
        Ok(BackendObj_TO::from_value(
            BackendAdapter(Guarded::new(backend)),
            TD_Opaque,
        ))
    })
    .into()
}

/// Builds the root module of a library whose backend is `B`; used by [`export_backend!`](crate::export_backend).
pub fn root_module<B: Backend>() -> BackendLibRef {
    BackendLib {
        create_backend: create_backend::<B>,
    }
    .leak_into_prefix()
}

/// Exports a type implementing [`Backend`] as this library's backend.
#[macro_export]
macro_rules! export_backend {
    ($backend:ty) => {
        /// The header the Ferrum server looks for when it loads this library.
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static FERRUM_BACKEND_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn __ferrum_root_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(
                    $crate::root_module::<$backend>,
                )
            }
            // SAFETY: the constructor returns the root module type named here.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::BackendLibRef>(
                    __ferrum_root_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// Exports a type implementing [`SimpleModel`] as this library's backend.
#[macro_export]
macro_rules! export_model {
    ($model:ty) => {
        $crate::export_backend!($crate::SimpleBackend<$model>);
    };
}
