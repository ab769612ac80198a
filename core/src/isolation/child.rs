//! The isolated instance process: loads one backend library, one model version and one
//! instance through the same ABI the server uses, then runs the batches the server sends.
//! Input bytes are read in place from the input region; outputs are written straight into
//! the output region, and only their places cross the socket.

use std::collections::HashMap;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RStr, RVec};
use ferrum_backend_api::{
    BackendError, BufferMut, BufferRef, CorrelationRef, DataType, HostCallBox, HostCallObj,
    HostCallObj_TO, HostObj, HostObj_TO, HostRequestBox, HostRequestObj, HostRequestObj_TO,
    InferResultBox, InferResultObj, InferResultObj_TO, InstanceBox, InstanceInfoObj,
    InstanceInfoObj_TO, InstanceKind, LogLevel, Memory, ModelBox, ModelInfoObj, ModelInfoObj_TO,
    ParamRef, RESPONSE_FINAL, RequestObj, RequestObj_TO, ResponderHandle, ResponderObj,
    ResponderObj_TO, ResponseBox, ResponseObj, ResponseObj_TO, TensorInfo,
};
use parking_lot::Mutex;

use super::wire::{
    self, ALIGN, Answer, CallAnswer, CallMsg, ErrorMsg, FromChild, ParamMsg, Region, RequestMsg,
    Setup, ShmFile, TensorMsg, ToChild,
};

/// The command line argument that makes the `ferrum` executable an isolated instance process.
pub const CHILD_ARGUMENT: &str = "--ferrum-isolated-instance";

/// What every handle in the child shares: the socket to the server and the output region.
struct Link {
    /// Messages to the server (sent from any backend thread).
    writer: Mutex<UnixStream>,
    /// Where outputs are written.
    output: Region,
    /// The next free byte of the output region in this batch.
    bump: AtomicUsize,
    /// Inferences the backend started on other models, by call number: where their answers go.
    calls: Mutex<HashMap<u64, crossbeam_channel::Sender<CallAnswer>>>,
    /// Numbers the calls.
    next_call: AtomicU64,
    /// The running batch and its requests' cancellation flags.
    cancelled: Mutex<(u64, Vec<Arc<AtomicBool>>)>,
}

impl Link {
    fn send(&self, message: &FromChild) {
        // A failed write means the server is gone; the read loop sees that and exits.
        let _ = wire::send(&mut *self.writer.lock(), message);
    }

    /// Room for `len` output bytes: (offset, address).
    fn allocate(&self, len: usize) -> std::io::Result<(u64, *mut u8)> {
        let size = len.div_ceil(ALIGN).max(1) * ALIGN;
        let offset = self.bump.fetch_add(size, Ordering::Relaxed);
        self.output.ensure(offset + size)?;
        let address = self
            .output
            .at(offset as u64, len as u64)
            .ok_or_else(|| std::io::Error::other("output region did not grow"))?;
        Ok((offset as u64, address))
    }
}

/// Runs the isolated instance process; returns its exit code.
pub fn main() -> std::process::ExitCode {
    match serve() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ferrum isolated instance: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve() -> Result<(), String> {
    // SAFETY: the server hands these descriptors down at fixed numbers (see `wire`).
    let (mut reader, input, output) = unsafe {
        (
            UnixStream::from_raw_fd(wire::SOCKET_FD),
            Region::inherit(wire::INPUT_FD),
            Region::inherit(wire::OUTPUT_FD),
        )
    };
    let (input, output) = (
        input.map_err(|e| format!("cannot map the input region: {e}"))?,
        output.map_err(|e| format!("cannot map the output region: {e}"))?,
    );
    let writer = reader
        .try_clone()
        .map_err(|e| format!("cannot use the socket: {e}"))?;
    let link = Arc::new(Link {
        writer: Mutex::new(writer),
        output,
        bump: AtomicUsize::new(0),
        calls: Mutex::new(HashMap::new()),
        next_call: AtomicU64::new(0),
        cancelled: Mutex::new((0, Vec::new())),
    });
    let mut buffer = Vec::new();
    let setup = match wire::receive::<ToChild>(&mut reader, &mut buffer) {
        Ok(Some(ToChild::Setup(setup))) => setup,
        Ok(_) => return Err("the server sent no setup".into()),
        Err(e) => return Err(format!("cannot read the setup: {e}")),
    };
    // Fields drop in reverse: the instance before the model before the backend's library.
    let (_library, _backend, _model, mut instance) = match load(&setup, &link) {
        Ok(loaded) => loaded,
        Err(e) => {
            link.send(&FromChild::Failed(ErrorMsg::from(&e)));
            return Ok(());
        }
    };
    link.send(&FromChild::Ready);
    // One thread reads the socket, so answers to the backend's own calls arrive while its
    // `execute` waits for them; batches go to this thread, which runs them.
    let (batches, next_batch) = crossbeam_channel::unbounded::<Batch>();
    let reading = {
        let link = Arc::clone(&link);
        std::thread::Builder::new()
            .name("ferrum-isolated-reader".into())
            .spawn(move || read(reader, link, batches))
            .map_err(|e| format!("cannot start the reader thread: {e}"))?
    };
    for (batch, requests, flags) in next_batch {
        execute(&link, &input, &mut instance, batch, requests, flags);
    }
    reading
        .join()
        .map_err(|_| "the reader thread panicked".to_string())?
}

/// A batch as the reader hands it over: its number, requests and cancellation flags.
type Batch = (u64, Vec<RequestMsg>, Vec<Arc<AtomicBool>>);

/// Reads the server's messages until the socket closes.
fn read(
    mut reader: UnixStream,
    link: Arc<Link>,
    batches: crossbeam_channel::Sender<Batch>,
) -> Result<(), String> {
    let mut buffer = Vec::new();
    let result = loop {
        match wire::receive::<ToChild>(&mut reader, &mut buffer) {
            Ok(Some(ToChild::Execute { batch, requests })) => {
                let flags: Vec<_> = requests
                    .iter()
                    .map(|_| Arc::new(AtomicBool::new(false)))
                    .collect();
                *link.cancelled.lock() = (batch, flags.clone());
                if batches.send((batch, requests, flags)).is_err() {
                    break Ok(());
                }
            }
            Ok(Some(ToChild::Cancel { batch, request })) => {
                let cancelled = link.cancelled.lock();
                if cancelled.0 == batch
                    && let Some(flag) = cancelled.1.get(request as usize)
                {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            Ok(Some(ToChild::CallAnswer { call, answer })) => {
                let mut calls = link.calls.lock();
                let last = !matches!(answer, CallAnswer::Response { .. });
                if let Some(tx) = calls.get(&call) {
                    let _ = tx.send(answer);
                }
                if last {
                    calls.remove(&call);
                }
            }
            Ok(Some(ToChild::Setup(_))) => break Err("a second setup".to_string()),
            // The server closed the socket: it is unloading the model or going away.
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("cannot read from the server: {e}")),
        }
    };
    // Calls still waiting learn that the server is gone.
    link.calls.lock().clear();
    result
}

type Loaded = (
    ferrum_backend_api::BackendLibRef,
    ferrum_backend_api::BackendBox,
    ModelBox,
    InstanceBox,
);

fn load(setup: &Setup, link: &Arc<Link>) -> Result<Loaded, BackendError> {
    let path = std::path::Path::new(&setup.library);
    let (_, root) = crate::plugins::open_library(&setup.backend, path, path)
        .map_err(|e| BackendError::unavailable(e.message))?;
    let host = HostObj_TO::from_ptr(
        RArc::new(ChildHost {
            instance: setup.instance.clone(),
            link: Arc::clone(link),
        }),
        TD_Opaque,
    );
    let backend = (root.create_backend())(host, RStr::from_str(&setup.backend_config))
        .into_result()
        .map_err(|e| {
            BackendError::unavailable(format!(
                "backend '{}' failed to initialize: {}",
                setup.backend, e.message
            ))
        })?;
    let info = ModelInfoObj_TO::from_value(ChildModelInfo(setup.clone()), TD_Opaque);
    let model = backend.load_model(info).into_result()?;
    let info = InstanceInfoObj_TO::from_value(ChildModelInfo(setup.clone()), TD_Opaque);
    let instance = model.create_instance(info).into_result().map_err(|e| {
        BackendError::internal(format!(
            "creating instance '{}' failed: {}",
            setup.instance, e.message
        ))
    })?;
    Ok((root, backend, model, instance))
}

/// Runs one batch; every request ends with exactly one final message.
fn execute(
    link: &Arc<Link>,
    input: &Region,
    instance: &mut InstanceBox,
    batch: u64,
    requests: Vec<RequestMsg>,
    flags: Vec<Arc<AtomicBool>>,
) {
    // The server read every output of the previous batch before it sent this one.
    link.bump.store(0, Ordering::Relaxed);
    let mut states = Vec::with_capacity(requests.len());
    let mut handles = RVec::with_capacity(requests.len());
    for ((index, message), cancelled) in requests.into_iter().enumerate().zip(flags) {
        let addresses: Option<Vec<usize>> = message
            .inputs
            .iter()
            .map(|t| input.at(t.offset, t.len).map(|p| p as usize))
            .collect();
        let state = Arc::new(ChildRequest {
            link: Arc::clone(link),
            batch,
            index: index as u32,
            finished: AtomicBool::new(false),
            cancelled,
            addresses: addresses.clone().unwrap_or_default(),
            message,
        });
        if addresses.is_none() {
            state.finish(
                Answer::Error(ErrorMsg::from(&BackendError::internal(
                    "an input lies outside the shared memory region",
                ))),
                RESPONSE_FINAL,
            );
            continue;
        }
        handles.push(RequestObj_TO::from_value(
            ChildRequestHandle(Arc::clone(&state)),
            TD_Opaque,
        ));
        states.push(state);
    }
    let result = instance.execute(handles).into_result();
    if let Err(e) = &result {
        // An error fails every request not answered yet; later answers are dropped.
        for state in &states {
            state.finish(Answer::Error(ErrorMsg::from(e)), RESPONSE_FINAL);
        }
    }
    link.send(&FromChild::Executed {
        batch,
        error: result.err().as_ref().map(ErrorMsg::from),
    });
}

/// One request in the child, shared by its handles, responders and responses.
struct ChildRequest {
    /// The way to the server.
    link: Arc<Link>,
    /// Its batch.
    batch: u64,
    /// Its index in the batch.
    index: u32,
    /// The final message went out.
    finished: AtomicBool,
    /// The client cancelled the request.
    cancelled: Arc<AtomicBool>,
    /// Where each input's bytes are mapped.
    addresses: Vec<usize>,
    /// The request.
    message: RequestMsg,
}

impl ChildRequest {
    /// Sends an answer unless the request already ended.
    fn send(&self, answer: Answer, flags: u32) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        if flags & RESPONSE_FINAL != 0 && self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        self.link.send(&FromChild::Response {
            batch: self.batch,
            request: self.index,
            flags,
            answer,
        });
    }

    /// Sends a final answer unless the request already ended.
    fn finish(&self, answer: Answer, flags: u32) {
        self.send(answer, flags | RESPONSE_FINAL);
    }
}

impl Drop for ChildRequest {
    fn drop(&mut self) {
        // Every handle is gone: a request the backend never ended fails, as in the server.
        if !self.finished.load(Ordering::Acquire) {
            self.finish(
                Answer::Error(ErrorMsg::from(&BackendError::internal(
                    "the backend released the request without sending a final response",
                ))),
                RESPONSE_FINAL,
            );
        }
    }
}

/// The request handle the backend gets.
struct ChildRequestHandle(Arc<ChildRequest>);

impl RequestObj for ChildRequestHandle {
    fn id(&self) -> RStr<'_> {
        RStr::from_str(&self.0.message.id)
    }

    fn correlation_id(&self) -> CorrelationRef<'_> {
        self.0.message.correlation.as_ref()
    }

    fn flags(&self) -> u32 {
        self.0.message.flags
    }

    fn parameter_count(&self) -> usize {
        self.0.message.parameters.len()
    }

    fn parameter(&self, index: usize) -> ROption<ParamRef<'_>> {
        self.0
            .message
            .parameters
            .get(index)
            .map(ParamMsg::as_ref)
            .into()
    }

    fn input_count(&self) -> usize {
        self.0.message.inputs.len()
    }

    fn input(&self, index: usize) -> ROption<TensorInfo<'_>> {
        self.0
            .message
            .inputs
            .get(index)
            .map(|t| {
                crate::scheduler::tensor_info(
                    &t.name,
                    DataType(t.datatype),
                    &t.shape,
                    t.len as usize,
                )
            })
            .into()
    }

    fn input_buffer(&self, input: usize, buffer: usize) -> ROption<BufferRef> {
        match (
            self.0.message.inputs.get(input),
            self.0.addresses.get(input),
            buffer,
        ) {
            (Some(t), Some(&address), 0) => ROption::RSome(BufferRef {
                ptr: address as *const u8,
                len: t.len as usize,
                memory: Memory::CPU,
                flags: 0,
            }),
            _ => ROption::RNone,
        }
    }

    fn requested_output_count(&self) -> usize {
        self.0.message.requested.len()
    }

    fn requested_output(&self, index: usize) -> ROption<RStr<'_>> {
        self.0
            .message
            .requested
            .get(index)
            .map(|s| RStr::from_str(s))
            .into()
    }

    fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    fn responder(&self) -> ResponderHandle {
        ResponderObj_TO::from_ptr(RArc::new(ChildResponder(Arc::clone(&self.0))), TD_Opaque)
    }

    fn timeout_microseconds(&self) -> u64 {
        self.0.message.timeout_us
    }
}

/// A request's responder in the child.
#[derive(Clone)]
struct ChildResponder(Arc<ChildRequest>);

impl ResponderObj for ChildResponder {
    fn new_response(&self) -> ResponseBox {
        ResponseObj_TO::from_value(
            ChildResponse {
                request: Arc::clone(&self.0),
                outputs: Vec::new(),
                parameters: Vec::new(),
                sent: false,
            },
            TD_Opaque,
        )
    }

    fn send_error(&self, error: BackendError, flags: u32) {
        self.0.send(Answer::Error(ErrorMsg::from(&error)), flags);
    }

    fn send_flags(&self, flags: u32) {
        self.0.send(Answer::Flags, flags);
    }

    fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }
}

/// A response being built in the child: its outputs are already in the output region.
struct ChildResponse {
    /// Its request.
    request: Arc<ChildRequest>,
    /// Outputs written so far.
    outputs: Vec<TensorMsg>,
    /// Parameters.
    parameters: Vec<ParamMsg>,
    /// Sent already.
    sent: bool,
}

impl ResponseObj for ChildResponse {
    fn add_output(
        &mut self,
        name: RStr<'_>,
        datatype: DataType,
        shape: RSlice<'_, i64>,
        byte_size: usize,
        _preferred: Memory,
    ) -> RResult<BufferMut, BackendError> {
        if self.sent || self.request.finished.load(Ordering::Acquire) {
            return RResult::RErr(BackendError::internal(
                "the request already has its final response",
            ));
        }
        let (offset, address) = match self.request.link.allocate(byte_size) {
            Ok(place) => place,
            Err(e) => {
                return RResult::RErr(BackendError::new(
                    ferrum_backend_api::ErrorCode::RESOURCE_EXHAUSTED,
                    format!("cannot allocate output '{name}' of {byte_size} bytes: {e}"),
                ));
            }
        };
        self.outputs.push(TensorMsg {
            name: name.as_str().to_string(),
            datatype: datatype.0,
            shape: shape.to_vec(),
            offset,
            len: byte_size as u64,
        });
        RResult::ROk(BufferMut {
            ptr: address,
            len: byte_size,
            memory: Memory::CPU,
            flags: 0,
        })
    }

    fn add_parameter(&mut self, parameter: ParamRef<'_>) {
        self.parameters.extend(ParamMsg::of(&parameter));
    }

    fn send(&mut self, flags: u32) {
        if std::mem::replace(&mut self.sent, true) {
            return;
        }
        self.request.send(
            Answer::Response {
                outputs: std::mem::take(&mut self.outputs),
                parameters: std::mem::take(&mut self.parameters),
            },
            flags,
        );
    }
}

/// The model and instance descriptions the child gives the backend.
struct ChildModelInfo(Setup);

impl ModelInfoObj for ChildModelInfo {
    fn name(&self) -> RStr<'_> {
        RStr::from_str(&self.0.model)
    }
    fn version(&self) -> i64 {
        self.0.version
    }
    fn config_json(&self) -> RStr<'_> {
        RStr::from_str(&self.0.config_json)
    }
    fn model_path(&self) -> RStr<'_> {
        RStr::from_str(&self.0.model_path)
    }
    fn version_path(&self) -> RStr<'_> {
        RStr::from_str(&self.0.version_path)
    }
}

impl InstanceInfoObj for ChildModelInfo {
    fn name(&self) -> RStr<'_> {
        RStr::from_str(&self.0.instance)
    }
    fn index(&self) -> u32 {
        self.0.index
    }
    fn kind(&self) -> InstanceKind {
        InstanceKind(self.0.kind)
    }
    fn device_id(&self) -> i32 {
        self.0.device_id
    }
}

/// The services the child offers its backend: logging to the server's standard error, and
/// inferences on the server's other models (business logic), run by the server.
struct ChildHost {
    /// The instance, for log lines.
    instance: String,
    /// The way to the server.
    link: Arc<Link>,
}

impl HostObj for ChildHost {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        let level = match level {
            LogLevel::ERROR => "ERROR",
            LogLevel::WARN => "WARN",
            LogLevel::INFO => "INFO",
            _ => "DEBUG",
        };
        eprintln!(
            "{level} isolated instance {}: {target}: {message}",
            self.instance
        );
    }

    fn new_request(
        &self,
        model_name: RStr<'_>,
        model_version: i64,
    ) -> RResult<HostRequestBox, BackendError> {
        RResult::ROk(HostRequestObj_TO::from_value(
            ChildHostRequest {
                link: Arc::clone(&self.link),
                model: model_name.as_str().to_string(),
                version: model_version,
                id: String::new(),
                parameters: Vec::new(),
                inputs: Vec::new(),
                requested: Vec::new(),
            },
            TD_Opaque,
        ))
    }
}

/// Where a host request's input bytes are until the call starts.
enum CallInput {
    /// Copied.
    Owned(Vec<u8>),
    /// Lent by the backend (valid until the call ended; they are copied when it starts).
    Lent(usize, usize),
}

/// An inference the child's backend is building.
struct ChildHostRequest {
    /// The way to the server.
    link: Arc<Link>,
    /// The target model.
    model: String,
    /// Its version (-1: the server's choice).
    version: i64,
    /// Request id.
    id: String,
    /// Parameters.
    parameters: Vec<ParamMsg>,
    /// Inputs: name, type, shape, bytes.
    inputs: Vec<(String, u32, Vec<i64>, CallInput)>,
    /// Outputs asked for.
    requested: Vec<String>,
}

impl ChildHostRequest {
    /// Writes the inputs to a call file and sends the call; its answers arrive on the result.
    fn begin(&mut self) -> Result<ChildCall, BackendError> {
        let call = self.link.next_call.fetch_add(1, Ordering::Relaxed);
        let path = ShmFile::path(std::process::id(), &format!("c{call}"));
        let tensors = self.inputs.iter().map(|(name, datatype, shape, data)| {
            let bytes: &[u8] = match data {
                CallInput::Owned(bytes) => bytes,
                CallInput::Lent(0, _) | CallInput::Lent(_, 0) => &[],
                // SAFETY: the backend lends these bytes until the call has ended.
                CallInput::Lent(ptr, len) => unsafe {
                    std::slice::from_raw_parts(*ptr as *const u8, *len)
                },
            };
            (name.clone(), *datatype, shape.clone(), bytes)
        });
        let (file, inputs) = wire::layout(tensors, &path).map_err(|e| {
            BackendError::new(
                ferrum_backend_api::ErrorCode::RESOURCE_EXHAUSTED,
                format!("cannot pass the inputs of a call to '{}': {e}", self.model),
            )
        })?;
        let (tx, rx) = crossbeam_channel::unbounded();
        self.link.calls.lock().insert(call, tx);
        self.link.send(&FromChild::Call(Box::new(CallMsg {
            call,
            model: self.model.clone(),
            version: self.version,
            id: self.id.clone(),
            parameters: std::mem::take(&mut self.parameters),
            inputs,
            file: file.map(|_| path),
            requested: std::mem::take(&mut self.requested),
        })));
        self.inputs.clear();
        Ok(ChildCall {
            link: Arc::clone(&self.link),
            call,
            answers: rx,
            done: false,
        })
    }
}

impl HostRequestObj for ChildHostRequest {
    fn set_id(&mut self, id: RStr<'_>) {
        self.id = id.as_str().to_string();
    }

    fn add_parameter(&mut self, parameter: ParamRef<'_>) {
        self.parameters.extend(ParamMsg::of(&parameter));
    }

    fn add_input(
        &mut self,
        name: RStr<'_>,
        datatype: DataType,
        shape: RSlice<'_, i64>,
        data: RSlice<'_, u8>,
    ) {
        self.inputs.push((
            name.as_str().to_string(),
            datatype.0,
            shape.to_vec(),
            CallInput::Owned(data.to_vec()),
        ));
    }

    fn add_requested_output(&mut self, name: RStr<'_>) {
        self.requested.push(name.as_str().to_string());
    }

    fn infer(&mut self) -> RResult<RVec<InferResultBox>, BackendError> {
        let mut call = match self.begin() {
            Ok(call) => call,
            Err(e) => return RResult::RErr(e),
        };
        let mut results = RVec::new();
        while let ROption::RSome(next) = call.next() {
            match next {
                RResult::ROk(result) => results.push(result),
                RResult::RErr(e) => return RResult::RErr(e),
            }
        }
        RResult::ROk(results)
    }

    fn add_input_lent(
        &mut self,
        name: RStr<'_>,
        datatype: DataType,
        shape: RSlice<'_, i64>,
        data: BufferRef,
    ) {
        self.inputs.push((
            name.as_str().to_string(),
            datatype.0,
            shape.to_vec(),
            CallInput::Lent(data.ptr as usize, data.len),
        ));
    }

    fn start(&mut self) -> RResult<HostCallBox, BackendError> {
        self.begin()
            .map(|call| HostCallObj_TO::from_value(call, TD_Opaque))
            .into()
    }
}

/// An inference the child's backend started; the server runs it and sends its answers.
struct ChildCall {
    /// The way to the server.
    link: Arc<Link>,
    /// Its number.
    call: u64,
    /// Its answers.
    answers: crossbeam_channel::Receiver<CallAnswer>,
    /// The last answer came (or the call was cancelled).
    done: bool,
}

impl HostCallObj for ChildCall {
    fn next(&mut self) -> ROption<RResult<InferResultBox, BackendError>> {
        if self.done {
            return ROption::RNone;
        }
        let answer = match self.answers.recv() {
            Ok(answer) => answer,
            Err(_) => {
                self.done = true;
                return ROption::RSome(RResult::RErr(BackendError::unavailable(
                    "the server went away during the call",
                )));
            }
        };
        match answer {
            CallAnswer::Response {
                file,
                outputs,
                parameters,
            } => {
                let file = match file.as_deref().map(ShmFile::open).transpose() {
                    Ok(file) => file,
                    Err(e) => {
                        return ROption::RSome(RResult::RErr(BackendError::internal(format!(
                            "cannot read a response of the call: {e}"
                        ))));
                    }
                };
                let result = ChildInferResult {
                    file,
                    outputs,
                    parameters,
                };
                ROption::RSome(RResult::ROk(InferResultObj_TO::from_value(
                    result, TD_Opaque,
                )))
            }
            CallAnswer::Error(e) => {
                self.done = true;
                ROption::RSome(RResult::RErr(e.into()))
            }
            CallAnswer::End => {
                self.done = true;
                ROption::RNone
            }
        }
    }

    fn cancel(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            self.link.calls.lock().remove(&self.call);
            self.link.send(&FromChild::CancelCall { call: self.call });
        }
    }
}

impl Drop for ChildCall {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// One response of a call, its outputs in a file the server wrote.
struct ChildInferResult {
    /// The outputs' file (none when they are all empty).
    file: Option<ShmFile>,
    /// Outputs.
    outputs: Vec<TensorMsg>,
    /// Parameters.
    parameters: Vec<ParamMsg>,
}

impl InferResultObj for ChildInferResult {
    fn parameter_count(&self) -> usize {
        self.parameters.len()
    }

    fn parameter(&self, index: usize) -> ROption<ParamRef<'_>> {
        self.parameters.get(index).map(ParamMsg::as_ref).into()
    }

    fn output_count(&self) -> usize {
        self.outputs.len()
    }

    fn output(&self, index: usize) -> ROption<TensorInfo<'_>> {
        self.outputs
            .get(index)
            .map(|t| {
                crate::scheduler::tensor_info(
                    &t.name,
                    DataType(t.datatype),
                    &t.shape,
                    t.len as usize,
                )
            })
            .into()
    }

    fn output_buffer(&self, output: usize, buffer: usize) -> ROption<BufferRef> {
        let Some(t) = self.outputs.get(output).filter(|_| buffer == 0) else {
            return ROption::RNone;
        };
        let bytes: &[u8] = if t.len == 0 {
            &[]
        } else {
            match self.file.as_ref().and_then(|f| f.range(t.offset, t.len)) {
                Some(bytes) => bytes,
                None => return ROption::RNone,
            }
        };
        ROption::RSome(BufferRef {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            memory: Memory::CPU,
            flags: 0,
        })
    }
}
