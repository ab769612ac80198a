//! The boundary itself: the root module every backend library exports, and the trait objects
//! (backend, model, instance, responder, host) that cross it.

// abi_stable's `sabi_trait` expands to impls inside a const block; the lint flags that pattern.
#![allow(non_local_definitions)]
use abi_stable::StableAbi;
use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait};

use crate::types::{
    BackendError, CorrelationId, InstanceArgs, LogLevel, ModelArgs, Parameter, Response, Tensor,
};

/// The ABI generation a library was built for; the server refuses other values.
pub const ABI_VERSION: u32 = 1;

/// The name of the exported static that holds a backend library's header.
///
/// Equal to `abi_stable::library::ROOT_MODULE_LOADER_NAME`; spelled out because attributes need
/// a literal (a unit test keeps the two in step).
#[doc(hidden)]
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// The root module of a backend library, checked by the server when it loads the library.
///
/// A prefix type: later versions may append fields; older libraries keep loading.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BackendLibRef)))]
#[sabi(missing_field(panic))]
pub struct BackendLib {
    /// [`ABI_VERSION`] at the time the library was built.
    pub abi_version: u32,
    /// Creates the library's backend object. `config_json` is an object with
    /// `backend_directory` (the library's folder), `library_path`, and `cmdline` (the
    /// `--backend-config` settings for this backend, key → string value).
    #[sabi(last_prefix_field)]
    pub create_backend:
        extern "C" fn(host: Host, config_json: RStr<'_>) -> RResult<BackendBox, BackendError>,
}

impl RootModule for BackendLibRef {
    declare_root_module_statics! {BackendLibRef}
    const BASE_NAME: &'static str = "ferrum_backend";
    const NAME: &'static str = "ferrum backend";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// One request as a backend sees it: its context, its inputs, and where to send responses.
#[repr(C)]
#[derive(StableAbi)]
pub struct Request<'a> {
    /// The client's request id (may be empty).
    pub id: RStr<'a>,
    /// Sequence correlation id, if the request belongs to a sequence.
    pub correlation_id: CorrelationId<'a>,
    /// [`crate::SEQUENCE_START`] / [`crate::SEQUENCE_END`] bits.
    pub flags: u32,
    /// Request parameters the client sent, passed through.
    pub parameters: RSlice<'a, Parameter>,
    /// Input tensors.
    pub inputs: RSlice<'a, Tensor<'a>>,
    /// Names of the outputs the client asked for (empty: all).
    pub requested_outputs: RSlice<'a, RStr<'a>>,
    /// Where this request's responses go; clone it to answer after `execute` returns.
    pub responder: Responder,
}

impl<'a> Request<'a> {
    /// The input with this name.
    pub fn input(&self, name: &str) -> Option<&Tensor<'a>> {
        self.inputs.iter().find(|t| t.name.as_str() == name)
    }

    /// The input with this name, or an invalid-argument error naming it.
    pub fn require_input(&self, name: &str) -> Result<&Tensor<'a>, BackendError> {
        self.input(name)
            .ok_or_else(|| BackendError::invalid_argument(format!("missing input '{name}'")))
    }

    /// The request parameter with this key.
    pub fn parameter(&self, key: &str) -> Option<&crate::ParamValue> {
        self.parameters
            .iter()
            .find(|p| p.key.as_str() == key)
            .map(|p| &p.value)
    }

    /// Whether the client asked for this output (true when it asked for none in particular).
    pub fn wants_output(&self, name: &str) -> bool {
        self.requested_outputs.is_empty()
            || self.requested_outputs.iter().any(|o| o.as_str() == name)
    }

    /// Sends the request's one and only response.
    pub fn respond(&self, result: Result<Response, BackendError>) {
        self.responder.send(result.into(), crate::RESPONSE_FINAL);
    }
}

/// Receives the responses of one request; implemented by the server.
#[sabi_trait]
pub trait ResponderObj: Clone + Send + Sync {
    /// Sends a response (or an error) for the request; `flags` may carry [`crate::RESPONSE_FINAL`].
    /// After a final response, further sends are ignored.
    #[sabi(last_prefix_field)]
    fn send(&self, response: RResult<Response, BackendError>, flags: u32);
}

/// A request's responder as it crosses the boundary.
pub type Responder = ResponderObj_TO<'static, RArc<()>>;

/// An inference a backend asks the server to run on another model (business logic scripting).
#[repr(C)]
#[derive(StableAbi)]
pub struct HostInferRequest<'a> {
    /// The model to run.
    pub model_name: RStr<'a>,
    /// Its version, or -1 for the server's choice.
    pub model_version: i64,
    /// Request id.
    pub id: RStr<'a>,
    /// Request parameters.
    pub parameters: RSlice<'a, Parameter>,
    /// Input tensors.
    pub inputs: RSlice<'a, Tensor<'a>>,
    /// Outputs wanted (empty: all).
    pub requested_outputs: RSlice<'a, RStr<'a>>,
}

/// Services the server offers every backend.
#[sabi_trait]
pub trait HostObj: Send + Sync {
    /// Writes a message to the server's log.
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>);

    /// Runs an inference on another model of this server and returns all its responses.
    /// Must not be called from a thread the server is waiting on (for example from inside
    /// `execute` of the model being called).
    #[sabi(last_prefix_field)]
    fn infer(&self, request: HostInferRequest<'_>) -> RResult<RVec<Response>, BackendError>;
}

/// The server's services as they cross the boundary.
pub type Host = HostObj_TO<'static, RArc<()>>;

/// A backend: one per library, loads models.
#[sabi_trait]
pub trait BackendObj: Send + Sync {
    /// Loads one version of a model.
    fn load_model(&self, args: ModelArgs<'_>) -> RResult<ModelBox, BackendError>;

    /// Fills in what a model config leaves out (inputs, outputs, batching) from the model file.
    /// Returns the completed config as JSON, or none to keep it as it is.
    #[sabi(last_prefix_field)]
    fn auto_complete_config(&self, args: ModelArgs<'_>) -> RResult<ROption<RString>, BackendError>;
}

/// A backend object as it crosses the boundary.
pub type BackendBox = BackendObj_TO<'static, RBox<()>>;

/// A loaded model version: creates its instances.
#[sabi_trait]
pub trait ModelObj: Send + Sync {
    /// Creates one execution instance.
    #[sabi(last_prefix_field)]
    fn create_instance(&self, args: InstanceArgs<'_>) -> RResult<InstanceBox, BackendError>;
}

/// A model object as it crosses the boundary.
pub type ModelBox = ModelObj_TO<'static, RBox<()>>;

/// One execution instance; the server calls it from one thread at a time.
#[sabi_trait]
pub trait InstanceObj: Send {
    /// Runs a batch of requests. Each request must get a final response through its responder;
    /// an error returned here fails every request that has not had one.
    #[sabi(last_prefix_field)]
    fn execute(&mut self, requests: RSlice<'_, Request<'_>>) -> RResult<(), BackendError>;
}

/// An instance object as it crosses the boundary.
pub type InstanceBox = InstanceObj_TO<'static, RBox<()>>;

#[cfg(test)]
mod tests {
    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            super::ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
