//! Per-model-version statistics: counts and cumulative durations recorded where each event
//! happens (a request finishing, a batch executing). The statistics extension and the
//! Prometheus metrics both read these same counters, so they always agree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A count of events and their total duration.
#[derive(Default, Debug)]
pub struct Tally {
    /// How many.
    count: AtomicU64,
    /// Their total duration, in nanoseconds.
    ns: AtomicU64,
}

impl Tally {
    /// Adds one event of this duration.
    pub fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// (count, total ns).
    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.ns.load(Ordering::Relaxed),
        )
    }
}

/// Why a request failed, as Triton's failure metric labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureReason {
    /// Refused by the scheduler (queue full, queue timeout).
    Rejected,
    /// Cancelled by the client.
    Canceled,
    /// The backend failed.
    Backend,
    /// Anything else (for example an invalid request).
    Other,
}

impl FailureReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Rejected => "REJECTED",
            FailureReason::Canceled => "CANCELED",
            FailureReason::Backend => "BACKEND",
            FailureReason::Other => "OTHER",
        }
    }
}

/// Durations of one batch execution's phases.
#[derive(Clone, Copy, Debug, Default)]
pub struct ComputeTimes {
    /// Preparing the inputs for the backend.
    pub input: Duration,
    /// The backend's execute, up to its final response.
    pub infer: Duration,
    /// Checking and splitting the outputs.
    pub output: Duration,
}

/// Statistics of one batch size.
#[derive(Default, Debug, Clone, Copy)]
pub struct BatchTally {
    /// Executions of this size.
    pub count: u64,
    /// Total input, infer and output time of those executions, in ns.
    pub input_ns: u64,
    /// See `input_ns`.
    pub infer_ns: u64,
    /// See `input_ns`.
    pub output_ns: u64,
}

/// Everything counted for one model version.
#[derive(Debug)]
pub struct ModelStats {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: i64,
    /// Successful requests: count and end-to-end time.
    pub success: Tally,
    /// Failed requests: count and time until failure.
    pub fail: Tally,
    /// Failures by reason.
    failures: Mutex<BTreeMap<FailureReason, u64>>,
    /// Time successful requests waited in the queue.
    pub queue: Tally,
    /// Per-request compute input time.
    pub compute_input: Tally,
    /// Per-request compute infer time.
    pub compute_infer: Tally,
    /// Per-request compute output time.
    pub compute_output: Tally,
    /// Inferences performed (batch rows, summed).
    pub inference_count: AtomicU64,
    /// Backend executions.
    pub execution_count: AtomicU64,
    /// Requests received and not yet answered.
    pub pending: AtomicI64,
    /// Milliseconds since the epoch of the last inference (0: none yet).
    pub last_inference_ms: AtomicU64,
    /// Executions per batch size.
    batches: Mutex<BTreeMap<u64, BatchTally>>,
}

impl ModelStats {
    fn new(name: &str, version: i64) -> Self {
        ModelStats {
            name: name.to_string(),
            version,
            success: Tally::default(),
            fail: Tally::default(),
            failures: Mutex::new(BTreeMap::new()),
            queue: Tally::default(),
            compute_input: Tally::default(),
            compute_infer: Tally::default(),
            compute_output: Tally::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            last_inference_ms: AtomicU64::new(0),
            batches: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records a backend execution of `rows` batch rows.
    pub fn record_execution(&self, rows: u64, times: ComputeTimes) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.inference_count.fetch_add(rows, Ordering::Relaxed);
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let mut batches = self.batches.lock();
        let tally = batches.entry(rows).or_default();
        tally.count += 1;
        tally.input_ns += ns(times.input);
        tally.infer_ns += ns(times.infer);
        tally.output_ns += ns(times.output);
    }

    /// Records a request that succeeded.
    pub fn record_success(&self, total: Duration, queue: Duration, compute: ComputeTimes) {
        self.success.add(total);
        self.queue.add(queue);
        self.compute_input.add(compute.input);
        self.compute_infer.add(compute.infer);
        self.compute_output.add(compute.output);
        self.touch();
    }

    /// Records a request that failed.
    pub fn record_failure(&self, total: Duration, reason: FailureReason) {
        self.fail.add(total);
        *self.failures.lock().entry(reason).or_default() += 1;
        self.touch();
    }

    fn touch(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_inference_ms
            .store(now.as_millis() as u64, Ordering::Relaxed);
    }

    /// Failure counts by reason.
    pub fn failures(&self) -> BTreeMap<FailureReason, u64> {
        self.failures.lock().clone()
    }

    /// Execution tallies by batch size.
    pub fn batches(&self) -> BTreeMap<u64, BatchTally> {
        self.batches.lock().clone()
    }
}

/// Every model version's statistics, kept across reloads of the same version.
#[derive(Default)]
pub struct StatsRegistry {
    /// Statistics by (model, version).
    models: Mutex<BTreeMap<(String, i64), Arc<ModelStats>>>,
}

impl StatsRegistry {
    /// The statistics of a model version, created on first use.
    pub fn model(&self, name: &str, version: i64) -> Arc<ModelStats> {
        let mut models = self.models.lock();
        Arc::clone(
            models
                .entry((name.to_string(), version))
                .or_insert_with(|| Arc::new(ModelStats::new(name, version))),
        )
    }

    /// All statistics, ordered by model and version.
    pub fn all(&self) -> Vec<Arc<ModelStats>> {
        self.models.lock().values().cloned().collect()
    }
}
