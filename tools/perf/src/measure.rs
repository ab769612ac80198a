//! Latency records, measurement windows, percentiles and the stability rule.

use crate::stats::ServerBreakdown;
use serde::Serialize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One completed request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    /// Send-to-response latency in nanoseconds.
    pub latency_ns: u64,
    /// Whether the request succeeded.
    pub ok: bool,
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
        Self {
            latencies,
            errors,
            duration,
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
        }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                &(0..n)
                    .map(|_| Record {
                        latency_ns: lat,
                        ok: true,
                    })
                    .collect::<Vec<_>>(),
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
        r.push(
            0,
            Record {
                latency_ns: 1,
                ok: true,
            },
        );
        r.push(
            1,
            Record {
                latency_ns: 2,
                ok: false,
            },
        );
        let m = Window::new(&r.drain(), Duration::from_secs(2));
        assert_eq!((m.latencies.len(), m.errors), (1, 1));
        assert!(r.drain().is_empty());
    }
}
