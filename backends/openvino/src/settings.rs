//! A model's `parameters` as Triton's OpenVINO backend reads them.

use ferrum_backend_api::{BackendError, LogLevel};
use openvino::RwPropertyKey;

/// What a model's config `parameters` ask of OpenVINO and of this backend.
#[derive(Debug, Default, PartialEq)]
pub struct Settings {
    /// CPU device properties to set before compiling.
    pub properties: Vec<(RwPropertyKey, String)>,
    /// `SKIP_OV_DYNAMIC_BATCHSIZE`: compile with the batch dimension fixed at `max_batch_size`.
    pub static_batch: bool,
    /// `ENABLE_BATCH_PADDING`: pad smaller batches up to the fixed batch size.
    pub batch_padding: bool,
    /// `RESHAPE_IO_LAYERS`: reshape the model's inputs to the dims the config declares.
    pub reshape_io: bool,
}

/// The config's `parameters` as (key, string value) pairs.
fn parameters(config: &serde_json::Value) -> Vec<(&str, &str)> {
    let Some(map) = config.get("parameters").and_then(|p| p.as_object()) else {
        return Vec::new();
    };
    map.iter()
        .map(|(key, value)| {
            let text = value
                .get("string_value")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            (key.as_str(), text)
        })
        .collect()
}

fn yes_no(key: &str, value: &str) -> Result<bool, BackendError> {
    match value.trim().to_ascii_uppercase().as_str() {
        "YES" | "TRUE" | "ON" | "1" => Ok(true),
        "NO" | "FALSE" | "OFF" | "0" | "" => Ok(false),
        _ => Err(BackendError::invalid_argument(format!(
            "parameter {key} is '{value}'; expected YES or NO"
        ))),
    }
}

fn count(key: &str, value: &str) -> Result<String, BackendError> {
    value
        .trim()
        .parse::<u32>()
        .map(|n| n.to_string())
        .map_err(|_| {
            BackendError::invalid_argument(format!(
                "parameter {key} is '{value}'; expected a whole number of 0 or more"
            ))
        })
}

impl Settings {
    /// Reads the settings from a model config (Triton's JSON form).
    pub fn from_config(config: &serde_json::Value) -> Result<Settings, BackendError> {
        let mut settings = Settings::default();
        for (key, value) in parameters(config) {
            match key {
                "PERFORMANCE_HINT" => {
                    let hint = value.trim().to_ascii_uppercase();
                    if !matches!(
                        hint.as_str(),
                        "LATENCY" | "THROUGHPUT" | "CUMULATIVE_THROUGHPUT"
                    ) {
                        return Err(BackendError::invalid_argument(format!(
                            "parameter PERFORMANCE_HINT is '{value}'; expected LATENCY, THROUGHPUT \
                             or CUMULATIVE_THROUGHPUT"
                        )));
                    }
                    settings
                        .properties
                        .push((RwPropertyKey::HintPerformanceMode, hint));
                }
                "NUM_STREAMS" | "CPU_THROUGHPUT_STREAMS" => {
                    let streams = value.trim().to_ascii_uppercase();
                    let streams = match streams.as_str() {
                        "AUTO" | "NUMA" => streams,
                        "CPU_THROUGHPUT_AUTO" => "AUTO".to_string(),
                        "CPU_THROUGHPUT_NUMA" => "NUMA".to_string(),
                        _ => count(key, value)?,
                    };
                    settings
                        .properties
                        .push((RwPropertyKey::NumStreams, streams));
                }
                "INFERENCE_NUM_THREADS" | "CPU_THREADS_NUM" => {
                    settings
                        .properties
                        .push((RwPropertyKey::InferenceNumThreads, count(key, value)?));
                }
                "COMPILATION_NUM_THREADS" => {
                    // Triton lists it, but OpenVINO's CPU plugin rejects the property.
                    count(key, value)?;
                    ferrum_backend_api::log(
                        LogLevel::WARN,
                        "openvino: COMPILATION_NUM_THREADS is not supported by OpenVINO's CPU \
                         plugin; ignored",
                    );
                }
                "HINT_BF16" | "ENFORCE_BF16" => {
                    if yes_no(key, value)? {
                        settings
                            .properties
                            .push((RwPropertyKey::HintInferencePrecision, "bf16".to_string()));
                    }
                }
                "INFERENCE_PRECISION_HINT" => {
                    let precision = value.trim().to_ascii_lowercase();
                    if !matches!(precision.as_str(), "f32" | "bf16" | "f16") {
                        return Err(BackendError::invalid_argument(format!(
                            "parameter INFERENCE_PRECISION_HINT is '{value}'; expected f32, bf16 \
                             or f16"
                        )));
                    }
                    settings
                        .properties
                        .push((RwPropertyKey::HintInferencePrecision, precision));
                }
                "SKIP_OV_DYNAMIC_BATCHSIZE" | "SKIP_DYNAMIC_BATCHSIZE" => {
                    settings.static_batch = yes_no(key, value)?;
                }
                "ENABLE_BATCH_PADDING" => settings.batch_padding = yes_no(key, value)?,
                "RESHAPE_IO_LAYERS" => settings.reshape_io = yes_no(key, value)?,
                "CPU_EXTENSION_PATH" => {
                    return Err(BackendError::unsupported(
                        "parameter CPU_EXTENSION_PATH (custom CPU kernels) is not supported by \
                         this backend",
                    ));
                }
                other => ferrum_backend_api::log(
                    LogLevel::WARN,
                    &format!(
                        "openvino: parameter '{other}' means nothing to this backend; ignored"
                    ),
                ),
            }
        }
        // OpenVINO's CPU plugin computes in bf16 by default on CPUs with bf16 units (AMX,
        // AVX512_BF16), which moves FP32 results by ~1e-2. Ask for FP32 unless told otherwise.
        if !settings
            .properties
            .iter()
            .any(|(key, _)| *key == RwPropertyKey::HintInferencePrecision)
        {
            settings
                .properties
                .push((RwPropertyKey::HintInferencePrecision, "f32".to_string()));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(pairs: &[(&str, &str)]) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!({ "string_value": v })))
            .collect();
        json!({ "parameters": map })
    }

    #[test]
    fn reads_triton_parameters() {
        let settings = Settings::from_config(&params(&[
            ("PERFORMANCE_HINT", "throughput"),
            ("NUM_STREAMS", "2"),
            ("INFERENCE_NUM_THREADS", "1"),
            ("SKIP_OV_DYNAMIC_BATCHSIZE", "YES"),
            ("ENABLE_BATCH_PADDING", "yes"),
        ]))
        .unwrap();
        assert_eq!(
            settings.properties,
            vec![
                (RwPropertyKey::HintPerformanceMode, "THROUGHPUT".to_string()),
                (RwPropertyKey::NumStreams, "2".to_string()),
                (RwPropertyKey::InferenceNumThreads, "1".to_string()),
                (RwPropertyKey::HintInferencePrecision, "f32".to_string()),
            ]
        );
        assert!(settings.static_batch && settings.batch_padding && !settings.reshape_io);
        let plain = Settings::from_config(&json!({})).unwrap();
        assert!(!plain.static_batch && !plain.batch_padding && !plain.reshape_io);
        let bf16 = Settings::from_config(&params(&[("HINT_BF16", "YES")])).unwrap();
        assert_eq!(
            bf16.properties,
            vec![(RwPropertyKey::HintInferencePrecision, "bf16".to_string())]
        );
    }

    #[test]
    fn rejects_bad_values_naming_the_parameter() {
        for (key, value) in [
            ("PERFORMANCE_HINT", "FAST"),
            ("NUM_STREAMS", "many"),
            ("INFERENCE_NUM_THREADS", "-1"),
            ("RESHAPE_IO_LAYERS", "maybe"),
        ] {
            let err = Settings::from_config(&params(&[(key, value)])).unwrap_err();
            assert!(err.message.contains(key), "{}", err.message);
        }
    }
}
