//! The `python` backend: runs Triton Python backend models (`model.py` with a
//! `TritonPythonModel` class and `import triton_python_backend_utils as pb_utils`) unchanged,
//! in a CPython interpreter embedded in the plugin.
//!
//! The plugin starts one interpreter per process. Instances of a model should run in child
//! processes (`ferrum.isolation: process`), which gives each its own interpreter and GIL and
//! keeps a crashing interpreter away from the server; in the server's process they share one.

mod interp;
mod native;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferrum_backend_api::prelude::*;
use ferrum_backend_api::{ErrorCode, InstanceKind};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::native::{PyRequest, Shared};

/// The model file loaded when the config names no `default_model_filename`.
const DEFAULT_MODEL_FILE: &str = "model.py";

/// The model parameter naming a model's virtual environment, as in Triton.
const ENV_PARAMETER: &str = "EXECUTION_ENV_PATH";

/// `--backend-config python,<key>=<value>` keys this backend reads.
const ENV_KEY: &str = "execution-env-path";

/// Keys Triton's Python backend accepts (its shared-memory and stub settings) or the server
/// adds; they have no meaning here and are ignored without a warning.
const IGNORED_KEYS: &[&str] = &[
    "cmdline",
    "backend-directory",
    "min-compute-capability",
    "default-max-batch-size",
    "shm-default-byte-size",
    "shm-growth-byte-size",
    "shm-message-queue-size",
    "stub-timeout-seconds",
    "platform-handlers",
];

/// Gives every module loaded from a model file its own name.
static MODULE_SERIAL: AtomicU64 = AtomicU64::new(0);

/// The backend: one per library (and process).
struct PythonBackend {
    /// The folder the plugin was loaded from (pb_utils and the bundled packages live there).
    directory: Option<PathBuf>,
    /// The execution environment of models that name none (`execution-env-path`).
    default_env: Option<PathBuf>,
}

impl Backend for PythonBackend {
    type Model = PythonModel;

    fn new(config: &serde_json::Value) -> Result<Self, BackendError> {
        let directory = config
            .get("backend_directory")
            .and_then(|d| d.as_str())
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let mut default_env = None;
        if let Some(cmdline) = config.get("cmdline").and_then(|c| c.as_object()) {
            for (key, value) in cmdline {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if key == ENV_KEY || key == "execution_env_path" {
                    default_env = Some(PathBuf::from(text)).filter(|p| !p.as_os_str().is_empty());
                } else if !IGNORED_KEYS.contains(&key.as_str()) {
                    ferrum_backend_api::log(
                        LogLevel::WARN,
                        &format!("python backend: unknown --backend-config key '{key}' ignored"),
                    );
                }
            }
        }
        // The interpreter starts when a model first needs it: a server whose python models
        // all run isolated never starts one itself.
        Ok(PythonBackend {
            directory,
            default_env,
        })
    }

    fn describe(&self) -> String {
        interp::describe()
    }

    fn load_model(&self, ctx: &ModelContext) -> Result<PythonModel, BackendError> {
        let file = model_file(ctx);
        if !file.is_file() {
            return Err(BackendError::not_found(format!(
                "python model '{}' version {} has no model file {}",
                ctx.name,
                ctx.version,
                file.display()
            )));
        }
        Ok(PythonModel {
            name: ctx.name.clone(),
            version: ctx.version,
            config_json: ctx.config.to_string(),
            model_path: ctx.model_path.clone(),
            version_path: ctx.version_path.clone(),
            file,
            env: self.environment(ctx),
            decoupled: ctx.is_decoupled(),
            directory: self.directory.clone(),
        })
    }

    /// Calls the model class's static `auto_complete_config(pb_utils.ModelConfig)`, when it
    /// has one, and returns the config it completed.
    fn auto_complete_config(
        &self,
        ctx: &ModelContext,
    ) -> Result<Option<serde_json::Value>, BackendError> {
        let file = model_file(ctx);
        // Only a model class that has the method is imported here, in the server's process:
        // running a model file's top level (its imports) is kept for its instances.
        let source = std::fs::read_to_string(&file).unwrap_or_default();
        if !source.contains("auto_complete_config") {
            return Ok(None);
        }
        interp::start(self.directory.as_deref())?;
        let env = self.environment(ctx);
        let mut config = ctx.config.clone();
        if config
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .is_empty()
            && let Some(map) = config.as_object_mut()
        {
            map.insert("name".into(), ctx.name.clone().into());
        }
        let completed = Python::attach(|py| -> Result<Option<String>, BackendError> {
            prepare(py, env.as_deref(), &ctx.version_path)?;
            let fail = |e: PyErr| {
                let line = interp::error_line(&e);
                interp::log_traceback(
                    &format!(
                        "auto_complete_config of python model '{}' failed:",
                        ctx.name
                    ),
                    &e,
                );
                BackendError::invalid_argument(format!(
                    "auto_complete_config of python model '{}' failed: {line}",
                    ctx.name
                ))
            };
            let name = format!(
                "_ferrum_autocomplete_{}",
                MODULE_SERIAL.fetch_add(1, Ordering::Relaxed)
            );
            let result = (|| -> PyResult<Option<String>> {
                let module = interp::load_file(py, &file, &name)?;
                let class = module.getattr("TritonPythonModel")?;
                if !class.hasattr("auto_complete_config")? {
                    return Ok(None);
                }
                interp::utils(py)?
                    .getattr("_ferrum_auto_complete")?
                    .call1((class, config.to_string()))?
                    .extract::<Option<String>>()
            })();
            let _ = py
                .import("sys")
                .and_then(|sys| sys.getattr("modules"))
                .and_then(|m| m.del_item(&name));
            result.map_err(fail)
        })?;
        match completed {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json).map(Some).map_err(|e| {
                BackendError::internal(format!(
                    "auto_complete_config of python model '{}' gave a config that is not JSON: {e}",
                    ctx.name
                ))
            }),
        }
    }
}

impl PythonBackend {
    /// The execution environment a model runs in, if any.
    fn environment(&self, ctx: &ModelContext) -> Option<PathBuf> {
        interp::environment_of(
            ctx.parameter(ENV_PARAMETER),
            &ctx.model_path,
            self.default_env.as_deref(),
        )
    }
}

/// The file a model version loads: the config's `default_model_filename`, or `model.py`.
fn model_file(ctx: &ModelContext) -> PathBuf {
    let name = ctx
        .config
        .get("default_model_filename")
        .and_then(|f| f.as_str())
        .filter(|f| !f.is_empty())
        .unwrap_or(DEFAULT_MODEL_FILE);
    ctx.version_path.join(name)
}

/// Makes the interpreter ready for a model: its environment and version folder on the
/// module search path, then `pb_utils` imported (it imports numpy, which the environment may
/// provide).
fn prepare(py: Python<'_>, env: Option<&Path>, version_path: &Path) -> Result<(), BackendError> {
    if let Some(env) = env {
        interp::add_environment(py, env)?;
    }
    interp::add_path(py, version_path)
        .and_then(|()| interp::utils(py).map(drop))
        .map_err(|e| {
            interp::log_traceback("python backend: cannot import pb_utils:", &e);
            BackendError::internal(format!(
                "cannot import {}: {} (the interpreter needs numpy: name a virtual environment \
                 that has it with the EXECUTION_ENV_PATH model parameter or \
                 --backend-config python,{ENV_KEY}=<folder>)",
                interp::UTILS,
                interp::error_line(&e)
            ))
        })
}

/// A loaded model version: what its instances need to start.
struct PythonModel {
    /// Model name.
    name: String,
    /// Version number.
    version: i64,
    /// The model config as JSON text, as `initialize` receives it.
    config_json: String,
    /// The model's folder.
    model_path: PathBuf,
    /// The version folder.
    version_path: PathBuf,
    /// The model file.
    file: PathBuf,
    /// The execution environment, if any.
    env: Option<PathBuf>,
    /// Whether the model is decoupled.
    decoupled: bool,
    /// The plugin's folder.
    directory: Option<PathBuf>,
}

impl Model for PythonModel {
    type Instance = PythonInstance;

    fn create_instance(&self, ctx: &InstanceContext) -> Result<PythonInstance, BackendError> {
        let kind = match ctx.kind {
            InstanceKind::GPU => "GPU",
            InstanceKind::CPU => "CPU",
            InstanceKind::MODEL => "MODEL",
            _ => "AUTO",
        };
        interp::start(self.directory.as_deref())?;
        Python::attach(|py| -> Result<PythonInstance, BackendError> {
            prepare(py, self.env.as_deref(), &self.version_path)?;
            let module_name = format!(
                "_ferrum_model_{}",
                MODULE_SERIAL.fetch_add(1, Ordering::Relaxed)
            );
            let created = (|| -> PyResult<(Py<PyAny>, Py<PyAny>)> {
                let module = interp::load_file(py, &self.file, &module_name)?;
                let model = module.getattr("TritonPythonModel")?.call0()?;
                if model.hasattr("initialize")? {
                    let args = PyDict::new(py);
                    args.set_item("model_config", &self.config_json)?;
                    args.set_item("model_instance_kind", kind)?;
                    args.set_item("model_instance_name", &ctx.name)?;
                    args.set_item("model_instance_device_id", ctx.device_id.to_string())?;
                    args.set_item("model_repository", self.model_path.to_string_lossy())?;
                    args.set_item("model_version", self.version.to_string())?;
                    args.set_item("model_name", &self.name)?;
                    model.call_method1("initialize", (args,))?;
                }
                let runner = interp::utils(py)?.getattr("_ferrum_execute")?;
                Ok((model.unbind(), runner.unbind()))
            })();
            let (model, runner) = created.map_err(|e| {
                interp::log_traceback(
                    &format!(
                        "python model '{}' instance '{}' failed to initialize:",
                        self.name, ctx.name
                    ),
                    &e,
                );
                BackendError::internal(format!(
                    "python model '{}' failed to initialize: {}",
                    self.name,
                    interp::error_line(&e)
                ))
            })?;
            Ok(PythonInstance {
                model: Some(model),
                runner: Some(runner),
                name: ctx.name.clone(),
                model_name: self.name.clone(),
                decoupled: self.decoupled,
            })
        })
    }
}

/// One instance: a `TritonPythonModel` object.
struct PythonInstance {
    /// The model object; none once finalized.
    model: Option<Py<PyAny>>,
    /// `pb_utils._ferrum_execute`, which runs a batch and sends its responses.
    runner: Option<Py<PyAny>>,
    /// Instance name.
    name: String,
    /// Model name.
    model_name: String,
    /// Whether the model is decoupled.
    decoupled: bool,
}

impl Instance for PythonInstance {
    /// Hands the batch to the model's `execute` (through `pb_utils`, which sends what it
    /// returns); if that machinery itself fails, every request still open gets the error.
    fn execute(&mut self, requests: Vec<Request>) -> Result<(), BackendError> {
        let shared: Vec<Arc<Shared>> = requests.into_iter().map(Shared::new).collect();
        let (Some(model), Some(runner)) = (&self.model, &self.runner) else {
            return Err(BackendError::unavailable("the python model was finalized"));
        };
        let result = Python::attach(|py| -> PyResult<()> {
            let handles = PyList::empty(py);
            for s in &shared {
                handles.append(Bound::new(py, PyRequest::new(Arc::clone(s)))?)?;
            }
            runner
                .bind(py)
                .call1((model.bind(py), handles, self.decoupled, &self.name))?;
            Ok(())
        });
        if let Err(e) = result {
            interp::log_traceback(
                &format!(
                    "python model '{}' instance '{}' failed to run a batch:",
                    self.model_name, self.name
                ),
                &e,
            );
            let message = format!(
                "Failed to process the request(s) for model instance '{}', message: {}",
                self.name,
                interp::error_line(&e)
            );
            for s in &shared {
                s.fail(BackendError::new(ErrorCode::INTERNAL, message.clone()));
            }
        }
        Ok(())
    }
}

impl Drop for PythonInstance {
    /// Calls the model's `finalize`, if it has one.
    fn drop(&mut self) {
        let (model, runner) = (self.model.take(), self.runner.take());
        let _ = Python::try_attach(|py| {
            if let Some(model) = model {
                let model = model.into_bound(py);
                let finalized = model.hasattr("finalize").and_then(|has| {
                    if has {
                        model.call_method0("finalize").map(drop)
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = finalized {
                    interp::log_traceback(
                        &format!(
                            "finalize of python model '{}' instance '{}' failed:",
                            self.model_name, self.name
                        ),
                        &e,
                    );
                }
            }
            drop(runner);
        });
    }
}

export_backend!(PythonBackend);
