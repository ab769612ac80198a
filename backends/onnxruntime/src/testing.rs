//! A stand-in for the server in unit tests: requests built from plain data through the
//! public handle traits, and a record of what the backend sent back to each.

use std::sync::{Arc, Mutex};

use ferrum_backend_api::abi_stable::sabi_trait::TD_Opaque;
use ferrum_backend_api::abi_stable::std_types::{RArc, ROption, RResult, RSlice, RStr};
use ferrum_backend_api::{
    BUFFER_SHARED, BackendError, BufferMut, BufferRef, CorrelationKind, CorrelationRef, DataType,
    Memory, MemoryKind, OutputTensor, ParamRef, RESPONSE_FINAL, Request, RequestObj, RequestObj_TO,
    ResponderHandle, ResponderObj, ResponderObj_TO, ResponseBox, ResponseObj, ResponseObj_TO,
    TensorInfo,
};

/// One input of a test request.
pub struct Input {
    /// Tensor name.
    name: String,
    /// Element type.
    datatype: DataType,
    /// Full shape.
    shape: Vec<i64>,
    /// The buffers that, concatenated, hold the bytes.
    buffers: Vec<Vec<u8>>,
    /// Where the buffers claim to live.
    memory: Memory,
    /// Buffer flags.
    flags: u32,
}

/// An input held in one private CPU buffer.
pub fn input(name: &str, datatype: DataType, shape: &[i64], data: &[u8]) -> Input {
    Input {
        name: name.to_string(),
        datatype,
        shape: shape.to_vec(),
        buffers: vec![data.to_vec()],
        memory: Memory::CPU,
        flags: 0,
    }
}

impl Input {
    /// The same bytes in two buffers split at `at`, flagged as client shared memory.
    pub fn shared_in_two(mut self, at: usize) -> Input {
        let data = self.buffers.concat();
        let (a, b) = data.split_at(at.min(data.len()));
        self.buffers = vec![a.to_vec(), b.to_vec()];
        self.flags = BUFFER_SHARED;
        self
    }

    /// The same bytes, claimed to live in GPU memory.
    pub fn on_gpu(mut self) -> Input {
        self.memory = Memory {
            kind: MemoryKind::GPU,
            device_id: 0,
        };
        self
    }
}

/// What the backend sent for one request, in order.
type Log = Arc<Mutex<Vec<Sent>>>;

/// One thing the backend sent.
#[derive(Debug)]
enum Sent {
    /// A response with these outputs and flags.
    Outputs(Vec<OutputTensor>, u32),
    /// An error with these flags.
    Error(BackendError, u32),
    /// Flags alone.
    Flags(u32),
}

/// Reads what the backend sent to one test request.
pub struct Answers(Log);

impl Answers {
    /// The request's one and only final answer: its outputs or its error. Panics when the
    /// backend sent nothing, more than one thing, or nothing final.
    pub fn result(&self) -> Result<Vec<OutputTensor>, BackendError> {
        let sent = self.0.lock().expect("answer log");
        match sent.as_slice() {
            [Sent::Outputs(outputs, flags)] if flags & RESPONSE_FINAL != 0 => Ok(outputs.clone()),
            [Sent::Error(error, flags)] if flags & RESPONSE_FINAL != 0 => Err(error.clone()),
            [Sent::Flags(flags)] => panic!("expected a final answer, got flags {flags} alone"),
            other => panic!("expected one final answer, got {other:?}"),
        }
    }

    /// The outputs of a request that must have succeeded.
    pub fn outputs(&self) -> Vec<OutputTensor> {
        self.result()
            .unwrap_or_else(|e| panic!("request failed: {}", e.message))
    }

    /// The message of a request that must have failed.
    pub fn error(&self) -> String {
        match self.result() {
            Ok(outputs) => panic!("request succeeded with {outputs:?}"),
            Err(e) => e.message.to_string(),
        }
    }
}

/// A request with these inputs asking for these outputs (none: all), and where its answers
/// can be read.
pub fn request(inputs: Vec<Input>, requested: &[&str]) -> (Request, Answers) {
    let log = Log::default();
    let fake = FakeRequest {
        inputs,
        requested: requested.iter().map(|s| s.to_string()).collect(),
        log: Arc::clone(&log),
    };
    (
        Request::from_ffi(RequestObj_TO::from_value(fake, TD_Opaque)),
        Answers(log),
    )
}

/// The request handle.
struct FakeRequest {
    /// Its inputs.
    inputs: Vec<Input>,
    /// Outputs asked for.
    requested: Vec<String>,
    /// Where its answers go.
    log: Log,
}

impl RequestObj for FakeRequest {
    fn id(&self) -> RStr<'_> {
        RStr::from_str("test")
    }

    fn correlation_id(&self) -> CorrelationRef<'_> {
        CorrelationRef {
            kind: CorrelationKind::NONE,
            number: 0,
            text: RStr::from_str(""),
        }
    }

    fn flags(&self) -> u32 {
        0
    }

    fn parameter_count(&self) -> usize {
        0
    }

    fn parameter(&self, _index: usize) -> ROption<ParamRef<'_>> {
        ROption::RNone
    }

    fn input_count(&self) -> usize {
        self.inputs.len()
    }

    fn input(&self, index: usize) -> ROption<TensorInfo<'_>> {
        self.inputs
            .get(index)
            .map(|t| TensorInfo {
                name: RStr::from_str(&t.name),
                datatype: t.datatype,
                shape: RSlice::from_slice(&t.shape),
                buffer_count: t.buffers.len() as u32,
                byte_size: t.buffers.iter().map(|b| b.len() as u64).sum(),
            })
            .into()
    }

    fn input_buffer(&self, input: usize, buffer: usize) -> ROption<BufferRef> {
        self.inputs
            .get(input)
            .and_then(|t| {
                t.buffers.get(buffer).map(|b| BufferRef {
                    ptr: b.as_ptr(),
                    len: b.len(),
                    memory: t.memory,
                    flags: t.flags,
                })
            })
            .into()
    }

    fn requested_output_count(&self) -> usize {
        self.requested.len()
    }

    fn requested_output(&self, index: usize) -> ROption<RStr<'_>> {
        self.requested.get(index).map(|s| RStr::from_str(s)).into()
    }

    fn is_cancelled(&self) -> bool {
        false
    }

    fn responder(&self) -> ResponderHandle {
        ResponderObj_TO::from_ptr(RArc::new(FakeResponder(Arc::clone(&self.log))), TD_Opaque)
    }
}

/// The responder handle.
#[derive(Clone)]
struct FakeResponder(Log);

impl ResponderObj for FakeResponder {
    fn new_response(&self) -> ResponseBox {
        ResponseObj_TO::from_value(
            FakeResponse {
                outputs: Vec::new(),
                log: Arc::clone(&self.0),
            },
            TD_Opaque,
        )
    }

    fn send_error(&self, error: BackendError, flags: u32) {
        self.0
            .lock()
            .expect("answer log")
            .push(Sent::Error(error, flags));
    }

    fn send_flags(&self, flags: u32) {
        self.0.lock().expect("answer log").push(Sent::Flags(flags));
    }

    fn is_cancelled(&self) -> bool {
        false
    }
}

/// The response handle: outputs live in buffers it allocates, as the server's do.
struct FakeResponse {
    /// Outputs added so far.
    outputs: Vec<OutputTensor>,
    /// Where the response goes when sent.
    log: Log,
}

impl ResponseObj for FakeResponse {
    fn add_output(
        &mut self,
        name: RStr<'_>,
        datatype: DataType,
        shape: RSlice<'_, i64>,
        byte_size: usize,
        _preferred: Memory,
    ) -> RResult<BufferMut, BackendError> {
        if self.outputs.iter().any(|o| o.name == name.as_str()) {
            return RResult::RErr(BackendError::internal(format!(
                "output '{name}' added twice"
            )));
        }
        self.outputs.push(OutputTensor::new(
            name.as_str(),
            datatype,
            shape.to_vec(),
            vec![0xAA; byte_size],
        ));
        let data = &mut self.outputs.last_mut().expect("just pushed").data;
        RResult::ROk(BufferMut {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            memory: Memory::CPU,
            flags: 0,
        })
    }

    fn add_parameter(&mut self, _parameter: ParamRef<'_>) {}

    fn send(&mut self, flags: u32) {
        let outputs = std::mem::take(&mut self.outputs);
        self.log
            .lock()
            .expect("answer log")
            .push(Sent::Outputs(outputs, flags));
    }
}
