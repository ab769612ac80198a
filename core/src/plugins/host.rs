//! The services the server offers backends through the ABI: logging and in-process inference
//! (business logic scripting).

use std::sync::{Arc, OnceLock, Weak};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RVec};
use bytes::Bytes;
use ferrum_backend_api::{
    BackendError, BufferRef, DataType, Host, HostCallBox, HostCallObj, HostCallObj_TO, HostObj,
    HostObj_TO, HostRequestBox, HostRequestObj, HostRequestObj_TO, InferResultBox, InferResultObj,
    InferResultObj_TO, LogLevel, ParamRef, Parameter, TensorInfo,
};

use crate::scheduler::{host_buffer, tensor_info};
use crate::server::{Core, InferRequest, InferResponse, InputTensor};

/// The core a host serves inferences with, and the runtime to run them on.
type Attached = (Weak<Core>, tokio::runtime::Handle);

/// The server side of the backend callback table.
#[derive(Clone, Default)]
pub struct ServerHost {
    /// The core, set once the server is assembled; used for backend-initiated inference.
    core: Arc<OnceLock<Attached>>,
}

impl ServerHost {
    /// Connects the host to the core that serves backend-initiated inferences.
    pub fn attach(&self, core: &Arc<Core>, runtime: tokio::runtime::Handle) {
        let _ = self.core.set((Arc::downgrade(core), runtime));
    }

    /// The core and its runtime, once attached and while the core lives.
    pub fn core(&self) -> Option<(Arc<Core>, tokio::runtime::Handle)> {
        let (core, runtime) = self.core.get()?;
        Some((core.upgrade()?, runtime.clone()))
    }

    /// The host as it crosses the ABI.
    pub fn to_ffi(&self) -> Host {
        HostObj_TO::from_ptr(RArc::new(self.clone()), TD_Opaque)
    }
}

impl HostObj for ServerHost {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        let (target, message) = (target.as_str(), message.as_str());
        match level {
            LogLevel::ERROR => tracing::error!(backend = target, "{message}"),
            LogLevel::WARN => tracing::warn!(backend = target, "{message}"),
            LogLevel::INFO => tracing::info!(backend = target, "{message}"),
            _ => tracing::debug!(backend = target, "{message}"),
        }
    }

    fn new_request(
        &self,
        model_name: RStr<'_>,
        model_version: i64,
    ) -> RResult<HostRequestBox, BackendError> {
        let request = InferRequest {
            model_name: model_name.to_string(),
            model_version: (model_version > 0).then_some(model_version),
            ..Default::default()
        };
        RResult::ROk(HostRequestObj_TO::from_value(
            HostRequest {
                host: self.clone(),
                request: Some(request),
                lent: None,
            },
            TD_Opaque,
        ))
    }
}

/// A request a backend is building.
struct HostRequest {
    /// The host that runs it.
    host: ServerHost,
    /// The request; taken when it runs.
    request: Option<InferRequest>,
    /// Lent inputs: the guard each of them holds, and what tells when the last one is gone.
    lent: Option<(Arc<Released>, tokio::sync::oneshot::Receiver<()>)>,
}

/// Dropped with the last lent input of a host request; says so.
struct Released(parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<()>>>);

impl Drop for Released {
    fn drop(&mut self) {
        if let Some(tx) = self.0.lock().take() {
            let _ = tx.send(());
        }
    }
}

thread_local! {
    /// The model whose `execute` this thread is running (instance threads only).
    static EXECUTING: std::cell::RefCell<Option<Arc<str>>> = const { std::cell::RefCell::new(None) };
}

/// Marks the current thread as running `execute` of `model` until the guard drops.
pub fn executing(model: &Arc<str>) -> impl Drop {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            EXECUTING.with(|e| e.borrow_mut().take());
        }
    }
    EXECUTING.with(|e| *e.borrow_mut() = Some(Arc::clone(model)));
    Reset
}

impl HostRequest {
    /// The request to run and the core; refuses a model calling itself from its own
    /// `execute` (its instances would wait on themselves).
    fn take(&mut self) -> Result<(InferRequest, Arc<Core>), BackendError> {
        let request = self
            .request
            .take()
            .ok_or_else(|| BackendError::internal("this host request already ran"))?;
        let calling_itself = EXECUTING.with(|e| {
            e.borrow()
                .as_deref()
                .is_some_and(|m| m == request.model_name)
        });
        if calling_itself {
            return Err(BackendError::invalid_argument(format!(
                "model '{}' cannot call itself from its own execute: its instances would wait \
                 on themselves (call another model, or answer later from a thread of your own)",
                request.model_name
            )));
        }
        let Some((core, _)) = self.host.core.get() else {
            return Err(BackendError::unavailable(
                "the server is not ready for inference",
            ));
        };
        let Some(core) = core.upgrade() else {
            return Err(BackendError::unavailable("the server is shutting down"));
        };
        Ok((request, core))
    }

    fn run(&mut self) -> Result<Vec<InferResponse>, BackendError> {
        let mut call = self.start_call()?;
        let mut responses = Vec::new();
        while let Some(item) = call.receive() {
            responses.push(item?);
        }
        Ok(responses)
    }

    /// Starts the request; its responses arrive through the returned call, read on the
    /// caller's thread (no task, no extra hand-off). The call ends only once the server let
    /// go of the lent inputs.
    fn start_call(&mut self) -> Result<HostCall, BackendError> {
        let taken = self.take();
        // Our own reference to the lent inputs' guard goes now: the request holds the rest.
        let released = self.lent.take().map(|(_, released)| released);
        let (request, core) = taken?;
        // On failure the request (and its lent inputs) is already gone.
        let stream = core.infer_stream(request).map_err(BackendError::from)?;
        Ok(HostCall {
            stream: Some(stream),
            released,
        })
    }
}

/// Runs a future to completion on the current thread, parking it while the future waits.
/// For backend threads only (never an async worker).
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::park();
    }
}

/// An inference a backend started: its response stream, read on the caller's thread.
struct HostCall {
    /// The responses; none once the inference ended or was cancelled.
    stream: Option<crate::server::ResponseStream>,
    /// Fires when the last lent input is dropped.
    released: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl HostCall {
    /// The next response; none after the last (and then only once the lent inputs are free).
    fn receive(&mut self) -> Option<Result<InferResponse, BackendError>> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                self.wait_released();
                return None;
            };
            match block_on(stream.next()) {
                None => self.stream = None,
                Some(Err(e)) => {
                    self.stream = None;
                    return Some(Err(BackendError::from(e)));
                }
                Some(Ok(item)) => {
                    if item.is_final {
                        self.stream = None;
                    }
                    if let Some(response) = item.response {
                        return Some(Ok(response));
                    }
                }
            }
        }
    }

    /// Waits until the server dropped the lent inputs.
    fn wait_released(&mut self) {
        if let Some(released) = self.released.take() {
            let _ = block_on(released);
        }
    }
}

fn result_box(response: InferResponse) -> InferResultBox {
    InferResultObj_TO::from_ptr(RBox::new(InferResult { response }), TD_Opaque)
}

impl HostCallObj for HostCall {
    fn next(&mut self) -> ROption<RResult<InferResultBox, BackendError>> {
        match self.receive() {
            None => ROption::RNone,
            Some(result) => ROption::RSome(result.map(result_box).into()),
        }
    }

    fn cancel(&mut self) {
        // Dropping the stream cancels the inference.
        self.stream = None;
    }
}

impl HostRequestObj for HostRequest {
    fn set_id(&mut self, id: RStr<'_>) {
        if let Some(r) = self.request.as_mut() {
            r.id = id.to_string();
        }
    }

    fn add_parameter(&mut self, parameter: ParamRef<'_>) {
        if let Some(r) = self.request.as_mut() {
            r.parameters.extend(Parameter::from_ffi(&parameter));
        }
    }

    fn add_input(
        &mut self,
        name: RStr<'_>,
        datatype: DataType,
        shape: RSlice<'_, i64>,
        data: RSlice<'_, u8>,
    ) {
        if let Some(r) = self.request.as_mut() {
            r.inputs.push(InputTensor {
                name: name.to_string(),
                datatype,
                shape: shape.to_vec(),
                data: Bytes::copy_from_slice(data.as_slice()).into(),
            });
        }
    }

    fn add_input_lent(
        &mut self,
        name: RStr<'_>,
        datatype: DataType,
        shape: RSlice<'_, i64>,
        data: BufferRef,
    ) {
        let Some(r) = self.request.as_mut() else {
            return;
        };
        let (guard, _) = self.lent.get_or_insert_with(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Arc::new(Released(parking_lot::Mutex::new(Some(tx)))), rx)
        });
        let release: Arc<dyn Send + Sync> = guard.clone();
        let shared = data.flags & ferrum_backend_api::BUFFER_SHARED != 0;
        // SAFETY: the backend lends these bytes until the call ends, and the call ends only
        // after the last clone of `release` (held by the input) is dropped.
        let lent = unsafe { crate::server::LentBytes::new(data.ptr, data.len, shared, release) };
        r.inputs.push(InputTensor {
            name: name.to_string(),
            datatype,
            shape: shape.to_vec(),
            data: crate::server::InputData::Lent(lent),
        });
    }

    fn add_requested_output(&mut self, name: RStr<'_>) {
        if let Some(r) = self.request.as_mut() {
            r.outputs.push(name.to_string());
        }
    }

    fn infer(&mut self) -> RResult<RVec<InferResultBox>, BackendError> {
        self.run()
            .map(|responses| responses.into_iter().map(result_box).collect())
            .into()
    }

    fn start(&mut self) -> RResult<HostCallBox, BackendError> {
        self.start_call()
            .map(|call| HostCallObj_TO::from_value(call, TD_Opaque))
            .into()
    }
}

/// One response of a backend-initiated inference.
struct InferResult {
    response: InferResponse,
}

impl InferResultObj for InferResult {
    fn parameter_count(&self) -> usize {
        self.response.parameters.len()
    }

    fn parameter(&self, index: usize) -> ROption<ParamRef<'_>> {
        self.response
            .parameters
            .get(index)
            .map(crate::scheduler::param_ref)
            .into()
    }

    fn output_count(&self) -> usize {
        self.response.outputs.len()
    }

    fn output(&self, index: usize) -> ROption<TensorInfo<'_>> {
        self.response
            .outputs
            .get(index)
            .map(|o| tensor_info(&o.name, o.datatype, &o.shape, o.data.len()))
            .into()
    }

    fn output_buffer(&self, output: usize, buffer: usize) -> ROption<BufferRef> {
        match (self.response.outputs.get(output), buffer) {
            (Some(o), 0) => ROption::RSome(host_buffer(o.data.as_ptr(), o.data.len(), false)),
            _ => ROption::RNone,
        }
    }
}
