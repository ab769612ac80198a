//! The `openvino` backend: runs OpenVINO IR (`model.xml` + `model.bin`) and ONNX
//! (`model.onnx`) models on the CPU through the OpenVINO runtime, loaded at run time from the
//! folder beside this library (see `runtime.sh`), `--backend-config openvino,runtime-directory=`
//! or `FERRUM_OPENVINO_DIR`.
//!
//! Every model version gets an OpenVINO `Core` of its own (so its `parameters` never leak into
//! another model's) and every instance a compiled model with one infer request.

mod autocomplete;
mod dtype;
mod instance;
mod model;
mod ports;
mod runtime;
mod settings;

use std::sync::Mutex;

use ferrum_backend_api::prelude::*;
use openvino::Core;

use crate::model::OvModel;

/// Triton's default for `max_batch_size` when auto-complete finds a model that batches.
const DEFAULT_MAX_BATCH_SIZE: i64 = 4;

/// The backend: settings from the command line, and a `Core` for reading models to
/// auto-complete their configs.
struct OpenVinoBackend {
    /// `max_batch_size` that auto-complete gives a model able to batch.
    default_max_batch_size: i64,
    /// Reads model files for auto-complete (a `Core` is not `Sync`).
    reader: Mutex<Core>,
}

impl Backend for OpenVinoBackend {
    type Model = OvModel;

    fn new(config: &serde_json::Value) -> Result<Self, BackendError> {
        let runtime_dir = runtime::load(config)?;
        let default_max_batch_size = match runtime::cmdline(config, "default-max-batch-size") {
            None => DEFAULT_MAX_BATCH_SIZE,
            Some(text) => text.trim().parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "--backend-config openvino,default-max-batch-size={text}: expected a number of 0 or more"
                ))
            })?,
        };
        let reader = runtime::new_core()?;
        ferrum_backend_api::log(
            LogLevel::INFO,
            &format!(
                "OpenVINO {} loaded from {}",
                runtime::version(),
                runtime_dir.display()
            ),
        );
        Ok(OpenVinoBackend {
            default_max_batch_size,
            reader: Mutex::new(reader),
        })
    }

    fn load_model(&self, ctx: &ModelContext) -> Result<OvModel, BackendError> {
        OvModel::load(ctx)
    }

    fn auto_complete_config(
        &self,
        ctx: &ModelContext,
    ) -> Result<Option<serde_json::Value>, BackendError> {
        let mut core = self
            .reader
            .lock()
            .map_err(|_| BackendError::internal("the OpenVINO model reader is poisoned"))?;
        autocomplete::complete(ctx, &mut core, self.default_max_batch_size).map(Some)
    }
}

export_backend!(OpenVinoBackend);
