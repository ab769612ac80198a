//! The OpenTelemetry span exporter: posts the tracer's OTLP/HTTP JSON bodies to the
//! collector with ureq.

use std::time::Duration;

use ferrum_core::trace::SpanExporter;
use serde_json::Value;

/// Posts spans over HTTP, each with a 5 s timeout.
pub struct OtlpHttpExporter {
    /// The HTTP client.
    agent: ureq::Agent,
}

impl Default for OtlpHttpExporter {
    fn default() -> Self {
        OtlpHttpExporter {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(5))
                .build(),
        }
    }
}

impl SpanExporter for OtlpHttpExporter {
    fn export(&self, url: &str, body: &Value) -> Result<(), String> {
        self.agent
            .post(url)
            .send_json(body)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
