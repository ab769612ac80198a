//! Model configuration: Triton's ModelConfig message, read from config.pbtxt (protobuf text
//! format) or JSON, completed with Triton's defaults, validated, and printed as Triton's JSON.

mod fields;
mod text;

use std::sync::OnceLock;

use ferrum_backend_api::DataType;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::error::{Error, Result};
pub use crate::proto::inference::{
    ModelConfig, ModelInput, ModelInstanceGroup, ModelOutput, ModelVersionPolicy,
};
use crate::proto::inference::{model_instance_group::Kind, model_version_policy};

pub use fields::unimplemented_fields;

/// Name of the message in the descriptor pool.
const MODEL_CONFIG: &str = "inference.ModelConfig";

/// The descriptor pool built from the protocol's .proto files.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The descriptor set is produced by our own build script from our own .proto files;
        // failing to decode it is a build defect, not an input error.
        #[allow(clippy::expect_used)]
        DescriptorPool::decode(crate::proto::DESCRIPTOR_SET)
            .expect("built-in descriptor set decodes")
    })
}

fn model_config_descriptor() -> Result<MessageDescriptor> {
    descriptor_pool()
        .get_message_by_name(MODEL_CONFIG)
        .ok_or_else(|| Error::internal("ModelConfig is missing from the built-in descriptors"))
}

/// Parses config.pbtxt text into a ModelConfig message.
pub fn parse_text(text: &str) -> Result<ModelConfig> {
    let text = text::add_list_colons(text);
    let dynamic = DynamicMessage::parse_text_format(model_config_descriptor()?, &text)
        .map_err(|e| Error::invalid(format!("not valid protobuf text format: {e}")))?;
    from_dynamic(&dynamic)
}

/// Parses a ModelConfig written as JSON (Triton's shape: snake_case or camelCase names).
pub fn parse_json(json: &str) -> Result<ModelConfig> {
    let mut de = serde_json::Deserializer::from_str(json);
    let dynamic =
        DynamicMessage::deserialize(model_config_descriptor()?, &mut de).map_err(|e| {
            Error::invalid(format!("model config JSON is not a valid ModelConfig: {e}"))
        })?;
    from_dynamic(&dynamic)
}

fn from_dynamic(dynamic: &DynamicMessage) -> Result<ModelConfig> {
    ModelConfig::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| Error::internal(format!("model config does not re-encode: {e}")))
}

/// The config as Triton prints it: snake_case names, every primitive field present,
/// enums by name, 64-bit integers as numbers.
pub fn to_json(config: &ModelConfig) -> Result<serde_json::Value> {
    let dynamic = DynamicMessage::decode(
        model_config_descriptor()?,
        config.encode_to_vec().as_slice(),
    )
    .map_err(|e| Error::internal(format!("model config does not decode: {e}")))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| Error::internal(format!("model config does not print as JSON: {e}")))
}

/// The backend a config names: `backend`, or the one its `platform` implies.
pub fn backend_name(config: &ModelConfig) -> Result<String> {
    if !config.backend.is_empty() {
        return Ok(config.backend.clone());
    }
    let backend = match config.platform.as_str() {
        "" => {
            return Err(Error::invalid(
                "model config names neither a backend nor a platform",
            ));
        }
        "onnxruntime_onnx" => "onnxruntime",
        "pytorch_libtorch" => "pytorch",
        "tensorrt_plan" => "tensorrt",
        "tensorflow_graphdef" | "tensorflow_savedmodel" => "tensorflow",
        "openvino" => "openvino",
        other => other,
    };
    Ok(backend.to_string())
}

/// Whether the model is decoupled: it sends any number of responses per request, then the
/// final flag (`model_transaction_policy { decoupled: true }`).
pub fn is_decoupled(config: &ModelConfig) -> bool {
    config
        .model_transaction_policy
        .as_ref()
        .is_some_and(|p| p.decoupled)
}

/// Fills in Triton's defaults (name, version policy, instance group) and checks the config.
pub fn normalize(config: &mut ModelConfig, model_name: &str) -> Result<()> {
    if config.name.is_empty() {
        config.name = model_name.to_string();
    } else if config.name != model_name {
        return Err(Error::invalid(format!(
            "config name '{}' does not match the model folder name '{model_name}'",
            config.name
        )));
    }
    if config
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
        .is_none()
    {
        config.version_policy = Some(ModelVersionPolicy {
            policy_choice: Some(model_version_policy::PolicyChoice::Latest(
                model_version_policy::Latest { num_versions: 1 },
            )),
        });
    }
    if config.max_batch_size < 0 {
        return Err(Error::invalid(format!(
            "max_batch_size must be 0 or more, not {}",
            config.max_batch_size
        )));
    }
    if config.instance_group.is_empty() {
        config.instance_group.push(ModelInstanceGroup {
            count: 1,
            kind: Kind::Cpu as i32,
            ..Default::default()
        });
    }
    for (i, group) in config.instance_group.iter_mut().enumerate() {
        if group.name.is_empty() {
            group.name = if i == 0 {
                model_name.to_string()
            } else {
                format!("{model_name}_{i}")
            };
        }
        if group.count == 0 {
            group.count = 1;
        }
        if group.count < 0 {
            return Err(Error::invalid(format!(
                "instance group '{}' has a negative count {}",
                group.name, group.count
            )));
        }
        match Kind::try_from(group.kind) {
            Ok(Kind::Auto) => group.kind = Kind::Cpu as i32,
            Ok(Kind::Cpu) | Ok(Kind::Model) => {}
            Ok(Kind::Gpu) => {
                return Err(Error::unsupported(format!(
                    "instance group '{}' asks for KIND_GPU; GPU instances are not supported on this server",
                    group.name
                )));
            }
            Err(_) => {
                return Err(Error::invalid(format!(
                    "instance group '{}' has an unknown kind {}",
                    group.name, group.kind
                )));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for input in &config.input {
        check_tensor(
            "input",
            &input.name,
            input.data_type,
            &input.dims,
            &mut seen,
        )?;
    }
    seen.clear();
    for output in &config.output {
        check_tensor(
            "output",
            &output.name,
            output.data_type,
            &output.dims,
            &mut seen,
        )?;
    }
    Ok(())
}

fn check_tensor(
    what: &str,
    name: &str,
    data_type: i32,
    dims: &[i64],
    seen: &mut std::collections::HashSet<String>,
) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("an {what} has no name")));
    }
    if !seen.insert(name.to_string()) {
        return Err(Error::invalid(format!(
            "{what} '{name}' appears more than once"
        )));
    }
    if datatype_of(data_type).is_none() {
        return Err(Error::invalid(format!(
            "{what} '{name}' has no valid data_type"
        )));
    }
    if let Some(d) = dims.iter().find(|&&d| d < -1 || d == 0) {
        return Err(Error::invalid(format!(
            "{what} '{name}' has dimension {d}; dims must be positive or -1"
        )));
    }
    Ok(())
}

/// The tensor data type a config `data_type` value stands for.
pub fn datatype_of(config_type: i32) -> Option<DataType> {
    use crate::proto::inference::DataType as Pb;
    let pb = Pb::try_from(config_type).ok()?;
    DataType::from_config_name(pb.as_str_name())
}

/// The config `data_type` value of a tensor data type.
pub fn config_type_of(datatype: DataType) -> i32 {
    use crate::proto::inference::DataType as Pb;
    datatype
        .config_name()
        .and_then(|n| Pb::from_str_name(&n))
        .map_or(Pb::TypeInvalid as i32, |pb| pb as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &str = r#"
name: "simple"
backend: "add_sub"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 100 }
"#;

    #[test]
    fn parses_text_format() {
        let config = parse_text(SIMPLE).unwrap();
        assert_eq!(config.name, "simple");
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.input[0].dims, vec![16]);
        assert_eq!(
            datatype_of(config.input[0].data_type),
            Some(DataType::INT32)
        );
        use crate::proto::inference::model_config::SchedulingChoice;
        match config.scheduling_choice {
            Some(SchedulingChoice::DynamicBatching(d)) => {
                assert_eq!(d.preferred_batch_size, vec![4])
            }
            other => panic!("dynamic_batching not parsed: {other:?}"),
        }
    }

    #[test]
    fn rejects_unknown_fields_with_position() {
        let err = parse_text("name: \"x\"\nbogus_field: 3\n").unwrap_err();
        assert!(err.message.contains("bogus_field"), "{}", err.message);
    }

    #[test]
    fn json_round_trip_prints_triton_shape() {
        let mut config = parse_text(SIMPLE).unwrap();
        normalize(&mut config, "simple").unwrap();
        let json = to_json(&config).unwrap();
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(json["input"][0]["data_type"], "TYPE_INT32");
        assert_eq!(json["input"][0]["dims"][0], 16);
        assert_eq!(json["version_policy"]["latest"]["num_versions"], 1);
        assert_eq!(json["instance_group"][0]["kind"], "KIND_CPU");
        let back = parse_json(&json.to_string()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn normalize_checks_name_and_dims() {
        let mut config = parse_text(SIMPLE).unwrap();
        assert!(normalize(&mut config, "other").is_err());
        let mut config =
            parse_text("input [ { name: \"A\" data_type: TYPE_FP32 dims: [ 0 ] } ]").unwrap();
        assert!(normalize(&mut config, "m").is_err());
    }

    #[test]
    fn backend_from_platform() {
        let config = parse_text("platform: \"onnxruntime_onnx\"").unwrap();
        assert_eq!(backend_name(&config).unwrap(), "onnxruntime");
    }

    #[test]
    fn type_names_map_both_ways() {
        for dt in DataType::ALL {
            assert_eq!(datatype_of(config_type_of(dt)), Some(dt));
        }
    }
}
