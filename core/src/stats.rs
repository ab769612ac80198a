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

    /// The count and total duration as a plain value.
    pub fn snapshot(&self) -> DurationStat {
        let (count, ns) = self.get();
        DurationStat { count, ns }
    }
}

/// A count of events and their total duration in nanoseconds, as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurationStat {
    /// How many.
    pub count: u64,
    /// Their total duration, in nanoseconds.
    pub ns: u64,
}

/// Per-request statistics of a model version, as the statistics extension reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InferenceStatistics {
    /// Successful requests and their end-to-end time.
    pub success: DurationStat,
    /// Failed requests and their time until failure.
    pub fail: DurationStat,
    /// Time successful requests waited in the queue.
    pub queue: DurationStat,
    /// Time spent preparing inputs.
    pub compute_input: DurationStat,
    /// Time spent in the backend.
    pub compute_infer: DurationStat,
    /// Time spent on outputs.
    pub compute_output: DurationStat,
    /// Response cache hits and their lookup time.
    pub cache_hit: DurationStat,
    /// Response cache misses and their lookup and insertion time.
    pub cache_miss: DurationStat,
}

/// Executions of one batch size, as the statistics extension reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStatistics {
    /// The batch size.
    pub batch_size: u64,
    /// Executions of this size and their input time.
    pub compute_input: DurationStat,
    /// Executions of this size and their backend time.
    pub compute_infer: DurationStat,
    /// Executions of this size and their output time.
    pub compute_output: DurationStat,
}

/// A model version's statistics at one moment: what both frontends report, each in its own
/// wire format.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelStatistics {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: i64,
    /// Milliseconds since the epoch of the last inference (0: none yet).
    pub last_inference: u64,
    /// Inferences performed (batch rows, summed).
    pub inference_count: u64,
    /// Backend executions.
    pub execution_count: u64,
    /// Per-request statistics.
    pub inference: InferenceStatistics,
    /// Executions per batch size, smallest first.
    pub batches: Vec<BatchStatistics>,
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
    /// Sequences of a sequence-batched model.
    pub sequences: SequenceCounts,
    /// Process ids of the version's isolated instance processes.
    pub processes: Mutex<std::collections::BTreeSet<u32>>,
    /// Response cache hits and their lookup time.
    pub cache_hit: Tally,
    /// Response cache misses and their lookup and insertion time.
    pub cache_miss: Tally,
    /// The version uses the response cache (only then are the cache metrics reported).
    pub caching: std::sync::atomic::AtomicBool,
}

/// How many sequences a model started, ended, and released idle.
#[derive(Debug, Default)]
pub struct SequenceCounts {
    /// The model has a sequence batcher (only then are these reported).
    enabled: std::sync::atomic::AtomicBool,
    /// Sequences started.
    pub started: AtomicU64,
    /// Sequences ended by an END request.
    pub ended: AtomicU64,
    /// Sequences released after `max_sequence_idle_microseconds` without a request.
    pub timed_out: AtomicU64,
}

impl SequenceCounts {
    /// Marks the model as one with a sequence batcher.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Whether the model has a sequence batcher.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Counts a sequence started.
    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a sequence ended by its END request.
    pub fn ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a sequence released idle.
    pub fn timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Sequences started and neither ended nor released.
    pub fn active(&self) -> u64 {
        let started = self.started.load(Ordering::Relaxed);
        let gone = self.ended.load(Ordering::Relaxed) + self.timed_out.load(Ordering::Relaxed);
        started.saturating_sub(gone)
    }
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
            sequences: SequenceCounts::default(),
            processes: Mutex::new(Default::default()),
            cache_hit: Tally::default(),
            cache_miss: Tally::default(),
            caching: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Resident memory of the version's isolated instance processes, in bytes (none for a
    /// version that runs inside the server).
    pub fn isolated_memory(&self) -> Option<u64> {
        let pids = self.processes.lock().clone();
        (!pids.is_empty()).then(|| {
            pids.iter()
                .filter_map(|&pid| crate::isolation::resident_bytes(pid))
                .sum()
        })
    }

    /// Counts a backend execution of `rows` batch rows as it starts, so that the counts
    /// already hold it when its responses reach the client.
    pub fn count_execution(&self, rows: u64) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.inference_count.fetch_add(rows, Ordering::Relaxed);
    }

    /// Records how long a backend execution of `rows` batch rows took (counted before with
    /// [`ModelStats::count_execution`]).
    pub fn record_execution(&self, rows: u64, times: ComputeTimes) {
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

    /// Records a request answered from the response cache: a success, and a cache hit with
    /// its lookup time (the backend did not run, so no queue or compute time).
    pub fn record_cache_hit(&self, total: Duration, lookup: Duration) {
        self.success.add(total);
        self.cache_hit.add(lookup);
        self.touch();
    }

    /// Whether the version uses the response cache.
    pub fn caches(&self) -> bool {
        self.caching.load(Ordering::Relaxed)
    }

    /// The statistics as they stand now, in the form the statistics extension reports.
    pub fn snapshot(&self) -> ModelStatistics {
        ModelStatistics {
            name: self.name.clone(),
            version: self.version,
            last_inference: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            inference: InferenceStatistics {
                success: self.success.snapshot(),
                fail: self.fail.snapshot(),
                queue: self.queue.snapshot(),
                compute_input: self.compute_input.snapshot(),
                compute_infer: self.compute_infer.snapshot(),
                compute_output: self.compute_output.snapshot(),
                cache_hit: self.cache_hit.snapshot(),
                cache_miss: self.cache_miss.snapshot(),
            },
            batches: self
                .batches()
                .into_iter()
                .map(|(batch_size, b)| {
                    let stat = |ns| DurationStat { count: b.count, ns };
                    BatchStatistics {
                        batch_size,
                        compute_input: stat(b.input_ns),
                        compute_infer: stat(b.infer_ns),
                        compute_output: stat(b.output_ns),
                    }
                })
                .collect(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reports_what_was_recorded() {
        let registry = StatsRegistry::default();
        let stats = registry.model("m", 3);
        let ms = Duration::from_millis;
        stats.count_execution(2);
        stats.record_execution(
            2,
            ComputeTimes {
                input: ms(1),
                infer: ms(2),
                output: ms(3),
            },
        );
        stats.record_success(
            ms(10),
            ms(4),
            ComputeTimes {
                input: ms(1),
                infer: ms(2),
                output: ms(3),
            },
        );
        stats.record_failure(ms(5), FailureReason::Backend);
        let snap = stats.snapshot();
        assert_eq!((snap.name.as_str(), snap.version), ("m", 3));
        assert_eq!((snap.inference_count, snap.execution_count), (2, 1));
        assert!(snap.last_inference > 0);
        let one = |ns: u64| DurationStat { count: 1, ns };
        assert_eq!(snap.inference.success, one(10_000_000));
        assert_eq!(snap.inference.fail, one(5_000_000));
        assert_eq!(snap.inference.queue, one(4_000_000));
        assert_eq!(snap.inference.compute_infer, one(2_000_000));
        assert_eq!(snap.inference.cache_hit, DurationStat::default());
        assert_eq!(
            snap.batches,
            vec![BatchStatistics {
                batch_size: 2,
                compute_input: one(1_000_000),
                compute_infer: one(2_000_000),
                compute_output: one(3_000_000),
            }]
        );
    }
}
