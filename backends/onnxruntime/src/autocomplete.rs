//! Completing a model config from the ONNX file, the way Triton's ONNX Runtime backend does:
//! name/platform/backend when empty; `max_batch_size`, `input` and `output` when the config lists
//! no inputs or no outputs.

use ferrum_backend_api::{BackendError, LogLevel, log};
use serde_json::{Map, Value, json};

use crate::model::{IoInfo, Unsupported};

/// The platform name Triton gives ONNX models.
pub const PLATFORM: &str = "onnxruntime_onnx";
/// This backend's name.
pub const BACKEND: &str = "onnxruntime";

/// Whether a config string field is missing or empty.
fn is_empty_str(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str).is_none_or(str::is_empty)
}

/// Length of a config list field (0 when missing).
fn list_len(config: &Value, key: &str) -> usize {
    config
        .get(key)
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// Whether a config field is set (not missing, not null).
fn present(config: &Value, key: &str) -> bool {
    config.get(key).is_some_and(|v| !v.is_null())
}

/// Whether the config lists both inputs and outputs, so that the model file need not be read.
pub fn has_io(config: &Value) -> bool {
    list_len(config, "input") + list_len(config, "batch_input") > 0
        && list_len(config, "output") > 0
}

/// Fills in name, platform and backend; returns whether anything changed.
pub fn complete_names(config: &mut Map<String, Value>, model_name: &str) -> bool {
    let mut changed = false;
    for (key, value) in [
        ("name", model_name),
        ("platform", PLATFORM),
        ("backend", BACKEND),
    ] {
        if is_empty_str(config.get(key)) {
            config.insert(key.to_string(), Value::String(value.to_string()));
            changed = true;
        }
    }
    changed
}

/// Completes `config` from the model's inputs and outputs; `None` when nothing changes.
pub fn complete(
    config: &Value,
    model_name: &str,
    inputs: &[Result<IoInfo, Unsupported>],
    outputs: &[Result<IoInfo, Unsupported>],
    default_max_batch_size: i64,
) -> Result<Option<Value>, BackendError> {
    let Some(original) = config.as_object() else {
        return Err(BackendError::internal(
            "the model config handed to auto-complete is not an object",
        ));
    };
    let mut cfg = original.clone();
    let mut changed = complete_names(&mut cfg, model_name);
    let input_count = list_len(config, "input") + list_len(config, "batch_input");
    let output_count = list_len(config, "output");
    if input_count > 0 && output_count > 0 {
        return Ok(changed.then_some(Value::Object(cfg)));
    }
    let unsupported = |list: &[Result<IoInfo, Unsupported>],
                       kind: &str|
     -> Result<Vec<IoInfo>, BackendError> {
        list.iter()
            .map(|r| {
                r.clone().map_err(|u| {
                    BackendError::unsupported(format!(
                        "auto-complete of model '{model_name}': {kind} '{}' is a {}, which has no Triton data type",
                        u.name, u.what
                    ))
                })
            })
            .collect()
    };
    let inputs = unsupported(inputs, "input")?;
    let outputs = unsupported(outputs, "output")?;

    // Batching: possible when every input and output has a dynamic first dimension.
    let can_batch = inputs
        .iter()
        .chain(&outputs)
        .all(|io| io.shape.first().is_some_and(|&d| d < 0));
    let mut max_batch_size = config
        .get("max_batch_size")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if can_batch {
        if max_batch_size == 0 {
            max_batch_size = default_max_batch_size.max(0);
            if max_batch_size != 0 {
                cfg.insert("max_batch_size".into(), json!(max_batch_size));
                changed = true;
                log(
                    LogLevel::INFO,
                    &format!(
                        "model '{model_name}': auto-complete set max_batch_size to {max_batch_size} \
                         (every input and output has a dynamic first dimension); set max_batch_size \
                         in the config to choose another value"
                    ),
                );
            }
        }
        if max_batch_size > 1
            && !present(config, "dynamic_batching")
            && !present(config, "sequence_batching")
        {
            cfg.insert("dynamic_batching".into(), json!({}));
            changed = true;
        }
    } else if max_batch_size != 0 {
        return Err(BackendError::invalid_argument(format!(
            "auto-complete of model '{model_name}' failed: max_batch_size is {max_batch_size} but the \
             model cannot batch (not every input and output has a dynamic first dimension)"
        )));
    }

    let section = |list: &[IoInfo]| -> Value {
        Value::Array(
            list.iter()
                .map(|io| {
                    let skip = usize::from(max_batch_size > 0);
                    let dims: Vec<i64> = io.shape.iter().skip(skip).copied().collect();
                    let mut entry = json!({
                        "name": io.name,
                        "data_type": io.datatype.config_name().unwrap_or_default(),
                    });
                    if dims.is_empty() {
                        // Triton does not accept empty dims: a scalar is [1], reshaped to [] for the model.
                        entry["dims"] = json!([1]);
                        if max_batch_size > 0 {
                            entry["reshape"] = json!({"shape": []});
                        }
                    } else {
                        entry["dims"] = json!(dims);
                    }
                    entry
                })
                .collect(),
        )
    };
    if input_count == 0 {
        cfg.insert("input".into(), section(&inputs));
        changed = true;
    }
    if output_count == 0 {
        cfg.insert("output".into(), section(&outputs));
        changed = true;
    }
    Ok(changed.then_some(Value::Object(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrum_backend_api::DataType;
    use ort::value::TensorElementType as E;

    fn io(
        name: &str,
        datatype: DataType,
        element: E,
        shape: &[i64],
    ) -> Result<IoInfo, Unsupported> {
        Ok(IoInfo {
            name: name.into(),
            element,
            datatype,
            shape: shape.to_vec(),
        })
    }

    /// The config as the server hands it over: every field present, defaults included.
    fn server_config() -> Value {
        json!({
            "name": "", "platform": "", "backend": "", "max_batch_size": 0,
            "input": [], "output": [], "batch_input": [], "instance_group": [],
            "default_model_filename": "", "parameters": {}
        })
    }

    #[test]
    fn fills_everything_for_a_batchable_model() {
        let inputs = [io("x", DataType::FP32, E::Float32, &[-1, 4])];
        let outputs = [
            io("y", DataType::FP32, E::Float32, &[-1, 2]),
            io("s", DataType::BYTES, E::String, &[-1]),
        ];
        let cfg = complete(&server_config(), "mlp", &inputs, &outputs, 4)
            .unwrap()
            .unwrap();
        assert_eq!(cfg["name"], "mlp");
        assert_eq!(cfg["platform"], "onnxruntime_onnx");
        assert_eq!(cfg["backend"], "onnxruntime");
        assert_eq!(cfg["max_batch_size"], 4);
        assert_eq!(cfg["dynamic_batching"], json!({}));
        assert_eq!(
            cfg["input"],
            json!([{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}])
        );
        assert_eq!(
            cfg["output"],
            json!([
                {"name": "y", "data_type": "TYPE_FP32", "dims": [2]},
                {"name": "s", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}}
            ])
        );
    }

    #[test]
    fn fixed_first_dim_means_no_batching() {
        let inputs = [io("a", DataType::INT32, E::Int32, &[16])];
        let outputs = [io("b", DataType::INT32, E::Int32, &[-1, 16])];
        let cfg = complete(&server_config(), "m", &inputs, &outputs, 4)
            .unwrap()
            .unwrap();
        assert_eq!(cfg["max_batch_size"], 0);
        assert!(cfg.get("dynamic_batching").is_none());
        assert_eq!(cfg["input"][0]["dims"], json!([16]));
        assert_eq!(cfg["output"][0]["dims"], json!([-1, 16]));
        let mut with_batch = server_config();
        with_batch["max_batch_size"] = json!(8);
        let err = complete(&with_batch, "m", &inputs, &outputs, 4).unwrap_err();
        assert!(err.message.as_str().contains("cannot batch"));
    }

    #[test]
    fn keeps_what_the_config_says() {
        let inputs = [io("x", DataType::FP32, E::Float32, &[-1, 4])];
        let outputs = [io("y", DataType::FP32, E::Float32, &[-1, 2])];
        let mut cfg = server_config();
        cfg["name"] = json!("m");
        cfg["platform"] = json!("onnxruntime_onnx");
        cfg["backend"] = json!("onnxruntime");
        cfg["max_batch_size"] = json!(16);
        cfg["input"] = json!([{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]);
        let done = complete(&cfg, "m", &inputs, &outputs, 4).unwrap().unwrap();
        assert_eq!(done["max_batch_size"], 16);
        assert_eq!(done["input"], cfg["input"]);
        assert_eq!(
            done["output"],
            json!([{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}])
        );
        cfg["output"] = done["output"].clone();
        assert_eq!(complete(&cfg, "m", &inputs, &outputs, 4).unwrap(), None);
    }

    #[test]
    fn default_zero_keeps_batching_off() {
        let inputs = [io("x", DataType::FP32, E::Float32, &[-1])];
        let cfg = complete(&server_config(), "m", &inputs, &inputs, 0)
            .unwrap()
            .unwrap();
        assert_eq!(cfg["max_batch_size"], 0);
        assert_eq!(cfg["input"][0]["dims"], json!([-1]));
        assert!(cfg.get("dynamic_batching").is_none());
    }

    #[test]
    fn unsupported_tensor_is_named() {
        let inputs = [Err(Unsupported {
            name: "seq".into(),
            what: "Sequence<Tensor<f32>>".into(),
        })];
        let outputs = [io("y", DataType::FP32, E::Float32, &[1])];
        let err = complete(&server_config(), "m", &inputs, &outputs, 4).unwrap_err();
        assert!(err.message.as_str().contains("'seq'"));
    }
}
