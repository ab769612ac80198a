//! Runs requests on a model's instances. Each instance has a thread of its own that takes the
//! next queued request and executes it, so backend code never runs on the async runtime.

mod responder;

use std::thread::JoinHandle;

use abi_stable::std_types::{RSlice, RStr};
use ferrum_backend_api::{
    CorrelationId, InstanceBox, Memory, ParamValue, Request, SEQUENCE_END, SEQUENCE_START, Tensor,
};
use tokio::sync::mpsc;

use crate::core::InferRequest;
use crate::error::{Error, Result};
pub use responder::ResponseMessage;
use responder::channel_responder;

/// A queued request and where its responses go.
pub struct Job {
    /// The validated request.
    pub request: InferRequest,
    /// Receives the request's responses.
    pub responses: mpsc::UnboundedSender<ResponseMessage>,
}

/// The queue in front of a model version's instances, and their threads.
pub struct Scheduler {
    /// Hands jobs to whichever instance is free; dropped to stop the threads.
    queue: Option<crossbeam_channel::Sender<Job>>,
    /// One thread per instance.
    threads: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts one thread per instance.
    pub fn start(model: &str, instances: Vec<(String, InstanceBox)>) -> Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(instances.len());
        for (name, instance) in instances {
            let rx = rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ferrum-{name}"))
                .spawn(move || run_instance(instance, rx))
                .map_err(|e| {
                    Error::internal(format!("cannot start a thread for model '{model}': {e}"))
                })?;
            threads.push(thread);
        }
        Ok(Scheduler {
            queue: Some(tx),
            threads,
        })
    }

    /// Queues a request; its responses arrive on the returned channel.
    pub fn submit(
        &self,
        request: InferRequest,
    ) -> Result<mpsc::UnboundedReceiver<ResponseMessage>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| Error::unavailable("model is unloading"))?;
        queue
            .send(Job {
                request,
                responses: tx,
            })
            .map_err(|_| Error::unavailable("model has no running instances"))?;
        Ok(rx)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Closing the queue lets every instance finish what is queued, then stop.
        self.queue = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn run_instance(mut instance: InstanceBox, queue: crossbeam_channel::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        execute(&mut instance, std::slice::from_ref(&job));
    }
}

/// Executes a batch of jobs on one instance and makes sure every request gets an answer.
fn execute(instance: &mut InstanceBox, jobs: &[Job]) {
    let responders: Vec<_> = jobs
        .iter()
        .map(|job| channel_responder(job.responses.clone()))
        .collect();
    let tensors: Vec<Vec<Tensor<'_>>> = jobs
        .iter()
        .map(|job| {
            job.request
                .inputs
                .iter()
                .map(|t| Tensor {
                    name: RStr::from_str(&t.name),
                    datatype: t.datatype,
                    shape: RSlice::from_slice(&t.shape),
                    data: RSlice::from_slice(&t.data),
                    memory: Memory::CPU,
                })
                .collect()
        })
        .collect();
    let outputs: Vec<Vec<RStr<'_>>> = jobs
        .iter()
        .map(|job| {
            job.request
                .outputs
                .iter()
                .map(|o| RStr::from_str(o))
                .collect()
        })
        .collect();
    let requests: Vec<Request<'_>> = jobs
        .iter()
        .zip(&responders)
        .zip(tensors.iter().zip(&outputs))
        .map(|((job, (responder, _)), (inputs, outputs))| {
            let (correlation_id, flags) = sequence_fields(&job.request);
            Request {
                id: RStr::from_str(&job.request.id),
                correlation_id,
                flags,
                parameters: RSlice::from_slice(&job.request.parameters),
                inputs: RSlice::from_slice(inputs),
                requested_outputs: RSlice::from_slice(outputs),
                responder: responder.clone(),
            }
        })
        .collect();
    let result = instance
        .execute(RSlice::from_slice(&requests))
        .into_result();
    drop(requests);
    for (_, state) in &responders {
        match &result {
            Err(e) => state.fail(e.clone()),
            Ok(()) => state.finish_if_silent(),
        }
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
