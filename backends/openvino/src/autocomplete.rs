//! Config auto-complete: name, inputs, outputs and `max_batch_size` from the model file.

use ferrum_backend_api::{BackendError, ModelContext};
use openvino::Core;
use serde_json::{Value, json};

use crate::model::max_batch_size;
use crate::ports::{self, Port};

/// Whether every port has a known rank of 1 or more and a dynamic first dimension.
fn can_batch(ports: &[Port]) -> bool {
    ports
        .iter()
        .all(|p| matches!(p.dims.as_deref(), Some([first, ..]) if *first < 0))
}

/// A config entry for a port: name, data type and dims (batch dimension left out).
fn entry(port: &Port, what: &str, batching: bool) -> Result<Value, BackendError> {
    let datatype = port.datatype(what)?;
    let type_name = datatype.config_name().ok_or_else(|| {
        BackendError::internal(format!("{what} '{}' has no config type name", port.name))
    })?;
    let dims = port.dims.as_ref().ok_or_else(|| {
        BackendError::invalid_argument(format!(
            "model {what} '{}' has a dynamic rank, so its dims cannot be completed; declare \
             them in config.pbtxt",
            port.name
        ))
    })?;
    let dims: &[i64] = if batching {
        dims.split_first().map(|(_, rest)| rest).ok_or_else(|| {
            BackendError::invalid_argument(format!(
                "model {what} '{}' is a scalar, so it has no batch dimension; set \
                 max_batch_size to 0",
                port.name
            ))
        })?
    } else {
        dims
    };
    Ok(if dims.is_empty() {
        // A scalar: clients send one element, the model sees rank 0 (as Triton does it).
        json!({ "name": port.name, "data_type": type_name, "dims": [1], "reshape": { "shape": [] } })
    } else {
        json!({ "name": port.name, "data_type": type_name, "dims": dims })
    })
}

fn is_empty_list(config: &Value, key: &str) -> bool {
    config
        .get(key)
        .and_then(|v| v.as_array())
        .is_none_or(|a| a.is_empty())
}

/// Completes `ctx.config` from the model file.
pub fn complete(
    ctx: &ModelContext,
    core: &mut Core,
    default_max_batch_size: i64,
) -> Result<Value, BackendError> {
    let mut config = ctx.config.clone();
    let Some(object) = config.as_object_mut() else {
        return Err(BackendError::internal(
            "the model config is not a JSON object",
        ));
    };
    if object
        .get("name")
        .and_then(|n| n.as_str())
        .is_none_or(str::is_empty)
    {
        object.insert("name".into(), json!(ctx.name));
    }
    let fill_inputs = is_empty_list(&config, "input");
    let fill_outputs = is_empty_list(&config, "output");
    let mut max_batch = max_batch_size(&config);
    if !fill_inputs && !fill_outputs {
        return Ok(config);
    }

    let path = ports::model_file(ctx)?;
    let model = ports::read_model(core, &path)?;
    let inputs = ports::inputs(&model)?;
    let outputs = ports::outputs(&model)?;
    // Batching is only inferred for a config that says nothing about the tensors: a config
    // that declares some of them has chosen its dims, and with them whether it batches.
    if max_batch == 0
        && fill_inputs
        && fill_outputs
        && default_max_batch_size > 0
        && !inputs.is_empty()
        && can_batch(&inputs)
        && can_batch(&outputs)
    {
        max_batch = default_max_batch_size;
    }
    let batching = max_batch > 0;
    let mut completed = config;
    if let Some(object) = completed.as_object_mut() {
        object.insert("max_batch_size".into(), json!(max_batch));
        if fill_inputs {
            let list = inputs
                .iter()
                .map(|p| entry(p, "input", batching))
                .collect::<Result<Vec<_>, _>>()?;
            object.insert("input".into(), Value::Array(list));
        }
        if fill_outputs {
            let list = outputs
                .iter()
                .map(|p| entry(p, "output", batching))
                .collect::<Result<Vec<_>, _>>()?;
            object.insert("output".into(), Value::Array(list));
        }
    }
    Ok(completed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openvino::ElementType;

    fn port(name: &str, dims: Option<Vec<i64>>) -> Port {
        Port {
            name: name.into(),
            index: 0,
            element: ElementType::F32,
            dims,
        }
    }

    #[test]
    fn batching_needs_a_dynamic_first_dim_everywhere() {
        assert!(can_batch(&[
            port("a", Some(vec![-1, 4])),
            port("b", Some(vec![-1]))
        ]));
        assert!(!can_batch(&[
            port("a", Some(vec![-1, 4])),
            port("b", Some(vec![1, 4]))
        ]));
        assert!(!can_batch(&[port("a", Some(vec![]))]));
        assert!(!can_batch(&[port("a", None)]));
    }

    #[test]
    fn entries_strip_the_batch_dim_and_wrap_scalars() {
        let e = entry(&port("x", Some(vec![-1, 4])), "input", true).unwrap();
        assert_eq!(
            e,
            json!({ "name": "x", "data_type": "TYPE_FP32", "dims": [4] })
        );
        let e = entry(&port("x", Some(vec![-1, 4])), "input", false).unwrap();
        assert_eq!(e["dims"], json!([-1, 4]));
        let e = entry(&port("s", Some(vec![-1])), "output", true).unwrap();
        assert_eq!(e["dims"], json!([1]));
        assert_eq!(e["reshape"]["shape"], json!([]));
        let err = entry(&port("r", None), "input", false).unwrap_err();
        assert!(err.message.contains("'r'"), "{}", err.message);
    }
}
