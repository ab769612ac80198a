//! The server log: `tracing` events written human-readable (default, ISO8601 timestamps) or
//! as JSON lines, to stderr or `--log-file`, filtered by Triton's switches
//! (`--log-info/--log-warning/--log-error`, `--log-verbose N`). Every switch can be changed
//! at run time through the logging extension.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry, filter, fmt, reload};

use crate::error::{Error, Result};

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The log switches, read on every event.
pub struct LogSettings {
    /// Write INFO events.
    info: AtomicBool,
    /// Write WARN events.
    warning: AtomicBool,
    /// Write ERROR events.
    error: AtomicBool,
    /// 0: no detail; 1: DEBUG; 2 and more: TRACE (the server's own events).
    verbose: AtomicU32,
    /// `default`, `ISO8601` or `json`.
    format: Mutex<String>,
    /// Log file path; empty for stderr.
    file: Mutex<String>,
    /// Swaps the output layer when the format or file changes.
    reload: Mutex<Option<reload::Handle<BoxedLayer, Registry>>>,
}

impl LogSettings {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        let ours = meta.target().starts_with("ferrum");
        match *meta.level() {
            Level::ERROR => self.error.load(Ordering::Relaxed),
            Level::WARN => self.warning.load(Ordering::Relaxed),
            Level::INFO => self.info.load(Ordering::Relaxed),
            Level::DEBUG => ours && self.verbose.load(Ordering::Relaxed) >= 1,
            _ => ours && self.verbose.load(Ordering::Relaxed) >= 2,
        }
    }

    /// The settings as the logging extension reports them.
    pub fn to_json(&self) -> Value {
        json!({
            "log_file": *self.file.lock(),
            "log_info": self.info.load(Ordering::Relaxed),
            "log_warning": self.warning.load(Ordering::Relaxed),
            "log_error": self.error.load(Ordering::Relaxed),
            "log_verbose_level": self.verbose.load(Ordering::Relaxed),
            "log_format": *self.format.lock(),
        })
    }

    /// Applies changes given as the logging extension's JSON object; all or nothing.
    pub fn update(&self, changes: &serde_json::Map<String, Value>) -> Result<Value> {
        let bool_of = |key: &str, v: &Value| {
            v.as_bool()
                .ok_or_else(|| Error::invalid(format!("logging setting '{key}' must be a boolean")))
        };
        let mut format = self.format.lock().clone();
        let mut file = self.file.lock().clone();
        let mut switches = Vec::new();
        for (key, value) in changes {
            match key.as_str() {
                "log_info" | "log_warning" | "log_error" => {
                    switches.push((key.as_str(), bool_of(key, value)?))
                }
                "log_verbose_level" => {
                    let level = value
                        .as_u64()
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(|| {
                            Error::invalid("log_verbose_level must be a non-negative integer")
                        })?;
                    switches.push(("log_verbose_level", level > 0));
                    self.verbose.store(level, Ordering::Relaxed);
                }
                "log_format" => {
                    let f = value
                        .as_str()
                        .ok_or_else(|| Error::invalid("log_format must be a string"))?;
                    if !["default", "ISO8601", "json"].contains(&f) {
                        return Err(Error::invalid(format!(
                            "log_format must be default, ISO8601 or json, not '{f}'"
                        )));
                    }
                    format = f.to_string();
                }
                "log_file" => {
                    file = value
                        .as_str()
                        .ok_or_else(|| Error::invalid("log_file must be a string"))?
                        .to_string();
                }
                other => return Err(Error::invalid(format!("unknown logging setting '{other}'"))),
            }
        }
        if format != *self.format.lock() || file != *self.file.lock() {
            let layer = output_layer(&format, &file)?;
            if let Some(handle) = self.reload.lock().as_ref() {
                handle
                    .reload(layer)
                    .map_err(|e| Error::internal(format!("cannot switch the log output: {e}")))?;
            }
            *self.format.lock() = format;
            *self.file.lock() = file;
        }
        for (key, on) in switches {
            match key {
                "log_info" => self.info.store(on, Ordering::Relaxed),
                "log_warning" => self.warning.store(on, Ordering::Relaxed),
                "log_error" => self.error.store(on, Ordering::Relaxed),
                _ => {}
            }
        }
        Ok(self.to_json())
    }
}

/// The layer that formats and writes events.
fn output_layer(format: &str, file: &str) -> Result<BoxedLayer> {
    let writer = if file.is_empty() {
        fmt::writer::BoxMakeWriter::new(std::io::stderr)
    } else {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map_err(|e| Error::invalid(format!("cannot open log file '{file}': {e}")))?;
        fmt::writer::BoxMakeWriter::new(Arc::new(f))
    };
    let ansi = file.is_empty() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    Ok(match format {
        "json" => fmt::layer().json().with_writer(writer).boxed(),
        _ => fmt::layer().with_ansi(ansi).with_writer(writer).boxed(),
    })
}

/// Sets up the global logger; returns the switches the logging extension changes.
pub fn init(
    info: bool,
    warning: bool,
    error: bool,
    verbose: u32,
    format: &str,
    file: &str,
) -> Result<Arc<LogSettings>> {
    let settings = Arc::new(LogSettings {
        info: AtomicBool::new(info),
        warning: AtomicBool::new(warning),
        error: AtomicBool::new(error),
        verbose: AtomicU32::new(verbose),
        format: Mutex::new(format.to_string()),
        file: Mutex::new(file.to_string()),
        reload: Mutex::new(None),
    });
    let (layer, handle) = reload::Layer::new(output_layer(format, file)?);
    let reader = Arc::clone(&settings);
    let filtered = layer.with_filter(filter::filter_fn(move |meta| reader.enabled(meta)));
    let env = std::env::var("FERRUM_LOG")
        .ok()
        .map(tracing_subscriber::EnvFilter::new);
    tracing_subscriber::registry()
        .with(filtered)
        .with(env)
        .try_init()
        .map_err(|e| Error::internal(format!("cannot set up logging: {e}")))?;
    *settings.reload.lock() = Some(handle);
    Ok(settings)
}
