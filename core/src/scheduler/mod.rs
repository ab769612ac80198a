//! Runs requests on a model's instances. Each instance has a thread of its own, so backend
//! code never runs on the async runtime. Without dynamic batching the instances take requests
//! straight from a shared queue; with it, a batcher thread owns the queue and hands batches to
//! whichever instance is free. A batch is a list of whole requests: the backend joins them
//! itself (see `ferrum_backend_api::batch`), so each keeps its id, parameters and responder.

mod dynamic_batcher;
mod request;
mod responder;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use abi_stable::std_types::RVec;
use ferrum_backend_api::InstanceBox;
use tokio::sync::mpsc;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::server::InferRequest;
use crate::stats::{ComputeTimes, ModelStats};
pub use dynamic_batcher::BatchPolicy;
pub use request::{ExecClock, Ticket, Work, host_buffer, param_ref, tensor_info};
use request::{RequestState, request_handle};
use responder::Destination;
pub use responder::{Outputs, RequestTiming, ResponseMessage};

/// The way into a model version's instances.
enum Entry {
    /// Requests go straight to the instances' shared queue.
    Direct(crossbeam_channel::Sender<Vec<Work>>),
    /// Requests go to the dynamic batcher.
    Batched(dynamic_batcher::Handle),
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
    /// Starts one thread per instance, and a batcher when the config asks for one.
    pub fn start(
        config: &ModelConfig,
        instances: Vec<(String, InstanceBox)>,
        stats: Arc<ModelStats>,
    ) -> Result<Self> {
        let model = &config.name;
        let policy = BatchPolicy::from_config(config)?;
        let (work_tx, work_rx) = crossbeam_channel::unbounded::<Vec<Work>>();
        let (idle_tx, idle_rx) = crossbeam_channel::unbounded::<()>();
        let batching = policy.is_some();
        let shared = Arc::new(InstanceShared {
            model: Arc::from(model.as_str()),
            decoupled: crate::config::is_decoupled(config),
            batches: config.max_batch_size > 0,
            stats,
        });
        let mut threads = Vec::with_capacity(instances.len() + 1);
        for (name, instance) in instances {
            let rx = work_rx.clone();
            let idle = batching.then(|| idle_tx.clone());
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name(format!("ferrum-{name}"))
                .spawn(move || run_instance(instance, rx, idle, shared))
                .map_err(|e| {
                    Error::internal(format!("cannot start a thread for model '{model}': {e}"))
                })?;
            threads.push(thread);
        }
        let entry = match policy {
            None => Entry::Direct(work_tx),
            Some(policy) => {
                let (handle, thread) = dynamic_batcher::start(model, policy, work_tx, idle_rx)?;
                threads.push(thread);
                Entry::Batched(handle)
            }
        };
        Ok(Scheduler {
            entry: Some(entry),
            threads,
        })
    }

    /// Queues a request; its responses arrive on the returned channel.
    pub fn submit(
        &self,
        request: InferRequest,
        ticket: Ticket,
    ) -> Result<mpsc::UnboundedReceiver<ResponseMessage>> {
        let (tx, rx) = mpsc::unbounded_channel();
        match &self.entry {
            None => return Err(Error::unavailable("model is unloading")),
            Some(Entry::Direct(queue)) => queue
                .send(vec![Work {
                    request,
                    dest: Destination::single(tx),
                    ticket,
                }])
                .map_err(|_| Error::unavailable("model has no running instances"))?,
            Some(Entry::Batched(batcher)) => batcher.submit(request, tx, ticket)?,
        }
        Ok(rx)
    }
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
    queue: crossbeam_channel::Receiver<Vec<Work>>,
    idle: Option<crossbeam_channel::Sender<()>>,
    shared: Arc<InstanceShared>,
) {
    loop {
        if let Some(idle) = &idle {
            let _ = idle.send(());
        }
        let Ok(batch) = queue.recv() else { return };
        execute(&mut instance, batch, &shared);
    }
}

/// Executes a batch of whole requests. Requests the client cancelled while they waited are
/// answered here and never reach the backend; an error from `execute` fails every request
/// of the batch that has no final response yet.
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
    let input_done = Instant::now();
    let result = instance.execute(handles).into_result();
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
