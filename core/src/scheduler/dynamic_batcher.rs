//! Triton's dynamic batcher, with no thread of its own: the queues (one per priority level)
//! sit behind one lock, a submitting task pushes a request and wakes a waiting instance, and
//! each free instance thread cuts its next batch itself when the policy says go: the batch is
//! full, it reaches a preferred size, or its oldest request has waited
//! `max_queue_delay_microseconds`. A request thus crosses one thread boundary on its way in.
//!
//! With adaptive batching (the model parameter [`ADAPTIVE_BATCHING`]) a batch is also cut
//! at once when no company is coming: recent arrivals found the model idle, so waiting out
//! the delay would only add latency.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrum_backend_api::{DataType, ParamValue};
use parking_lot::{Condvar, Mutex};

use super::responder::{Destination, ResponseMessage, Sequencer};
use super::{ResponseTx, Ticket, Work};
use crate::config::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::proto::inference::ModelQueuePolicy;
use crate::proto::inference::model_config::SchedulingChoice;
use crate::proto::inference::model_queue_policy::TimeoutAction;
use crate::server::InferRequest;

/// The queue policy of one priority level.
#[derive(Clone, Debug)]
struct LevelPolicy {
    /// Reject a request whose timeout expires in the queue (else keep it queued).
    reject_on_timeout: bool,
    /// Timeout for requests that give none.
    default_timeout: Option<Duration>,
    /// Whether a request's own `timeout` parameter counts.
    allow_override: bool,
    /// Most requests waiting at this level.
    max_queue_size: usize,
}

impl LevelPolicy {
    fn from_proto(policy: Option<&ModelQueuePolicy>, queue_limit: usize) -> Self {
        let p = policy.cloned().unwrap_or_default();
        LevelPolicy {
            reject_on_timeout: p.timeout_action != TimeoutAction::Delay as i32,
            default_timeout: (p.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(p.default_timeout_microseconds)),
            allow_override: p.allow_timeout_override,
            max_queue_size: match p.max_queue_size {
                0 => queue_limit,
                n => n as usize,
            },
        }
    }
}

/// The model config parameter that turns adaptive batching on (`"true"`) for a model with
/// `dynamic_batching`.
pub const ADAPTIVE_BATCHING: &str = "ferrum.adaptive_batching";

/// The batching settings of a model, from its `dynamic_batching` config.
#[derive(Clone, Debug)]
pub struct BatchPolicy {
    /// Largest batch (`max_batch_size`).
    max_batch: usize,
    /// Preferred batch sizes, ascending.
    preferred: Vec<usize>,
    /// How long the oldest request may wait for a batch to fill.
    max_delay: Duration,
    /// Responses leave in the order requests arrived.
    preserve_ordering: bool,
    /// Queue policy per priority level; index 0 is priority 1 (the highest).
    levels: Vec<LevelPolicy>,
    /// Level index of requests that give no priority.
    default_level: usize,
    /// Cut at once when recent arrivals say no company is coming.
    adaptive: bool,
}

impl BatchPolicy {
    /// The policy a config asks for, or none when the model does not batch dynamically.
    /// `queue_limit` bounds every priority level whose queue policy sets no
    /// `max_queue_size`.
    pub fn from_config(config: &ModelConfig, queue_limit: usize) -> Result<Option<Self>> {
        let Some(SchedulingChoice::DynamicBatching(db)) = &config.scheduling_choice else {
            return Ok(None);
        };
        if config.max_batch_size <= 0 {
            return Ok(None);
        }
        let max_batch = config.max_batch_size as usize;
        let mut preferred = Vec::new();
        for &p in &db.preferred_batch_size {
            if p <= 0 || p as usize > max_batch {
                return Err(Error::invalid(format!(
                    "preferred_batch_size {p} must be between 1 and max_batch_size {max_batch}"
                )));
            }
            preferred.push(p as usize);
        }
        preferred.sort_unstable();
        preferred.dedup();
        let level_count = db.priority_levels.max(1) as usize;
        let default_level = if db.priority_levels == 0 {
            0
        } else {
            let level = db.default_priority_level;
            if level == 0 || level > db.priority_levels {
                return Err(Error::invalid(format!(
                    "default_priority_level {level} must be between 1 and priority_levels {}",
                    db.priority_levels
                )));
            }
            level as usize - 1
        };
        let levels = (1..=level_count as u64)
            .map(|level| {
                let policy = db
                    .priority_queue_policy
                    .get(&level)
                    .or(db.default_queue_policy.as_ref());
                LevelPolicy::from_proto(policy, queue_limit)
            })
            .collect();
        let adaptive = match config
            .parameters
            .get(ADAPTIVE_BATCHING)
            .map(|p| p.string_value.trim())
        {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "model parameter '{ADAPTIVE_BATCHING}' must be \"true\" or \"false\", got \"{other}\""
                )));
            }
        };
        Ok(Some(BatchPolicy {
            max_batch,
            preferred,
            max_delay: Duration::from_micros(db.max_queue_delay_microseconds),
            preserve_ordering: db.preserve_ordering,
            levels,
            default_level,
            adaptive,
        }))
    }
}

/// What makes two requests batchable: the same inputs with the same types and non-batch
/// shapes. Requested outputs and parameters may differ: each request reaches the backend
/// whole.
#[derive(Clone, Debug, PartialEq)]
struct BatchKey {
    /// (name, type, shape without the batch dim), sorted by name.
    inputs: Vec<(String, DataType, Vec<i64>)>,
}

impl BatchKey {
    fn of(request: &InferRequest) -> Self {
        let mut inputs: Vec<_> = request
            .inputs
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.datatype,
                    t.shape.get(1..).unwrap_or_default().to_vec(),
                )
            })
            .collect();
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        BatchKey { inputs }
    }
}

/// A request waiting in the batcher.
struct Pending {
    /// The request.
    request: InferRequest,
    /// Where its responses go.
    tx: ResponseTx,
    /// Cancellation and output delivery.
    ticket: Ticket,
    /// Its batch size.
    rows: usize,
    /// What it can be merged with.
    key: BatchKey,
    /// When it was queued.
    arrived: Instant,
    /// When its queue timeout expires.
    timeout_at: Option<Instant>,
    /// Its place in the response order.
    seq: u64,
}

/// How fast the "arrivals find company" estimate follows new arrivals.
const COMPANY_WEIGHT: f32 = 1.0 / 8.0;

/// The queues and what the instances know about each other.
struct State {
    /// Waiting requests per priority level, oldest first.
    queues: Vec<VecDeque<Pending>>,
    /// The entry is closed: drain what is queued, then stop.
    closing: bool,
    /// Next arrival's place in the response order.
    next_seq: u64,
    /// Batches cut and not yet finished.
    executing: usize,
    /// The earliest queue timeout that may reject a request (none: none pending).
    next_reject: Option<Instant>,
    /// Moving share of arrivals that found other requests queued or executing.
    company: f32,
}

/// What the submitting side and the instance threads share.
struct Shared {
    /// The model's name, for messages.
    model: Arc<str>,
    /// The policy.
    policy: BatchPolicy,
    /// Keeps responses in arrival order when the model asks for it.
    sequencer: Option<Arc<Sequencer>>,
    /// The queues.
    state: Mutex<State>,
    /// Wakes instances waiting for work.
    wake: Condvar,
}

/// The submitting side of a model's batcher; dropping it lets the instances drain the queues
/// and stop.
pub struct Handle {
    /// The queues.
    shared: Arc<Shared>,
}

/// The instance side of a model's batcher.
#[derive(Clone)]
pub struct Batches {
    /// The queues.
    shared: Arc<Shared>,
}

/// A new batcher for a model: the handle requests enter through, and the side instances
/// take batches from.
pub fn new(model: &str, policy: BatchPolicy) -> (Handle, Batches) {
    let state = State {
        queues: policy.levels.iter().map(|_| VecDeque::new()).collect(),
        closing: false,
        next_seq: 0,
        executing: 0,
        next_reject: None,
        company: 0.0,
    };
    let shared = Arc::new(Shared {
        model: Arc::from(model),
        sequencer: policy
            .preserve_ordering
            .then(|| Arc::new(Sequencer::default())),
        policy,
        state: Mutex::new(state),
        wake: Condvar::new(),
    });
    (
        Handle {
            shared: Arc::clone(&shared),
        },
        Batches { shared },
    )
}

/// A request parameter that must be a non-negative integer when present.
pub(super) fn int_parameter(request: &InferRequest, key: &str) -> Result<Option<u64>> {
    match request
        .parameters
        .iter()
        .find(|p| p.key.as_str() == key)
        .map(|p| &p.value)
    {
        None => Ok(None),
        Some(ParamValue::Int(v)) if *v >= 0 => Ok(Some(*v as u64)),
        Some(other) => Err(Error::invalid(format!(
            "request parameter '{key}' must be a non-negative integer, got {other:?}"
        ))),
    }
}

impl Handle {
    /// Queues a request, or refuses it when its priority is invalid or its queue is full.
    pub fn submit(&self, request: InferRequest, tx: ResponseTx, ticket: Ticket) -> Result<()> {
        let policy = &self.shared.policy;
        let level = match int_parameter(&request, "priority")? {
            None | Some(0) => policy.default_level,
            Some(p) if p as usize <= policy.levels.len() && policy.levels.len() > 1 => {
                p as usize - 1
            }
            Some(_) if policy.levels.len() == 1 => 0,
            Some(p) => {
                return Err(Error::invalid(format!(
                    "priority {p} is outside 1..={} for model '{}'",
                    policy.levels.len(),
                    request.model_name
                )));
            }
        };
        let level_policy = &policy.levels[level];
        let timeout = match int_parameter(&request, "timeout")? {
            Some(us) if level_policy.allow_override && us > 0 => Some(Duration::from_micros(us)),
            _ => level_policy.default_timeout,
        };
        let rows = request
            .inputs
            .first()
            .and_then(|t| t.shape.first())
            .map_or(1, |&b| b.max(1) as usize);
        let key = BatchKey::of(&request);
        let now = Instant::now();
        let timeout_at = timeout.map(|t| now + t);
        {
            let mut state = self.shared.state.lock();
            if state.closing {
                return Err(Error::unavailable("the model is unloading"));
            }
            let limit = level_policy.max_queue_size;
            if state.queues[level].len() >= limit {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "queue full: model '{}' already holds {limit} waiting requests at this \
                         priority level (its maximum queue size); retry later",
                        request.model_name
                    ),
                ));
            }
            let busy = state.executing > 0 || state.queues.iter().any(|q| !q.is_empty());
            state.company += COMPANY_WEIGHT * (f32::from(u8::from(busy)) - state.company);
            if level_policy.reject_on_timeout
                && let Some(at) = timeout_at
            {
                state.next_reject = Some(state.next_reject.map_or(at, |t| t.min(at)));
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            state.queues[level].push_back(Pending {
                request,
                tx,
                ticket,
                rows,
                key,
                arrived: now,
                timeout_at,
                seq,
            });
        }
        self.shared.wake.notify_one();
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.state.lock().closing = true;
        self.shared.wake.notify_all();
    }
}

/// What the policy says about the queues right now.
enum Decision {
    /// Run these requests as one batch.
    Run(Vec<Pending>),
    /// Nothing to run before this instant (or a new arrival).
    WaitUntil(Instant),
    /// The queues are empty.
    Idle,
}

impl Batches {
    /// Blocks until the policy cuts a batch for the calling instance and returns it, the
    /// requests whole; none once the handle is gone and the queues are drained. Call
    /// [`Batches::finished`] after running each batch.
    pub fn next(&self) -> Option<Vec<Work>> {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        loop {
            let now = Instant::now();
            if state.next_reject.is_some_and(|t| t <= now) {
                shared.expire(&mut state, now);
            }
            let decision = shared.decide(&mut state, now);
            let wake = match decision {
                Decision::Run(batch) => {
                    state.executing += 1;
                    let more = state.queues.iter().any(|q| !q.is_empty());
                    drop(state);
                    if more {
                        // Another free instance may cut the rest.
                        shared.wake.notify_one();
                    }
                    return Some(batch.into_iter().map(|p| shared.work(p)).collect());
                }
                Decision::WaitUntil(t) => Some(t),
                Decision::Idle if state.closing => return None,
                Decision::Idle => None,
            };
            match [wake, state.next_reject].into_iter().flatten().min() {
                Some(t) => {
                    shared.wake.wait_until(&mut state, t);
                }
                None => shared.wake.wait(&mut state),
            }
        }
    }

    /// A batch the policy cuts right now, without waiting; none when it would have to wait.
    /// Call [`Batches::finished`] after running it.
    pub fn next_now(&self) -> Option<Vec<Work>> {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        let now = Instant::now();
        if state.next_reject.is_some_and(|t| t <= now) {
            shared.expire(&mut state, now);
        }
        match shared.decide(&mut state, now) {
            Decision::Run(batch) => {
                state.executing += 1;
                drop(state);
                Some(batch.into_iter().map(|p| shared.work(p)).collect())
            }
            // Nothing was taken; a waiting instance sees the same queues.
            Decision::WaitUntil(_) | Decision::Idle => None,
        }
    }

    /// Tells the batcher the instance finished a batch it was given.
    pub fn finished(&self) {
        let mut state = self.shared.state.lock();
        state.executing = state.executing.saturating_sub(1);
    }
}

impl Shared {
    /// Turns a request cut into a batch into work for an instance: the request stays whole.
    fn work(&self, p: Pending) -> Work {
        Work {
            dest: Destination {
                tx: p.tx,
                queued_at: p.arrived,
                order: self.sequencer.as_ref().map(|s| (Arc::clone(s), p.seq)),
                hook: None,
            },
            request: p.request,
            ticket: p.ticket,
        }
    }

    /// Answers a request that leaves the queue without running.
    fn refuse(&self, p: Pending, error: Error) {
        self.work(p).dest.send(ResponseMessage::rejection(error));
    }

    /// Answers requests whose queue timeout expired, where the policy rejects them, and
    /// drops requests their clients cancelled; runs only when a timeout is due.
    fn expire(&self, state: &mut State, now: Instant) {
        let mut next = None::<Instant>;
        for level in 0..state.queues.len() {
            let reject = self.policy.levels[level].reject_on_timeout;
            let queue = std::mem::take(&mut state.queues[level]);
            let mut kept = VecDeque::with_capacity(queue.len());
            for p in queue {
                let cancelled = p.ticket.cancelled.load(Ordering::Relaxed);
                let expired = reject && p.timeout_at.is_some_and(|t| t <= now);
                if cancelled {
                    self.refuse(p, Error::cancelled(CANCELLED_IN_QUEUE));
                } else if expired {
                    self.refuse(p, super::queue_timeout(&self.model));
                } else {
                    if reject && let Some(t) = p.timeout_at {
                        next = Some(next.map_or(t, |n| n.min(t)));
                    }
                    kept.push_back(p);
                }
            }
            state.queues[level] = kept;
        }
        state.next_reject = next;
    }

    /// Picks the next batch: the oldest request of the highest priority, joined by every
    /// mergeable request behind it (priority order, then arrival) up to `max_batch_size`.
    /// The scan stops once the batch is full; requests cancelled at the head of a queue are
    /// answered on the way.
    fn decide(&self, state: &mut State, now: Instant) -> Decision {
        for queue in &mut state.queues {
            while queue
                .front()
                .is_some_and(|p| p.ticket.cancelled.load(Ordering::Relaxed))
            {
                if let Some(p) = queue.pop_front() {
                    self.refuse(p, Error::cancelled(CANCELLED_IN_QUEUE));
                }
            }
        }
        let Some(head_level) = state.queues.iter().position(|q| !q.is_empty()) else {
            return Decision::Idle;
        };
        let head = &state.queues[head_level][0];
        let (key, head_arrived) = (&head.key, head.arrived);
        let max = self.policy.max_batch;
        let mut picked: Vec<(usize, usize)> = Vec::new();
        let mut sums = Vec::new();
        let mut total = 0usize;
        'scan: for (level, queue) in state.queues.iter().enumerate().skip(head_level) {
            for (i, p) in queue.iter().enumerate() {
                if total + p.rows <= max && p.key == *key {
                    picked.push((level, i));
                    total += p.rows;
                    sums.push(total);
                    if total == max {
                        break 'scan;
                    }
                }
            }
        }
        let preferred = sums
            .iter()
            .rev()
            .find(|s| self.policy.preferred.contains(s))
            .copied();
        let deadline = head_arrived + self.policy.max_delay;
        let closing = state.closing;
        let alone = self.policy.adaptive && state.executing == 0 && state.company < 0.5;
        let cut = if total == max || closing || self.policy.max_delay.is_zero() {
            preferred
                .filter(|_| total != max && !closing)
                .unwrap_or(total)
        } else if let Some(size) = preferred {
            size
        } else if now >= deadline || alone {
            total
        } else {
            return Decision::WaitUntil(deadline);
        };
        let count = sums
            .iter()
            .position(|&s| s == cut)
            .map_or(picked.len(), |i| i + 1);
        picked.truncate(count);
        // Remove from the back so earlier indexes stay valid.
        let mut batch = Vec::with_capacity(picked.len());
        for &(level, i) in picked.iter().rev() {
            if let Some(p) = state.queues[level].remove(i) {
                batch.push(p);
            }
        }
        batch.reverse();
        Decision::Run(batch)
    }
}

/// The answer to a request cancelled while it waited.
const CANCELLED_IN_QUEUE: &str = "the request was cancelled while it waited in the queue";
