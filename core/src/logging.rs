//! The log switches, filtered as Triton's flags say (`--log-info/--log-warning/--log-error`,
//! `--log-verbose N`), with the log format and file. Every switch can be changed at run time
//! through the logging extension. Installing the process's logger is the embedder's job: its
//! filter asks [`LogSettings::enabled`], and it lets the settings switch its format and file
//! through a [`LogOutput`].

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tracing::Level;

use crate::error::{Error, Result};

/// What writes log events: switched to another format or file when the settings change.
pub trait LogOutput: Send + Sync {
    /// Writes from now on in this format (`default`, `ISO8601` or `json`) to this file (empty:
    /// stderr); an error leaves the output as it was.
    fn switch(&self, format: &str, file: &str) -> Result<()>;
}

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
    /// Switches the output when the format or file changes; none until a logger is attached.
    output: Mutex<Option<Box<dyn LogOutput>>>,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings::new(true, true, true, 0, "default", "")
    }
}

impl LogSettings {
    /// Settings with these switches, format and file, not attached to a logger yet.
    pub fn new(
        info: bool,
        warning: bool,
        error: bool,
        verbose: u32,
        format: &str,
        file: &str,
    ) -> Self {
        LogSettings {
            info: AtomicBool::new(info),
            warning: AtomicBool::new(warning),
            error: AtomicBool::new(error),
            verbose: AtomicU32::new(verbose),
            format: Mutex::new(format.to_string()),
            file: Mutex::new(file.to_string()),
            output: Mutex::new(None),
        }
    }

    /// Attaches the logger output that format and file changes switch.
    pub fn set_output(&self, output: Box<dyn LogOutput>) {
        *self.output.lock() = Some(output);
    }

    /// Whether some setting of the switches could let this callsite through (every ERROR,
    /// WARN and INFO; DEBUG and TRACE only for Ferrum's own targets).
    pub fn could_enable(meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() <= Level::INFO || meta.target().starts_with("ferrum")
    }

    /// Whether an event passes the switches (DEBUG and TRACE only for Ferrum's own targets).
    pub fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
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
            if let Some(output) = self.output.lock().as_ref() {
                output.switch(&format, &file)?;
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
