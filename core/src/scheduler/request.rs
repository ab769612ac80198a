//! The server's side of the request handles a backend holds: the request itself (context and
//! input buffers), its responder, and responses whose output buffers the server allocates
//! (in the client's shared memory region when the client asked for one).
//!
//! Every handle of one request shares a [`RequestState`]. It enforces the response rules
//! (nothing after the final flag; a model that is not decoupled answers exactly once) and,
//! when the last handle goes away without a final response, fails the request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Instant;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RStr};
use bytes::Bytes;
use ferrum_backend_api::{
    BUFFER_SHARED, BackendError, BufferMut, BufferRef, CorrelationKind, CorrelationRef, DataType,
    Memory, ParamRef, ParamValue, Parameter, RESPONSE_FINAL, RequestBox, RequestObj, RequestObj_TO,
    ResponderHandle, ResponderObj, ResponderObj_TO, ResponseBox, ResponseObj, ResponseObj_TO,
    SEQUENCE_END, SEQUENCE_START, TensorInfo,
};
use parking_lot::Mutex;

use super::responder::{Destination, Outputs, RequestTiming, ResponseMessage};
use crate::error::{Error, Result};
use crate::server::{InferRequest, InputData, OutputData, OutputDelivery, ShmTarget};
use crate::stats::ComputeTimes;

/// What the core hands the scheduler with a request: how the client cancels it and where
/// its outputs go.
#[derive(Clone, Default)]
pub struct Ticket {
    /// Set when the client cancels the request or goes away.
    pub cancelled: Arc<AtomicBool>,
    /// Per-output delivery (shared memory, classification).
    pub delivery: Arc<[OutputDelivery]>,
    /// The instant the request must have started running by (its `timeout` parameter), for
    /// models whose queue has no timeout policy of its own.
    pub deadline: Option<Arc<Deadline>>,
    /// The caller's output allocator, if it gave one.
    pub allocator: Option<crate::server::Allocator>,
}

/// A queued request's deadline, and who got to it first: the instance that starts the
/// request, or the client side that gives up on it when the deadline passes. Exactly one of
/// them wins, so a request the client was told timed out never reaches the backend.
#[derive(Debug)]
pub struct Deadline {
    /// When the request stops being worth starting.
    at: Instant,
    /// [`Deadline::QUEUED`], [`Deadline::RUNNING`] or [`Deadline::EXPIRED`].
    state: AtomicU8,
}

impl Deadline {
    /// Still waiting in a queue.
    const QUEUED: u8 = 0;
    /// An instance took it before the deadline.
    const RUNNING: u8 = 1;
    /// The deadline passed first; it never runs.
    const EXPIRED: u8 = 2;

    /// A deadline at `at` for a request that is queued now.
    pub fn new(at: Instant) -> Self {
        Deadline {
            at,
            state: AtomicU8::new(Self::QUEUED),
        }
    }

    /// When the deadline passes.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Called by the instance about to run the request: true when it may run (from then on
    /// the deadline no longer applies), false when the deadline passed first.
    pub fn start(&self) -> bool {
        if Instant::now() >= self.at {
            self.expire();
        }
        match self.state.compare_exchange(
            Self::QUEUED,
            Self::RUNNING,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(state) => state == Self::RUNNING,
        }
    }

    /// Called once the deadline has passed: true when the request had not started (and now
    /// never will), false when an instance already runs it.
    pub fn expire(&self) -> bool {
        match self.state.compare_exchange(
            Self::QUEUED,
            Self::EXPIRED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(state) => state == Self::EXPIRED,
        }
    }
}

/// A request waiting for, or in, execution.
pub struct Work {
    /// The request.
    pub request: InferRequest,
    /// Where its responses go.
    pub dest: Destination,
    /// Cancellation and output delivery.
    pub ticket: Ticket,
}

impl Work {
    /// The request's batch size (1 for models without a batch dimension).
    pub fn rows(&self, batches: bool) -> usize {
        if !batches {
            return 1;
        }
        self.request
            .inputs
            .first()
            .and_then(|t| t.shape.first())
            .map_or(1, |&b| b.max(1) as usize)
    }
}

/// When an execution's phases began.
#[derive(Clone, Copy, Debug)]
pub struct ExecClock {
    /// The instance took the work.
    pub started: Instant,
    /// The inputs were ready and the backend was called.
    pub input_done: Instant,
}

/// The state every handle of one request shares.
pub struct RequestState {
    /// Where responses go.
    dest: Destination,
    /// The client's cancellation flag.
    cancelled: Arc<AtomicBool>,
    /// Per-output delivery, for the allocator.
    delivery: Arc<[OutputDelivery]>,
    /// The caller's output allocator.
    allocator: Option<crate::server::Allocator>,
    /// Whether the model may send any number of responses.
    decoupled: bool,
    /// The model's name, for messages.
    model: Arc<str>,
    /// The execution's clock.
    clock: ExecClock,
    /// Response bookkeeping, under one lock so responses leave in the order they were sent.
    sending: Mutex<Sending>,
}

#[derive(Default)]
struct Sending {
    /// The final flag went out.
    finished: bool,
    /// A response held back until the final flag (models that are not decoupled).
    held: Option<Outputs>,
}

impl RequestState {
    /// State for a request about to be executed.
    pub fn new(
        work_dest: Destination,
        ticket: &Ticket,
        decoupled: bool,
        model: Arc<str>,
        clock: ExecClock,
    ) -> Arc<Self> {
        Arc::new(RequestState {
            dest: work_dest,
            cancelled: Arc::clone(&ticket.cancelled),
            delivery: Arc::clone(&ticket.delivery),
            allocator: ticket.allocator.clone(),
            decoupled,
            model,
            clock,
            sending: Mutex::new(Sending::default()),
        })
    }

    fn timing(&self, output_start: Instant) -> RequestTiming {
        let end = Instant::now();
        RequestTiming {
            queue: self
                .clock
                .started
                .saturating_duration_since(self.dest.queued_at),
            compute: ComputeTimes {
                input: self.clock.input_done - self.clock.started,
                infer: output_start.saturating_duration_since(self.clock.input_done),
                output: end - output_start,
            },
            compute_start: Some(self.clock.started),
            compute_output_start: Some(output_start),
            compute_end: Some(end),
        }
    }

    /// Takes one response (`None`: flags only) or error from the backend.
    fn send(&self, result: Result<Option<Outputs>>, is_final: bool, output_start: Instant) {
        let mut s = self.sending.lock();
        if s.finished {
            return;
        }
        let message = |result: Result<Option<Outputs>>, is_final: bool| ResponseMessage {
            result,
            is_final,
            timing: is_final.then(|| self.timing(output_start)),
            rejected: false,
        };
        if self.decoupled {
            s.finished = is_final;
            self.dest.send(message(result, is_final));
            return;
        }
        // Not decoupled: exactly one response, delivered with the final flag.
        let result = match (result, s.held.take()) {
            (Err(e), _) => Err(e),
            (Ok(Some(_)), Some(_)) => Err(self.not_decoupled()),
            (Ok(Some(outputs)), None) | (Ok(None), Some(outputs)) => Ok(Some(outputs)),
            (Ok(None), None) if is_final => Err(Error::internal(format!(
                "model '{}' ended a request without sending a response",
                self.model
            ))),
            (Ok(None), None) => Ok(None),
        };
        if !is_final {
            match result {
                Ok(outputs) => {
                    s.held = outputs;
                    return;
                }
                Err(e) => {
                    s.finished = true;
                    self.dest.send(message(Err(e), true));
                    return;
                }
            }
        }
        s.finished = true;
        self.dest.send(message(result, true));
    }

    fn not_decoupled(&self) -> Error {
        Error::internal(format!(
            "model '{}' sent more than one response for a request, but it is not decoupled \
             (set model_transaction_policy {{ decoupled: true }} to stream responses)",
            self.model
        ))
    }

    /// Fails the request unless it already had its final response.
    pub fn fail(&self, error: BackendError) {
        self.send(Err(error.into()), true, Instant::now());
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

impl Drop for RequestState {
    fn drop(&mut self) {
        let finished = self.sending.lock().finished;
        if finished {
            return;
        }
        let error = if self.is_cancelled() {
            Error::cancelled("the request was cancelled")
        } else {
            Error::internal(format!(
                "the backend of model '{}' released a request without sending its final response",
                self.model
            ))
        };
        self.send(Err(error), true, Instant::now());
    }
}

/// The request handle: owns the request's data, so its input buffers live as long as it.
struct ServerRequest {
    /// The request.
    request: InferRequest,
    /// Correlation id and flags, read once from the parameters.
    correlation: (CorrelationKind, u64, Option<String>),
    /// Sequence flags.
    flags: u32,
    /// The shared state.
    state: Arc<RequestState>,
}

/// Builds the handle the backend receives for a request.
pub fn request_handle(request: InferRequest, state: Arc<RequestState>) -> RequestBox {
    let mut correlation = (CorrelationKind::NONE, 0, None);
    let mut flags = 0;
    for p in &request.parameters {
        match (p.key.as_str(), &p.value) {
            ("sequence_id", ParamValue::Int(v)) => {
                correlation = (CorrelationKind::U64, *v as u64, None)
            }
            ("sequence_id", ParamValue::Str(s)) => {
                correlation = (CorrelationKind::STRING, 0, Some(s.clone()))
            }
            ("sequence_start", ParamValue::Bool(true)) => flags |= SEQUENCE_START,
            ("sequence_end", ParamValue::Bool(true)) => flags |= SEQUENCE_END,
            _ => {}
        }
    }
    RequestObj_TO::from_value(
        ServerRequest {
            request,
            correlation,
            flags,
            state,
        },
        TD_Opaque,
    )
}

/// A parameter as it crosses the boundary.
pub fn param_ref(p: &Parameter) -> ParamRef<'_> {
    p.value.to_ffi(&p.key)
}

/// A one-buffer tensor's description as it crosses the boundary.
pub fn tensor_info<'a>(
    name: &'a str,
    datatype: DataType,
    shape: &'a [i64],
    byte_size: usize,
) -> TensorInfo<'a> {
    TensorInfo {
        name: RStr::from_str(name),
        datatype,
        shape: RSlice::from_slice(shape),
        buffer_count: 1,
        byte_size: byte_size as u64,
    }
}

/// A host buffer lent to a backend; `shared` when a client may change it meanwhile.
pub fn host_buffer(ptr: *const u8, len: usize, shared: bool) -> BufferRef {
    BufferRef {
        ptr,
        len,
        memory: Memory::CPU,
        flags: if shared { BUFFER_SHARED } else { 0 },
    }
}

fn input_buffer(data: &InputData) -> BufferRef {
    match data {
        InputData::Owned(bytes) => host_buffer(bytes.as_ptr(), bytes.len(), false),
        InputData::Shared(shared) => host_buffer(shared.as_ptr(), shared.len(), true),
        InputData::Lent(lent) => host_buffer(lent.as_ptr(), lent.len(), lent.shared),
    }
}

impl RequestObj for ServerRequest {
    fn id(&self) -> RStr<'_> {
        RStr::from_str(&self.request.id)
    }

    fn correlation_id(&self) -> CorrelationRef<'_> {
        CorrelationRef {
            kind: self.correlation.0,
            number: self.correlation.1,
            text: RStr::from_str(self.correlation.2.as_deref().unwrap_or("")),
        }
    }

    fn flags(&self) -> u32 {
        self.flags
    }

    fn parameter_count(&self) -> usize {
        self.request.parameters.len()
    }

    fn parameter(&self, index: usize) -> ROption<ParamRef<'_>> {
        self.request.parameters.get(index).map(param_ref).into()
    }

    fn input_count(&self) -> usize {
        self.request.inputs.len()
    }

    fn input(&self, index: usize) -> ROption<TensorInfo<'_>> {
        self.request
            .inputs
            .get(index)
            .map(|t| tensor_info(&t.name, t.datatype, &t.shape, t.data.len()))
            .into()
    }

    fn input_buffer(&self, input: usize, buffer: usize) -> ROption<BufferRef> {
        match (self.request.inputs.get(input), buffer) {
            (Some(t), 0) => ROption::RSome(input_buffer(&t.data)),
            _ => ROption::RNone,
        }
    }

    fn requested_output_count(&self) -> usize {
        self.request.outputs.len()
    }

    fn requested_output(&self, index: usize) -> ROption<RStr<'_>> {
        self.request
            .outputs
            .get(index)
            .map(|s| RStr::from_str(s))
            .into()
    }

    fn is_cancelled(&self) -> bool {
        self.state.is_cancelled()
    }

    fn timeout_microseconds(&self) -> u64 {
        self.request
            .parameters
            .iter()
            .find(|p| p.key == "timeout")
            .and_then(|p| match p.value {
                ParamValue::Int(us) => u64::try_from(us).ok(),
                _ => None,
            })
            .unwrap_or(0)
    }

    fn responder(&self) -> ResponderHandle {
        ResponderObj_TO::from_ptr(
            RArc::new(ServerResponder(Arc::clone(&self.state))),
            TD_Opaque,
        )
    }
}

/// The responder handle.
#[derive(Clone)]
struct ServerResponder(Arc<RequestState>);

impl ResponderObj for ServerResponder {
    fn new_response(&self) -> ResponseBox {
        ResponseObj_TO::from_value(
            ServerResponse {
                state: Arc::clone(&self.0),
                outputs: Vec::new(),
                parameters: Vec::new(),
                sent: false,
            },
            TD_Opaque,
        )
    }

    fn send_error(&self, error: BackendError, flags: u32) {
        self.0.send(
            Err(error.into()),
            flags & RESPONSE_FINAL != 0,
            Instant::now(),
        );
    }

    fn send_flags(&self, flags: u32) {
        self.0
            .send(Ok(None), flags & RESPONSE_FINAL != 0, Instant::now());
    }

    fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// Where one output's bytes are.
enum Storage {
    /// A buffer of the server's heap, handed to the frontend without another copy.
    Heap(Vec<u8>),
    /// The client's shared memory region.
    Shm(ShmTarget, usize),
}

/// One allocated output.
struct Slot {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
    storage: Storage,
}

/// The response handle: outputs allocated so far, and parameters.
struct ServerResponse {
    state: Arc<RequestState>,
    outputs: Vec<Slot>,
    parameters: Vec<Parameter>,
    sent: bool,
}

impl ServerResponse {
    fn allocate(
        &mut self,
        name: &str,
        datatype: DataType,
        shape: &[i64],
        byte_size: usize,
    ) -> std::result::Result<BufferMut, BackendError> {
        if self.sent {
            return Err(BackendError::internal(
                "output added to a response already sent",
            ));
        }
        if self.outputs.iter().any(|s| s.name == name) {
            return Err(BackendError::internal(format!(
                "the backend added output '{name}' twice to one response"
            )));
        }
        let count = crate::server::element_count(name, shape)
            .map_err(|e| BackendError::internal(format!("backend output: {}", e.message)))?;
        if let Some(size) = datatype.element_size()
            && count.checked_mul(size) != Some(byte_size)
        {
            return Err(BackendError::internal(format!(
                "the backend asked for {byte_size} bytes for output '{name}', but its shape {shape:?} of {datatype} needs {}",
                count.saturating_mul(size)
            )));
        }
        if datatype.element_size().is_none() && datatype != DataType::BYTES {
            return Err(BackendError::internal(format!(
                "the backend produced output '{name}' of unknown type {datatype}"
            )));
        }
        let target = self
            .state
            .delivery
            .iter()
            .find(|d| d.name == name && d.classification.is_none())
            .and_then(|d| d.shm.clone());
        let (storage, buffer) = match target {
            Some(target) => {
                if byte_size > target.byte_size {
                    return Err(BackendError::invalid_argument(format!(
                        "output '{name}' needs {byte_size} bytes but its shared memory region '{}' allows {}",
                        target.region.name, target.byte_size
                    )));
                }
                let ptr = target
                    .region
                    .writable_ptr(target.offset, byte_size)
                    .map_err(BackendError::from)?;
                let buffer = BufferMut {
                    ptr,
                    len: byte_size,
                    memory: Memory::CPU,
                    flags: BUFFER_SHARED,
                };
                (Storage::Shm(target, byte_size), buffer)
            }
            None if let Some(vec) = self
                .state
                .allocator
                .as_ref()
                .and_then(|a| a.0.allocate(name, datatype, shape, byte_size)) =>
            {
                let mut data = vec;
                if data.len() != byte_size {
                    return Err(BackendError::internal(format!(
                        "the caller's allocator gave {} bytes for output '{name}', which needs {byte_size}",
                        data.len()
                    )));
                }
                let buffer = BufferMut {
                    ptr: data.as_mut_ptr(),
                    len: byte_size,
                    memory: Memory::CPU,
                    flags: 0,
                };
                (Storage::Heap(data), buffer)
            }
            None => {
                let mut data = Vec::new();
                data.try_reserve_exact(byte_size).map_err(|_| {
                    BackendError::new(
                        ferrum_backend_api::ErrorCode::RESOURCE_EXHAUSTED,
                        format!("cannot allocate {byte_size} bytes for output '{name}'"),
                    )
                })?;
                data.resize(byte_size, 0);
                let buffer = BufferMut {
                    ptr: data.as_mut_ptr(),
                    len: byte_size,
                    memory: Memory::CPU,
                    flags: 0,
                };
                (Storage::Heap(data), buffer)
            }
        };
        self.outputs.push(Slot {
            name: name.to_string(),
            datatype,
            shape: shape.to_vec(),
            storage,
        });
        Ok(buffer)
    }

    fn finish(&mut self) -> Result<Outputs> {
        let mut outputs = Vec::with_capacity(self.outputs.len());
        for slot in self.outputs.drain(..) {
            let (data, shm) = match slot.storage {
                Storage::Heap(data) => {
                    if slot.datatype == DataType::BYTES {
                        let count = crate::server::element_count(&slot.name, &slot.shape)?;
                        let ok = ferrum_backend_api::bytes::decode(&data)
                            .is_ok_and(|items| items.len() == count);
                        if !ok {
                            return Err(Error::internal(format!(
                                "the backend produced output '{}' whose {} bytes do not hold the {count} strings its shape {:?} needs",
                                slot.name,
                                data.len(),
                                slot.shape
                            )));
                        }
                    }
                    (Bytes::from(data), None)
                }
                Storage::Shm(target, len) => {
                    (Bytes::new(), Some((target.region.name.clone(), len)))
                }
            };
            outputs.push(OutputData {
                name: slot.name,
                datatype: slot.datatype,
                shape: slot.shape,
                data,
                shm,
            });
        }
        Ok(Outputs {
            outputs,
            parameters: std::mem::take(&mut self.parameters),
        })
    }
}

impl ResponseObj for ServerResponse {
    fn add_output(
        &mut self,
        name: RStr<'_>,
        datatype: DataType,
        shape: RSlice<'_, i64>,
        byte_size: usize,
        _preferred: Memory,
    ) -> RResult<BufferMut, BackendError> {
        self.allocate(name.as_str(), datatype, shape.as_slice(), byte_size)
            .into()
    }

    fn add_parameter(&mut self, parameter: ParamRef<'_>) {
        self.parameters.extend(Parameter::from_ffi(&parameter));
    }

    fn send(&mut self, flags: u32) {
        if self.sent {
            return;
        }
        self.sent = true;
        let output_start = Instant::now();
        let result = self.finish().map(Some);
        self.state
            .send(result, flags & RESPONSE_FINAL != 0, output_start);
    }
}

#[cfg(test)]
mod tests {
    use super::Deadline;
    use std::time::{Duration, Instant};

    #[test]
    fn a_deadline_goes_to_whoever_comes_first() {
        let later = Instant::now() + Duration::from_secs(60);
        // Started in time: the deadline no longer applies.
        let started = Deadline::new(later);
        assert!(started.start());
        assert!(!started.expire());
        assert!(started.start());
        // Expired first: it never starts.
        let expired = Deadline::new(later);
        assert!(expired.expire());
        assert!(!expired.start());
        assert!(expired.expire());
        // An instance that comes after the deadline does not start it either.
        let passed = Deadline::new(Instant::now());
        assert!(!passed.start());
        assert!(passed.expire());
    }
}
