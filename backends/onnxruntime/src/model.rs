//! What a loaded model serves: its inputs and outputs as the ONNX file declares them, checked
//! against the model config, and the check of each request against them.

use ferrum_backend_api::{BackendError, DataType, MemoryKind, Request, Tensor, bytes};
use ort::session::Session;
use ort::value::{Outlet, TensorElementType};
use serde_json::Value;

use crate::tensors::{checked_count, tensor_signature, triton_type};

/// One input or output of the ONNX model.
#[derive(Debug, Clone, PartialEq)]
pub struct IoInfo {
    /// Tensor name.
    pub name: String,
    /// ONNX element type.
    pub element: TensorElementType,
    /// Triton data type.
    pub datatype: DataType,
    /// Shape as the ONNX file declares it (batch dimension included); -1 is dynamic.
    pub shape: Vec<i64>,
}

/// A tensor of the model file that has no Triton counterpart (a sequence, a map, a complex
/// number type, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported {
    /// Tensor name.
    pub name: String,
    /// What it is, for messages.
    pub what: String,
}

/// Reads the inputs or outputs of a session; entries Triton cannot express come back as
/// [`Unsupported`].
pub fn io_infos(outlets: &[Outlet]) -> Vec<Result<IoInfo, Unsupported>> {
    outlets
        .iter()
        .map(|outlet| {
            let unsupported = || Unsupported {
                name: outlet.name().to_string(),
                what: outlet.dtype().to_string(),
            };
            let (element, shape) = tensor_signature(outlet.dtype()).ok_or_else(unsupported)?;
            let datatype = triton_type(element).ok_or_else(unsupported)?;
            Ok(IoInfo {
                name: outlet.name().to_string(),
                element,
                datatype,
                shape,
            })
        })
        .collect()
}

/// The tensors, or an error naming the first that Triton cannot express.
fn supported(
    list: Vec<Result<IoInfo, Unsupported>>,
    kind: &str,
) -> Result<Vec<IoInfo>, BackendError> {
    list.into_iter()
        .map(|r| {
            r.map_err(|u| {
                BackendError::unsupported(format!(
                    "model {kind} '{}' is a {}, which this backend cannot serve",
                    u.name, u.what
                ))
            })
        })
        .collect()
}

/// A model config tensor entry, as far as this backend reads it.
#[derive(Debug, Clone, PartialEq)]
struct ConfigTensor {
    /// Tensor name.
    name: String,
    /// `TYPE_*` name.
    data_type: String,
    /// `reshape.shape` when present, else `dims`: the shape the model sees (batch excluded).
    model_dims: Vec<i64>,
}

/// The config's `input` or `output` entries.
fn config_tensors(config: &Value, section: &str) -> Result<Vec<ConfigTensor>, BackendError> {
    let Some(list) = config.get(section).and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|entry| {
            let name = entry
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let data_type = entry
                .get("data_type")
                .and_then(Value::as_str)
                .unwrap_or("TYPE_INVALID")
                .to_string();
            let dims_of = |v: Option<&Value>| -> Result<Vec<i64>, BackendError> {
                v.and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|d| {
                                d.as_i64()
                                    .or_else(|| d.as_str().and_then(|s| s.parse().ok()))
                                    .ok_or_else(|| {
                                        BackendError::invalid_argument(format!(
                                            "model config {section} '{name}' has a dimension that is not an integer: {d}"
                                        ))
                                    })
                            })
                            .collect()
                    })
                    .unwrap_or_else(|| Ok(Vec::new()))
            };
            let reshape = entry.get("reshape").filter(|r| !r.is_null());
            let model_dims = match reshape {
                Some(r) => dims_of(r.get("shape"))?,
                None => dims_of(entry.get("dims"))?,
            };
            Ok(ConfigTensor {
                name,
                data_type,
                model_dims,
            })
        })
        .collect()
}

/// A loaded model's signature, shared by its instances.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Model name (for messages).
    pub name: String,
    /// The config's `max_batch_size`; above 0 the first dimension is the batch.
    pub max_batch_size: i64,
    /// Every model input, in the model's order.
    pub inputs: Vec<IoInfo>,
    /// The outputs served: those the config lists, or every model output when it lists none.
    pub outputs: Vec<IoInfo>,
    /// Whether `outputs` is every output of the model, in the model's order.
    pub all_outputs: bool,
}

/// `[1,2,-1]`, for messages.
fn fmt_dims(dims: &[i64]) -> String {
    let parts: Vec<String> = dims.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// The tensors' names, comma-separated, for messages.
fn names(list: &[IoInfo]) -> String {
    let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
    names.join(", ")
}

impl ModelSpec {
    /// Checks the config against the opened model and keeps what execution needs.
    pub fn new(name: &str, config: &Value, session: &Session) -> Result<ModelSpec, BackendError> {
        let model_inputs = supported(io_infos(session.inputs()), "input")?;
        let model_outputs = supported(io_infos(session.outputs()), "output")?;
        Self::from_parts(name, config, model_inputs, model_outputs)
    }

    /// [`ModelSpec::new`] on already-read model signatures.
    pub fn from_parts(
        name: &str,
        config: &Value,
        model_inputs: Vec<IoInfo>,
        model_outputs: Vec<IoInfo>,
    ) -> Result<ModelSpec, BackendError> {
        let max_batch_size = config
            .get("max_batch_size")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let config_inputs = config_tensors(config, "input")?;
        let config_outputs = config_tensors(config, "output")?;
        for ct in &config_inputs {
            let info = model_inputs.iter().find(|i| i.name == ct.name).ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "model '{name}': config input '{}' is not an input of the ONNX model (its inputs: {})",
                    ct.name,
                    names(&model_inputs)
                ))
            })?;
            check_config_tensor(name, "input", ct, info, max_batch_size)?;
        }
        if !config_inputs.is_empty() {
            for info in &model_inputs {
                if !config_inputs.iter().any(|c| c.name == info.name) {
                    return Err(BackendError::invalid_argument(format!(
                        "model '{name}': the ONNX model has input '{}' that the config does not list \
                         (config expects {} inputs, the model has {})",
                        info.name,
                        config_inputs.len(),
                        model_inputs.len()
                    )));
                }
            }
        } else if max_batch_size > 0 {
            for info in &model_inputs {
                check_batch_dim(name, "input", info)?;
            }
        }
        let mut outputs = Vec::new();
        for ct in &config_outputs {
            let info = model_outputs.iter().find(|i| i.name == ct.name).ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "model '{name}': config output '{}' is not an output of the ONNX model (its outputs: {})",
                    ct.name,
                    names(&model_outputs)
                ))
            })?;
            check_config_tensor(name, "output", ct, info, max_batch_size)?;
            outputs.push(info.clone());
        }
        let all_outputs = outputs.is_empty() || outputs == model_outputs;
        if outputs.is_empty() {
            if max_batch_size > 0 {
                for info in &model_outputs {
                    check_batch_dim(name, "output", info)?;
                }
            }
            outputs = model_outputs;
        }
        Ok(ModelSpec {
            name: name.to_string(),
            max_batch_size,
            inputs: model_inputs,
            outputs,
            all_outputs,
        })
    }

    /// Checks one request's inputs and requested outputs; returns its batch size (1 when the
    /// model does not batch).
    pub fn check_request(&self, request: &Request) -> Result<usize, BackendError> {
        for tensor in request.inputs() {
            if !self.inputs.iter().any(|i| i.name == tensor.name) {
                return Err(BackendError::invalid_argument(format!(
                    "unexpected input '{}' for model '{}' (its inputs: {})",
                    tensor.name,
                    self.name,
                    names(&self.inputs)
                )));
            }
        }
        for wanted in request.requested_outputs() {
            if !self.outputs.iter().any(|o| o.name == wanted) {
                return Err(BackendError::invalid_argument(format!(
                    "unknown output '{wanted}' requested from model '{}' (its outputs: {})",
                    self.name,
                    names(&self.outputs)
                )));
            }
        }
        let mut batch = None;
        for info in &self.inputs {
            let tensor = request.input(&info.name).ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "missing input '{}' for model '{}'",
                    info.name, self.name
                ))
            })?;
            self.check_input(info, &tensor)?;
            if let (true, Some(&b)) = (self.max_batch_size > 0, tensor.shape.first()) {
                if let Some(previous) = batch.filter(|&p| p != b) {
                    return Err(BackendError::invalid_argument(format!(
                        "input '{}' has batch size {b} but an earlier input has {previous}; all inputs must agree",
                        info.name
                    )));
                }
                batch = Some(b);
            }
        }
        Ok(batch.and_then(|b| usize::try_from(b).ok()).unwrap_or(1))
    }

    /// Checks one input tensor: type, memory, shape, batch size and byte count.
    fn check_input(&self, info: &IoInfo, tensor: &Tensor<'_>) -> Result<(), BackendError> {
        let name = &info.name;
        if tensor.datatype != info.datatype {
            return Err(BackendError::invalid_argument(format!(
                "input '{name}' has data type {} but model '{}' expects {}",
                tensor.datatype, self.name, info.datatype
            )));
        }
        let memory = tensor.memory().kind;
        if memory != MemoryKind::CPU && memory != MemoryKind::CPU_PINNED {
            return Err(BackendError::unsupported(format!(
                "input '{name}' is in GPU memory; this backend reads inputs from CPU memory only"
            )));
        }
        let shape = tensor.shape;
        let shape_ok = shape.len() == info.shape.len()
            && shape
                .iter()
                .zip(&info.shape)
                .all(|(&got, &want)| got >= 0 && (want < 0 || got == want));
        if !shape_ok {
            let (got, want) = if self.max_batch_size > 0 && !info.shape.is_empty() {
                (
                    format!(
                        "{} (batch {})",
                        fmt_dims(shape.get(1..).unwrap_or_default()),
                        shape.first().copied().unwrap_or_default()
                    ),
                    fmt_dims(&info.shape[1..]),
                )
            } else {
                (fmt_dims(shape), fmt_dims(&info.shape))
            };
            return Err(BackendError::invalid_argument(format!(
                "input '{name}' has shape {got} but model '{}' expects {want} (-1: any size)",
                self.name
            )));
        }
        if let (true, Some(&b)) = (self.max_batch_size > 0, shape.first()) {
            if b == 0 {
                return Err(BackendError::invalid_argument(format!(
                    "input '{name}' has batch size 0; send at least one row"
                )));
            }
            if b > self.max_batch_size {
                return Err(BackendError::invalid_argument(format!(
                    "input '{name}' has batch size {b}, more than max_batch_size {} of model '{}'",
                    self.max_batch_size, self.name
                )));
            }
        }
        let count = checked_count(shape).ok_or_else(|| {
            BackendError::invalid_argument(format!(
                "input '{name}' has an impossible shape {}",
                fmt_dims(shape)
            ))
        })?;
        if info.datatype == DataType::BYTES {
            let data = tensor.data();
            let items = bytes::decode(&data).map_err(|e| {
                BackendError::invalid_argument(format!("input '{name}': {}", e.message))
            })?;
            if items.len() != count {
                return Err(BackendError::invalid_argument(format!(
                    "input '{name}' holds {} strings but its shape {} needs {count}",
                    items.len(),
                    fmt_dims(shape)
                )));
            }
        } else {
            let expected = info
                .datatype
                .element_size()
                .and_then(|size| size.checked_mul(count));
            if expected != Some(tensor.byte_size()) {
                return Err(BackendError::invalid_argument(format!(
                    "input '{name}' holds {} bytes but its shape {} of {} needs {}",
                    tensor.byte_size(),
                    fmt_dims(shape),
                    info.datatype,
                    expected
                        .map_or_else(|| "more than memory holds".to_string(), |n| n.to_string())
                )));
            }
        }
        Ok(())
    }
}

/// Checks one config tensor against the model's tensor of the same name.
fn check_config_tensor(
    model: &str,
    kind: &str,
    ct: &ConfigTensor,
    info: &IoInfo,
    max_batch_size: i64,
) -> Result<(), BackendError> {
    let config_type = DataType::from_config_name(&ct.data_type);
    if config_type != Some(info.datatype) {
        let model_type = info
            .datatype
            .config_name()
            .unwrap_or_else(|| info.datatype.to_string());
        return Err(BackendError::invalid_argument(format!(
            "model '{model}': {kind} '{}' has data type {} in the config but {model_type} in the ONNX model",
            ct.name, ct.data_type
        )));
    }
    let model_dims: &[i64] = if max_batch_size > 0 {
        check_batch_dim(model, kind, info)?;
        &info.shape[1..]
    } else {
        &info.shape
    };
    let compatible = model_dims.len() == ct.model_dims.len()
        && model_dims
            .iter()
            .zip(&ct.model_dims)
            .all(|(&m, &c)| m < 0 || c < 0 || m == c);
    if !compatible {
        return Err(BackendError::invalid_argument(format!(
            "model '{model}': {kind} '{}' has dims {} in the config{} but the ONNX model expects {}{}",
            ct.name,
            fmt_dims(&ct.model_dims),
            if max_batch_size > 0 {
                " (batch excluded)"
            } else {
                ""
            },
            fmt_dims(model_dims),
            if max_batch_size > 0 {
                format!(
                    " after its batch dimension (full shape {})",
                    fmt_dims(&info.shape)
                )
            } else {
                String::new()
            }
        )));
    }
    Ok(())
}

/// With batching, a model tensor's first dimension must be dynamic: it is the batch.
fn check_batch_dim(model: &str, kind: &str, info: &IoInfo) -> Result<(), BackendError> {
    if info.shape.first().is_some_and(|&d| d < 0) {
        Ok(())
    } else {
        Err(BackendError::invalid_argument(format!(
            "model '{model}': max_batch_size > 0 needs every input and output to have a dynamic \
             (-1) first dimension, but {kind} '{}' has shape {} in the ONNX model; set max_batch_size: 0",
            info.name,
            fmt_dims(&info.shape)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, Input, input};
    use serde_json::json;

    fn io(name: &str, datatype: DataType, element: TensorElementType, shape: &[i64]) -> IoInfo {
        IoInfo {
            name: name.into(),
            element,
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn mlp() -> (Vec<IoInfo>, Vec<IoInfo>) {
        (
            vec![io(
                "x",
                DataType::FP32,
                TensorElementType::Float32,
                &[-1, 4],
            )],
            vec![
                io("y", DataType::FP32, TensorElementType::Float32, &[-1, 2]),
                io("z", DataType::INT64, TensorElementType::Int64, &[-1]),
            ],
        )
    }

    #[test]
    fn config_matching_the_model_loads() {
        let (i, o) = mlp();
        let config = json!({
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [-1]}]
        });
        let spec = ModelSpec::from_parts("m", &config, i, o).unwrap();
        assert_eq!(spec.outputs.len(), 1);
        assert!(!spec.all_outputs);
    }

    #[test]
    fn mismatches_name_the_tensor() {
        let (i, o) = mlp();
        let bad_type = json!({"max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP64", "dims": [4]}]});
        let e = ModelSpec::from_parts("m", &bad_type, i.clone(), o.clone()).unwrap_err();
        assert!(e.message.as_str().contains("'x'") && e.message.as_str().contains("TYPE_FP64"));
        let bad_dims = json!({"max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [5]}]});
        let e = ModelSpec::from_parts("m", &bad_dims, i.clone(), o.clone()).unwrap_err();
        assert!(e.message.as_str().contains("'x'"), "{}", e.message);
        let no_batch_dims = json!({"max_batch_size": 0,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]});
        assert!(ModelSpec::from_parts("m", &no_batch_dims, i.clone(), o.clone()).is_err());
        let unknown = json!({"output": [{"name": "q", "data_type": "TYPE_FP32", "dims": [1]}]});
        let e = ModelSpec::from_parts("m", &unknown, i.clone(), o.clone()).unwrap_err();
        assert!(e.message.as_str().contains("'q'"));
        let reshaped = json!({"max_batch_size": 0,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [8], "reshape": {"shape": [2, 4]}}]});
        ModelSpec::from_parts("m", &reshaped, i, o).unwrap();
    }

    #[test]
    fn batching_needs_a_dynamic_first_dim() {
        let i = vec![io("x", DataType::INT32, TensorElementType::Int32, &[3])];
        let o = vec![io("y", DataType::INT32, TensorElementType::Int32, &[3])];
        let e = ModelSpec::from_parts("m", &json!({"max_batch_size": 2}), i, o).unwrap_err();
        assert!(e.message.as_str().contains("'x'"));
    }

    /// Checks a test request with these inputs and requested outputs.
    fn check(spec: &ModelSpec, inputs: Vec<Input>, outputs: &[&str]) -> Result<usize, String> {
        let (request, _) = testing::request(inputs, outputs);
        spec.check_request(&request)
            .map_err(|e| e.message.to_string())
    }

    #[test]
    fn request_checks() {
        let (i, o) = mlp();
        let spec = ModelSpec::from_parts("m", &json!({"max_batch_size": 2}), i, o).unwrap();
        let data = [0u8; 32];
        let good = || input("x", DataType::FP32, &[2, 4], &data);
        assert_eq!(check(&spec, vec![good()], &["y"]), Ok(2));
        assert_eq!(check(&spec, vec![good().shared_in_two(5)], &[]), Ok(2));

        let cases: Vec<(Vec<Input>, Vec<&str>, &str)> = vec![
            (
                vec![input("x", DataType::FP32, &[1, 4], &data)],
                vec![],
                "holds 32 bytes",
            ),
            (
                vec![input("x", DataType::FP32, &[3, 4], &data[..0])],
                vec![],
                "max_batch_size",
            ),
            (
                vec![input("x", DataType::FP32, &[0, 4], &data[..0])],
                vec![],
                "batch size 0",
            ),
            (
                vec![input("x", DataType::INT32, &[2, 4], &data)],
                vec![],
                "data type INT32",
            ),
            (
                vec![input("x", DataType::FP32, &[2, 5], &data)],
                vec![],
                "shape [5] (batch 2)",
            ),
            (
                vec![input("x", DataType::FP32, &[8], &data)],
                vec![],
                "'x' has shape",
            ),
            (vec![good().on_gpu()], vec![], "GPU memory"),
            (vec![], vec![], "missing input 'x'"),
            (
                vec![good(), input("w", DataType::FP32, &[1], &data[..4])],
                vec![],
                "unexpected input 'w'",
            ),
            (vec![good()], vec!["nope"], "unknown output 'nope'"),
        ];
        for (inputs, outputs, expect) in cases {
            let err = check(&spec, inputs, &outputs)
                .err()
                .unwrap_or_else(|| panic!("no error for {expect}"));
            assert!(err.contains(expect), "{expect}: {err}");
        }
    }

    #[test]
    fn inputs_must_agree_on_the_batch_size() {
        let i = vec![
            io("a", DataType::INT8, TensorElementType::Int8, &[-1]),
            io("b", DataType::INT8, TensorElementType::Int8, &[-1]),
        ];
        let spec = ModelSpec::from_parts("m", &json!({"max_batch_size": 4}), i.clone(), i).unwrap();
        let two = input("a", DataType::INT8, &[2], &[1, 2]);
        let three = input("b", DataType::INT8, &[3], &[1, 2, 3]);
        let err = check(&spec, vec![two, three], &[]).unwrap_err();
        assert!(
            err.contains("batch size 3 but an earlier input has 2"),
            "{err}"
        );
    }

    #[test]
    fn string_inputs_are_counted() {
        let i = vec![io("s", DataType::BYTES, TensorElementType::String, &[-1])];
        let spec = ModelSpec::from_parts("m", &json!({}), i.clone(), i).unwrap();
        let two = bytes::encode(["a", "bc"]);
        let ok = input("s", DataType::BYTES, &[2], &two);
        assert_eq!(check(&spec, vec![ok], &[]), Ok(1));
        let bad = input("s", DataType::BYTES, &[3], &two);
        let err = check(&spec, vec![bad], &[]).unwrap_err();
        assert!(err.contains("holds 2 strings"), "{err}");
        let cut = input("s", DataType::BYTES, &[1], &two[..3]);
        let err = check(&spec, vec![cut], &[]).unwrap_err();
        assert!(err.contains("'s'"), "{err}");
    }
}
