//! Request traces (Triton's trace extension): sampled requests' timestamps, written as
//! Triton's trace JSON to the trace file, and exported as OpenTelemetry spans (OTLP/HTTP
//! JSON) when a collector URL is configured and the embedder gave a [`SpanExporter`] that
//! posts them. Off by default.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::scheduler::RequestTiming;

/// Trace settings, global or for one model (Triton's names and string values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceSettings {
    /// `OFF` or `TIMESTAMPS` (Triton also knows `TENSORS`, which is treated as `TIMESTAMPS`).
    pub level: Vec<String>,
    /// Trace one request out of this many.
    pub rate: u64,
    /// Stop after this many traces (-1: no limit).
    pub count: i64,
    /// Flush the file every this many traces (0: after each; kept for compatibility).
    pub log_frequency: u64,
    /// The trace file (empty: none).
    pub file: String,
    /// `triton` (file) or `opentelemetry` (export to `otel_url`).
    pub mode: String,
    /// OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otel_url: String,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            level: vec!["OFF".to_string()],
            rate: 1000,
            count: -1,
            log_frequency: 0,
            file: String::new(),
            mode: "triton".to_string(),
            otel_url: String::new(),
        }
    }
}

impl TraceSettings {
    fn on(&self) -> bool {
        self.level
            .iter()
            .any(|l| l == "TIMESTAMPS" || l == "TENSORS")
    }

    /// The settings as the trace extension reports them.
    pub fn to_map(&self) -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([
            ("trace_level".to_string(), self.level.clone()),
            ("trace_rate".to_string(), vec![self.rate.to_string()]),
            ("trace_count".to_string(), vec![self.count.to_string()]),
            (
                "log_frequency".to_string(),
                vec![self.log_frequency.to_string()],
            ),
            ("trace_file".to_string(), vec![self.file.clone()]),
            ("trace_mode".to_string(), vec![self.mode.clone()]),
        ])
    }

    /// Applies one setting; `None` means "back to the default" (for a model: the global value).
    pub fn apply(
        &mut self,
        key: &str,
        value: Option<&[String]>,
        fallback: &TraceSettings,
    ) -> Result<()> {
        let one = |v: &[String]| -> Result<String> {
            match v {
                [single] => Ok(single.clone()),
                _ => Err(Error::invalid(format!(
                    "trace setting '{key}' takes one value"
                ))),
            }
        };
        let bad =
            |v: &str| Error::invalid(format!("trace setting '{key}' has an invalid value '{v}'"));
        match (key, value) {
            ("trace_level", None) => self.level = fallback.level.clone(),
            ("trace_level", Some(levels)) => {
                if levels.is_empty()
                    || levels
                        .iter()
                        .any(|l| !["OFF", "TIMESTAMPS", "TENSORS"].contains(&l.as_str()))
                {
                    return Err(Error::invalid(format!(
                        "trace_level must be OFF, TIMESTAMPS or TENSORS, got {levels:?}"
                    )));
                }
                self.level = levels.to_vec();
            }
            ("trace_rate", None) => self.rate = fallback.rate,
            ("trace_rate", Some(v)) => {
                let v = one(v)?;
                self.rate = v.parse().ok().filter(|r| *r > 0).ok_or_else(|| bad(&v))?;
            }
            ("trace_count", None) => self.count = fallback.count,
            ("trace_count", Some(v)) => {
                let v = one(v)?;
                self.count = v.parse().ok().filter(|c| *c >= -1).ok_or_else(|| bad(&v))?;
            }
            ("log_frequency", None) => self.log_frequency = fallback.log_frequency,
            ("log_frequency", Some(v)) => {
                let v = one(v)?;
                self.log_frequency = v.parse().map_err(|_| bad(&v))?;
            }
            ("trace_file", None) => self.file = fallback.file.clone(),
            ("trace_file", Some(v)) => self.file = one(v)?,
            ("trace_mode", None) => self.mode = fallback.mode.clone(),
            ("trace_mode", Some(v)) => {
                let v = one(v)?;
                if v != "triton" && v != "opentelemetry" {
                    return Err(bad(&v));
                }
                self.mode = v;
            }
            (other, _) => return Err(Error::invalid(format!("unknown trace setting '{other}'"))),
        }
        Ok(())
    }
}

/// Delivers OpenTelemetry spans to a collector; the core holds no HTTP client of its own.
pub trait SpanExporter: Send + Sync + 'static {
    /// Posts one OTLP/HTTP JSON body to the collector at `url`; called from the exporter
    /// thread, one span at a time, so it may block.
    fn export(&self, url: &str, body: &Value) -> std::result::Result<(), String>;
}

/// An open trace file kept as a valid JSON array after every write.
struct TraceFile {
    /// The file.
    file: std::fs::File,
    /// Whether an element was written already.
    has_entries: bool,
}

impl TraceFile {
    fn open(path: &str) -> std::io::Result<Self> {
        let mut file = std::fs::File::create(path)?;
        file.write_all(b"[\n]")?;
        Ok(TraceFile {
            file,
            has_entries: false,
        })
    }

    fn append(&mut self, entries: &[Value]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::End(-1))?;
        let mut text = String::new();
        for entry in entries {
            if self.has_entries {
                text.push_str(",\n");
            }
            text.push_str(&entry.to_string());
            self.has_entries = true;
        }
        text.push_str("\n]");
        self.file.write_all(text.as_bytes())?;
        self.file.flush()
    }
}

/// The tracer: settings, sampling, and where traces go.
pub struct Tracer {
    /// Global settings.
    global: Mutex<TraceSettings>,
    /// Per-model settings that differ from the global ones.
    models: Mutex<BTreeMap<String, TraceSettings>>,
    /// Whether any settings (global or a model's) trace at all; read first on every request,
    /// so tracing costs one atomic load when it is off.
    active: AtomicBool,
    /// Requests seen, for the sampling rate.
    seen: AtomicU64,
    /// Traces written, for ids and the count limit.
    written: AtomicU64,
    /// Open trace files by path.
    files: Mutex<BTreeMap<String, TraceFile>>,
    /// Wall-clock time matching `base_instant`, to turn instants into epoch nanoseconds.
    base_ns: u128,
    /// See `base_ns`.
    base_instant: Instant,
    /// Spans waiting for the OpenTelemetry exporter thread.
    otel: Mutex<Option<std::sync::mpsc::SyncSender<(String, Value)>>>,
    /// What posts spans to the collector; without one, OpenTelemetry mode exports nothing.
    exporter: Option<Arc<dyn SpanExporter>>,
}

impl Tracer {
    /// A tracer with these global settings and no OpenTelemetry exporter.
    pub fn new(settings: TraceSettings) -> Self {
        Self::with_exporter(settings, None)
    }

    /// A tracer with these global settings whose OpenTelemetry spans go to `exporter`.
    pub fn with_exporter(settings: TraceSettings, exporter: Option<Arc<dyn SpanExporter>>) -> Self {
        Tracer {
            active: AtomicBool::new(settings.on()),
            global: Mutex::new(settings),
            models: Mutex::new(BTreeMap::new()),
            seen: AtomicU64::new(0),
            written: AtomicU64::new(0),
            files: Mutex::new(BTreeMap::new()),
            base_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
            base_instant: Instant::now(),
            otel: Mutex::new(None),
            exporter,
        }
    }

    /// The settings in force for a model (or the global ones).
    pub fn settings(&self, model: Option<&str>) -> TraceSettings {
        let global = self.global.lock().clone();
        match model {
            Some(m) => self.models.lock().get(m).cloned().unwrap_or(global),
            None => global,
        }
    }

    /// Changes settings; a `None` value resets the key.
    pub fn update(
        &self,
        model: Option<&str>,
        changes: &BTreeMap<String, Option<Vec<String>>>,
    ) -> Result<TraceSettings> {
        let defaults = TraceSettings::default();
        match model {
            None => {
                let mut global = self.global.lock();
                let mut next = global.clone();
                for (key, value) in changes {
                    next.apply(key, value.as_deref(), &defaults)?;
                }
                *global = next.clone();
                let models = self.models.lock();
                self.set_active(&global, &models);
                Ok(next)
            }
            Some(m) => {
                // Both locks, global first as everywhere, for the whole change.
                let global = self.global.lock();
                let mut models = self.models.lock();
                let mut next = models.get(m).cloned().unwrap_or_else(|| global.clone());
                for (key, value) in changes {
                    next.apply(key, value.as_deref(), &global)?;
                }
                models.insert(m.to_string(), next.clone());
                self.set_active(&global, &models);
                Ok(next)
            }
        }
    }

    /// Recomputes whether anything traces. Called with both locks held, so a concurrent
    /// update cannot leave a stale answer.
    fn set_active(&self, global: &TraceSettings, models: &BTreeMap<String, TraceSettings>) {
        let on = global.on() || models.values().any(TraceSettings::on);
        self.active.store(on, Ordering::Release);
    }

    fn ns(&self, at: Instant) -> u128 {
        match at.checked_duration_since(self.base_instant) {
            Some(d) => self.base_ns + d.as_nanos(),
            None => self
                .base_ns
                .saturating_sub(self.base_instant.duration_since(at).as_nanos()),
        }
    }

    /// Records a finished request if it is sampled.
    pub fn record(
        &self,
        model: &str,
        version: i64,
        received: Instant,
        timing: Option<&RequestTiming>,
    ) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let settings = self.settings(Some(model));
        if !settings.on() {
            return;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if !n.is_multiple_of(settings.rate.max(1)) {
            return;
        }
        if settings.count >= 0 && self.written.load(Ordering::Relaxed) >= settings.count as u64 {
            return;
        }
        let id = self.written.fetch_add(1, Ordering::Relaxed) + 1;
        let end = Instant::now();
        let mut stamps = vec![("REQUEST_START", received)];
        if let Some(t) = timing {
            if let Some(start) = t.compute_start {
                stamps.push((
                    "QUEUE_START",
                    start.checked_sub(t.queue).unwrap_or(received).max(received),
                ));
                stamps.push(("COMPUTE_START", start));
                stamps.push(("COMPUTE_INPUT_END", start + t.compute.input));
            }
            if let Some(output_start) = t.compute_output_start {
                stamps.push(("COMPUTE_OUTPUT_START", output_start));
            }
            if let Some(compute_end) = t.compute_end {
                stamps.push(("COMPUTE_END", compute_end));
            }
        }
        stamps.push(("REQUEST_END", end));
        let timestamps: Vec<Value> = stamps
            .iter()
            .map(|(name, at)| json!({ "name": name, "ns": self.ns(*at) as u64 }))
            .collect();
        if settings.mode == "opentelemetry" {
            self.export_span(&settings, id, model, version, &stamps);
            return;
        }
        if settings.file.is_empty() {
            return;
        }
        let entries = [
            json!({ "id": id, "model_name": model, "model_version": version }),
            json!({ "id": id, "timestamps": timestamps }),
        ];
        let mut files = self.files.lock();
        let file = match files.entry(settings.file.clone()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                match TraceFile::open(&settings.file) {
                    Ok(f) => v.insert(f),
                    Err(e) => {
                        tracing::error!("cannot open trace file '{}': {e}", settings.file);
                        return;
                    }
                }
            }
        };
        if let Err(e) = file.append(&entries) {
            tracing::error!("cannot write trace file '{}': {e}", settings.file);
        }
    }

    fn export_span(
        &self,
        settings: &TraceSettings,
        id: u64,
        model: &str,
        version: i64,
        stamps: &[(&str, Instant)],
    ) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        if settings.otel_url.is_empty() {
            return;
        }
        let mut otel = self.otel.lock();
        if otel.is_none() {
            *otel = Some(start_exporter(Arc::clone(exporter)));
        }
        let start = stamps.first().map(|s| self.ns(s.1)).unwrap_or_default();
        let end = stamps.last().map(|s| self.ns(s.1)).unwrap_or_default();
        let trace_id = format!("{:016x}{:016x}", self.base_ns as u64, id);
        let events: Vec<Value> = stamps
            .iter()
            .map(|(name, at)| json!({ "name": name, "timeUnixNano": self.ns(*at).to_string() }))
            .collect();
        let body = json!({
            "resourceSpans": [{
                "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "ferrum" } }] },
                "scopeSpans": [{
                    "scope": { "name": "ferrum" },
                    "spans": [{
                        "traceId": trace_id,
                        "spanId": format!("{id:016x}"),
                        "name": "InferRequest",
                        "kind": 2,
                        "startTimeUnixNano": start.to_string(),
                        "endTimeUnixNano": end.to_string(),
                        "attributes": [
                            { "key": "triton.model_name", "value": { "stringValue": model } },
                            { "key": "triton.model_version", "value": { "intValue": version.to_string() } },
                        ],
                        "events": events,
                    }]
                }]
            }]
        });
        if let Some(tx) = otel.as_ref() {
            // A full queue drops the span rather than slowing requests down.
            let _ = tx.try_send((settings.otel_url.clone(), body));
        }
    }
}

/// Starts the thread that hands spans to the exporter, one at a time.
fn start_exporter(exporter: Arc<dyn SpanExporter>) -> std::sync::mpsc::SyncSender<(String, Value)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, Value)>(1024);
    let spawned = std::thread::Builder::new()
        .name("ferrum-otel".to_string())
        .spawn(move || {
            for (url, body) in rx {
                if let Err(e) = exporter.export(&url, &body) {
                    tracing::warn!("OpenTelemetry export to {url} failed: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the OpenTelemetry exporter: {e}");
    }
    tx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn change(pairs: &[(&str, &str)]) -> BTreeMap<String, Option<Vec<String>>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(vec![v.to_string()])))
            .collect()
    }

    #[test]
    fn a_model_traced_while_the_global_setting_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trace.json");
        let tracer = Tracer::new(TraceSettings::default());
        assert!(!tracer.active.load(Ordering::Acquire), "off by default");
        tracer.record("m", 1, Instant::now(), None);
        assert!(!file.exists());

        let on = change(&[
            ("trace_level", "TIMESTAMPS"),
            ("trace_rate", "1"),
            ("trace_file", file.to_str().unwrap()),
        ]);
        tracer.update(Some("m"), &on).unwrap();
        assert!(tracer.active.load(Ordering::Acquire));
        tracer.record("other", 1, Instant::now(), None);
        tracer.record("m", 1, Instant::now(), None);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("\"model_name\":\"m\""), "{text}");
        assert!(!text.contains("other"), "{text}");

        tracer
            .update(Some("m"), &change(&[("trace_level", "OFF")]))
            .unwrap();
        assert!(
            !tracer.active.load(Ordering::Acquire),
            "off again everywhere"
        );
    }
}
