//! Settings: the backend's `--backend-config onnxruntime,...` values and a model config's
//! `parameters` / `optimization`, turned into ONNX Runtime session options.

use std::path::{Path, PathBuf};

use ferrum_backend_api::{BackendError, LogLevel, log};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use serde_json::Value;

use crate::runtime::LIBRARY_KEY;

/// Triton's default for `default-max-batch-size`.
pub const DEFAULT_MAX_BATCH_SIZE: i64 = 4;

/// Session settings a model can set; each `None` leaves ONNX Runtime's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionSettings {
    /// Threads inside one operator (`intra_op_thread_count`); 0 lets ONNX Runtime pick.
    pub intra_op_threads: Option<usize>,
    /// Threads across operators in parallel mode (`inter_op_thread_count`).
    pub inter_op_threads: Option<usize>,
    /// Parallel (`execution_mode` 1) rather than sequential (0) execution.
    pub parallel: Option<bool>,
    /// Graph optimization level (`optimization { graph { level } }`).
    pub optimization: Option<OptLevel>,
    /// CPU memory arena (`enable_mem_arena`).
    pub mem_arena: Option<bool>,
    /// Memory pattern optimization (`enable_mem_pattern`).
    pub mem_pattern: Option<bool>,
    /// Raw session config entries (parameters whose key starts with `session.`).
    pub config_entries: Vec<(String, String)>,
}

/// Triton's graph optimization levels: -1 basic, 1 extended, 2 none, anything else all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptLevel {
    /// No graph optimization (Triton level 2).
    Disabled,
    /// Basic rewrites only (Triton level -1).
    Basic,
    /// Basic plus extended fusions (Triton level 1).
    Extended,
    /// Everything, layout optimizations included (Triton level 0, the default).
    All,
}

impl OptLevel {
    /// Maps Triton's `optimization.graph.level` number.
    pub fn from_triton(level: i64) -> OptLevel {
        match level {
            -1 => OptLevel::Basic,
            1 => OptLevel::Extended,
            2 => OptLevel::Disabled,
            _ => OptLevel::All,
        }
    }

    /// The `ort` level.
    fn ort(self) -> GraphOptimizationLevel {
        match self {
            OptLevel::Disabled => GraphOptimizationLevel::Disable,
            OptLevel::Basic => GraphOptimizationLevel::Level1,
            OptLevel::Extended => GraphOptimizationLevel::Level2,
            OptLevel::All => GraphOptimizationLevel::All,
        }
    }
}

/// What the backend took from its `--backend-config onnxruntime,key=value` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSettings {
    /// Folder the plugin was loaded from.
    pub backend_directory: Option<PathBuf>,
    /// `runtime-library`: the ONNX Runtime library (or its folder).
    pub runtime_library: Option<String>,
    /// `default-max-batch-size`: what auto-complete gives a model that can batch.
    pub default_max_batch_size: i64,
    /// Session defaults every model starts from (`intra_op_thread_count`, ...).
    pub session_defaults: SessionSettings,
}

/// Backend-config keys this backend understands (others are reported and ignored).
const BACKEND_KEYS: &[&str] = &[
    LIBRARY_KEY,
    "default-max-batch-size",
    "intra_op_thread_count",
    "inter_op_thread_count",
    "execution_mode",
    "enable_mem_arena",
    "enable_mem_pattern",
];

/// Keys the server itself adds to every backend's settings; not ours to complain about.
const SERVER_KEYS: &[&str] = &["cmdline", "backend-directory", "min-compute-capability"];

impl BackendSettings {
    /// Reads the object the server hands to `Backend::new`.
    pub fn from_config(config: &Value) -> Result<BackendSettings, BackendError> {
        let backend_directory = config
            .get("backend_directory")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let cmdline = config.get("cmdline").and_then(Value::as_object);
        let get = |key: &str| -> Option<String> {
            cmdline.and_then(|m| m.get(key)).and_then(scalar_text)
        };
        if let Some(map) = cmdline {
            for key in map.keys() {
                if !BACKEND_KEYS.contains(&key.as_str()) && !SERVER_KEYS.contains(&key.as_str()) {
                    log(
                        LogLevel::WARN,
                        &format!(
                            "onnxruntime backend: unknown --backend-config key '{key}' ignored"
                        ),
                    );
                }
            }
        }
        let default_max_batch_size = match get("default-max-batch-size") {
            Some(v) => parse_int("--backend-config onnxruntime,default-max-batch-size", &v)?.max(0),
            None => DEFAULT_MAX_BATCH_SIZE,
        };
        let what = |key: &str| format!("--backend-config onnxruntime,{key}");
        let mut defaults = SessionSettings::default();
        apply_session_values(&mut defaults, &get, &what)?;
        Ok(BackendSettings {
            backend_directory,
            runtime_library: get(LIBRARY_KEY),
            default_max_batch_size,
            session_defaults: defaults,
        })
    }
}

/// A JSON scalar as text (settings arrive as strings, but numbers are accepted too).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An integer setting.
fn parse_int(what: &str, text: &str) -> Result<i64, BackendError> {
    text.trim().parse::<i64>().map_err(|_| {
        BackendError::invalid_argument(format!("{what} must be an integer, not '{text}'"))
    })
}

/// A non-negative integer setting.
fn parse_count(what: &str, text: &str) -> Result<usize, BackendError> {
    let n = parse_int(what, text)?;
    usize::try_from(n)
        .map_err(|_| BackendError::invalid_argument(format!("{what} must be 0 or more, not {n}")))
}

/// A 0/1 (or true/false) setting.
fn parse_bool(what: &str, text: &str) -> Result<bool, BackendError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(BackendError::invalid_argument(format!(
            "{what} must be 0/1 or true/false, not '{text}'"
        ))),
    }
}

/// Reads the keys shared by backend and model settings through `get`.
fn apply_session_values(
    s: &mut SessionSettings,
    get: &dyn Fn(&str) -> Option<String>,
    what: &dyn Fn(&str) -> String,
) -> Result<(), BackendError> {
    if let Some(v) = get("intra_op_thread_count") {
        s.intra_op_threads = Some(parse_count(&what("intra_op_thread_count"), &v)?);
    }
    if let Some(v) = get("inter_op_thread_count") {
        s.inter_op_threads = Some(parse_count(&what("inter_op_thread_count"), &v)?);
    }
    if let Some(v) = get("execution_mode") {
        s.parallel = Some(match parse_int(&what("execution_mode"), &v)? {
            0 => false,
            1 => true,
            other => {
                return Err(BackendError::invalid_argument(format!(
                    "{} must be 0 (sequential) or 1 (parallel), not {other}",
                    what("execution_mode")
                )));
            }
        });
    }
    if let Some(v) = get("enable_mem_arena") {
        s.mem_arena = Some(parse_bool(&what("enable_mem_arena"), &v)?);
    }
    if let Some(v) = get("enable_mem_pattern") {
        s.mem_pattern = Some(parse_bool(&what("enable_mem_pattern"), &v)?);
    }
    Ok(())
}

/// A model config's `parameters { key: ... value: { string_value: ... } }` entry.
fn model_parameter(config: &Value, key: &str) -> Option<String> {
    let entry = config.get("parameters")?.get(key)?;
    match entry.get("string_value") {
        Some(v) => scalar_text(v),
        None => scalar_text(entry),
    }
}

impl SessionSettings {
    /// The backend defaults overridden by a model config's parameters and optimization level.
    pub fn for_model(
        defaults: &SessionSettings,
        config: &Value,
    ) -> Result<SessionSettings, BackendError> {
        let mut s = defaults.clone();
        let get = |key: &str| model_parameter(config, key);
        let what = |key: &str| format!("model config parameter '{key}'");
        apply_session_values(&mut s, &get, &what)?;
        if let Some(params) = config.get("parameters").and_then(Value::as_object) {
            for key in params.keys().filter(|k| k.starts_with("session.")) {
                if let Some(value) = model_parameter(config, key) {
                    s.config_entries.push((key.clone(), value));
                }
            }
        }
        let level = config
            .get("optimization")
            .and_then(|o| o.get("graph"))
            .and_then(|g| g.get("level"));
        if let Some(level) = level {
            let n = match level {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse().ok(),
                Value::Null => None,
                _ => None,
            }
            .ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "model config optimization.graph.level must be an integer, not {level}"
                ))
            })?;
            s.optimization = Some(OptLevel::from_triton(n));
        }
        Ok(s)
    }

    /// A session builder with these settings applied.
    pub fn builder(&self, env: &Environment) -> Result<SessionBuilder, BackendError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            BackendError::internal(format!("ONNX Runtime refused {what}: {e}"))
        };
        let mut b = Session::builder(env).map_err(|e| fail("a session builder", &e))?;
        if let Some(n) = self.intra_op_threads {
            b = b
                .with_intra_threads(n)
                .map_err(|e| fail("intra_op_thread_count", &e))?;
        }
        if let Some(n) = self.inter_op_threads {
            b = b
                .with_inter_threads(n)
                .map_err(|e| fail("inter_op_thread_count", &e))?;
        }
        if let Some(parallel) = self.parallel {
            b = b
                .with_parallel_execution(parallel)
                .map_err(|e| fail("execution_mode", &e))?;
        }
        if let Some(level) = self.optimization {
            b = b
                .with_optimization_level(level.ort())
                .map_err(|e| fail("the graph optimization level", &e))?;
        }
        if let Some(arena) = self.mem_arena {
            let cpu = ort::ep::CPU::default().with_arena_allocator(arena).build();
            b = b
                .with_execution_providers([cpu])
                .map_err(|e| fail("enable_mem_arena", &e))?;
        }
        if let Some(pattern) = self.mem_pattern {
            b = b
                .with_memory_pattern(pattern)
                .map_err(|e| fail("enable_mem_pattern", &e))?;
        }
        for (key, value) in &self.config_entries {
            b = b
                .with_config_entry(key, value)
                .map_err(|e| fail(&format!("session config entry '{key}'"), &e))?;
        }
        Ok(b)
    }

    /// Opens a model file as a session with these settings.
    pub fn open(&self, env: &Environment, model: &Path) -> Result<Session, BackendError> {
        self.builder(env)?.commit_from_file(model).map_err(|e| {
            BackendError::invalid_argument(format!(
                "ONNX Runtime could not load {}: {e}",
                model.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backend_settings_defaults_and_values() {
        let s = BackendSettings::from_config(&json!({"backend_directory": "/b", "cmdline": {}}))
            .unwrap();
        assert_eq!(s.default_max_batch_size, DEFAULT_MAX_BATCH_SIZE);
        assert_eq!(s.backend_directory, Some(PathBuf::from("/b")));
        assert_eq!(s.session_defaults, SessionSettings::default());
        let s = BackendSettings::from_config(&json!({"cmdline": {
            "default-max-batch-size": "16",
            "intra_op_thread_count": "2",
            "execution_mode": "1",
            "runtime-library": "/x/libonnxruntime.so",
        }}))
        .unwrap();
        assert_eq!(s.default_max_batch_size, 16);
        assert_eq!(s.session_defaults.intra_op_threads, Some(2));
        assert_eq!(s.session_defaults.parallel, Some(true));
        assert_eq!(s.runtime_library.as_deref(), Some("/x/libonnxruntime.so"));
    }

    #[test]
    fn bad_backend_values_are_errors() {
        let err =
            BackendSettings::from_config(&json!({"cmdline": {"intra_op_thread_count": "many"}}))
                .unwrap_err();
        assert!(err.message.as_str().contains("intra_op_thread_count"));
        let err =
            BackendSettings::from_config(&json!({"cmdline": {"execution_mode": "3"}})).unwrap_err();
        assert!(err.message.as_str().contains("execution_mode"));
    }

    #[test]
    fn model_parameters_override_backend_defaults() {
        let defaults = SessionSettings {
            intra_op_threads: Some(4),
            inter_op_threads: Some(3),
            ..Default::default()
        };
        let config = json!({
            "parameters": {
                "intra_op_thread_count": {"string_value": "1"},
                "execution_mode": {"string_value": "0"},
                "session.use_deterministic_compute": {"string_value": "1"},
                "unrelated": {"string_value": "x"}
            },
            "optimization": {"graph": {"level": 2}}
        });
        let s = SessionSettings::for_model(&defaults, &config).unwrap();
        assert_eq!(s.intra_op_threads, Some(1));
        assert_eq!(s.inter_op_threads, Some(3));
        assert_eq!(s.parallel, Some(false));
        assert_eq!(s.optimization, Some(OptLevel::Disabled));
        assert_eq!(
            s.config_entries,
            vec![(
                "session.use_deterministic_compute".to_string(),
                "1".to_string()
            )]
        );
    }

    #[test]
    fn optimization_levels_follow_triton() {
        assert_eq!(OptLevel::from_triton(-1), OptLevel::Basic);
        assert_eq!(OptLevel::from_triton(0), OptLevel::All);
        assert_eq!(OptLevel::from_triton(1), OptLevel::Extended);
        assert_eq!(OptLevel::from_triton(2), OptLevel::Disabled);
        let s = SessionSettings::for_model(&SessionSettings::default(), &json!({})).unwrap();
        assert_eq!(s.optimization, None);
    }

    #[test]
    fn bad_model_parameter_names_the_key() {
        let config = json!({"parameters": {"inter_op_thread_count": {"string_value": "-2"}}});
        let err = SessionSettings::for_model(&SessionSettings::default(), &config).unwrap_err();
        assert!(err.message.as_str().contains("inter_op_thread_count"));
    }
}
