//! Which ModelConfig fields this server acts on, so that a config using any other field is
//! reported (logged) instead of being silently ignored.

use prost::Message;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use super::ModelConfig;

/// Top-level fields the server implements.
const MODEL_FIELDS: &[&str] = &[
    "name",
    "platform",
    "backend",
    "version_policy",
    "max_batch_size",
    "input",
    "output",
    "instance_group",
    "default_model_filename",
    "parameters",
    "dynamic_batching",
    "sequence_batching",
    "ensemble_scheduling",
    // Handed to the backend, which applies what it supports (e.g. onnxruntime's graph level).
    "optimization",
    "model_transaction_policy",
    "model_warmup",
    "response_cache",
];

/// Fields of an input the server implements.
const INPUT_FIELDS: &[&str] = &["name", "data_type", "dims", "format", "optional", "reshape"];

/// Fields of an output the server implements.
const OUTPUT_FIELDS: &[&str] = &["name", "data_type", "dims", "reshape", "label_filename"];

/// Fields of an instance group the server implements.
const INSTANCE_GROUP_FIELDS: &[&str] = &["name", "count", "kind"];

/// Paths of the fields set in `config` that this server does not act on yet
/// (for example `dynamic_batching` or `input[INPUT0].reshape`).
pub fn unimplemented_fields(config: &ModelConfig) -> Vec<String> {
    let Ok(descriptor) = super::model_config_descriptor() else {
        return Vec::new();
    };
    let Ok(dynamic) = DynamicMessage::decode(descriptor, config.encode_to_vec().as_slice()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (field, value) in dynamic.fields() {
        let name = field.name();
        if !MODEL_FIELDS.contains(&name) {
            found.push(name.to_string());
            continue;
        }
        let allowed = match name {
            "input" => INPUT_FIELDS,
            "output" => OUTPUT_FIELDS,
            "instance_group" => INSTANCE_GROUP_FIELDS,
            _ => continue,
        };
        if let Value::List(items) = value {
            for item in items {
                if let Value::Message(message) = item {
                    let label = item_label(message);
                    for (inner, _) in message.fields() {
                        if !allowed.contains(&inner.name()) {
                            found.push(format!("{name}[{label}].{}", inner.name()));
                        }
                    }
                }
            }
        }
    }
    found
}

fn item_label(message: &DynamicMessage) -> String {
    let name_field = message.descriptor().get_field_by_name("name");
    match name_field.map(|f| message.get_field(&f).into_owned()) {
        Some(Value::String(s)) => s,
        _ => "?".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_fields_not_acted_on() {
        let config = super::super::parse_text(
            r#"
name: "m"
max_batch_size: 4
input [ { name: "A" data_type: TYPE_FP32 dims: [ 2 ] is_shape_tensor: true } ]
model_operations { op_library_filename: "libcustom.so" }
"#,
        )
        .unwrap();
        let found = unimplemented_fields(&config);
        assert_eq!(
            found,
            vec![
                "input[A].is_shape_tensor".to_string(),
                "model_operations".to_string()
            ]
        );
    }
}
