//! Runs requests on a model's instances. Each instance has a thread of its own, so backend
//! code never runs on the async runtime. Without dynamic batching the instances take requests
//! straight from a shared bounded queue; with it, each free instance cuts its next batch from
//! the batcher's queues itself. Either way a request crosses one thread boundary on its way to
//! the backend. A batch is a list of whole requests: the backend joins them itself (see
//! `ferrum_backend_api::batch`), so each keeps its id, parameters and responder. Every queue is
//! bounded: a full one refuses a request at once with "queue full" (UNAVAILABLE).
//!
//! A request's `timeout` parameter (microseconds) is a deadline for starting it: one still
//! queued when it passes is answered "timed out in the queue" (UNAVAILABLE, as Triton) and
//! never reaches the backend. With a dynamic batcher the model's queue policy decides instead
//! (`default_queue_policy`, `allow_timeout_override`), as in Triton.

mod channel;
mod dynamic_batcher;
pub mod rate_limiter;
mod request;
mod responder;
mod sequence;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use abi_stable::std_types::RVec;
use ferrum_backend_api::InstanceBox;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::proto::inference::model_config::SchedulingChoice;
use crate::server::InferRequest;
use crate::stats::{ComputeTimes, ModelStats};
pub use channel::{ResponseRx, ResponseTx, responses};
pub use dynamic_batcher::{ADAPTIVE_BATCHING, BatchPolicy};
pub use request::{Deadline, ExecClock, Ticket, Work, host_buffer, param_ref, tensor_info};
use request::{RequestState, request_handle};
use responder::Destination;
pub use responder::{Outputs, RequestTiming, ResponseMessage};
pub use sequence::{SequenceEnd, SequenceId, backend_config, sequence_fields};

/// The answer to a request whose timeout passed while it waited to run.
pub fn queue_timeout(model: &str) -> Error {
    Error::unavailable(format!(
        "request for model '{model}' timed out in the queue: its timeout passed before an \
         instance could run it"
    ))
}

/// The deadline a request's `timeout` parameter (microseconds, counted from `received`) sets
/// for starting it; none without the parameter (or with 0). Models with a dynamic batcher
/// follow their queue policy instead, and an ensemble passes the parameter on to its steps,
/// so neither gets a deadline here. A `timeout` that is not a non-negative integer is refused.
pub fn queue_deadline(
    config: &ModelConfig,
    request: &InferRequest,
    received: Instant,
) -> Result<Option<Arc<Deadline>>> {
    let batched = config.max_batch_size > 0
        && matches!(
            config.scheduling_choice,
            Some(SchedulingChoice::DynamicBatching(_))
        );
    if batched || crate::models::is_ensemble(config) {
        return Ok(None);
    }
    let timeout = dynamic_batcher::int_parameter(request, "timeout")?;
    Ok(timeout
        .filter(|&us| us > 0)
        .and_then(|us| received.checked_add(Duration::from_micros(us)))
        .map(|at| Arc::new(Deadline::new(at))))
}

/// The way into a model version's instances.
enum Entry {
    /// Requests go straight to the instances' shared queue (bounded).
    Direct(DirectQueue),
    /// Requests go to the dynamic batcher.
    Batched(dynamic_batcher::Handle),
    /// Requests go to their sequences.
    Sequence(sequence::Handle),
}

/// The shared queue of a model without a batcher, bounded by a count of waiting requests.
struct DirectQueue {
    /// Where requests go in.
    tx: crossbeam_channel::Sender<Work>,
    /// Requests sent and not yet taken by an instance.
    waiting: Arc<AtomicUsize>,
    /// Most requests that may wait.
    limit: usize,
}

/// What every instance thread of a model shares.
struct InstanceShared {
    /// The model's name, for messages.
    model: Arc<str>,
    /// Whether the model may send any number of responses per request.
    decoupled: bool,
    /// Whether requests carry a batch dimension (for counting rows).
    batches: bool,
    /// Where executions are counted.
    stats: Arc<ModelStats>,
}

/// The queue in front of a model version's instances, and their threads.
pub struct Scheduler {
    /// Where requests enter; dropped to stop everything.
    entry: Option<Entry>,
    /// The instance threads (and the batcher's, when there is one).
    threads: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts one thread per instance. `queue_limit` bounds the queue (each priority level's,
    /// with dynamic batching) wherever the config sets no `max_queue_size`.
    pub fn start(
        config: &ModelConfig,
        instances: Vec<(String, InstanceBox)>,
        stats: Arc<ModelStats>,
        queue_limit: usize,
        version_path: &std::path::Path,
        sequence_end: SequenceEnd,
    ) -> Result<Self> {
        let model = &config.name;
        let queue_limit = queue_limit.max(1);
        let policy = BatchPolicy::from_config(config, queue_limit)?;
        let sequences = sequence::SequencePolicy::from_config(config, queue_limit, version_path)?;
        let instance_count = instances.len();
        let shared = Arc::new(InstanceShared {
            model: Arc::from(model.as_str()),
            decoupled: crate::config::is_decoupled(config),
            batches: config.max_batch_size > 0,
            stats: Arc::clone(&stats),
        });
        let (entry, source) = match (policy, sequences) {
            (_, Some(sequences)) => {
                let (handle, batches) =
                    sequence::new(model, sequences, instance_count, stats, sequence_end);
                (Entry::Sequence(handle), Source::Sequence(batches))
            }
            (None, None) => {
                // Unbounded underneath so that an idle version holds no preallocated
                // slots (a bounded channel allocates its whole capacity up front); the
                // limit is kept by counting.
                let (tx, rx) = crossbeam_channel::unbounded::<Work>();
                let waiting = Arc::new(AtomicUsize::new(0));
                let queue = DirectQueue {
                    tx,
                    waiting: Arc::clone(&waiting),
                    limit: queue_limit,
                };
                (Entry::Direct(queue), Source::Direct(rx, waiting))
            }
            (Some(policy), None) => {
                let (handle, batches) = dynamic_batcher::new(model, policy);
                (Entry::Batched(handle), Source::Batched(batches))
            }
        };
        let mut limits = rate_limiter::instance_limits(config)?.into_iter();
        let mut threads = Vec::with_capacity(instances.len());
        for (index, (name, instance)) in instances.into_iter().enumerate() {
            let source = source.clone();
            let shared = Arc::clone(&shared);
            let limit = limits.next().flatten();
            let thread = std::thread::Builder::new()
                .name(format!("ferrum-{name}"))
                .spawn(move || run_instance(instance, index, source, shared, limit))
                .map_err(|e| {
                    Error::internal(format!("cannot start a thread for model '{model}': {e}"))
                })?;
            threads.push(thread);
        }
        Ok(Scheduler {
            entry: Some(entry),
            threads,
        })
    }

    /// Queues a request; its responses arrive on the returned channel.
    pub fn submit(&self, request: InferRequest, ticket: Ticket) -> Result<ResponseRx> {
        let (tx, rx) = channel::responses();
        match &self.entry {
            None => return Err(Error::unavailable("model is unloading")),
            Some(Entry::Direct(queue)) => {
                let work = Work {
                    request,
                    dest: Destination::single(tx),
                    ticket,
                };
                if queue.waiting.fetch_add(1, Ordering::AcqRel) >= queue.limit {
                    queue.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(Error::unavailable(format!(
                        "queue full: model '{}' already holds {} waiting requests (its \
                         maximum queue size); retry later",
                        work.request.model_name, queue.limit
                    )));
                }
                if queue.tx.send(work).is_err() {
                    queue.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(Error::unavailable("model has no running instances"));
                }
            }
            Some(Entry::Batched(batcher)) => batcher.submit(request, tx, ticket)?,
            Some(Entry::Sequence(batcher)) => batcher.submit(request, tx, ticket)?,
        }
        Ok(rx)
    }
}

/// Where an instance thread takes its work from.
#[derive(Clone)]
enum Source {
    /// The shared queue, one request at a time, and its count of waiting requests.
    Direct(crossbeam_channel::Receiver<Work>, Arc<AtomicUsize>),
    /// The dynamic batcher.
    Batched(dynamic_batcher::Batches),
    /// The sequence batcher.
    Sequence(sequence::Batches),
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Closing the entry lets the batcher and the instances finish what is queued, then stop.
        self.entry = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn run_instance(
    mut instance: InstanceBox,
    index: usize,
    source: Source,
    shared: Arc<InstanceShared>,
    limit: Option<Arc<rate_limiter::InstanceLimit>>,
) {
    let Some(limit) = limit else {
        match source {
            Source::Direct(queue, waiting) => {
                while let Ok(work) = queue.recv() {
                    waiting.fetch_sub(1, Ordering::AcqRel);
                    execute(&mut instance, vec![work], &shared);
                }
            }
            Source::Batched(batches) => {
                while let Some(batch) = batches.next() {
                    execute(&mut instance, batch, &shared);
                    batches.finished();
                }
            }
            Source::Sequence(batches) => {
                while let Some(batch) = batches.next(index) {
                    execute(&mut instance, batch, &shared);
                }
            }
        }
        return;
    };
    // With the rate limiter on, each execution first takes the instance's resources. An
    // instance that finds more work at once gives them back and queues again in one step (so
    // that priorities weigh it against the other waiters); before it blocks waiting for work
    // it gives them back.
    let limit = &*limit;
    let mut grant = None;
    match source {
        Source::Direct(queue, waiting) => loop {
            let work = match queue.try_recv() {
                Ok(work) => work,
                Err(_) => {
                    grant = None;
                    match queue.recv() {
                        Ok(work) => work,
                        Err(_) => break,
                    }
                }
            };
            waiting.fetch_sub(1, Ordering::AcqRel);
            next_turn(limit, &mut grant);
            execute(&mut instance, vec![work], &shared);
        },
        Source::Batched(batches) => loop {
            let batch = match batches.next_now() {
                Some(batch) => batch,
                None => {
                    grant = None;
                    match batches.next() {
                        Some(batch) => batch,
                        None => break,
                    }
                }
            };
            next_turn(limit, &mut grant);
            execute(&mut instance, batch, &shared);
            batches.finished();
        },
        // A sequence batch comes when its sequences have requests; the resources go back
        // after each execution.
        Source::Sequence(batches) => {
            while let Some(batch) = batches.next(index) {
                let _held = limit.acquire();
                execute(&mut instance, batch, &shared);
            }
        }
    }
}

/// Takes the instance's rate limiter resources for its next execution: renewing the ones it
/// holds, or waiting for them.
fn next_turn<'a>(
    limit: &'a rate_limiter::InstanceLimit,
    grant: &mut Option<rate_limiter::Grant<'a>>,
) {
    *grant = Some(match grant.take() {
        Some(held) => held.renew(),
        None => limit.acquire(),
    });
}

/// Executes a batch of whole requests. Requests the client cancelled while they waited, and
/// requests whose deadline passed, are answered here and never reach the backend; an error
/// from `execute` fails every request of the batch that has no final response yet.
fn execute(instance: &mut InstanceBox, batch: Vec<Work>, shared: &InstanceShared) {
    let started = Instant::now();
    let mut states = Vec::with_capacity(batch.len());
    let mut handles = RVec::with_capacity(batch.len());
    let mut rows = 0usize;
    let clock = |input_done| ExecClock {
        started,
        input_done,
    };
    for work in batch {
        if work.ticket.cancelled.load(Ordering::Relaxed) {
            work.dest.send(ResponseMessage::rejection(Error::cancelled(
                "the request was cancelled before it ran",
            )));
            continue;
        }
        if let Some(deadline) = &work.ticket.deadline
            && !deadline.start()
        {
            work.dest
                .send(ResponseMessage::rejection(queue_timeout(&shared.model)));
            continue;
        }
        rows += work.rows(shared.batches);
        let state = RequestState::new(
            work.dest,
            &work.ticket,
            shared.decoupled,
            Arc::clone(&shared.model),
            clock(Instant::now()),
        );
        handles.push(request_handle(work.request, Arc::clone(&state)));
        states.push(state);
    }
    if handles.is_empty() {
        return;
    }
    shared.stats.count_execution(rows as u64);
    let input_done = Instant::now();
    let result = {
        // Host inferences started from this execute must not target this model.
        let _executing = crate::plugins::executing(&shared.model);
        instance.execute(handles).into_result()
    };
    let done = Instant::now();
    shared.stats.record_execution(
        rows as u64,
        ComputeTimes {
            input: input_done - started,
            infer: done - input_done,
            output: Default::default(),
        },
    );
    if let Err(e) = result {
        for state in &states {
            state.fail(e.clone());
        }
    }
    // Dropping our references: a request the backend neither answered nor kept fails now.
    drop(states);
}
