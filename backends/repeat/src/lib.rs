//! The `repeat` backend: Triton's decoupled example. For a request with inputs `IN` (INT32,
//! any length), `DELAY` (UINT32, as many as `IN`, milliseconds) and `WAIT` (UINT32, one value,
//! milliseconds), it sends one response per element of `IN` — `OUT` = `IN[i]` and `IDX` = `i`,
//! each after `DELAY[i]` ms — then, after `WAIT` ms, the final flag alone.
//!
//! Each request runs on a thread of its own, so requests overlap and `execute` returns at once.
//! A cancelled request (the client closed its stream) stops before its next response; the
//! backend logs how far it got.

use std::time::Duration;

use ferrum_backend_api::prelude::*;

/// Longest wait honoured per element or at the end, so a request cannot hold a thread forever.
const MAX_WAIT_MS: u32 = 60_000;

/// A loaded repeat model; it holds no state.
struct Repeat;

impl Repeat {
    fn load(ctx: &ModelContext) -> Result<Self, BackendError> {
        if !ctx.is_decoupled() {
            return Err(BackendError::invalid_argument(format!(
                "model '{}' uses the repeat backend, which needs \
                 model_transaction_policy {{ decoupled: true }}",
                ctx.name
            )));
        }
        Ok(Repeat)
    }
}

/// One request's work, read from its inputs before `execute` returns.
struct Job {
    /// The values to repeat.
    values: Vec<i32>,
    /// Milliseconds before each response.
    delays: Vec<u32>,
    /// Milliseconds before the final flag.
    wait: u32,
}

impl Job {
    fn of(request: &Request) -> Result<Job, BackendError> {
        let values = request.require_input("IN")?.to_vec::<i32>()?;
        let delays = match request.input("DELAY") {
            Some(t) => t.to_vec::<u32>()?,
            None => vec![0; values.len()],
        };
        if delays.len() != values.len() {
            return Err(BackendError::invalid_argument(format!(
                "DELAY has {} elements but IN has {}; they must match",
                delays.len(),
                values.len()
            )));
        }
        let wait = match request.input("WAIT") {
            Some(t) => t.to_vec::<u32>()?.first().copied().unwrap_or(0),
            None => 0,
        };
        Ok(Job {
            values,
            delays,
            wait,
        })
    }

    /// Sends the responses, stopping early when the request is cancelled.
    fn run(self, id: String, responder: Responder) {
        let total = self.values.len();
        for (i, (value, delay)) in self.values.into_iter().zip(self.delays).enumerate() {
            std::thread::sleep(Duration::from_millis(delay.min(MAX_WAIT_MS).into()));
            if responder.is_cancelled() {
                ferrum_backend_api::log(
                    LogLevel::INFO,
                    &format!("request '{id}' cancelled after {i} of {total} responses"),
                );
                responder.send_error(BackendError::new(ErrorCode::CANCELLED, "cancelled"), true);
                return;
            }
            let mut response = responder.response();
            let sent = response
                .output_from("OUT", DataType::INT32, &[1], &value.to_le_bytes())
                .and_then(|()| {
                    let index = u32::try_from(i).unwrap_or(u32::MAX);
                    response.output_from("IDX", DataType::UINT32, &[1], &index.to_le_bytes())
                });
            match sent {
                Ok(()) => response.send(false),
                Err(e) => return responder.send_error(e, true),
            }
        }
        std::thread::sleep(Duration::from_millis(self.wait.min(MAX_WAIT_MS).into()));
        responder.finish();
    }
}

/// An instance: starts a thread per request.
struct RepeatInstance;

impl Instance for RepeatInstance {
    fn execute(&mut self, requests: Vec<Request>) -> Result<(), BackendError> {
        for request in requests {
            let job = match Job::of(&request) {
                Ok(job) => job,
                Err(e) => {
                    request.responder().send_error(e, true);
                    continue;
                }
            };
            let (id, responder) = (request.id().to_string(), request.responder());
            // The request's inputs are copied into the job; the request itself can go.
            drop(request);
            let spawned = std::thread::Builder::new()
                .name("repeat".into())
                .spawn(move || job.run(id, responder));
            if let Err(e) = spawned {
                return Err(BackendError::internal(format!(
                    "cannot start a thread: {e}"
                )));
            }
        }
        Ok(())
    }
}

/// The repeat backend.
struct RepeatBackend;

impl Backend for RepeatBackend {
    type Model = Repeat;

    fn new(_config: &serde_json::Value) -> Result<Self, BackendError> {
        Ok(RepeatBackend)
    }

    fn load_model(&self, ctx: &ModelContext) -> Result<Repeat, BackendError> {
        Repeat::load(ctx)
    }
}

impl Model for Repeat {
    type Instance = RepeatInstance;

    fn create_instance(&self, _ctx: &InstanceContext) -> Result<RepeatInstance, BackendError> {
        Ok(RepeatInstance)
    }
}

export_backend!(RepeatBackend);
