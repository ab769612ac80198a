//! Triton's sequence batcher. Requests carry a correlation id (`sequence_id`, a number or a
//! string) and the `sequence_start` / `sequence_end` flags; the requests of one sequence run
//! one at a time, in order, each on the state its predecessor left. The server fills the
//! model's control inputs (START, END, READY, CORRID) and keeps its implicit state: each
//! request gets the sequence's state as the state input and gives the state output back,
//! which the client never sees.
//!
//! Two strategies, as Triton's:
//! - `direct`: each sequence holds a batch slot of one instance from START to END (or until it
//!   idles out); an instance's batch is the next request of each of its slots' sequences.
//!   Sequences that find every slot taken wait in a backlog for one.
//! - `oldest`: no slots; a free instance takes the next request of up to `max_batch_size`
//!   sequences, oldest request first.
//!
//! Like the dynamic batcher it has no thread of its own: each free instance cuts its batch
//! under the lock.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrum_backend_api::{DataType, ParamValue};
use parking_lot::{Condvar, Mutex};

use super::responder::{Destination, ResponseHook, ResponseMessage};
use super::{ResponseTx, Ticket, Work};
use crate::config::{ModelConfig, datatype_of};
use crate::error::{Error, ErrorKind, Result};
use crate::proto::inference::model_config::SchedulingChoice;
use crate::proto::inference::model_sequence_batching::StrategyChoice;
use crate::proto::inference::model_sequence_batching::control::Kind as ControlKind;
use crate::proto::inference::model_sequence_batching::initial_state::StateData;
use crate::proto::inference::{ModelInput, ModelOutput, ModelSequenceBatching};
use crate::server::{InferRequest, InputTensor, OutputData};

/// Called when a sequence ends or idles out (the server forgets which version holds it).
pub type SequenceEnd = Arc<dyn Fn(&SequenceId) + Send + Sync>;

/// Triton's default `max_sequence_idle_microseconds`.
const DEFAULT_IDLE: Duration = Duration::from_secs(1);

/// A sequence's correlation id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SequenceId {
    /// A number (never 0).
    Number(u64),
    /// A string (never empty).
    Text(String),
}

impl std::fmt::Display for SequenceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceId::Number(n) => write!(f, "{n}"),
            SequenceId::Text(s) => write!(f, "'{s}'"),
        }
    }
}

/// The correlation id and flags a request carries in its parameters.
pub fn sequence_fields(request: &InferRequest) -> Result<(Option<SequenceId>, bool, bool)> {
    let (mut id, mut start, mut end) = (None, false, false);
    for p in &request.parameters {
        match (p.key.as_str(), &p.value) {
            ("sequence_id", ParamValue::Int(0)) => {}
            ("sequence_id", ParamValue::Int(n)) if *n > 0 => {
                id = Some(SequenceId::Number(*n as u64));
            }
            ("sequence_id", ParamValue::Str(s)) if s.as_str().is_empty() => {}
            ("sequence_id", ParamValue::Str(s)) => {
                id = Some(SequenceId::Text(s.as_str().to_string()));
            }
            ("sequence_id", other) => {
                return Err(Error::invalid(format!(
                    "sequence_id must be a positive integer or a string, got {other:?}"
                )));
            }
            ("sequence_start", ParamValue::Bool(b)) => start = *b,
            ("sequence_end", ParamValue::Bool(b)) => end = *b,
            ("sequence_start" | "sequence_end", other) => {
                return Err(Error::invalid(format!(
                    "{} must be a bool, got {other:?}",
                    p.key.as_str()
                )));
            }
            _ => {}
        }
    }
    Ok((id, start, end))
}

/// One control input the server fills.
#[derive(Clone, Debug)]
struct ControlSpec {
    /// Input name.
    name: String,
    /// What it tells.
    kind: ControlKind,
    /// Its element type.
    datatype: DataType,
    /// The element for false and for true (START, END, READY).
    values: [Vec<u8>; 2],
}

/// One implicit state pair.
#[derive(Clone, Debug)]
struct StateSpec {
    /// The input the state is fed as.
    input: String,
    /// The output it is taken from.
    output: String,
    /// Element type.
    datatype: DataType,
    /// The state's shape at the start of a sequence (without the batch dimension).
    initial_shape: Vec<i64>,
    /// The state's bytes at the start of a sequence.
    initial: Bytes,
}

/// How batches are formed.
#[derive(Clone, Debug)]
enum Strategy {
    /// A slot per sequence.
    Direct {
        /// How long a batch may wait for more of its slots to be ready.
        max_delay: Duration,
        /// The share of an instance's slots that must be ready before the delay is up.
        min_utilization: f32,
    },
    /// The oldest requests of any sequences.
    Oldest {
        /// Most sequences considered at once.
        max_candidates: usize,
        /// Preferred batch sizes.
        preferred: Vec<usize>,
        /// How long a batch may wait to fill.
        max_delay: Duration,
    },
}

/// The sequence batching settings of a model, from its `sequence_batching` config.
#[derive(Clone, Debug)]
pub struct SequencePolicy {
    /// How batches are formed.
    strategy: Strategy,
    /// A sequence with no request for this long is released.
    idle: Duration,
    /// Control inputs.
    controls: Vec<ControlSpec>,
    /// Implicit state.
    states: Vec<StateSpec>,
    /// Largest batch (1 for a model without batching).
    max_batch: usize,
    /// Whether tensors carry a batch dimension.
    batches: bool,
    /// Most requests waiting in all.
    queue_limit: usize,
}

/// The element bytes of one value of a control datatype.
fn control_value(
    name: &str,
    datatype: DataType,
    int: i32,
    float: f32,
    flag: bool,
) -> Result<Vec<u8>> {
    Ok(match datatype {
        DataType::INT32 => int.to_le_bytes().to_vec(),
        DataType::FP32 => float.to_le_bytes().to_vec(),
        DataType::BOOL => vec![u8::from(flag)],
        other => {
            return Err(Error::invalid(format!(
                "control input '{name}' has data type {other}; START, END and READY controls \
                 take INT32, FP32 or BOOL"
            )));
        }
    })
}

fn controls(batching: &ModelSequenceBatching) -> Result<Vec<ControlSpec>> {
    let mut specs = Vec::new();
    for input in &batching.control_input {
        for control in &input.control {
            let kind = ControlKind::try_from(control.kind).map_err(|_| {
                Error::invalid(format!(
                    "control input '{}' has an unknown kind",
                    input.name
                ))
            })?;
            let (datatype, values) = if kind == ControlKind::ControlSequenceCorrid {
                let datatype = datatype_of(control.data_type).ok_or_else(|| {
                    Error::invalid(format!(
                        "CORRID control input '{}' needs a data_type",
                        input.name
                    ))
                })?;
                if !matches!(
                    datatype,
                    DataType::UINT64
                        | DataType::INT64
                        | DataType::UINT32
                        | DataType::INT32
                        | DataType::BYTES
                ) {
                    return Err(Error::invalid(format!(
                        "CORRID control input '{}' must be TYPE_UINT64, TYPE_INT64, \
                         TYPE_UINT32, TYPE_INT32 or TYPE_STRING",
                        input.name
                    )));
                }
                (datatype, [Vec::new(), Vec::new()])
            } else if let [f, t] = control.int32_false_true[..] {
                let dt = DataType::INT32;
                let name = &input.name;
                (
                    dt,
                    [
                        control_value(name, dt, f, 0.0, false)?,
                        control_value(name, dt, t, 0.0, true)?,
                    ],
                )
            } else if let [f, t] = control.fp32_false_true[..] {
                let dt = DataType::FP32;
                let name = &input.name;
                (
                    dt,
                    [
                        control_value(name, dt, 0, f, false)?,
                        control_value(name, dt, 0, t, true)?,
                    ],
                )
            } else if let [f, t] = control.bool_false_true[..] {
                let dt = DataType::BOOL;
                let name = &input.name;
                (
                    dt,
                    [
                        control_value(name, dt, 0, 0.0, f)?,
                        control_value(name, dt, 0, 0.0, t)?,
                    ],
                )
            } else {
                return Err(Error::invalid(format!(
                    "control input '{}' needs exactly two values in one of int32_false_true, \
                     fp32_false_true or bool_false_true",
                    input.name
                )));
            };
            specs.push(ControlSpec {
                name: input.name.clone(),
                kind,
                datatype,
                values,
            });
        }
    }
    Ok(specs)
}

fn states(batching: &ModelSequenceBatching, version_path: &Path) -> Result<Vec<StateSpec>> {
    let mut specs = Vec::new();
    for state in &batching.state {
        let datatype = datatype_of(state.data_type).ok_or_else(|| {
            Error::invalid(format!("state '{}' needs a data_type", state.input_name))
        })?;
        if state.input_name.is_empty() || state.output_name.is_empty() {
            return Err(Error::invalid(
                "every state needs an input_name and an output_name",
            ));
        }
        let Some(size) = datatype.element_size() else {
            return Err(Error::invalid(format!(
                "state '{}' has data type {datatype}; implicit state takes fixed-size types",
                state.input_name
            )));
        };
        let (initial_shape, initial) = match state.initial_state.first() {
            None => {
                let dims: Vec<i64> = state.dims.iter().map(|&d| d.max(1)).collect();
                let count: i64 = dims.iter().product();
                (dims, Bytes::from(vec![0u8; count.max(0) as usize * size]))
            }
            Some(init) => {
                if init.dims.iter().any(|&d| d < 0) {
                    return Err(Error::invalid(format!(
                        "initial_state '{}' of state '{}' must have fixed dims",
                        init.name, state.input_name
                    )));
                }
                let count: i64 = init.dims.iter().product();
                let bytes = count as usize * size;
                let data = match &init.state_data {
                    Some(StateData::DataFile(file)) => {
                        let path = version_path.join("initial_state").join(file);
                        let data = std::fs::read(&path).map_err(|e| {
                            Error::invalid(format!(
                                "initial_state '{}': cannot read {}: {e}",
                                init.name,
                                path.display()
                            ))
                        })?;
                        if data.len() != bytes {
                            return Err(Error::invalid(format!(
                                "initial_state '{}': {} holds {} bytes, its dims need {bytes}",
                                init.name,
                                path.display(),
                                data.len()
                            )));
                        }
                        Bytes::from(data)
                    }
                    _ => Bytes::from(vec![0u8; bytes]),
                };
                (init.dims.clone(), data)
            }
        };
        specs.push(StateSpec {
            input: state.input_name.clone(),
            output: state.output_name.clone(),
            datatype,
            initial_shape,
            initial,
        });
    }
    Ok(specs)
}

impl SequencePolicy {
    /// The policy a config asks for, or none when the model has no `sequence_batching`.
    pub fn from_config(
        config: &ModelConfig,
        queue_limit: usize,
        version_path: &Path,
    ) -> Result<Option<Self>> {
        let Some(SchedulingChoice::SequenceBatching(batching)) = &config.scheduling_choice else {
            return Ok(None);
        };
        let max_batch = config.max_batch_size.max(1) as usize;
        let strategy = match &batching.strategy_choice {
            Some(StrategyChoice::Oldest(oldest)) => {
                let mut preferred = Vec::new();
                for &p in &oldest.preferred_batch_size {
                    if p <= 0 || p as usize > max_batch {
                        return Err(Error::invalid(format!(
                            "preferred_batch_size {p} must be between 1 and max_batch_size {max_batch}"
                        )));
                    }
                    preferred.push(p as usize);
                }
                preferred.sort_unstable();
                Strategy::Oldest {
                    max_candidates: (oldest.max_candidate_sequences.max(1) as usize).max(max_batch),
                    preferred,
                    max_delay: Duration::from_micros(oldest.max_queue_delay_microseconds),
                }
            }
            Some(StrategyChoice::Direct(direct)) => Strategy::Direct {
                max_delay: Duration::from_micros(direct.max_queue_delay_microseconds),
                min_utilization: direct.minimum_slot_utilization.clamp(0.0, 1.0),
            },
            None => Strategy::Direct {
                max_delay: Duration::ZERO,
                min_utilization: 0.0,
            },
        };
        let idle = match batching.max_sequence_idle_microseconds {
            0 => DEFAULT_IDLE,
            us => Duration::from_micros(us),
        };
        Ok(Some(SequencePolicy {
            strategy,
            idle,
            controls: controls(batching)?,
            states: states(batching, version_path)?,
            max_batch,
            batches: config.max_batch_size > 0,
            queue_limit,
        }))
    }
}

/// The config a backend sees for a sequence model: the control inputs and state tensors
/// added to its inputs and outputs (the client-facing config lists neither).
pub fn backend_config(config: &ModelConfig) -> ModelConfig {
    let mut config = config.clone();
    let Some(SchedulingChoice::SequenceBatching(batching)) = config.scheduling_choice.clone()
    else {
        return config;
    };
    for input in &batching.control_input {
        let Some(control) = input.control.first() else {
            continue;
        };
        let data_type = if !control.int32_false_true.is_empty() {
            crate::config::config_type_of(DataType::INT32)
        } else if !control.fp32_false_true.is_empty() {
            crate::config::config_type_of(DataType::FP32)
        } else if !control.bool_false_true.is_empty() {
            crate::config::config_type_of(DataType::BOOL)
        } else {
            control.data_type
        };
        if !config.input.iter().any(|i| i.name == input.name) {
            config.input.push(ModelInput {
                name: input.name.clone(),
                data_type,
                dims: vec![1],
                ..Default::default()
            });
        }
    }
    for state in &batching.state {
        if !config.input.iter().any(|i| i.name == state.input_name) {
            config.input.push(ModelInput {
                name: state.input_name.clone(),
                data_type: state.data_type,
                dims: state.dims.clone(),
                ..Default::default()
            });
        }
        if !config.output.iter().any(|o| o.name == state.output_name) {
            config.output.push(ModelOutput {
                name: state.output_name.clone(),
                data_type: state.data_type,
                dims: state.dims.clone(),
                ..Default::default()
            });
        }
    }
    config
}

/// A request waiting in its sequence.
struct Pending {
    /// The request.
    request: InferRequest,
    /// Where its responses go.
    tx: ResponseTx,
    /// Cancellation and output delivery.
    ticket: Ticket,
    /// When it was queued.
    arrived: Instant,
    /// It starts its sequence.
    start: bool,
    /// It ends its sequence.
    end: bool,
}

/// A state tensor as the last request left it.
#[derive(Clone)]
struct StateValue {
    /// Shape without the batch dimension.
    shape: Vec<i64>,
    /// Bytes.
    data: Bytes,
}

/// One live sequence.
struct Sequence {
    /// Its requests not yet run, in order.
    queue: VecDeque<Pending>,
    /// One of its requests is executing.
    running: bool,
    /// Its state tensors, by the policy's state order (none: the initial state).
    state: Vec<Option<StateValue>>,
    /// Direct strategy: (instance, slot) it holds.
    slot: Option<(usize, usize)>,
    /// When it was last heard from.
    last_seen: Instant,
    /// Its END request has been queued: no more requests are accepted.
    ending: bool,
    /// Tells this sequence from an earlier one with the same id.
    generation: u64,
}

/// The sequences and slots, behind the lock.
struct State {
    /// Live sequences.
    sequences: HashMap<SequenceId, Sequence>,
    /// Direct strategy: each instance's slots and the sequence holding each.
    slots: Vec<Vec<Option<SequenceId>>>,
    /// Direct strategy: sequences waiting for a slot, oldest first.
    backlog: VecDeque<SequenceId>,
    /// Requests waiting in all sequences.
    queued: usize,
    /// The entry is closed: drain what is queued, then stop.
    closing: bool,
    /// Next sequence generation.
    next_generation: u64,
    /// When idle sequences are next looked for.
    next_idle_check: Instant,
}

/// What the submitting side, the instances and the response hooks share.
struct Shared {
    /// The model's name, for messages.
    model: Arc<str>,
    /// The policy.
    policy: SequencePolicy,
    /// The sequences.
    state: Mutex<State>,
    /// Wakes instances waiting for work.
    wake: Condvar,
    /// Where sequences are counted.
    stats: Arc<crate::stats::ModelStats>,
    /// Told when a sequence ends or idles out.
    on_end: SequenceEnd,
}

/// The submitting side of a model's sequence batcher.
pub struct Handle {
    /// The batcher.
    shared: Arc<Shared>,
}

/// The instance side of a model's sequence batcher.
#[derive(Clone)]
pub struct Batches {
    /// The batcher.
    shared: Arc<Shared>,
}

/// A new sequence batcher in front of `instances` instances.
pub fn new(
    model: &str,
    policy: SequencePolicy,
    instances: usize,
    stats: Arc<crate::stats::ModelStats>,
    on_end: SequenceEnd,
) -> (Handle, Batches) {
    let slots = match policy.strategy {
        Strategy::Direct { .. } => (0..instances)
            .map(|_| vec![None; policy.max_batch])
            .collect(),
        Strategy::Oldest { .. } => Vec::new(),
    };
    stats.sequences.enable();
    let shared = Arc::new(Shared {
        model: Arc::from(model),
        state: Mutex::new(State {
            sequences: HashMap::new(),
            slots,
            backlog: VecDeque::new(),
            queued: 0,
            closing: false,
            next_generation: 0,
            next_idle_check: Instant::now() + policy.idle,
        }),
        policy,
        wake: Condvar::new(),
        stats,
        on_end,
    });
    (
        Handle {
            shared: Arc::clone(&shared),
        },
        Batches { shared },
    )
}

impl Handle {
    /// Queues a request in its sequence, or refuses it: no correlation id, no START for a
    /// sequence the batcher does not know, a request after END, or a START that finds the
    /// queue full.
    pub fn submit(&self, request: InferRequest, tx: ResponseTx, ticket: Ticket) -> Result<()> {
        let shared = &*self.shared;
        let model = &shared.model;
        let (id, start, end) = sequence_fields(&request)?;
        let Some(id) = id else {
            return Err(Error::invalid(format!(
                "inference request to model '{model}' must specify a non-zero or non-empty \
                 correlation ID (the sequence_id parameter)"
            )));
        };
        let now = Instant::now();
        {
            let mut state = shared.state.lock();
            if state.closing {
                return Err(Error::unavailable(format!("model '{model}' is unloading")));
            }
            // Only new sequences are turned away: a sequence already open can always go on
            // to its end, so the sequences holding slots are never starved by those waiting.
            if start && state.queued >= shared.policy.queue_limit {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "queue full: model '{model}' already holds {} waiting requests (its \
                         maximum queue size); retry later",
                        shared.policy.queue_limit
                    ),
                ));
            }
            let known = state.sequences.get(&id).is_some_and(|s| !s.ending || start);
            if !start && !known {
                return Err(Error::invalid(format!(
                    "inference request for sequence {id} to model '{model}' must specify the \
                     START flag on the first request of the sequence"
                )));
            }
            if !state.sequences.contains_key(&id) {
                shared.open(&mut state, id.clone(), now);
            }
            state.queued += 1;
            if let Some(sequence) = state.sequences.get_mut(&id) {
                sequence.last_seen = now;
                sequence.ending = end;
                sequence.queue.push_back(Pending {
                    request,
                    tx,
                    ticket,
                    arrived: now,
                    start,
                    end,
                });
            }
        }
        shared.wake.notify_all();
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.state.lock().closing = true;
        self.shared.wake.notify_all();
    }
}

/// One request a free instance takes: (its sequence, the sequence's generation, the request,
/// the sequence's state before it).
type Pick = (SequenceId, u64, Pending, Vec<Option<StateValue>>);

impl Batches {
    /// Blocks until a batch is ready for instance `instance` and returns it; none once the
    /// handle is gone and every sequence's queue is drained. Call [`Batches::finished`] after.
    pub fn next(&self, instance: usize) -> Option<Vec<Work>> {
        let shared = &self.shared;
        let mut state = shared.state.lock();
        loop {
            let now = Instant::now();
            if now >= state.next_idle_check {
                shared.release_idle(&mut state, now);
            }
            match shared.decide(&mut state, instance, now) {
                Ok(picks) => {
                    drop(state);
                    shared.wake.notify_all();
                    return Some(picks.into_iter().map(|p| shared.work(p)).collect());
                }
                Err(wait) => {
                    if state.closing && state.queued == 0 {
                        return None;
                    }
                    let until = [wait, Some(state.next_idle_check)]
                        .into_iter()
                        .flatten()
                        .min();
                    match until {
                        Some(t) => {
                            shared.wake.wait_until(&mut state, t);
                        }
                        None => shared.wake.wait(&mut state),
                    }
                }
            }
        }
    }
}

impl Shared {
    /// Starts a sequence: a slot when one is free (direct), else the backlog.
    fn open(&self, state: &mut State, id: SequenceId, now: Instant) {
        let generation = state.next_generation;
        state.next_generation += 1;
        let slot = self.free_slot(state);
        if let Some((i, s)) = slot {
            state.slots[i][s] = Some(id.clone());
        } else if matches!(self.policy.strategy, Strategy::Direct { .. }) {
            state.backlog.push_back(id.clone());
        }
        state.sequences.insert(
            id,
            Sequence {
                queue: VecDeque::new(),
                running: false,
                state: vec![None; self.policy.states.len()],
                slot,
                last_seen: now,
                ending: false,
                generation,
            },
        );
        self.stats.sequences.started();
    }

    /// A free slot, on the instance with the fewest sequences (direct strategy only).
    fn free_slot(&self, state: &State) -> Option<(usize, usize)> {
        state
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, slots)| {
                let taken = slots.iter().filter(|s| s.is_some()).count();
                let free = slots.iter().position(Option::is_none)?;
                Some((taken, i, free))
            })
            .min()
            .map(|(_, i, s)| (i, s))
    }

    /// Ends a sequence: frees its slot for the oldest backlogged sequence.
    fn close(&self, state: &mut State, id: &SequenceId) {
        let Some(sequence) = state.sequences.remove(id) else {
            return;
        };
        (self.on_end)(id);
        if let Some((i, s)) = sequence.slot {
            state.slots[i][s] = None;
            while let Some(next) = state.backlog.pop_front() {
                if let Some(waiting) = state.sequences.get_mut(&next) {
                    waiting.slot = Some((i, s));
                    state.slots[i][s] = Some(next);
                    break;
                }
            }
        } else {
            state.backlog.retain(|b| b != id);
        }
    }

    /// Releases sequences that neither run nor wait and were not heard from for the idle
    /// time; their requests still queued (none) and state go with them.
    fn release_idle(&self, state: &mut State, now: Instant) {
        let idle = self.policy.idle;
        let stale: Vec<SequenceId> = state
            .sequences
            .iter()
            .filter(|(_, s)| !s.running && s.queue.is_empty() && now - s.last_seen >= idle)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            tracing::warn!(
                model = %self.model,
                "sequence {id} released after {} ms without a request (max_sequence_idle_microseconds)",
                idle.as_millis()
            );
            self.close(state, &id);
            self.stats.sequences.timed_out();
        }
        state.next_idle_check = now + (idle / 4).max(Duration::from_millis(1));
    }

    /// The sequences instance `instance` may take a request of now, oldest request first.
    fn ready(&self, state: &State, instance: usize) -> Vec<(SequenceId, Instant)> {
        let ready = |id: &SequenceId| {
            state
                .sequences
                .get(id)
                .filter(|s| !s.running)
                .and_then(|s| s.queue.front())
                .map(|p| (id.clone(), p.arrived))
        };
        let mut list: Vec<_> = match self.policy.strategy {
            Strategy::Direct { .. } => state
                .slots
                .get(instance)
                .map(|slots| slots.iter().flatten().filter_map(ready).collect())
                .unwrap_or_default(),
            Strategy::Oldest { .. } => state
                .sequences
                .iter()
                .filter(|(_, s)| s.slot.is_none())
                .filter_map(|(id, _)| ready(id))
                .collect(),
        };
        list.sort_by_key(|(_, arrived)| *arrived);
        list
    }

    /// Cuts a batch for `instance` when the strategy says go, else says until when to wait.
    fn decide(
        &self,
        state: &mut State,
        instance: usize,
        now: Instant,
    ) -> std::result::Result<Vec<Pick>, Option<Instant>> {
        let mut ready = self.ready(state, instance);
        let Some(&(_, oldest)) = ready.first() else {
            return Err(None);
        };
        let max = self.policy.max_batch;
        let go = match &self.policy.strategy {
            Strategy::Direct {
                max_delay,
                min_utilization,
            } => {
                let utilization = ready.len() as f32 / max as f32;
                state.closing
                    || utilization >= *min_utilization
                    || max_delay.is_zero()
                    || now >= oldest + *max_delay
            }
            Strategy::Oldest {
                max_candidates,
                preferred,
                max_delay,
            } => {
                ready.truncate((*max_candidates).min(max));
                state.closing
                    || ready.len() >= max
                    || preferred.contains(&ready.len())
                    || max_delay.is_zero()
                    || now >= oldest + *max_delay
            }
        };
        if !go {
            let delay = match &self.policy.strategy {
                Strategy::Direct { max_delay, .. } | Strategy::Oldest { max_delay, .. } => {
                    *max_delay
                }
            };
            return Err(Some(oldest + delay));
        }
        ready.truncate(max);
        let mut picks = Vec::with_capacity(ready.len());
        for (id, _) in ready {
            let Some(sequence) = state.sequences.get_mut(&id) else {
                continue;
            };
            let Some(pending) = sequence.queue.pop_front() else {
                continue;
            };
            sequence.running = true;
            if pending.start {
                sequence.state = vec![None; self.policy.states.len()];
            }
            let before = sequence.state.clone();
            picks.push((id, sequence.generation, pending, before));
            state.queued -= 1;
        }
        Ok(picks)
    }

    /// Turns a request cut into a batch into work for an instance: its control inputs and
    /// state filled, its responses passing the hook that keeps the state.
    fn work(self: &Arc<Self>, (id, generation, pending, before): Pick) -> Work {
        let Pending {
            mut request,
            tx,
            ticket,
            arrived,
            start,
            end,
        } = pending;
        let policy = &self.policy;
        let batch_dims: &[i64] = if policy.batches { &[1] } else { &[] };
        for control in &policy.controls {
            let (datatype, data) = match control.kind {
                ControlKind::ControlSequenceStart => {
                    (control.datatype, control.values[usize::from(start)].clone())
                }
                ControlKind::ControlSequenceEnd => {
                    (control.datatype, control.values[usize::from(end)].clone())
                }
                ControlKind::ControlSequenceReady => (control.datatype, control.values[1].clone()),
                ControlKind::ControlSequenceCorrid => {
                    (control.datatype, corrid(&id, control.datatype))
                }
            };
            request.inputs.retain(|t| t.name != control.name);
            request.inputs.push(InputTensor {
                name: control.name.clone(),
                datatype,
                shape: [batch_dims, &[1]].concat(),
                data: Bytes::from(data).into(),
            });
        }
        for (spec, value) in policy.states.iter().zip(&before) {
            let (shape, data) = match value {
                Some(v) => (v.shape.clone(), v.data.clone()),
                None => (spec.initial_shape.clone(), spec.initial.clone()),
            };
            request.inputs.retain(|t| t.name != spec.input);
            request.inputs.push(InputTensor {
                name: spec.input.clone(),
                datatype: spec.datatype,
                shape: [batch_dims, &shape].concat(),
                data: data.into(),
            });
            if !request.outputs.is_empty() && !request.outputs.contains(&spec.output) {
                request.outputs.push(spec.output.clone());
            }
        }
        let hook = SequenceHook {
            shared: Arc::clone(self),
            id,
            generation,
            end,
        };
        Work {
            request,
            dest: Destination {
                tx,
                queued_at: arrived,
                order: None,
                hook: Some(Arc::new(hook)),
            },
            ticket,
        }
    }
}

/// A correlation id as the CORRID control's element.
fn corrid(id: &SequenceId, datatype: DataType) -> Vec<u8> {
    match (id, datatype) {
        (SequenceId::Number(n), DataType::UINT64) => n.to_le_bytes().to_vec(),
        (SequenceId::Number(n), DataType::INT64) => (*n as i64).to_le_bytes().to_vec(),
        (SequenceId::Number(n), DataType::UINT32) => (*n as u32).to_le_bytes().to_vec(),
        (SequenceId::Number(n), DataType::INT32) => (*n as i32).to_le_bytes().to_vec(),
        (id, DataType::BYTES) => {
            let text = match id {
                SequenceId::Number(n) => n.to_string(),
                SequenceId::Text(s) => s.clone(),
            };
            let mut out = (text.len() as u32).to_le_bytes().to_vec();
            out.extend_from_slice(text.as_bytes());
            out
        }
        (SequenceId::Text(_), dt) => vec![0; dt.element_size().unwrap_or(8)],
        (SequenceId::Number(n), _) => n.to_le_bytes().to_vec(),
    }
}

/// Sees each response of a sequence request before the client: takes the state outputs out
/// and keeps them; on the final response lets the sequence's next request run, and on the
/// END request's final response ends the sequence.
struct SequenceHook {
    /// The batcher.
    shared: Arc<Shared>,
    /// The sequence.
    id: SequenceId,
    /// Which sequence of that id.
    generation: u64,
    /// The request ends its sequence.
    end: bool,
}

impl ResponseHook for SequenceHook {
    fn on_response(&self, message: &mut ResponseMessage) {
        let shared = &*self.shared;
        let mut taken: Vec<Option<StateValue>> = vec![None; shared.policy.states.len()];
        if let Ok(Some(outputs)) = &mut message.result {
            for (i, spec) in shared.policy.states.iter().enumerate() {
                if let Some(at) = outputs.outputs.iter().position(|o| o.name == spec.output) {
                    let output: OutputData = outputs.outputs.remove(at);
                    let shape = if shared.policy.batches {
                        output.shape.get(1..).unwrap_or_default().to_vec()
                    } else {
                        output.shape
                    };
                    taken[i] = Some(StateValue {
                        shape,
                        data: output.data,
                    });
                }
            }
        }
        let is_final = message.is_final;
        let mut state = shared.state.lock();
        let Some(sequence) = state
            .sequences
            .get_mut(&self.id)
            .filter(|s| s.generation == self.generation)
        else {
            return;
        };
        for (slot, value) in sequence.state.iter_mut().zip(taken) {
            if value.is_some() {
                *slot = value;
            }
        }
        if is_final {
            sequence.running = false;
            sequence.last_seen = Instant::now();
            if self.end && sequence.queue.is_empty() {
                shared.close(&mut state, &self.id);
                shared.stats.sequences.ended();
            }
            drop(state);
            shared.wake.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrum_backend_api::Parameter;

    fn request(parameters: Vec<(&str, ParamValue)>) -> InferRequest {
        InferRequest {
            model_name: "m".into(),
            model_version: None,
            id: String::new(),
            parameters: parameters
                .into_iter()
                .map(|(k, v)| Parameter {
                    key: k.into(),
                    value: v,
                })
                .collect(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            delivery: Vec::new(),
            allocator: None,
        }
    }

    fn config(sequence: &str) -> ModelConfig {
        crate::config::parse_text(&format!(
            "name: \"m\"\nmax_batch_size: 2\ninput [ {{ name: \"X\" data_type: TYPE_INT32 dims: [ 1 ] }} ]\n\
             output [ {{ name: \"Y\" data_type: TYPE_INT32 dims: [ 1 ] }} ]\nsequence_batching {{ {sequence} }}"
        ))
        .unwrap()
    }

    fn policy(sequence: &str) -> Result<Option<SequencePolicy>> {
        SequencePolicy::from_config(&config(sequence), 100, Path::new("/nonexistent"))
    }

    #[test]
    fn correlation_ids_and_flags_are_read_from_the_parameters() {
        let (id, start, end) = sequence_fields(&request(vec![
            ("sequence_id", ParamValue::Int(7)),
            ("sequence_start", ParamValue::Bool(true)),
        ]))
        .unwrap();
        assert_eq!((id, start, end), (Some(SequenceId::Number(7)), true, false));
        let (id, ..) =
            sequence_fields(&request(vec![("sequence_id", ParamValue::Str("a".into()))])).unwrap();
        assert_eq!(id, Some(SequenceId::Text("a".into())));
        for none in [ParamValue::Int(0), ParamValue::Str("".into())] {
            let (id, ..) = sequence_fields(&request(vec![("sequence_id", none)])).unwrap();
            assert_eq!(id, None);
        }
        assert!(sequence_fields(&request(vec![("sequence_id", ParamValue::Int(-3))])).is_err());
        assert!(sequence_fields(&request(vec![("sequence_end", ParamValue::Int(1))])).is_err());
    }

    #[test]
    fn controls_and_states_are_checked_at_load() {
        let ok = policy(
            "control_input [ { name: \"S\" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] } ] \
             state [ { input_name: \"I\" output_name: \"O\" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]",
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.controls[0].values[1], 1f32.to_le_bytes());
        assert_eq!(ok.states[0].initial.len(), 6 * 4);
        assert_eq!(ok.idle, DEFAULT_IDLE);
        for (bad, expected) in [
            (
                "control_input [ { name: \"S\" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 1 ] } ] } ]",
                "exactly two values",
            ),
            (
                "control_input [ { name: \"C\" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ]",
                "TYPE_UINT64",
            ),
            (
                "state [ { input_name: \"I\" output_name: \"O\" data_type: TYPE_INT32 dims: [ 1 ] \
                 initial_state: { data_type: TYPE_INT32 dims: [ 1 ] data_file: \"f\" name: \"x\" } } ]",
                "cannot read",
            ),
            (
                "state [ { input_name: \"I\" data_type: TYPE_INT32 dims: [ 1 ] } ]",
                "output_name",
            ),
            (
                "oldest { preferred_batch_size: [ 3 ] }",
                "preferred_batch_size 3",
            ),
        ] {
            let message = policy(bad).err().map(|e| e.message).unwrap_or_default();
            assert!(message.contains(expected), "{bad}: {message}");
        }
    }

    #[test]
    fn backends_see_controls_and_states_as_inputs_and_outputs() {
        let config = backend_config(&config(
            "control_input [ { name: \"S\" control [ { kind: CONTROL_SEQUENCE_START bool_false_true: [ false, true ] } ] } ] \
             state [ { input_name: \"I\" output_name: \"O\" data_type: TYPE_INT32 dims: [ 4 ] } ]",
        ));
        let inputs: Vec<_> = config.input.iter().map(|i| i.name.as_str()).collect();
        let outputs: Vec<_> = config.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(inputs, ["X", "S", "I"]);
        assert_eq!(outputs, ["Y", "O"]);
        assert_eq!(
            config.input[1].data_type,
            crate::config::config_type_of(DataType::BOOL)
        );
    }

    #[test]
    fn correlation_ids_become_control_elements() {
        let n = SequenceId::Number(258);
        assert_eq!(corrid(&n, DataType::UINT64), 258u64.to_le_bytes());
        assert_eq!(corrid(&n, DataType::INT32), 258i32.to_le_bytes());
        let text = corrid(&SequenceId::Text("ab".into()), DataType::BYTES);
        assert_eq!(text, [2, 0, 0, 0, b'a', b'b']);
    }
}
