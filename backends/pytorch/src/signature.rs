//! How a model's config tensors map onto `forward()`: which argument each input is, and which
//! element of the returned tuple each output is (Triton's PyTorch naming conventions).

use ferrum_backend_api::{BackendError, DataType};
use serde_json::Value;

use crate::convert;

/// One tensor the config declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    /// Its name in the config.
    pub name: String,
    /// Its element type.
    pub datatype: DataType,
    /// Whether a request may leave it out (inputs only); `None` is passed in its place.
    pub optional: bool,
}

/// An output and the position of its tensor in what `forward()` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The declared output.
    pub declared: Declared,
    /// Index into the returned tuple or list (0 for a single tensor).
    pub index: usize,
}

/// The inputs in `forward()` argument order, and the outputs with their positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Inputs, ordered as `forward()` takes them.
    pub inputs: Vec<Declared>,
    /// Outputs, in config order.
    pub outputs: Vec<Output>,
}

/// The index in a name that follows Triton's `<name>__<index>` convention (`INPUT__0` → 0).
pub fn convention_index(name: &str) -> Option<usize> {
    let (_, digits) = name.rsplit_once("__")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The position of each name: its `__<index>` when every name has one, else its place in the
/// config. Indices must not repeat.
fn positions(names: &[&str], what: &str) -> Result<Vec<usize>, BackendError> {
    let indices: Option<Vec<usize>> = names.iter().map(|n| convention_index(n)).collect();
    let Some(indices) = indices else {
        return Ok((0..names.len()).collect());
    };
    for (i, index) in indices.iter().enumerate() {
        if let Some(j) = indices[..i].iter().position(|other| other == index) {
            return Err(BackendError::invalid_argument(format!(
                "{what}s '{}' and '{}' both name position {index}",
                names[j], names[i]
            )));
        }
    }
    Ok(indices)
}

fn declared(entry: &Value, section: &str) -> Result<Declared, BackendError> {
    let name = entry
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| BackendError::invalid_argument(format!("an {section} has no name")))?;
    let type_name = entry
        .get("data_type")
        .and_then(Value::as_str)
        .unwrap_or("TYPE_INVALID");
    let datatype = DataType::from_config_name(type_name).ok_or_else(|| {
        BackendError::invalid_argument(format!("{section} '{name}' has no valid data_type"))
    })?;
    if convert::kind_of(datatype).is_none() {
        return Err(BackendError::unsupported(format!(
            "{section} '{name}' has type {type_name}, which the pytorch backend does not support \
             (supported: {})",
            convert::SUPPORTED_CONFIG_TYPES.join(", ")
        )));
    }
    Ok(Declared {
        name: name.to_string(),
        datatype,
        optional: entry
            .get("optional")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

fn section<'a>(config: &'a Value, key: &str) -> &'a [Value] {
    config
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

impl Signature {
    /// Reads the inputs and outputs of a model config (Triton's ModelConfig as JSON).
    ///
    /// Inputs named `<name>__<index>` (all of them) are passed as argument `<index>`; otherwise
    /// inputs are passed in config order. Outputs named `<name>__<index>` (all of them) take
    /// element `<index>` of the returned tuple; otherwise element `i` for the `i`-th output.
    pub fn from_config(config: &Value) -> Result<Self, BackendError> {
        let inputs = section(config, "input")
            .iter()
            .map(|e| declared(e, "input"))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = section(config, "output")
            .iter()
            .map(|e| declared(e, "output"))
            .collect::<Result<Vec<_>, _>>()?;
        if outputs.is_empty() {
            return Err(BackendError::invalid_argument(
                "the model config declares no outputs; a TorchScript file does not record its \
                 tensors' names, types and shapes, so the pytorch backend cannot complete the \
                 config (as in Triton): declare the inputs and outputs in config.pbtxt",
            ));
        }

        let input_names: Vec<&str> = inputs.iter().map(|d| d.name.as_str()).collect();
        let input_positions = positions(&input_names, "input")?;
        let mut ordered: Vec<Option<Declared>> = vec![None; inputs.len()];
        for (declared, position) in inputs.iter().zip(&input_positions) {
            let slot = ordered.get_mut(*position).ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "input '{}' names forward() argument {position}, but the config declares only \
                     {} inputs; the indices of <name>__<index> inputs must run from 0 without gaps",
                    declared.name,
                    inputs.len()
                ))
            })?;
            *slot = Some(declared.clone());
        }
        let inputs = ordered.into_iter().flatten().collect();

        let output_names: Vec<&str> = outputs.iter().map(|d| d.name.as_str()).collect();
        let output_positions = positions(&output_names, "output")?;
        let outputs = outputs
            .into_iter()
            .zip(output_positions)
            .map(|(declared, index)| Output { declared, index })
            .collect();
        Ok(Signature { inputs, outputs })
    }
}
