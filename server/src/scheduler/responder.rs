//! The server's side of a request's responder: takes the backend's responses, checks them,
//! splits a batched response back into one per request (slices of the same buffer, no copy),
//! keeps responses in request order when the model asks for it, and guarantees every
//! request one final answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult};
use bytes::Bytes;
use ferrum_backend_api::{
    BackendError, DataType, OutputTensor, Parameter, RESPONSE_FINAL, Responder, ResponderObj,
    ResponderObj_TO, Response,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::core::OutputData;
use crate::error::{Error, Result};
use crate::stats::{ComputeTimes, ModelStats};

/// The outputs of one response, in the server's terms.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Output tensors, shapes as the backend produced them.
    pub outputs: Vec<OutputData>,
    /// Response parameters.
    pub parameters: Vec<Parameter>,
}

/// One response for a request, with whether it is the request's last.
pub struct ResponseMessage {
    /// The outputs or the error.
    pub result: Result<Outputs>,
    /// No more responses follow.
    pub is_final: bool,
    /// On the final response of an executed request: where its time went.
    pub timing: Option<RequestTiming>,
    /// The scheduler refused the request (queue timeout) rather than the backend failing it.
    pub rejected: bool,
}

impl ResponseMessage {
    /// A final message that refuses a request before it ran.
    pub fn rejection(error: Error) -> Self {
        ResponseMessage {
            result: Err(error),
            is_final: true,
            timing: None,
            rejected: true,
        }
    }
}

/// Where an executed request's time went.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestTiming {
    /// Waiting in the queue.
    pub queue: Duration,
    /// Its batch's compute phases.
    pub compute: ComputeTimes,
    /// When its execution started (for traces).
    pub compute_start: Option<Instant>,
    /// When the backend's final response arrived (for traces).
    pub compute_output_start: Option<Instant>,
    /// When the outputs were ready (for traces).
    pub compute_end: Option<Instant>,
}

/// Hands out responses in request order: a request's responses wait until every earlier
/// request has had its final one.
#[derive(Default)]
pub struct Sequencer {
    /// The next sequence number to deliver, and responses waiting for their turn.
    state: Mutex<SequencerState>,
}

#[derive(Default)]
struct SequencerState {
    /// Sequence number whose responses go out now.
    next: u64,
    /// Held responses by sequence number: channel, messages, final seen.
    waiting: BTreeMap<
        u64,
        (
            mpsc::UnboundedSender<ResponseMessage>,
            Vec<ResponseMessage>,
            bool,
        ),
    >,
}

impl Sequencer {
    fn deliver(
        &self,
        seq: u64,
        tx: &mpsc::UnboundedSender<ResponseMessage>,
        message: ResponseMessage,
    ) {
        let mut state = self.state.lock();
        let is_final = message.is_final;
        let entry = state
            .waiting
            .entry(seq)
            .or_insert_with(|| (tx.clone(), Vec::new(), false));
        entry.1.push(message);
        entry.2 |= is_final;
        loop {
            let next = state.next;
            let Some((tx, messages, done)) = state.waiting.get_mut(&next) else {
                break;
            };
            for m in messages.drain(..) {
                let _ = tx.send(m);
            }
            if !*done {
                break;
            }
            state.waiting.remove(&next);
            state.next += 1;
        }
    }
}

/// Where one request's responses go.
pub struct Destination {
    /// The request's channel.
    pub tx: mpsc::UnboundedSender<ResponseMessage>,
    /// When the request entered the queue.
    pub queued_at: Instant,
    /// The request's batch size (rows of the merged batch that are its own).
    pub rows: usize,
    /// Its place in the response order, when the model preserves ordering.
    pub order: Option<(Arc<Sequencer>, u64)>,
}

impl Destination {
    /// A destination that takes whole responses, in any order.
    pub fn single(tx: mpsc::UnboundedSender<ResponseMessage>, rows: usize) -> Self {
        Destination {
            tx,
            queued_at: Instant::now(),
            rows,
            order: None,
        }
    }

    /// Sends a message to the request, in order when ordering is kept.
    pub fn send(&self, message: ResponseMessage) {
        match &self.order {
            Some((sequencer, seq)) => sequencer.deliver(*seq, &self.tx, message),
            None => {
                let _ = self.tx.send(message);
            }
        }
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

/// Shared state of one executed request (possibly a merged batch of several).
pub struct ResponderState {
    /// The requests behind it; emptied once the final response went out.
    dests: Mutex<Vec<Destination>>,
    /// The execution's clock, set before the backend is called.
    clock: Mutex<Option<ExecClock>>,
    /// Where executions are counted.
    stats: Option<Arc<ModelStats>>,
}

impl ResponderState {
    /// Starts the execution's clock: the backend is about to be called.
    pub fn start_clock(&self, clock: ExecClock) {
        *self.clock.lock() = Some(clock);
    }

    fn send(&self, result: std::result::Result<Response, BackendError>, is_final: bool) {
        let mut dests = self.dests.lock();
        if dests.is_empty() {
            return;
        }
        let output_start = Instant::now();
        let result = result
            .map_err(Error::from)
            .and_then(|r| to_outputs(r, &dests));
        let timing = match (is_final, *self.clock.lock()) {
            (true, Some(clock)) => {
                let compute_end = Instant::now();
                let compute = ComputeTimes {
                    input: clock.input_done - clock.started,
                    infer: output_start.saturating_duration_since(clock.input_done),
                    output: compute_end - output_start,
                };
                if let Some(stats) = &self.stats {
                    let rows: usize = dests.iter().map(|d| d.rows.max(1)).sum();
                    stats.record_execution(rows as u64, compute);
                }
                Some((clock, compute, output_start, compute_end))
            }
            _ => None,
        };
        let timing_for = |dest: &Destination| {
            timing.map(
                |(clock, compute, output_start, compute_end)| RequestTiming {
                    queue: clock.started.saturating_duration_since(dest.queued_at),
                    compute,
                    compute_start: Some(clock.started),
                    compute_output_start: Some(output_start),
                    compute_end: Some(compute_end),
                },
            )
        };
        match result {
            Ok(parts) => {
                for (dest, outputs) in dests.iter().zip(parts) {
                    let timing = timing_for(dest);
                    dest.send(ResponseMessage {
                        result: Ok(outputs),
                        is_final,
                        timing,
                        rejected: false,
                    });
                }
            }
            Err(e) => {
                for dest in dests.iter() {
                    let timing = timing_for(dest);
                    dest.send(ResponseMessage {
                        result: Err(e.clone()),
                        is_final,
                        timing,
                        rejected: false,
                    });
                }
            }
        }
        if is_final {
            dests.clear();
        }
    }

    /// Fails the requests unless they already had their final response.
    pub fn fail(&self, error: BackendError) {
        self.send(Err(error), true);
    }

    /// Fails the requests if the backend returned without answering them.
    pub fn finish_if_silent(&self) {
        self.fail(BackendError::internal(
            "the backend returned without sending a response",
        ));
    }
}

/// Checks a backend response and divides it among the destinations (rows along dim 0).
fn to_outputs(response: Response, dests: &[Destination]) -> Result<Vec<Outputs>> {
    let parameters = response.parameters.into_vec();
    let outputs: Vec<OutputData> = response
        .outputs
        .into_iter()
        .map(checked_output)
        .collect::<Result<_>>()?;
    if dests.len() == 1 {
        return Ok(vec![Outputs {
            outputs,
            parameters,
        }]);
    }
    let total: usize = dests.iter().map(|d| d.rows).sum();
    let mut parts: Vec<Outputs> = dests
        .iter()
        .map(|_| Outputs {
            outputs: Vec::with_capacity(outputs.len()),
            parameters: parameters.clone(),
        })
        .collect();
    for output in outputs {
        if output.shape.first().copied() != i64::try_from(total).ok() {
            return Err(Error::internal(format!(
                "output '{}' has shape {:?}, but the batch holds {total} rows",
                output.name, output.shape
            )));
        }
        let offsets = row_offsets(&output, total)?;
        let mut row = 0;
        for (dest, part) in dests.iter().zip(parts.iter_mut()) {
            let (start, end) = (offsets[row], offsets[row + dest.rows]);
            row += dest.rows;
            let mut shape = output.shape.clone();
            shape[0] = dest.rows as i64;
            part.outputs.push(OutputData {
                name: output.name.clone(),
                datatype: output.datatype,
                shape,
                data: output.data.slice(start..end),
                shm: None,
            });
        }
    }
    Ok(parts)
}

/// Byte offset where each row of an output starts, plus the end.
fn row_offsets(output: &OutputData, rows: usize) -> Result<Vec<usize>> {
    if rows == 0 {
        return Ok(vec![0]);
    }
    match output.datatype.element_size() {
        Some(_) => {
            let row_bytes = output.data.len() / rows;
            Ok((0..=rows).map(|r| r * row_bytes).collect())
        }
        None => {
            let items = ferrum_backend_api::bytes::decode(&output.data)
                .map_err(|e| Error::internal(e.message.to_string()))?;
            let per_row = items.len() / rows;
            // starts[i]: where element i begins; the last entry is the end of the buffer.
            let mut starts = Vec::with_capacity(items.len() + 1);
            let mut offset = 0;
            for item in &items {
                starts.push(offset);
                offset += 4 + item.len();
            }
            starts.push(offset);
            Ok((0..=rows).map(|r| starts[r * per_row]).collect())
        }
    }
}

/// Converts one backend output, checking its bytes against its shape and type.
fn checked_output(output: OutputTensor) -> Result<OutputData> {
    let name = output.name.to_string();
    let count = crate::core::element_count(&name, &output.shape)
        .map_err(|e| Error::internal(format!("backend output: {}", e.message)))?;
    let consistent = match output.datatype.element_size() {
        Some(size) => count.checked_mul(size) == Some(output.data.len()),
        None if output.datatype == DataType::BYTES => {
            ferrum_backend_api::bytes::decode(&output.data).is_ok_and(|items| items.len() == count)
        }
        None => false,
    };
    if !consistent {
        return Err(Error::internal(format!(
            "the backend produced output '{name}' whose {} bytes do not match its shape {:?} and type {}",
            output.data.len(),
            output.shape.as_slice(),
            output.datatype
        )));
    }
    Ok(OutputData {
        name,
        datatype: output.datatype,
        shape: output.shape.into_vec(),
        data: Bytes::from_owner(output.data),
        shm: None,
    })
}

/// The ABI responder handed to the backend.
#[derive(Clone)]
struct ChannelResponder(Arc<ResponderState>);

impl ResponderObj for ChannelResponder {
    fn send(&self, response: RResult<Response, BackendError>, flags: u32) {
        self.0
            .send(response.into_result(), flags & RESPONSE_FINAL != 0);
    }
}

/// A responder over these destinations, and the state to check after `execute` returns.
pub fn responder(
    dests: Vec<Destination>,
    stats: Option<Arc<ModelStats>>,
) -> (Responder, Arc<ResponderState>) {
    let state = Arc::new(ResponderState {
        dests: Mutex::new(dests),
        clock: Mutex::new(None),
        stats,
    });
    let responder =
        ResponderObj_TO::from_ptr(RArc::new(ChannelResponder(Arc::clone(&state))), TD_Opaque);
    (responder, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(datatype: DataType, shape: Vec<i64>, data: Vec<u8>) -> OutputTensor {
        OutputTensor::new("OUT", datatype, shape, data)
    }

    fn dests(
        rows: &[usize],
    ) -> (
        Vec<Destination>,
        Vec<mpsc::UnboundedReceiver<ResponseMessage>>,
    ) {
        rows.iter()
            .map(|&rows| {
                let (tx, rx) = mpsc::unbounded_channel();
                (
                    Destination {
                        tx,
                        queued_at: Instant::now(),
                        rows,
                        order: None,
                    },
                    rx,
                )
            })
            .unzip()
    }

    #[test]
    fn splits_fixed_size_rows_without_copying() {
        let (d, _rx) = dests(&[1, 2]);
        let data: Vec<u8> = (0..12).collect();
        let response = Response::from_outputs(vec![output(DataType::INT32, vec![3, 1], data)]);
        let parts = to_outputs(response, &d).unwrap();
        assert_eq!(parts[0].outputs[0].shape, vec![1, 1]);
        assert_eq!(&parts[0].outputs[0].data[..], &[0, 1, 2, 3]);
        assert_eq!(parts[1].outputs[0].shape, vec![2, 1]);
        assert_eq!(&parts[1].outputs[0].data[..], &[4, 5, 6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn splits_bytes_rows() {
        let (d, _rx) = dests(&[2, 1]);
        let data = ferrum_backend_api::bytes::encode(["a", "bb", "", "ccc", "d", "ee"]);
        let response = Response::from_outputs(vec![output(DataType::BYTES, vec![3, 2], data)]);
        let parts = to_outputs(response, &d).unwrap();
        let first = ferrum_backend_api::bytes::decode(&parts[0].outputs[0].data).unwrap();
        let second = ferrum_backend_api::bytes::decode(&parts[1].outputs[0].data).unwrap();
        assert_eq!(first, vec![&b"a"[..], b"bb", b"", b"ccc"]);
        assert_eq!(second, vec![&b"d"[..], b"ee"]);
    }

    #[test]
    fn rejects_inconsistent_outputs() {
        let (d, _rx) = dests(&[1]);
        let response = Response::from_outputs(vec![output(DataType::INT32, vec![2], vec![0; 7])]);
        assert!(to_outputs(response, &d).is_err());
        let (d, _rx) = dests(&[1, 1]);
        let response = Response::from_outputs(vec![output(DataType::INT32, vec![3], vec![0; 12])]);
        assert!(to_outputs(response, &d).is_err());
    }

    #[test]
    fn sequencer_releases_in_order() {
        let sequencer = Sequencer::default();
        let (tx0, mut rx0) = mpsc::unbounded_channel();
        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let msg = || ResponseMessage {
            result: Ok(Outputs::default()),
            is_final: true,
            timing: None,
            rejected: false,
        };
        sequencer.deliver(1, &tx1, msg());
        assert!(rx1.try_recv().is_err(), "request 1 must wait for request 0");
        sequencer.deliver(0, &tx0, msg());
        assert!(rx0.try_recv().is_ok());
        assert!(rx1.try_recv().is_ok());
    }
}
