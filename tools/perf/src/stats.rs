//! Server-side statistics (statistics extension) and their per-request breakdown.

use crate::proto::inference as pb;
use serde::Serialize;
use serde_json::Value;

/// Cumulative counters of a model's inference statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerStats {
    /// Successful requests.
    pub success_count: u64,
    /// Nanoseconds spent on successful requests.
    pub success_ns: u64,
    /// Requests counted in queue.
    pub queue_count: u64,
    /// Nanoseconds queued.
    pub queue_ns: u64,
    /// Nanoseconds preparing inputs.
    pub compute_input_ns: u64,
    /// Nanoseconds executing.
    pub compute_infer_ns: u64,
    /// Nanoseconds producing outputs.
    pub compute_output_ns: u64,
}

/// Average per-request server-side durations over a window, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ServerBreakdown {
    /// Successful requests the server counted in the window.
    pub requests: u64,
    /// Average queue time.
    pub queue_us: f64,
    /// Average compute-input time.
    pub compute_input_us: f64,
    /// Average compute-infer time.
    pub compute_infer_us: f64,
    /// Average compute-output time.
    pub compute_output_us: f64,
}

impl ServerStats {
    /// Sums `model_stats[].inference_stats` of a statistics-extension JSON response.
    pub fn from_json(v: &Value) -> Self {
        let mut s = Self::default();
        let Some(models) = v["model_stats"].as_array() else {
            return s;
        };
        for m in models {
            let st = &m["inference_stats"];
            let get = |k: &str, f: &str| st[k][f].as_u64().unwrap_or(0);
            s.success_count += get("success", "count");
            s.success_ns += get("success", "ns");
            s.queue_count += get("queue", "count");
            s.queue_ns += get("queue", "ns");
            s.compute_input_ns += get("compute_input", "ns");
            s.compute_infer_ns += get("compute_infer", "ns");
            s.compute_output_ns += get("compute_output", "ns");
        }
        s
    }

    /// Sums `model_stats[].inference_stats` of a gRPC ModelStatistics response.
    pub fn from_proto(r: &pb::ModelStatisticsResponse) -> Self {
        let mut s = Self::default();
        for m in &r.model_stats {
            let Some(st) = &m.inference_stats else {
                continue;
            };
            let d =
                |x: &Option<pb::StatisticDuration>| x.as_ref().map_or((0, 0), |d| (d.count, d.ns));
            s.success_count += d(&st.success).0;
            s.success_ns += d(&st.success).1;
            s.queue_count += d(&st.queue).0;
            s.queue_ns += d(&st.queue).1;
            s.compute_input_ns += d(&st.compute_input).1;
            s.compute_infer_ns += d(&st.compute_infer).1;
            s.compute_output_ns += d(&st.compute_output).1;
        }
        s
    }

    /// Sums the inference statistics an in-process core reports.
    pub fn from_core(stats: &[ferrum_core::stats::ModelStatistics]) -> Self {
        let mut s = Self::default();
        for m in stats {
            let st = &m.inference;
            s.success_count += st.success.count;
            s.success_ns += st.success.ns;
            s.queue_count += st.queue.count;
            s.queue_ns += st.queue.ns;
            s.compute_input_ns += st.compute_input.ns;
            s.compute_infer_ns += st.compute_infer.ns;
            s.compute_output_ns += st.compute_output.ns;
        }
        s
    }

    /// Average per-request durations between `self` (earlier) and `later`.
    pub fn breakdown(&self, later: &Self) -> ServerBreakdown {
        let n = later.success_count.saturating_sub(self.success_count);
        let avg = |a: u64, b: u64| {
            if n == 0 {
                0.0
            } else {
                b.saturating_sub(a) as f64 / n as f64 / 1000.0
            }
        };
        ServerBreakdown {
            requests: n,
            queue_us: avg(self.queue_ns, later.queue_ns),
            compute_input_us: avg(self.compute_input_ns, later.compute_input_ns),
            compute_infer_us: avg(self.compute_infer_ns, later.compute_infer_ns),
            compute_output_us: avg(self.compute_output_ns, later.compute_output_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deltas() {
        let a = ServerStats::from_json(&json!({"model_stats": [{"inference_stats": {
            "success": {"count": 10, "ns": 1000}, "queue": {"count": 10, "ns": 10000},
            "compute_input": {"count": 10, "ns": 0}, "compute_infer": {"count": 10, "ns": 0},
            "compute_output": {"count": 10, "ns": 0}}}]}));
        let b = ServerStats::from_json(&json!({"model_stats": [{"inference_stats": {
            "success": {"count": 20, "ns": 2000}, "queue": {"count": 20, "ns": 30000},
            "compute_input": {"count": 20, "ns": 10000}, "compute_infer": {"count": 20, "ns": 50000},
            "compute_output": {"count": 20, "ns": 20000}}}]}));
        let d = a.breakdown(&b);
        assert_eq!(d.requests, 10);
        assert!((d.queue_us - 2.0).abs() < 1e-9);
        assert!((d.compute_infer_us - 5.0).abs() < 1e-9);
    }
}
