//! Per-model request counters, served in Prometheus text format with Triton's metric names.

use std::collections::BTreeMap;
use std::fmt::Write;

use parking_lot::Mutex;

/// Counters of one model version.
#[derive(Default, Clone, Copy)]
struct Counters {
    /// Successful requests.
    success: u64,
    /// Failed requests.
    failure: u64,
}

/// The server's request counters.
#[derive(Default)]
pub struct Metrics {
    /// Counters by (model, version).
    models: Mutex<BTreeMap<(String, String), Counters>>,
}

impl Metrics {
    /// Counts one request's outcome.
    pub fn record(&self, model: &str, version: &str, success: bool) {
        let mut models = self.models.lock();
        let counters = models
            .entry((model.to_string(), version.to_string()))
            .or_default();
        if success {
            counters.success += 1;
        } else {
            counters.failure += 1;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let models = self.models.lock();
        let mut out = String::new();
        let families = [
            (
                "nv_inference_request_success",
                "Number of successful inference requests",
                true,
            ),
            (
                "nv_inference_request_failure",
                "Number of failed inference requests",
                false,
            ),
        ];
        for (name, help, success) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((model, version), c) in models.iter() {
                let value = if success { c.success } else { c.failure };
                let _ = writeln!(
                    out,
                    "{name}{{model=\"{model}\",version=\"{version}\"}} {value}"
                );
            }
        }
        out
    }
}
