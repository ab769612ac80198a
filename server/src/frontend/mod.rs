//! The wire protocols: each frontend translates its wire format to the core's requests and
//! back, and holds no rules of its own.

pub mod grpc;
pub mod http;
mod tensor_json;

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::stats::ModelStats;

/// A model version's statistics in the statistics extension's JSON shape.
pub fn stats_json(stats: &ModelStats) -> Value {
    let tally = |t: &crate::stats::Tally| {
        let (count, ns) = t.get();
        json!({ "count": count, "ns": ns })
    };
    let batches: Vec<Value> = stats
        .batches()
        .into_iter()
        .map(|(size, b)| {
            json!({
                "batch_size": size,
                "compute_input": { "count": b.count, "ns": b.input_ns },
                "compute_infer": { "count": b.count, "ns": b.infer_ns },
                "compute_output": { "count": b.count, "ns": b.output_ns },
            })
        })
        .collect();
    json!({
        "name": stats.name,
        "version": stats.version.to_string(),
        "last_inference": stats.last_inference_ms.load(Ordering::Relaxed),
        "inference_count": stats.inference_count.load(Ordering::Relaxed),
        "execution_count": stats.execution_count.load(Ordering::Relaxed),
        "inference_stats": {
            "success": tally(&stats.success),
            "fail": tally(&stats.fail),
            "queue": tally(&stats.queue),
            "compute_input": tally(&stats.compute_input),
            "compute_infer": tally(&stats.compute_infer),
            "compute_output": tally(&stats.compute_output),
            "cache_hit": { "count": 0, "ns": 0 },
            "cache_miss": { "count": 0, "ns": 0 },
        },
        "batch_stats": batches,
        "memory_usage": [],
    })
}
