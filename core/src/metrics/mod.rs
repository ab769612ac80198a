//! Prometheus metrics with Triton's names and labels, served on `--metrics-port` at
//! `/metrics`. Inference metrics are read from the same counters as the statistics
//! extension; CPU (and, when NVML is present, GPU) gauges are sampled every
//! `--metrics-interval-ms`.

mod system;

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, HistogramOpts, HistogramVec, Registry, TextEncoder};

use crate::stats::{ModelStats, StatsRegistry};

/// Inference counters of every model version, as Triton names them.
struct InferenceCollector {
    /// Where the counters live.
    stats: Arc<StatsRegistry>,
    /// Descriptions of the families this collector yields.
    descs: Vec<Desc>,
}

/// (name, help, is a counter) of each family the inference collector yields.
const FAMILIES: &[(&str, &str, bool)] = &[
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        true,
    ),
    (
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        true,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        true,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        true,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        true,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        true,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        true,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        true,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds",
        true,
    ),
    (
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model",
        false,
    ),
    (
        "nv_cache_num_hits_per_model",
        "Number of response cache hits per model",
        true,
    ),
    (
        "nv_cache_num_misses_per_model",
        "Number of response cache misses per model",
        true,
    ),
    (
        "nv_cache_hit_duration_per_model",
        "Total response cache hit duration per model, in microseconds",
        true,
    ),
    (
        "nv_cache_miss_duration_per_model",
        "Total response cache miss (lookup and insertion) duration per model, in microseconds",
        true,
    ),
    (
        "ferrum_model_memory_bytes",
        "Resident memory of a model version's isolated instance processes (isolated models only)",
        false,
    ),
    (
        "ferrum_sequences_active",
        "Open sequences of a sequence-batched model (started, neither ended nor released idle)",
        false,
    ),
    (
        "ferrum_sequences_started_total",
        "Sequences started (a request with the START flag)",
        true,
    ),
    (
        "ferrum_sequences_ended_total",
        "Sequences ended by a request with the END flag",
        true,
    ),
    (
        "ferrum_sequences_timed_out_total",
        "Sequences released after max_sequence_idle_microseconds without a request",
        true,
    ),
];

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

fn sample(labels: Vec<LabelPair>, value: f64, counter: bool) -> Metric {
    let mut metric = Metric::from_label(labels);
    if counter {
        let mut c = Counter::default();
        c.set_value(value);
        metric.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        metric.set_gauge(g);
    }
    metric
}

fn model_labels(stats: &ModelStats) -> Vec<LabelPair> {
    vec![
        label("model", &stats.name),
        label("version", &stats.version.to_string()),
    ]
}

impl InferenceCollector {
    fn new(stats: Arc<StatsRegistry>) -> prometheus::Result<Self> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _)| {
                let mut labels = vec!["model".to_string(), "version".to_string()];
                if *name == "nv_inference_request_failure" {
                    labels.push("reason".to_string());
                }
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels,
                    Default::default(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(InferenceCollector { stats, descs })
    }
}

impl Collector for InferenceCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let models = self.stats.all();
        let us = |ns: u64| (ns / 1000) as f64;
        FAMILIES
            .iter()
            .map(|&(name, help, counter)| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(if counter {
                    MetricType::COUNTER
                } else {
                    MetricType::GAUGE
                });
                let mut metrics = Vec::new();
                for m in &models {
                    let sequences = &m.sequences;
                    if name.starts_with("ferrum_sequences") && !sequences.enabled() {
                        continue;
                    }
                    let count = |c: &std::sync::atomic::AtomicU64| {
                        c.load(std::sync::atomic::Ordering::Relaxed) as f64
                    };
                    let value = match name {
                        "ferrum_model_memory_bytes" => match m.isolated_memory() {
                            Some(bytes) => bytes as f64,
                            None => continue,
                        },
                        "ferrum_sequences_active" => sequences.active() as f64,
                        "ferrum_sequences_started_total" => count(&sequences.started),
                        "ferrum_sequences_ended_total" => count(&sequences.ended),
                        "ferrum_sequences_timed_out_total" => count(&sequences.timed_out),
                        "nv_cache_num_hits_per_model"
                        | "nv_cache_num_misses_per_model"
                        | "nv_cache_hit_duration_per_model"
                        | "nv_cache_miss_duration_per_model" => {
                            if !m.caches() {
                                continue;
                            }
                            match name {
                                "nv_cache_num_hits_per_model" => m.cache_hit.get().0 as f64,
                                "nv_cache_num_misses_per_model" => m.cache_miss.get().0 as f64,
                                "nv_cache_hit_duration_per_model" => us(m.cache_hit.get().1),
                                _ => us(m.cache_miss.get().1),
                            }
                        }
                        "nv_inference_request_success" => m.success.get().0 as f64,
                        "nv_inference_request_failure" => {
                            let failures = m.failures();
                            for reason in [
                                crate::stats::FailureReason::Rejected,
                                crate::stats::FailureReason::Canceled,
                                crate::stats::FailureReason::Backend,
                                crate::stats::FailureReason::Other,
                            ] {
                                let mut labels = model_labels(m);
                                labels.push(label("reason", reason.as_str()));
                                let n = failures.get(&reason).copied().unwrap_or(0);
                                metrics.push(sample(labels, n as f64, true));
                            }
                            continue;
                        }
                        "nv_inference_count" => {
                            m.inference_count.load(std::sync::atomic::Ordering::Relaxed) as f64
                        }
                        "nv_inference_exec_count" => {
                            m.execution_count.load(std::sync::atomic::Ordering::Relaxed) as f64
                        }
                        "nv_inference_request_duration_us" => {
                            us(m.success.get().1 + m.fail.get().1)
                        }
                        "nv_inference_queue_duration_us" => us(m.queue.get().1),
                        "nv_inference_compute_input_duration_us" => us(m.compute_input.get().1),
                        "nv_inference_compute_infer_duration_us" => us(m.compute_infer.get().1),
                        "nv_inference_compute_output_duration_us" => us(m.compute_output.get().1),
                        _ => m.pending.load(std::sync::atomic::Ordering::Relaxed).max(0) as f64,
                    };
                    metrics.push(sample(model_labels(m), value, counter));
                }
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

/// The server's metrics registry and what feeds it.
pub struct ServerMetrics {
    /// Everything `/metrics` serves.
    registry: Registry,
    /// Request latency histogram, when `histogram_latencies=true`.
    histogram: Option<HistogramVec>,
}

impl ServerMetrics {
    /// Builds the registry over the model statistics; starts the system sampler on the
    /// current async runtime.
    pub fn new(
        stats: Arc<StatsRegistry>,
        interval: Duration,
        histograms: bool,
    ) -> prometheus::Result<Self> {
        let registry = Registry::new();
        registry.register(Box::new(InferenceCollector::new(stats)?))?;
        system::register(&registry, interval)?;
        let histogram = if histograms {
            let opts = HistogramOpts::new(
                "nv_inference_first_response_histogram_ms",
                "Duration from request to first response in milliseconds",
            )
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
            ]);
            let h = HistogramVec::new(opts, &["model", "version"])?;
            registry.register(Box::new(h.clone()))?;
            Some(h)
        } else {
            None
        };
        Ok(ServerMetrics {
            registry,
            histogram,
        })
    }

    /// Records a request's time to its response in the latency histogram (when enabled).
    pub fn observe_latency(&self, model: &str, version: i64, latency: Duration) {
        if let Some(h) = &self.histogram {
            h.with_label_values(&[model, &version.to_string()])
                .observe(latency.as_secs_f64() * 1000.0);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
