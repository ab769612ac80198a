//! Latency records, measurement windows, percentiles and the stability rule.

use crate::stats::ServerBreakdown;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A duration in whole nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where a request's time splits: the end of sending and the start of receiving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    /// When the request was out.
    pub sent: Instant,
    /// When its response began to come back.
    pub answered: Instant,
}

/// The marks of a connection's or a codec's latest request, shared with its worker.
// Written by the task that sees the request go out and come back (a connection or a codec),
// read by the worker after the response; atomics, no lock.
#[derive(Debug)]
pub struct SharedMarks {
    base: Instant,
    sent: AtomicU64,
    answered: AtomicU64,
}

impl Default for SharedMarks {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedMarks {
    /// Marks with neither time set.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        }
    }

    fn stamp(&self, slot: &AtomicU64) {
        // 0 means "never"; a mark in the very first nanosecond moves to the next one.
        slot.store(nanos(self.base.elapsed()).max(1), Ordering::Release);
    }

    /// Records that a request was out now.
    pub fn mark_sent(&self) {
        self.stamp(&self.sent);
    }

    /// Records that a response began to come back now.
    pub fn mark_answered(&self) {
        self.stamp(&self.answered);
    }

    /// The latest marks (None until both were set once).
    pub fn get(&self) -> Option<Marks> {
        let sent = self.sent.load(Ordering::Acquire);
        let answered = self.answered.load(Ordering::Acquire);
        if sent == 0 || answered == 0 {
            return None;
        }
        Some(Marks {
            sent: self.base + Duration::from_nanos(sent),
            answered: self.base + Duration::from_nanos(answered),
        })
    }
}

/// One completed request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    /// Send-to-response latency in nanoseconds.
    pub latency_ns: u64,
    /// Response wait (end of sending to start of receiving) in nanoseconds, when known.
    // The rest of the latency is send/recv. None when the marks are missing or not its own.
    pub wait_ns: Option<u64>,
    /// Whether the request succeeded.
    pub ok: bool,
}

impl Record {
    /// The record of a request that ran from `start` to `end`, split at its `marks`.
    // Marks outside [start, end] (stale ones of an earlier request) leave it unsplit.
    pub fn new(start: Instant, end: Instant, marks: Option<Marks>, ok: bool) -> Self {
        let inside = |t: Instant| start <= t && t <= end;
        let wait_ns = marks
            .filter(|m| inside(m.sent) && inside(m.answered))
            .map(|m| nanos(m.answered.saturating_duration_since(m.sent)));
        Self {
            latency_ns: nanos(end.saturating_duration_since(start)),
            wait_ns,
            ok,
        }
    }
}

/// Per-worker record buffers, drained at each window boundary.
#[derive(Clone, Debug)]
pub struct Recorder {
    slots: Arc<Vec<Mutex<Vec<Record>>>>,
}

impl Recorder {
    /// A recorder with one buffer per worker.
    pub fn new(workers: usize) -> Self {
        Self {
            slots: Arc::new(
                (0..workers.max(1))
                    .map(|_| Mutex::new(Vec::with_capacity(1024)))
                    .collect(),
            ),
        }
    }

    /// Adds a record to a worker's buffer.
    pub fn push(&self, worker: usize, record: Record) {
        if let Some(slot) = self.slots.get(worker % self.slots.len()) {
            slot.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(record);
        }
    }

    /// Records held now (completed since the last drain), successful or not.
    pub fn count(&self) -> usize {
        self.slots
            .iter()
            .map(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Takes every record so far.
    pub fn drain(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for slot in self.slots.iter() {
            out.append(&mut slot.lock().unwrap_or_else(PoisonError::into_inner));
        }
        out
    }
}

/// The requests completed in one measurement window.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Sorted latencies of successful requests, ns.
    pub latencies: Vec<u64>,
    /// Failed requests.
    pub errors: u64,
    /// Window length.
    pub duration: Duration,
    /// Successful requests with a send/recv–wait split.
    pub split: u64,
    /// Summed latency of those requests, ns.
    pub split_latency_ns: u64,
    /// Summed response wait of those requests, ns.
    pub split_wait_ns: u64,
}

impl Window {
    /// Builds a window from its records and length.
    pub fn new(records: &[Record], duration: Duration) -> Self {
        let mut latencies: Vec<u64> = records
            .iter()
            .filter(|r| r.ok)
            .map(|r| r.latency_ns)
            .collect();
        latencies.sort_unstable();
        let errors = records.iter().filter(|r| !r.ok).count() as u64;
        let (mut split, mut split_latency_ns, mut split_wait_ns) = (0u64, 0u64, 0u64);
        for r in records.iter().filter(|r| r.ok) {
            if let Some(wait) = r.wait_ns {
                split += 1;
                split_latency_ns = split_latency_ns.saturating_add(r.latency_ns);
                split_wait_ns = split_wait_ns.saturating_add(wait.min(r.latency_ns));
            }
        }
        Self {
            latencies,
            errors,
            duration,
            split,
            split_latency_ns,
            split_wait_ns,
        }
    }

    /// Merges windows into one.
    pub fn merge(windows: &[Window]) -> Self {
        let mut latencies: Vec<u64> = windows
            .iter()
            .flat_map(|w| w.latencies.iter().copied())
            .collect();
        latencies.sort_unstable();
        Self {
            latencies,
            errors: windows.iter().map(|w| w.errors).sum(),
            duration: windows.iter().map(|w| w.duration).sum(),
            split: windows.iter().map(|w| w.split).sum(),
            split_latency_ns: windows
                .iter()
                .fold(0, |a, w| a.saturating_add(w.split_latency_ns)),
            split_wait_ns: windows
                .iter()
                .fold(0, |a, w| a.saturating_add(w.split_wait_ns)),
        }
    }

    /// Requests completed in the window, successful or not.
    pub fn completed(&self) -> u64 {
        self.latencies.len() as u64 + self.errors
    }

    /// Mean client send/recv time (latency minus response wait) of the split requests, µs.
    pub fn send_recv_us(&self) -> Option<f64> {
        (self.split > 0).then(|| {
            self.split_latency_ns.saturating_sub(self.split_wait_ns) as f64
                / self.split as f64
                / 1000.0
        })
    }

    /// Mean client response wait of the split requests, µs.
    pub fn wait_us(&self) -> Option<f64> {
        (self.split > 0).then(|| self.split_wait_ns as f64 / self.split as f64 / 1000.0)
    }

    /// Successful requests per second.
    pub fn request_rate(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs <= 0.0 {
            0.0
        } else {
            self.latencies.len() as f64 / secs
        }
    }

    /// Latency percentile (nearest rank) in microseconds.
    pub fn percentile_us(&self, p: f64) -> f64 {
        percentile(&self.latencies, p) as f64 / 1000.0
    }

    /// Mean latency in microseconds.
    pub fn mean_us(&self) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.iter().map(|&l| l as f64).sum::<f64>() / self.latencies.len() as f64 / 1000.0
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// True when each value is within `pct` percent of the values' average.
pub fn within(values: &[f64], pct: f64) -> bool {
    if values.is_empty() {
        return false;
    }
    let avg = values.iter().sum::<f64>() / values.len() as f64;
    values
        .iter()
        .all(|v| (v - avg).abs() <= avg.abs() * pct / 100.0)
}

/// True when the last 3 windows' throughput and latency percentile are stable.
pub fn is_stable(windows: &[Window], pct: f64, percentile: f64) -> bool {
    if windows.len() < 3 {
        return false;
    }
    let last = &windows[windows.len() - 3..];
    let rates: Vec<f64> = last.iter().map(Window::request_rate).collect();
    let lats: Vec<f64> = last.iter().map(|w| w.percentile_us(percentile)).collect();
    rates.iter().all(|r| *r > 0.0) && within(&rates, pct) && within(&lats, pct)
}

/// The result of one sweep point.
#[derive(Clone, Debug, Serialize)]
pub struct PointResult {
    /// "concurrency" or "request_rate".
    pub mode: String,
    /// Concurrency level or request rate of the point.
    pub value: f64,
    /// Batch size of each request.
    pub batch_size: u32,
    /// Inferences per second (requests/s times batch size).
    pub throughput: f64,
    /// Successful requests measured.
    pub requests: u64,
    /// Failed requests measured.
    pub errors: u64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 90th percentile latency, µs.
    pub p90_us: f64,
    /// 95th percentile latency, µs.
    pub p95_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Mean latency, µs.
    pub avg_us: f64,
    /// The --percentile latency when one was asked for, µs.
    pub custom_percentile: Option<(u8, f64)>,
    /// Whether the stability rule was met before --max-trials.
    pub stable: bool,
    /// Windows measured.
    pub windows: usize,
    /// Server-side per-request breakdown over the reported windows.
    pub server: Option<ServerBreakdown>,
    /// Mean client send/recv time (sending the request, receiving the response), µs.
    pub client_send_recv_us: Option<f64>,
    /// Mean client response wait (end of sending to start of receiving), µs.
    pub client_wait_us: Option<f64>,
    /// Every window measured for the point, in order.
    pub window_details: Vec<WindowSummary>,
}

/// One measurement window as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowSummary {
    /// Successful requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Window length, ms.
    pub duration_ms: f64,
    /// Inferences per second in the window.
    pub throughput: f64,
}

impl WindowSummary {
    /// Summarises one window of requests of batch size `batch`.
    pub fn new(w: &Window, batch: u32) -> Self {
        Self {
            requests: w.latencies.len() as u64,
            errors: w.errors,
            duration_ms: w.duration.as_secs_f64() * 1000.0,
            throughput: w.request_rate() * f64::from(batch),
        }
    }
}

impl PointResult {
    /// Summarises the reported windows of a point.
    pub fn from_window(
        mode: &str,
        value: f64,
        batch: u32,
        w: &Window,
        percentile: Option<u8>,
    ) -> Self {
        Self {
            mode: mode.to_string(),
            value,
            batch_size: batch,
            throughput: w.request_rate() * f64::from(batch),
            requests: w.latencies.len() as u64,
            errors: w.errors,
            p50_us: w.percentile_us(50.0),
            p90_us: w.percentile_us(90.0),
            p95_us: w.percentile_us(95.0),
            p99_us: w.percentile_us(99.0),
            avg_us: w.mean_us(),
            custom_percentile: percentile.map(|p| (p, w.percentile_us(f64::from(p)))),
            stable: false,
            windows: 0,
            server: None,
            client_send_recv_us: w.send_recv_us(),
            client_wait_us: w.wait_us(),
            window_details: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(latency_ns: u64, wait_ns: Option<u64>, ok: bool) -> Record {
        Record {
            latency_ns,
            wait_ns,
            ok,
        }
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 90.0), 7);
        assert_eq!(percentile(&[], 90.0), 0);
    }

    #[test]
    fn stability() {
        let w = |n: u64, lat: u64| {
            Window::new(
                &(0..n).map(|_| rec(lat, None, true)).collect::<Vec<_>>(),
                Duration::from_secs(1),
            )
        };
        assert!(is_stable(&[w(100, 10), w(100, 10), w(105, 10)], 10.0, 50.0));
        assert!(!is_stable(
            &[w(100, 10), w(100, 10), w(200, 10)],
            10.0,
            50.0
        ));
        assert!(!is_stable(&[w(100, 10), w(100, 10)], 10.0, 50.0));
        let r = Recorder::new(2);
        r.push(0, rec(1, None, true));
        r.push(1, rec(2, None, false));
        assert_eq!(r.count(), 2);
        let m = Window::new(&r.drain(), Duration::from_secs(2));
        assert_eq!((m.latencies.len(), m.errors, m.completed()), (1, 1, 2));
        assert!(r.drain().is_empty());
        assert_eq!(r.count(), 0);
    }

    #[test]
    fn record_split_at_marks() {
        let start = Instant::now();
        let at = |us: u64| start + Duration::from_micros(us);
        let end = at(100);
        let marks = |sent, answered| {
            Some(Marks {
                sent: at(sent),
                answered: at(answered),
            })
        };
        let r = Record::new(start, end, marks(10, 70), true);
        assert_eq!(
            (r.latency_ns, r.wait_ns, r.ok),
            (100_000, Some(60_000), true)
        );
        // An answer that began before the request was fully out: no wait.
        assert_eq!(
            Record::new(start, end, marks(50, 40), true).wait_ns,
            Some(0)
        );
        // Marks outside the request's span belong to another request.
        let stale = Some(Marks {
            sent: start,
            answered: start,
        });
        assert_eq!(Record::new(at(1), end, stale, true).wait_ns, None);
        assert_eq!(Record::new(start, end, marks(10, 170), true).wait_ns, None);
        assert_eq!(Record::new(start, end, None, false).wait_ns, None);
    }

    #[test]
    fn shared_marks() {
        let m = SharedMarks::new();
        assert_eq!(m.get(), None);
        let before = Instant::now();
        m.mark_sent();
        assert_eq!(m.get(), None);
        m.mark_answered();
        let after = Instant::now();
        let got = m.get().unwrap();
        assert!(before <= got.sent && got.sent <= got.answered && got.answered <= after);
    }

    #[test]
    fn breakdown_means() {
        let records = [
            rec(100_000, Some(60_000), true),
            rec(200_000, Some(100_000), true),
            // Unsplit and failed requests stay out of the breakdown.
            rec(900_000, None, true),
            rec(5_000, Some(1_000), false),
        ];
        let w = Window::new(&records, Duration::from_secs(1));
        assert_eq!(w.split, 2);
        assert_eq!(w.wait_us(), Some(80.0));
        assert_eq!(w.send_recv_us(), Some(70.0));
        let merged = Window::merge(&[
            w.clone(),
            Window::new(&records[..1], Duration::from_secs(1)),
        ]);
        assert_eq!(merged.split, 3);
        assert!((merged.wait_us().unwrap() - 220.0 / 3.0).abs() < 1e-9);
        assert_eq!(Window::default().send_recv_us(), None);
        let p = PointResult::from_window("concurrency", 1.0, 2, &w, None);
        assert_eq!(p.client_send_recv_us, Some(70.0));
        assert_eq!(p.client_wait_us, Some(80.0));
        let s = WindowSummary::new(&w, 2);
        assert_eq!((s.requests, s.errors), (3, 1));
        assert_eq!((s.duration_ms, s.throughput), (1000.0, 6.0));
    }
}
