//! Loading a model version: read the file, check it against the config, fix the batch
//! dimension, and keep what every instance needs to compile and run it.

use std::sync::{Arc, Mutex};

use ferrum_backend_api::prelude::*;
use openvino::{Core, DeviceType, Dimension, ElementType, PartialShape};

use crate::dtype;
use crate::instance::OvInstance;
use crate::ports::{self, Port, shape_text};
use crate::runtime::{self, describe, ov_error};
use crate::settings::Settings;

/// An input or output as the config declares it (dims as the backend sees them: `reshape`
/// when the config has one, without the batch dimension).
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigTensor {
    /// Tensor name.
    pub name: String,
    /// Declared data type.
    pub datatype: DataType,
    /// Declared dims, batch dimension excluded.
    pub dims: Vec<i64>,
}

/// The config's inputs (`section = "input"`) or outputs (`"output"`).
pub fn config_tensors(
    config: &serde_json::Value,
    section: &str,
) -> Result<Vec<ConfigTensor>, BackendError> {
    let Some(list) = config.get(section).and_then(|v| v.as_array()) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|entry| {
            let name = entry
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            let type_name = entry
                .get("data_type")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            let datatype = DataType::from_config_name(type_name).ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "{section} '{name}' has data_type '{type_name}', which this backend does not know"
                ))
            })?;
            let dims_of = |value: Option<&serde_json::Value>| -> Vec<i64> {
                value
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().filter_map(|d| d.as_i64()).collect())
                    .unwrap_or_default()
            };
            let dims = match entry.get("reshape").filter(|r| r.is_object()) {
                Some(reshape) => dims_of(reshape.get("shape")),
                None => dims_of(entry.get("dims")),
            };
            Ok(ConfigTensor {
                name,
                datatype,
                dims,
            })
        })
        .collect()
}

/// The config's `max_batch_size` (0: the model does not batch).
pub fn max_batch_size(config: &serde_json::Value) -> i64 {
    config
        .get("max_batch_size")
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
        .max(0)
}

/// An input or output as an instance exchanges it.
#[derive(Clone, Debug)]
pub struct IoSpec {
    /// Tensor name.
    pub name: String,
    /// Position among the model's inputs (or outputs).
    pub index: usize,
    /// Triton data type.
    pub datatype: DataType,
    /// OpenVINO element type.
    pub element: ElementType,
    /// Bytes per element.
    pub element_size: usize,
    /// Full dims the compiled model takes (batch first when batching), -1 where any size
    /// goes; `None` when the model leaves even the rank open.
    pub dims: Option<Vec<i64>>,
}

/// What every instance of a model version shares.
#[derive(Debug)]
pub struct Shared {
    /// Model name, for messages.
    pub model: String,
    /// Inputs, in config order.
    pub inputs: Vec<IoSpec>,
    /// Outputs, in config order.
    pub outputs: Vec<IoSpec>,
    /// The config's `max_batch_size`; 0 when the model does not batch.
    pub max_batch_size: i64,
    /// The batch dimension is fixed at `max_batch_size` (`SKIP_OV_DYNAMIC_BATCHSIZE`).
    pub static_batch: bool,
    /// Smaller batches are padded up to `max_batch_size` (`ENABLE_BATCH_PADDING`).
    pub batch_padding: bool,
}

/// A loaded model version.
pub struct OvModel {
    /// This version's own runtime core, with its `parameters` set on the CPU device.
    core: Mutex<Core>,
    /// The model, reshaped as the config needs; every instance compiles it.
    model: openvino::Model,
    /// What instances share.
    shared: Arc<Shared>,
}

fn find_port<'a>(ports: &'a [Port], name: &str) -> Option<&'a Port> {
    ports.iter().find(|p| p.name == name)
}

fn names(ports: &[Port]) -> String {
    let list: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    list.join(", ")
}

/// Checks a config tensor against the model's port: type, rank, and the dims both fix.
fn check_port(
    what: &str,
    declared: &ConfigTensor,
    port: &Port,
    batching: bool,
    lenient_dims: bool,
) -> Result<(), BackendError> {
    let model_type = port.datatype(what)?;
    if model_type != declared.datatype {
        return Err(BackendError::invalid_argument(format!(
            "{what} '{}' is {} in the config but {} in the model",
            declared.name, declared.datatype, model_type
        )));
    }
    let Some(dims) = &port.dims else {
        return Ok(());
    };
    let model_dims = if batching {
        match dims.split_first() {
            Some((_, rest)) => rest,
            None => {
                return Err(BackendError::invalid_argument(format!(
                    "{what} '{}' is a scalar in the model, so it has no batch dimension; \
                     the config's max_batch_size must be 0",
                    declared.name
                )));
            }
        }
    } else {
        dims.as_slice()
    };
    let fits = model_dims.len() == declared.dims.len()
        && (lenient_dims
            || model_dims
                .iter()
                .zip(&declared.dims)
                .all(|(&m, &c)| m < 0 || c < 0 || m == c));
    if !fits {
        let batch_note = if batching {
            " (the config's dims leave out the batch dimension, as max_batch_size > 0)"
        } else {
            ""
        };
        return Err(BackendError::invalid_argument(format!(
            "{what} '{}' has dims {} in the config but shape {} in the model{batch_note}",
            declared.name,
            shape_text(&declared.dims),
            port.shape_text()
        )));
    }
    Ok(())
}

fn partial_shape(dims: &[i64]) -> Result<PartialShape, BackendError> {
    let dimensions: Vec<Dimension> = dims
        .iter()
        .map(|&d| {
            if d < 0 {
                Dimension::new(-1, -1)
            } else {
                Dimension::new(d, d)
            }
        })
        .collect();
    let rank = i64::try_from(dims.len())
        .map_err(|_| BackendError::invalid_argument("tensor rank does not fit in 64 bits"))?;
    PartialShape::new(rank, &dimensions).map_err(ov_error("cannot build a tensor shape"))
}

fn io_spec(port: &Port, what: &str) -> Result<IoSpec, BackendError> {
    let datatype = port.datatype(what)?;
    Ok(IoSpec {
        name: port.name.clone(),
        index: port.index,
        datatype,
        element: port.element,
        element_size: datatype.element_size().unwrap_or(1),
        dims: port.dims.clone(),
    })
}

impl OvModel {
    /// Reads, checks and (where the config needs it) reshapes one model version.
    pub fn load(ctx: &ModelContext) -> Result<OvModel, BackendError> {
        let settings = Settings::from_config(&ctx.config)?;
        let max_batch = max_batch_size(&ctx.config);
        let batching = max_batch > 0;
        let declared_inputs = config_tensors(&ctx.config, "input")?;
        let declared_outputs = config_tensors(&ctx.config, "output")?;
        if declared_inputs.is_empty() || declared_outputs.is_empty() {
            return Err(BackendError::invalid_argument(format!(
                "model '{}' declares no {}; write them in config.pbtxt or let the server \
                 auto-complete the config",
                ctx.name,
                if declared_inputs.is_empty() {
                    "inputs"
                } else {
                    "outputs"
                }
            )));
        }
        for tensor in declared_inputs.iter().chain(&declared_outputs) {
            if dtype::to_openvino(tensor.datatype).is_none() {
                return Err(BackendError::unsupported(format!(
                    "'{}' is {}, which OpenVINO tensors cannot hold in this backend",
                    tensor.name, tensor.datatype
                )));
            }
            if tensor.name.contains('\0') {
                return Err(BackendError::invalid_argument(
                    "a tensor name in the config contains a NUL byte",
                ));
            }
        }

        let mut core = runtime::new_core()?;
        for (key, value) in &settings.properties {
            core.set_property(&DeviceType::CPU, key, value)
                .map_err(|e| {
                    BackendError::invalid_argument(format!(
                        "model '{}': OpenVINO rejects {}={value}: {}",
                        ctx.name,
                        key.as_ref(),
                        describe(&e)
                    ))
                })?;
        }
        let path = ports::model_file(ctx)?;
        let mut model = ports::read_model(&mut core, &path)?;

        // Inputs: the config and the model must name the same set.
        let model_inputs = ports::inputs(&model)?;
        let mut reshapes: Vec<(String, Vec<i64>)> = Vec::new();
        for declared in &declared_inputs {
            let port = find_port(&model_inputs, &declared.name).ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "config input '{}' is not an input of the model (its inputs: {})",
                    declared.name,
                    names(&model_inputs)
                ))
            })?;
            check_port("input", declared, port, batching, settings.reshape_io)?;
            // The shape this input should have once compiled.
            let rest: Vec<i64> = match &port.dims {
                Some(dims) if !settings.reshape_io => {
                    dims.iter().skip(usize::from(batching)).copied().collect()
                }
                _ => declared.dims.clone(),
            };
            let batch_dim = batching.then_some(if settings.static_batch { max_batch } else { -1 });
            let wanted: Vec<i64> = batch_dim.into_iter().chain(rest).collect();
            if port.dims.as_ref() != Some(&wanted) {
                reshapes.push((port.name.clone(), wanted));
            }
        }
        for port in &model_inputs {
            if !declared_inputs.iter().any(|t| t.name == port.name) {
                return Err(BackendError::invalid_argument(format!(
                    "model input '{}' (shape {}) is missing from the config of '{}'; \
                     OpenVINO needs every input",
                    port.name,
                    port.shape_text(),
                    ctx.name
                )));
            }
        }
        if !reshapes.is_empty() {
            let shapes = reshapes
                .iter()
                .map(|(name, dims)| Ok((name.as_str(), partial_shape(dims)?)))
                .collect::<Result<Vec<_>, BackendError>>()?;
            let pairs: Vec<(&str, &PartialShape)> =
                shapes.iter().map(|(name, shape)| (*name, shape)).collect();
            model.reshape(&pairs).map_err(|e| {
                let wanted: Vec<String> = reshapes
                    .iter()
                    .map(|(name, dims)| format!("{name} {}", shape_text(dims)))
                    .collect();
                BackendError::invalid_argument(format!(
                    "model '{}' cannot take the input shapes its config implies ({}): {}{}",
                    ctx.name,
                    wanted.join(", "),
                    describe(&e),
                    if batching && !settings.static_batch {
                        "; if the model cannot batch dynamically, set parameter \
                         SKIP_OV_DYNAMIC_BATCHSIZE to YES"
                    } else {
                        ""
                    }
                ))
            })?;
        }

        // Shapes after any reshape.
        let model_inputs = ports::inputs(&model)?;
        let model_outputs = ports::outputs(&model)?;
        let mut inputs = Vec::with_capacity(declared_inputs.len());
        for declared in &declared_inputs {
            let port = find_port(&model_inputs, &declared.name).ok_or_else(|| {
                BackendError::internal(format!("input '{}' vanished on reshape", declared.name))
            })?;
            inputs.push(io_spec(port, "input")?);
        }
        let mut outputs = Vec::with_capacity(declared_outputs.len());
        for declared in &declared_outputs {
            let port = find_port(&model_outputs, &declared.name).ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "config output '{}' is not an output of the model (its outputs: {})",
                    declared.name,
                    names(&model_outputs)
                ))
            })?;
            check_port("output", declared, port, batching, false)?;
            outputs.push(io_spec(port, "output")?);
        }

        Ok(OvModel {
            core: Mutex::new(core),
            model,
            shared: Arc::new(Shared {
                model: ctx.name.clone(),
                inputs,
                outputs,
                max_batch_size: max_batch,
                static_batch: batching && settings.static_batch,
                batch_padding: settings.batch_padding,
            }),
        })
    }
}

impl Model for OvModel {
    type Instance = OvInstance;

    fn create_instance(&self, ctx: &InstanceContext) -> Result<OvInstance, BackendError> {
        let mut core = self
            .core
            .lock()
            .map_err(|_| BackendError::internal("the model's OpenVINO core is poisoned"))?;
        let compiled = core
            .compile_model(&self.model, DeviceType::CPU)
            .map_err(ov_error(format!(
                "OpenVINO cannot compile model '{}' for the CPU (instance {})",
                self.shared.model, ctx.name
            )))?;
        drop(core);
        OvInstance::new(compiled, Arc::clone(&self.shared))
    }
}
