//! The boundary itself: the root module every backend library exports, and the handles
//! (opaque trait objects) that cross it.
//!
//! Compatibility rules (see docs/design/backend-abi.md):
//! - A handle's methods are only ever appended, after its `last_prefix_field`, and every
//!   appended method has a default body; a library built against an older minor version
//!   then gets the default (or the server sees the method as missing) instead of a crash.
//! - `#[repr(C)]` value types never change once released; kinds are open `u32` sets.
//! - The server loads a library built against the same major version and the same or an
//!   older minor version; a newer minor is refused with both versions named.

// abi_stable's `sabi_trait` expands to impls inside a const block; the lint flags that pattern.
#![allow(non_local_definitions)]
use abi_stable::StableAbi;
use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait};

use crate::types::{
    BackendError, BufferMut, BufferRef, CorrelationRef, DataType, InstanceKind, LogLevel, Memory,
    ParamRef, TensorInfo,
};

/// The name of the exported static that holds a backend library's header.
///
/// Equal to `abi_stable::library::ROOT_MODULE_LOADER_NAME`; spelled out because attributes need
/// a literal (a unit test keeps the two in step).
#[doc(hidden)]
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// The root module of a backend library, checked by the server when it loads the library.
///
/// A prefix type: later versions may append fields (read as absent from older libraries).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BackendLibRef)))]
#[sabi(missing_field(option))]
pub struct BackendLib {
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

// ---------------------------------------------------------------------------------------
// Implemented by the server.
// ---------------------------------------------------------------------------------------

/// Services the server offers every backend.
#[sabi_trait]
pub trait HostObj: Send + Sync {
    /// Writes a message to the server's log.
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>);

    /// Starts building an inference on another model of this server (business logic
    /// scripting); `model_version` -1 lets the server choose.
    #[sabi(last_prefix_field)]
    fn new_request(
        &self,
        model_name: RStr<'_>,
        model_version: i64,
    ) -> RResult<HostRequestBox, BackendError>;
}

/// The server's services as they cross the boundary.
pub type Host = HostObj_TO<'static, RArc<()>>;

/// An inference a backend builds and runs on another model of the server.
#[sabi_trait]
pub trait HostRequestObj: Send {
    /// Sets the request id.
    fn set_id(&mut self, id: RStr<'_>);

    /// Adds a request parameter.
    fn add_parameter(&mut self, parameter: ParamRef<'_>);

    /// Adds an input; its bytes are copied.
    fn add_input(
        &mut self,
        name: RStr<'_>,
        datatype: DataType,
        shape: RSlice<'_, i64>,
        data: RSlice<'_, u8>,
    );

    /// Asks for an output by name (none asked: all).
    fn add_requested_output(&mut self, name: RStr<'_>);

    /// Runs the inference and waits for all its responses. Must not be called from a thread
    /// the server is waiting on (for example from inside `execute` of the model being called).
    #[sabi(last_prefix_field)]
    fn infer(&mut self) -> RResult<RVec<InferResultBox>, BackendError>;

    /// Adds an input whose bytes the backend lends instead of copying: they must stay valid
    /// and unchanged until the inference has ended (the host call's `next` returned none, or
    /// `infer` returned). Since 1.2.
    fn add_input_lent(
        &mut self,
        name: RStr<'_>,
        datatype: DataType,
        shape: RSlice<'_, i64>,
        data: BufferRef,
    ) {
        // SAFETY: the caller lends `len` readable bytes at `ptr` for the whole inference.
        let bytes = unsafe { crate::request::raw_slice(data.ptr, data.len) };
        self.add_input(name, datatype, shape, RSlice::from_slice(bytes));
    }

    /// Starts the inference and returns at once; its responses arrive through the returned
    /// call, so a backend can run several inferences at the same time. Since 1.2.
    fn start(&mut self) -> RResult<HostCallBox, BackendError> {
        RResult::RErr(BackendError::unsupported(
            "this server does not start inferences asynchronously",
        ))
    }
}

/// An inference a backend started through the host (since 1.2).
#[sabi_trait]
pub trait HostCallObj: Send {
    /// Waits for the next response: `None` once the inference has sent its last one. An error
    /// ends the inference.
    fn next(&mut self) -> ROption<RResult<InferResultBox, BackendError>>;

    /// Cancels the inference; responses not yet received are dropped.
    #[sabi(last_prefix_field)]
    fn cancel(&mut self);
}

/// A started inference as it crosses the boundary.
pub type HostCallBox = HostCallObj_TO<'static, RBox<()>>;

/// A backend-built inference request as it crosses the boundary.
pub type HostRequestBox = HostRequestObj_TO<'static, RBox<()>>;

/// One response of an inference a backend ran through the host.
#[sabi_trait]
pub trait InferResultObj: Send + Sync {
    /// Number of response parameters.
    fn parameter_count(&self) -> usize;

    /// A response parameter by index.
    fn parameter(&self, index: usize) -> ROption<ParamRef<'_>>;

    /// Number of outputs.
    fn output_count(&self) -> usize;

    /// An output's description by index.
    fn output(&self, index: usize) -> ROption<TensorInfo<'_>>;

    /// One buffer of an output.
    #[sabi(last_prefix_field)]
    fn output_buffer(&self, output: usize, buffer: usize) -> ROption<BufferRef>;
}

/// An inference result as it crosses the boundary.
pub type InferResultBox = InferResultObj_TO<'static, RBox<()>>;

/// What the server tells a backend about a model version it asks it to load.
#[sabi_trait]
pub trait ModelInfoObj: Send + Sync {
    /// The model's name.
    fn name(&self) -> RStr<'_>;

    /// The version being loaded.
    fn version(&self) -> i64;

    /// The model's configuration: Triton's ModelConfig as JSON (snake_case field names).
    fn config_json(&self) -> RStr<'_>;

    /// The model's folder in the repository (`<repo>/<model>`).
    fn model_path(&self) -> RStr<'_>;

    /// The version folder (`<repo>/<model>/<version>`).
    #[sabi(last_prefix_field)]
    fn version_path(&self) -> RStr<'_>;
}

/// A model description as it crosses the boundary.
pub type ModelInfoBox = ModelInfoObj_TO<'static, RBox<()>>;

/// What the server tells a model about an instance it asks it to create.
#[sabi_trait]
pub trait InstanceInfoObj: Send + Sync {
    /// Instance name, `<model>_<group>_<index>` as Triton names them.
    fn name(&self) -> RStr<'_>;

    /// Index of this instance among the model's instances.
    fn index(&self) -> u32;

    /// CPU, GPU, or model-chosen placement.
    fn kind(&self) -> InstanceKind;

    /// GPU ordinal for GPU instances, 0 otherwise.
    #[sabi(last_prefix_field)]
    fn device_id(&self) -> i32;
}

/// An instance description as it crosses the boundary.
pub type InstanceInfoBox = InstanceInfoObj_TO<'static, RBox<()>>;

/// One inference request, owned by the backend from `execute` on. Its input buffers stay
/// valid while the handle lives; dropping it (and every responder and response of it) before
/// a final response was sent fails the request with a clear error.
#[sabi_trait]
pub trait RequestObj: Send + Sync {
    /// The client's request id (may be empty).
    fn id(&self) -> RStr<'_>;

    /// The sequence correlation id, if the request belongs to a sequence.
    fn correlation_id(&self) -> CorrelationRef<'_>;

    /// [`crate::SEQUENCE_START`] / [`crate::SEQUENCE_END`] bits.
    fn flags(&self) -> u32;

    /// Number of request parameters.
    fn parameter_count(&self) -> usize;

    /// A request parameter by index.
    fn parameter(&self, index: usize) -> ROption<ParamRef<'_>>;

    /// Number of inputs.
    fn input_count(&self) -> usize;

    /// An input's description by index.
    fn input(&self, index: usize) -> ROption<TensorInfo<'_>>;

    /// One buffer of an input; the input's bytes are its buffers concatenated.
    fn input_buffer(&self, input: usize, buffer: usize) -> ROption<BufferRef>;

    /// Number of outputs the client asked for by name (zero: all).
    fn requested_output_count(&self) -> usize;

    /// A requested output's name by index.
    fn requested_output(&self, index: usize) -> ROption<RStr<'_>>;

    /// Whether the client cancelled the request (or went away).
    fn is_cancelled(&self) -> bool;

    /// Where this request's responses go; clones may outlive the request.
    #[sabi(last_prefix_field)]
    fn responder(&self) -> ResponderHandle;

    /// The request's timeout in microseconds from its `timeout` parameter (0: none).
    /// Since 1.1.
    fn timeout_microseconds(&self) -> u64 {
        0
    }
}

/// A request as it crosses the boundary.
pub type RequestBox = RequestObj_TO<'static, RBox<()>>;

/// Sends the responses of one request; implemented by the server.
#[sabi_trait]
pub trait ResponderObj: Clone + Send + Sync {
    /// A new, empty response for the request; its outputs are allocated by the server.
    fn new_response(&self) -> ResponseBox;

    /// Sends an error; with [`crate::RESPONSE_FINAL`] in `flags` it ends the request.
    fn send_error(&self, error: BackendError, flags: u32);

    /// Sends flags alone (no response): [`crate::RESPONSE_FINAL`] ends the request.
    fn send_flags(&self, flags: u32);

    /// Whether the client cancelled the request (or went away).
    #[sabi(last_prefix_field)]
    fn is_cancelled(&self) -> bool;
}

/// A request's responder as it crosses the boundary.
pub type ResponderHandle = ResponderObj_TO<'static, RArc<()>>;

/// One response being built: outputs land in buffers the server allocates (in the client's
/// shared memory region when it asked for one), so they are written once.
#[sabi_trait]
pub trait ResponseObj: Send {
    /// Adds an output of `byte_size` bytes and returns the buffer to write it into.
    /// `preferred` is where the backend would like the bytes; the buffer says where they are.
    fn add_output(
        &mut self,
        name: RStr<'_>,
        datatype: DataType,
        shape: RSlice<'_, i64>,
        byte_size: usize,
        preferred: Memory,
    ) -> RResult<BufferMut, BackendError>;

    /// Adds a response parameter.
    fn add_parameter(&mut self, parameter: ParamRef<'_>);

    /// Sends the response with these flags; the handle is spent afterwards.
    #[sabi(last_prefix_field)]
    fn send(&mut self, flags: u32);
}

/// A response as it crosses the boundary.
pub type ResponseBox = ResponseObj_TO<'static, RBox<()>>;

// ---------------------------------------------------------------------------------------
// Implemented by the backend library.
// ---------------------------------------------------------------------------------------

/// A backend: one per library, loads models.
#[sabi_trait]
pub trait BackendObj: Send + Sync {
    /// Loads one version of a model.
    fn load_model(&self, info: ModelInfoBox) -> RResult<ModelBox, BackendError>;

    /// Fills in what a model config leaves out (inputs, outputs, batching) from the model file.
    /// Returns the completed config as JSON, or none to keep it as it is.
    #[sabi(last_prefix_field)]
    fn auto_complete_config(&self, info: ModelInfoBox) -> RResult<ROption<RString>, BackendError>;

    /// One line about the backend (its runtime and version) for the server's log; empty for
    /// none. Since 1.1: a library built against 1.0 gets this default.
    fn describe(&self) -> RString {
        RString::new()
    }
}

/// A backend object as it crosses the boundary.
pub type BackendBox = BackendObj_TO<'static, RBox<()>>;

/// A loaded model version: creates its instances.
#[sabi_trait]
pub trait ModelObj: Send + Sync {
    /// Creates one execution instance.
    #[sabi(last_prefix_field)]
    fn create_instance(&self, info: InstanceInfoBox) -> RResult<InstanceBox, BackendError>;
}

/// A model object as it crosses the boundary.
pub type ModelBox = ModelObj_TO<'static, RBox<()>>;

/// One execution instance; the server calls it from one thread at a time.
#[sabi_trait]
pub trait InstanceObj: Send {
    /// Runs a batch of whole requests, taking ownership of them. Each must get a final
    /// response, now or later; an error returned here fails every request not yet answered.
    #[sabi(last_prefix_field)]
    fn execute(&mut self, requests: RVec<RequestBox>) -> RResult<(), BackendError>;
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
