//! The `onnxruntime` backend: serves ONNX models (`platform: "onnxruntime_onnx"` or
//! `backend: "onnxruntime"`) with ONNX Runtime, opened at run time from the shared library
//! shipped beside this plugin (see `runtime.sh`), named by `--backend-config
//! onnxruntime,runtime-library=<path>` or by `FERRUM_ONNXRUNTIME_LIBRARY`.
//!
//! Each model instance owns one ONNX Runtime session. Configs are completed from the model
//! file (inputs, outputs, `max_batch_size`) the way Triton's ONNX Runtime backend does.

mod autocomplete;
mod execute;
mod model;
mod runtime;
mod settings;
mod tensors;
#[cfg(test)]
mod testing;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferrum_backend_api::prelude::*;
use ferrum_backend_api::{InstanceKind, log};
use ort::environment::Environment;
use ort::session::Session;
use serde_json::Value;

use crate::execute::Runner;
use crate::model::{ModelSpec, io_infos};
use crate::settings::{BackendSettings, OptLevel, SessionSettings};

/// The model file name when the config names none.
const DEFAULT_MODEL_FILENAME: &str = "model.onnx";

/// The backend: the process's ONNX Runtime environment and the backend-wide settings.
struct OrtBackend {
    /// The process's ONNX Runtime environment.
    env: Environment,
    /// What `--backend-config onnxruntime,...` set.
    settings: BackendSettings,
}

/// The model file of a version: the config's `default_model_filename` or `model.onnx`; a folder
/// of that name (a model stored with external data) holds `model.onnx`.
fn model_file(ctx: &ModelContext) -> Result<PathBuf, BackendError> {
    let name = ctx
        .config
        .get("default_model_filename")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_MODEL_FILENAME);
    let path = ctx.version_path.join(name);
    if path.is_dir() {
        let inner = path.join(DEFAULT_MODEL_FILENAME);
        if inner.is_file() {
            return Ok(inner);
        }
    } else if path.is_file() {
        return Ok(path);
    }
    Err(BackendError::not_found(format!(
        "model '{}' version {}: no ONNX model file at {}",
        ctx.name,
        ctx.version,
        path.display()
    )))
}

impl Backend for OrtBackend {
    type Model = OnnxModel;

    fn new(config: &Value) -> Result<Self, BackendError> {
        let settings = BackendSettings::from_config(config)?;
        let (library, source) = runtime::locate(
            settings.runtime_library.as_deref(),
            std::env::var_os(runtime::LIBRARY_ENV),
            settings.backend_directory.as_deref(),
        )?;
        let env = runtime::environment(&library)?;
        log(
            LogLevel::INFO,
            &format!(
                "onnxruntime backend: ONNX Runtime loaded from {} ({:?})",
                library.display(),
                source
            ),
        );
        Ok(OrtBackend { env, settings })
    }

    fn load_model(&self, ctx: &ModelContext) -> Result<OnnxModel, BackendError> {
        let file = model_file(ctx)?;
        let settings = SessionSettings::for_model(&self.settings.session_defaults, &ctx.config)?;
        let session = settings.open(&self.env, &file)?;
        let spec = ModelSpec::new(&ctx.name, &ctx.config, &session)?;
        Ok(OnnxModel {
            env: self.env.clone(),
            settings,
            file,
            spec: Arc::new(spec),
            spare: Mutex::new(Some(session)),
        })
    }

    fn auto_complete_config(&self, ctx: &ModelContext) -> Result<Option<Value>, BackendError> {
        let default_mbs = self.settings.default_max_batch_size;
        if autocomplete::has_io(&ctx.config) {
            return autocomplete::complete(&ctx.config, &ctx.name, &[], &[], default_mbs);
        }
        let file = model_file(ctx)?;
        // Only the signature is read: skip graph optimizations and extra threads.
        let reader = SessionSettings {
            intra_op_threads: Some(1),
            optimization: Some(OptLevel::Disabled),
            ..Default::default()
        };
        let session = reader.open(&self.env, &file)?;
        autocomplete::complete(
            &ctx.config,
            &ctx.name,
            &io_infos(session.inputs()),
            &io_infos(session.outputs()),
            default_mbs,
        )
    }
}

/// A loaded model version: its signature and how to open more sessions for more instances.
struct OnnxModel {
    /// The environment sessions are opened in.
    env: Environment,
    /// Session options from the config and the backend defaults.
    settings: SessionSettings,
    /// The ONNX file.
    file: PathBuf,
    /// The signature shared by the instances.
    spec: Arc<ModelSpec>,
    /// The session opened while loading, handed to the first instance.
    spare: Mutex<Option<Session>>,
}

impl OnnxModel {
    /// A session for a new instance: the one opened at load time first, then new ones.
    fn session(&self) -> Result<Session, BackendError> {
        let spare = self.spare.lock().ok().and_then(|mut s| s.take());
        match spare {
            Some(session) => Ok(session),
            None => self.settings.open(&self.env, &self.file),
        }
    }

    /// The model file, for messages.
    fn file(&self) -> &Path {
        &self.file
    }
}

impl Model for OnnxModel {
    type Instance = OnnxInstance;

    fn create_instance(&self, ctx: &InstanceContext) -> Result<OnnxInstance, BackendError> {
        if ctx.kind == InstanceKind::GPU {
            return Err(BackendError::unsupported(format!(
                "instance '{}' of {} asks for a GPU (KIND_GPU); this ONNX Runtime build runs on the \
                 CPU only: use instance_group {{ kind: KIND_CPU }}",
                ctx.name,
                self.file().display()
            )));
        }
        Ok(OnnxInstance {
            runner: Runner {
                session: self.session()?,
                spec: Arc::clone(&self.spec),
            },
        })
    }
}

/// One instance: one session, used by one thread at a time.
struct OnnxInstance {
    /// The session and what it serves.
    runner: Runner,
}

impl Instance for OnnxInstance {
    fn execute(&mut self, requests: Vec<Request>) -> Result<(), BackendError> {
        self.runner.execute(requests);
        Ok(())
    }
}

export_backend!(OrtBackend);
