//! Runs requests on a model's instances. Each instance has a thread of its own, so backend
//! code never runs on the async runtime. Without dynamic batching the instances take requests
//! straight from a shared queue; with it, a batcher thread owns the queue and hands merged
//! batches to whichever instance is free.

mod dynamic_batcher;
mod responder;

use std::thread::JoinHandle;

use abi_stable::std_types::{RSlice, RStr};
use ferrum_backend_api::{
    CorrelationId, InstanceBox, Memory, ParamValue, Request, SEQUENCE_END, SEQUENCE_START, Tensor,
};
use tokio::sync::mpsc;

use crate::config::ModelConfig;
use crate::core::InferRequest;
use crate::error::{Error, Result};
use crate::stats::ModelStats;
pub use dynamic_batcher::BatchPolicy;
use responder::ExecClock;
use responder::{Destination, responder};
pub use responder::{Outputs, RequestTiming, ResponseMessage};
use std::sync::Arc;
use std::time::Instant;

/// One execution for an instance: a request (possibly several merged along the batch
/// dimension) and where its responses go.
pub struct Work {
    /// The request the backend sees.
    pub request: InferRequest,
    /// The requests behind it, in batch order.
    pub dests: Vec<Destination>,
}

/// The way into a model version's instances.
enum Entry {
    /// Requests go straight to the instances' shared queue.
    Direct(crossbeam_channel::Sender<Work>),
    /// Requests go to the dynamic batcher.
    Batched(dynamic_batcher::Handle),
}

/// The queue in front of a model version's instances, and their threads.
pub struct Scheduler {
    /// Whether requests carry a batch dimension (for counting rows).
    batches: bool,
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
        let (work_tx, work_rx) = crossbeam_channel::unbounded::<Work>();
        let (idle_tx, idle_rx) = crossbeam_channel::unbounded::<()>();
        let batching = policy.is_some();
        let mut threads = Vec::with_capacity(instances.len() + 1);
        for (name, instance) in instances {
            let rx = work_rx.clone();
            let idle = batching.then(|| idle_tx.clone());
            let stats = Arc::clone(&stats);
            let thread = std::thread::Builder::new()
                .name(format!("ferrum-{name}"))
                .spawn(move || run_instance(instance, rx, idle, stats))
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
            batches: config.max_batch_size > 0,
            entry: Some(entry),
            threads,
        })
    }

    /// Queues a request; its responses arrive on the returned channel.
    pub fn submit(
        &self,
        request: InferRequest,
    ) -> Result<mpsc::UnboundedReceiver<ResponseMessage>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let rows = if self.batches {
            request
                .inputs
                .first()
                .and_then(|t| t.shape.first())
                .map_or(1, |&b| b.max(1) as usize)
        } else {
            1
        };
        match &self.entry {
            None => return Err(Error::unavailable("model is unloading")),
            Some(Entry::Direct(queue)) => queue
                .send(Work {
                    request,
                    dests: vec![Destination::single(tx, rows)],
                })
                .map_err(|_| Error::unavailable("model has no running instances"))?,
            Some(Entry::Batched(batcher)) => batcher.submit(request, tx)?,
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
    queue: crossbeam_channel::Receiver<Work>,
    idle: Option<crossbeam_channel::Sender<()>>,
    stats: Arc<ModelStats>,
) {
    loop {
        if let Some(idle) = &idle {
            let _ = idle.send(());
        }
        let Ok(work) = queue.recv() else { return };
        execute(&mut instance, work, &stats);
    }
}

/// Executes one piece of work and makes sure every request behind it gets an answer.
fn execute(instance: &mut InstanceBox, work: Work, stats: &Arc<ModelStats>) {
    let started = Instant::now();
    let Work { request, dests } = work;
    let (responder, state) = responder(dests, Some(Arc::clone(stats)));
    let inputs: Vec<Tensor<'_>> = request
        .inputs
        .iter()
        .map(|t| Tensor {
            name: RStr::from_str(&t.name),
            datatype: t.datatype,
            shape: RSlice::from_slice(&t.shape),
            data: RSlice::from_slice(&t.data),
            memory: Memory::CPU,
        })
        .collect();
    let outputs: Vec<RStr<'_>> = request.outputs.iter().map(|o| RStr::from_str(o)).collect();
    let (correlation_id, flags) = sequence_fields(&request);
    let requests = [Request {
        id: RStr::from_str(&request.id),
        correlation_id,
        flags,
        parameters: RSlice::from_slice(&request.parameters),
        inputs: RSlice::from_slice(&inputs),
        requested_outputs: RSlice::from_slice(&outputs),
        responder,
    }];
    state.start_clock(ExecClock {
        started,
        input_done: Instant::now(),
    });
    let result = instance
        .execute(RSlice::from_slice(&requests))
        .into_result();
    drop(requests);
    match result {
        Err(e) => state.fail(e),
        Ok(()) => state.finish_if_silent(),
    }
}

/// The sequence fields a request carries in its `sequence_*` parameters.
fn sequence_fields(request: &InferRequest) -> (CorrelationId<'_>, u32) {
    let mut id = CorrelationId::None;
    let mut flags = 0;
    for p in &request.parameters {
        match (p.key.as_str(), &p.value) {
            ("sequence_id", ParamValue::Int(v)) => id = CorrelationId::U64(*v as u64),
            ("sequence_id", ParamValue::Str(s)) => id = CorrelationId::Str(s.as_rstr()),
            ("sequence_start", ParamValue::Bool(true)) => flags |= SEQUENCE_START,
            ("sequence_end", ParamValue::Bool(true)) => flags |= SEQUENCE_END,
            _ => {}
        }
    }
    (id, flags)
}
