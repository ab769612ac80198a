//! Triton's dynamic batcher. One thread owns the queues (one per priority level); requests
//! arrive over a channel, instances report when they are free, and the thread cuts a batch
//! whenever an instance is free and the policy says go: the batch is full, it reaches a
//! preferred size, or its oldest request has waited `max_queue_delay_microseconds`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferrum_backend_api::{DataType, ParamValue};
use tokio::sync::mpsc;

use super::responder::{Destination, ResponseMessage, Sequencer};
use super::{Ticket, Work};
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
    /// Most requests waiting at this level (0: no limit).
    max_queue_size: usize,
}

impl LevelPolicy {
    fn from_proto(policy: Option<&ModelQueuePolicy>) -> Self {
        let p = policy.cloned().unwrap_or_default();
        LevelPolicy {
            reject_on_timeout: p.timeout_action != TimeoutAction::Delay as i32,
            default_timeout: (p.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(p.default_timeout_microseconds)),
            allow_override: p.allow_timeout_override,
            max_queue_size: p.max_queue_size as usize,
        }
    }
}

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
}

impl BatchPolicy {
    /// The policy a config asks for, or none when the model does not batch dynamically.
    pub fn from_config(config: &ModelConfig) -> Result<Option<Self>> {
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
                LevelPolicy::from_proto(policy)
            })
            .collect();
        Ok(Some(BatchPolicy {
            max_batch,
            preferred,
            max_delay: Duration::from_micros(db.max_queue_delay_microseconds),
            preserve_ordering: db.preserve_ordering,
            levels,
            default_level,
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
    tx: mpsc::UnboundedSender<ResponseMessage>,
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
    /// Priority level index.
    level: usize,
    /// Its place in the response order.
    seq: u64,
}

/// The submitting side of a running batcher.
pub struct Handle {
    /// Requests into the batcher thread.
    tx: crossbeam_channel::Sender<Pending>,
    /// The model's policy, for checks done on submit.
    policy: Arc<BatchPolicy>,
    /// Requests waiting per level, for the queue size limits.
    queued: Arc<Vec<AtomicUsize>>,
}

fn int_parameter(request: &InferRequest, key: &str) -> Result<Option<u64>> {
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
    pub fn submit(
        &self,
        request: InferRequest,
        tx: mpsc::UnboundedSender<ResponseMessage>,
        ticket: Ticket,
    ) -> Result<()> {
        let policy = &self.policy;
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
        let queued = &self.queued[level];
        let limit = level_policy.max_queue_size;
        if limit > 0 && queued.fetch_add(1, Ordering::SeqCst) >= limit {
            queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "request for model '{}' exceeds the maximum queue size ({limit}) of its priority level",
                    request.model_name
                ),
            ));
        } else if limit == 0 {
            queued.fetch_add(1, Ordering::SeqCst);
        }
        let now = Instant::now();
        let pending = Pending {
            rows: request
                .inputs
                .first()
                .and_then(|t| t.shape.first())
                .map_or(1, |&b| b.max(1) as usize),
            key: BatchKey::of(&request),
            request,
            tx,
            ticket,
            arrived: now,
            timeout_at: timeout.map(|t| now + t),
            level,
            seq: 0,
        };
        self.tx.send(pending).map_err(|_| {
            queued.fetch_sub(1, Ordering::SeqCst);
            Error::unavailable("the model's batcher has stopped")
        })
    }
}

/// Starts the batcher thread in front of the instances.
pub fn start(
    model: &str,
    policy: BatchPolicy,
    work: crossbeam_channel::Sender<Vec<Work>>,
    idle: crossbeam_channel::Receiver<()>,
) -> Result<(Handle, JoinHandle<()>)> {
    let policy = Arc::new(policy);
    let queued: Arc<Vec<AtomicUsize>> =
        Arc::new(policy.levels.iter().map(|_| AtomicUsize::new(0)).collect());
    let (tx, rx) = crossbeam_channel::unbounded();
    let batcher = Batcher {
        sequencer: policy
            .preserve_ordering
            .then(|| Arc::new(Sequencer::default())),
        queues: policy.levels.iter().map(|_| VecDeque::new()).collect(),
        policy: Arc::clone(&policy),
        queued: Arc::clone(&queued),
        next_seq: 0,
    };
    let thread = std::thread::Builder::new()
        .name(format!("ferrum-batcher-{model}"))
        .spawn(move || batcher.run(rx, work, idle))
        .map_err(|e| {
            Error::internal(format!("cannot start the batcher of model '{model}': {e}"))
        })?;
    Ok((Handle { tx, policy, queued }, thread))
}

/// What the policy says about the queue right now.
enum Decision {
    /// Run these requests as one batch.
    Run(Vec<Pending>),
    /// Nothing to run before this instant (or a new arrival).
    WaitUntil(Instant),
    /// The queues are empty.
    Idle,
}

/// The batcher thread's state.
struct Batcher {
    /// The policy.
    policy: Arc<BatchPolicy>,
    /// Waiting requests per priority level, oldest first.
    queues: Vec<VecDeque<Pending>>,
    /// Shared counts of waiting requests per level.
    queued: Arc<Vec<AtomicUsize>>,
    /// Keeps responses in arrival order when the model asks for it.
    sequencer: Option<Arc<Sequencer>>,
    /// Next arrival's place in the response order.
    next_seq: u64,
}

impl Batcher {
    fn run(
        mut self,
        submitted: crossbeam_channel::Receiver<Pending>,
        work: crossbeam_channel::Sender<Vec<Work>>,
        idle: crossbeam_channel::Receiver<()>,
    ) {
        let mut free = 0usize;
        let mut closing = false;
        loop {
            let now = Instant::now();
            self.expire(now);
            let mut wake = None;
            while free > 0 {
                match self.decide(now, closing) {
                    Decision::Run(batch) => {
                        if work.send(self.batch_work(batch)).is_err() {
                            return;
                        }
                        free -= 1;
                    }
                    Decision::WaitUntil(t) => {
                        wake = Some(t);
                        break;
                    }
                    Decision::Idle => break,
                }
            }
            if closing && self.queues.iter().all(VecDeque::is_empty) {
                return;
            }
            let wake = [wake, self.next_timeout()].into_iter().flatten().min();
            let wait = wake.map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(Instant::now())
            });
            let never = crossbeam_channel::never();
            let submitted = if closing { &never } else { &submitted };
            crossbeam_channel::select! {
                recv(submitted) -> pending => match pending {
                    Ok(mut pending) => {
                        pending.seq = self.next_seq;
                        self.next_seq += 1;
                        let level = pending.level;
                        self.queues[level].push_back(pending);
                    }
                    Err(_) => closing = true,
                },
                recv(idle) -> signal => match signal {
                    Ok(()) => free += 1,
                    Err(_) => return,
                },
                default(wait) => {}
            }
        }
    }

    fn destination(&self, pending: &Pending) -> Destination {
        Destination {
            tx: pending.tx.clone(),
            queued_at: pending.arrived,
            order: self
                .sequencer
                .as_ref()
                .map(|s| (Arc::clone(s), pending.seq)),
        }
    }

    /// Answers requests whose queue timeout expired, where the policy rejects them, and
    /// drops requests their clients cancelled while they waited.
    fn expire(&mut self, now: Instant) {
        for level in 0..self.queues.len() {
            let reject = self.policy.levels[level].reject_on_timeout;
            let mut i = 0;
            while i < self.queues[level].len() {
                let p = &self.queues[level][i];
                let cancelled = p.ticket.cancelled.load(Ordering::Relaxed);
                let expired = reject && p.timeout_at.is_some_and(|t| t <= now);
                if !(cancelled || expired) {
                    i += 1;
                    continue;
                }
                if let Some(p) = self.queues[level].remove(i) {
                    self.queued[level].fetch_sub(1, Ordering::SeqCst);
                    let error = if cancelled {
                        Error::cancelled("the request was cancelled while it waited in the queue")
                    } else {
                        Error::unavailable(format!(
                            "request for model '{}' timed out in the queue",
                            p.request.model_name
                        ))
                    };
                    self.destination(&p).send(ResponseMessage::rejection(error));
                }
            }
        }
    }

    /// The earliest queue timeout that will reject a request.
    fn next_timeout(&self) -> Option<Instant> {
        self.queues
            .iter()
            .zip(&self.policy.levels)
            .filter(|(_, policy)| policy.reject_on_timeout)
            .flat_map(|(queue, _)| queue.iter().filter_map(|p| p.timeout_at))
            .min()
    }

    /// Picks the next batch: the oldest request of the highest priority, joined by every
    /// mergeable request behind it (priority order, then arrival) up to `max_batch_size`.
    fn decide(&mut self, now: Instant, closing: bool) -> Decision {
        let Some(head_level) = self.queues.iter().position(|q| !q.is_empty()) else {
            return Decision::Idle;
        };
        let head = &self.queues[head_level][0];
        let (key, head_arrived) = (head.key.clone(), head.arrived);
        let max = self.policy.max_batch;
        let mut picked: Vec<(usize, usize)> = Vec::new();
        let mut sums = Vec::new();
        let mut total = 0usize;
        'scan: for (level, queue) in self.queues.iter().enumerate().skip(head_level) {
            for (i, p) in queue.iter().enumerate() {
                if total + p.rows <= max && p.key == key {
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
        let cut = if total == max || closing || self.policy.max_delay.is_zero() {
            preferred
                .filter(|_| total != max && !closing)
                .unwrap_or(total)
        } else if let Some(size) = preferred {
            size
        } else if now >= deadline {
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
            if let Some(p) = self.queues[level].remove(i) {
                self.queued[level].fetch_sub(1, Ordering::SeqCst);
                batch.push(p);
            }
        }
        batch.reverse();
        Decision::Run(batch)
    }

    /// Turns a batch into work for an instance: the requests stay whole.
    fn batch_work(&self, batch: Vec<Pending>) -> Vec<Work> {
        batch
            .into_iter()
            .map(|p| Work {
                dest: self.destination(&p),
                request: p.request,
                ticket: p.ticket,
            })
            .collect()
    }
}
