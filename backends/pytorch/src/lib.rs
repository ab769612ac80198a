//! The `pytorch` backend: runs TorchScript models (`model.pt`) with libtorch through tch.
//!
//! A model selects it with `backend: "pytorch"` or `platform: "pytorch_libtorch"`. Inputs reach
//! `forward()` by Triton's conventions (`INPUT__0`, `INPUT__1`, ... by index, other names by
//! their place in the config); outputs are taken from the returned tensor, tuple or list the same
//! way. For a model with `max_batch_size` > 0, the requests of a batch that send the same
//! inputs with the same non-batch dims run as one `forward()` call on their joined inputs, and
//! each gets its own rows of the outputs back. The library links libtorch's CPU libraries and
//! finds them beside itself.

#![warn(missing_docs)]

pub mod convert;
pub mod options;
pub mod shim;
pub mod signature;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ferrum_backend_api::batch::{self, Batch};
use ferrum_backend_api::prelude::*;
use ferrum_backend_api::{InstanceKind, guard, log};
use tch::jit::IValue;

use crate::options::{GPU_ONLY_PARAMETERS, Options};
use crate::signature::Signature;

/// The model file a version folder holds unless the config names another.
pub const DEFAULT_MODEL_FILENAME: &str = "model.pt";

/// The backend: one per server process.
pub struct PyTorchBackend;

/// A loaded model version.
pub struct TorchModel {
    /// Model name, for messages.
    name: String,
    /// The TorchScript file.
    path: PathBuf,
    /// How config tensors map onto `forward()`.
    signature: Arc<Signature>,
    /// Execution options from the config.
    options: Arc<Options>,
    /// The config's `max_batch_size` (0: the model does not batch).
    max_batch_size: i64,
    /// The module loaded with the model: shared by every instance under weight sharing,
    /// otherwise handed to the first instance (later ones load their own copy).
    first: Mutex<Option<Arc<tch::CModule>>>,
}

/// One execution instance: a TorchScript module and the thread that runs it.
pub struct TorchInstance {
    /// Model name, for messages.
    name: String,
    /// The module this instance runs.
    module: Arc<tch::CModule>,
    /// How config tensors map onto `forward()`.
    signature: Arc<Signature>,
    /// Execution options from the config.
    options: Arc<Options>,
    /// The config's `max_batch_size` (0: the model does not batch).
    max_batch_size: i64,
}

/// The readable part of a libtorch error: the message without the C++ stack trace, and for a
/// TorchScript traceback its final error line.
pub fn torch_message(error: &tch::TchError) -> String {
    let text = match error {
        tch::TchError::Torch(text) => text.clone(),
        other => other.to_string(),
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Exception raised from"))
        .filter(|l| !l.is_empty())
        .collect();
    let error_line = lines
        .iter()
        .rev()
        .find(|l| l.contains("Error: ") && !l.starts_with("File "));
    match (error_line, lines.first()) {
        (Some(line), _) => (*line).to_string(),
        (None, Some(first)) => (*first).to_string(),
        (None, None) => text.trim().to_string(),
    }
}

fn load_module(name: &str, path: &Path) -> Result<tch::CModule, BackendError> {
    tch::CModule::load_on_device(path, tch::Device::Cpu).map_err(|e| {
        BackendError::internal(format!(
            "failed to load model '{name}' from '{}': {}",
            path.display(),
            torch_message(&e)
        ))
    })
}

/// Applies a process-wide thread count once; later models asking for another value are told.
fn set_threads_once(
    cell: &OnceLock<i32>,
    wanted: Option<i32>,
    key: &str,
    set: fn(i32) -> Result<(), String>,
) {
    let Some(wanted) = wanted else { return };
    let mut applied = false;
    let current = *cell.get_or_init(|| {
        applied = true;
        match set(wanted) {
            Ok(()) => wanted,
            Err(e) => {
                log(
                    LogLevel::WARN,
                    &format!("pytorch backend: {key}={wanted} could not be applied: {e}"),
                );
                0
            }
        }
    });
    if applied {
        log(
            LogLevel::INFO,
            &format!("pytorch backend: {key} set to {wanted}"),
        );
    } else if current != wanted {
        log(
            LogLevel::WARN,
            &format!(
                "pytorch backend: {key}={wanted} ignored; it is process-wide and the first model \
                 that set it chose {current}"
            ),
        );
    }
}

static INTRA_OP_THREADS: OnceLock<i32> = OnceLock::new();
static INTER_OP_THREADS: OnceLock<i32> = OnceLock::new();

impl Backend for PyTorchBackend {
    type Model = TorchModel;

    fn new(config: &serde_json::Value) -> Result<Self, BackendError> {
        let dir = config
            .get("backend_directory")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        log(
            LogLevel::INFO,
            &format!(
                "pytorch backend: libtorch (CPU) loaded from {dir}; {} intra-op threads",
                tch::get_num_threads()
            ),
        );
        Ok(PyTorchBackend)
    }

    fn load_model(&self, ctx: &ModelContext) -> Result<TorchModel, BackendError> {
        let signature = Signature::from_config(&ctx.config)?;
        let options = Options::parse(|key| ctx.parameter(key))?;
        for key in GPU_ONLY_PARAMETERS {
            if ctx.parameter(key).is_some() {
                log(
                    LogLevel::INFO,
                    &format!(
                        "model '{}': parameter {key} only applies on a GPU; ignored",
                        ctx.name
                    ),
                );
            }
        }
        set_threads_once(
            &INTRA_OP_THREADS,
            options.intra_op_threads,
            "INTRA_OP_THREAD_COUNT",
            shim::set_intra_op_threads,
        );
        set_threads_once(
            &INTER_OP_THREADS,
            options.inter_op_threads,
            "INTER_OP_THREAD_COUNT",
            shim::set_inter_op_threads,
        );

        let filename = ctx
            .config
            .get("default_model_filename")
            .and_then(|v| v.as_str())
            .filter(|f| !f.is_empty())
            .unwrap_or(DEFAULT_MODEL_FILENAME);
        let path = ctx.version_path.join(filename);
        if !path.is_file() {
            return Err(BackendError::unavailable(format!(
                "unable to find '{}' for model '{}'",
                path.display(),
                ctx.name
            )));
        }
        let module = load_module(&ctx.name, &path)?;
        Ok(TorchModel {
            name: ctx.name.clone(),
            path,
            signature: Arc::new(signature),
            options: Arc::new(options),
            max_batch_size: ctx.max_batch_size().max(0),
            first: Mutex::new(Some(Arc::new(module))),
        })
    }
}

impl Model for TorchModel {
    type Instance = TorchInstance;

    fn create_instance(&self, ctx: &InstanceContext) -> Result<TorchInstance, BackendError> {
        if ctx.kind == InstanceKind::GPU {
            return Err(BackendError::unsupported(format!(
                "instance '{}' of model '{}' asks for KIND_GPU, but this pytorch backend is built \
                 against libtorch's CPU libraries only; use KIND_CPU",
                ctx.name, self.name
            )));
        }
        let module = {
            let mut first = self
                .first
                .lock()
                .map_err(|_| BackendError::internal("pytorch model state is poisoned"))?;
            if self.options.weight_sharing {
                first.clone()
            } else {
                first.take()
            }
        };
        let module = match module {
            Some(module) => module,
            None => Arc::new(load_module(&self.name, &self.path)?),
        };
        Ok(TorchInstance {
            name: self.name.clone(),
            module,
            signature: Arc::clone(&self.signature),
            options: Arc::clone(&self.options),
            max_batch_size: self.max_batch_size,
        })
    }
}

impl TorchInstance {
    /// The process-wide JIT settings this model asks for; applied before each execution, as
    /// Triton does, since another model may have changed them.
    fn apply_jit_settings(&self) -> Result<(), BackendError> {
        let failed = |e: tch::TchError| {
            BackendError::internal(format!(
                "model '{}': cannot apply JIT settings: {}",
                self.name,
                torch_message(&e)
            ))
        };
        if let Some(enabled) = self.options.jit_executor {
            shim::set_jit_executor(enabled);
        }
        if let Some(enabled) = self.options.jit_profiling {
            tch::jit::f_set_profiling_mode(enabled).map_err(failed)?;
        }
        if let Some(enabled) = self.options.tensor_fuser {
            tch::jit::f_set_tensor_expr_fuser_enabled(enabled).map_err(failed)?;
        }
        Ok(())
    }

    /// Checks a request's inputs against the signature; returns whether it can join a batch
    /// (every input it sends has a batch dimension, the same for all).
    fn check(&self, request: &Request) -> Result<bool, BackendError> {
        let mut rows: Option<i64> = None;
        let mut joinable = true;
        for declared in &self.signature.inputs {
            let Some(input) = request.input(&declared.name) else {
                if declared.optional {
                    continue;
                }
                return Err(self.missing(&declared.name));
            };
            convert::check_input(
                input.name,
                input.datatype,
                input.shape,
                input.byte_size(),
                declared.datatype,
            )?;
            match (input.shape.first().copied(), rows) {
                (None, _) => joinable = false,
                (Some(b), Some(r)) if b != r => joinable = false,
                (Some(b), _) => rows = Some(b),
            }
        }
        Ok(joinable && rows.is_some())
    }

    /// The error for a required input the request lacks.
    fn missing(&self, input: &str) -> BackendError {
        BackendError::invalid_argument(format!("missing input '{input}' for model '{}'", self.name))
    }

    /// The request's inputs as `forward()` arguments, in order.
    fn arguments(&self, request: &Request) -> Result<Vec<IValue>, BackendError> {
        self.signature
            .inputs
            .iter()
            .map(|declared| match request.input(&declared.name) {
                Some(input) => {
                    convert::tensor_to_torch(&input, declared.datatype).map(IValue::Tensor)
                }
                None if declared.optional => Ok(IValue::None),
                None => Err(self.missing(&declared.name)),
            })
            .collect()
    }

    /// The inputs of joinable requests, joined along the batch dimension, as `forward()`
    /// arguments.
    fn joined_arguments(&self, requests: &[Request]) -> Result<Vec<IValue>, BackendError> {
        let first = requests
            .first()
            .ok_or_else(|| BackendError::internal("an empty batch"))?;
        self.signature
            .inputs
            .iter()
            .map(|declared| {
                if first.input(&declared.name).is_none() {
                    return if declared.optional {
                        Ok(IValue::None)
                    } else {
                        Err(self.missing(&declared.name))
                    };
                }
                let joined = batch::join_input(requests, &declared.name)?;
                let input = convert::InputData {
                    name: &declared.name,
                    datatype: joined.datatype,
                    shape: &joined.shape,
                    data: &joined.data,
                };
                convert::to_torch(&input, declared.datatype).map(IValue::Tensor)
            })
            .collect()
    }

    /// Runs `forward()` on these arguments under the model's execution settings; returns the
    /// tensors it returned, in order.
    fn forward(&self, arguments: &[IValue]) -> Result<Vec<tch::Tensor>, BackendError> {
        let _guard = shim::ExecutionGuard::enter(
            self.options.inference_mode,
            self.options.optimized_execution,
        )
        .map_err(|e| {
            BackendError::internal(format!(
                "model '{}': cannot enter inference mode: {e}",
                self.name
            ))
        })?;
        self.apply_jit_settings()?;
        let returned = self.module.forward_is(arguments).map_err(|e| {
            BackendError::internal(format!(
                "PyTorch execute failure in model '{}': {}",
                self.name,
                torch_message(&e)
            ))
        })?;
        self.returned_tensors(returned)
    }

    /// The returned tensor that holds `output`, checked and made contiguous on the CPU.
    fn output(
        &self,
        tensors: &[tch::Tensor],
        output: &signature::Output,
    ) -> Result<tch::Tensor, BackendError> {
        let name = output.declared.name.as_str();
        let tensor = tensors.get(output.index).ok_or_else(|| {
            BackendError::internal(format!(
                "output '{name}' is element {} of what model '{}' returns, but it returned {} \
                 tensor(s)",
                output.index,
                self.name,
                tensors.len()
            ))
        })?;
        convert::output_tensor(name, tensor, output.declared.datatype)
    }

    /// Runs one request alone, writing its outputs straight into `response`.
    fn infer_into(&self, request: &Request, response: &mut Response) -> Result<(), BackendError> {
        let arguments = self.arguments(request)?;
        let tensors = self.forward(&arguments)?;
        for output in &self.signature.outputs {
            let name = output.declared.name.as_str();
            if !request.wants_output(name) {
                continue;
            }
            let tensor = self.output(&tensors, output)?;
            let buffer = response.output(name, output.declared.datatype, &tensor.size())?;
            convert::copy_output(name, &tensor, buffer)?;
        }
        Ok(())
    }

    /// Runs one request alone and sends its response.
    fn run_alone(&self, request: &Request) {
        request.respond_with(|response| self.infer_into(request, response));
    }

    /// Runs checked, joinable requests as one `forward()` call, one response each.
    fn run_joined(
        &self,
        requests: &[Request],
        batch: &Batch,
    ) -> Result<Vec<Response>, BackendError> {
        let arguments = self.joined_arguments(requests)?;
        let tensors = self.forward(&arguments)?;
        let mut responses: Vec<Response> = requests.iter().map(Request::response).collect();
        for output in &self.signature.outputs {
            let name = output.declared.name.as_str();
            let wanted: Vec<bool> = requests.iter().map(|r| r.wants_output(name)).collect();
            if !wanted.contains(&true) {
                continue;
            }
            let tensor = self.output(&tensors, output)?;
            let datatype = output.declared.datatype;
            let size = tensor
                .numel()
                .saturating_mul(datatype.element_size().unwrap_or(1));
            let mut data = vec![0u8; size];
            convert::copy_output(name, &tensor, &mut data)?;
            let shape = tensor.size();
            batch::split_output_where(
                &mut responses,
                batch,
                &wanted,
                name,
                datatype,
                &shape,
                &data,
            )?;
        }
        Ok(responses)
    }

    /// The tensors `forward()` returned, in order.
    fn returned_tensors(&self, value: IValue) -> Result<Vec<tch::Tensor>, BackendError> {
        let unexpected = |what: &str| {
            BackendError::internal(format!(
                "model '{}' returned {what}; the pytorch backend expects a tensor, or a tuple or \
                 list of tensors",
                self.name
            ))
        };
        match value {
            IValue::Tensor(t) => Ok(vec![t]),
            IValue::TensorList(list) => Ok(list),
            IValue::Tuple(items) | IValue::GenericList(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    IValue::Tensor(t) => Ok(t),
                    _ => Err(unexpected(&format!("a non-tensor value at position {i}"))),
                })
                .collect(),
            IValue::None => Err(unexpected("None")),
            _ => Err(unexpected("a value that is not a tensor")),
        }
    }
}

impl Instance for TorchInstance {
    fn execute(&mut self, requests: Vec<Request>) -> Result<(), BackendError> {
        let max = usize::try_from(self.max_batch_size).unwrap_or(0);
        if max == 0 || requests.len() == 1 {
            for request in &requests {
                self.run_alone(request);
            }
            return Ok(());
        }
        // Each request is checked on its own first, so that one bad request fails alone.
        let mut checked = Vec::with_capacity(requests.len());
        for request in requests {
            match self.check(&request) {
                Ok(true) => checked.push(request),
                Ok(false) => self.run_alone(&request),
                Err(e) => request.responder().send_error(e, true),
            }
        }
        for group in batch::group(checked) {
            // The first input the group's requests send (they all send the same ones).
            let first = group.first().and_then(|r| {
                self.signature
                    .inputs
                    .iter()
                    .find(|d| r.input(&d.name).is_some())
                    .map(|d| d.name.as_str())
            });
            let batch = first.map(|name| Batch::of(&group, name).map(|b| (name, b)));
            let Some(Ok((name, batch))) = batch else {
                group.iter().for_each(|r| self.run_alone(r));
                continue;
            };
            let mut rest = group.into_iter();
            for count in batch::runs_within(batch.rows(), max) {
                let run: Vec<Request> = rest.by_ref().take(count).collect();
                if run.len() == 1 {
                    run.iter().for_each(|r| self.run_alone(r));
                    continue;
                }
                let result =
                    Batch::of(&run, name).and_then(|b| guard(|| self.run_joined(&run, &b)));
                match result {
                    Ok(responses) => responses.into_iter().for_each(|r| r.send(true)),
                    Err(e) => {
                        for request in &run {
                            request.responder().send_error(e.clone(), true);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

export_backend!(PyTorchBackend);
