//! A model's execution options: the config `parameters` that Triton's PyTorch backend reads,
//! under the same names and with the same defaults.

use ferrum_backend_api::BackendError;

/// How one model runs, from its config's `parameters` (each a `string_value`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The TorchScript graph optimizer (`DISABLE_OPTIMIZED_EXECUTION` turns it off).
    pub optimized_execution: bool,
    /// Run under `InferenceMode` rather than `NoGradGuard` (`INFERENCE_MODE`, default true).
    pub inference_mode: bool,
    /// The profiling JIT executor on or off (`ENABLE_JIT_EXECUTOR`); libtorch's default if unset.
    pub jit_executor: Option<bool>,
    /// JIT profiling on or off (`ENABLE_JIT_PROFILING`); libtorch's default if unset.
    pub jit_profiling: Option<bool>,
    /// The tensor-expression fuser on or off (`ENABLE_TENSOR_FUSER`); libtorch's default if unset.
    pub tensor_fuser: Option<bool>,
    /// Instances share one loaded module (`ENABLE_WEIGHT_SHARING`, default false).
    pub weight_sharing: bool,
    /// Intra-op thread pool size (`INTRA_OP_THREAD_COUNT`); process-wide, first model wins.
    pub intra_op_threads: Option<i32>,
    /// Inter-op thread pool size (`INTER_OP_THREAD_COUNT`); process-wide, first model wins.
    pub inter_op_threads: Option<i32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            optimized_execution: true,
            inference_mode: true,
            jit_executor: None,
            jit_profiling: None,
            tensor_fuser: None,
            weight_sharing: false,
            intra_op_threads: None,
            inter_op_threads: None,
        }
    }
}

/// Parameters that only matter on a GPU; accepted and ignored by this CPU build.
pub const GPU_ONLY_PARAMETERS: [&str; 3] =
    ["ENABLE_CACHE_CLEANING", "DISABLE_CUDNN", "ENABLE_NVFUSER"];

impl Options {
    /// Reads the options through `parameter`, which returns a key's `string_value`.
    pub fn parse<'a>(parameter: impl Fn(&str) -> Option<&'a str>) -> Result<Self, BackendError> {
        let flag = |key: &str| parameter(key).map(|v| parse_bool(key, v)).transpose();
        let threads = |key: &str| {
            parameter(key)
                .map(|v| parse_threads(key, v))
                .transpose()
                .map(Option::flatten)
        };
        let defaults = Options::default();
        Ok(Options {
            optimized_execution: !flag("DISABLE_OPTIMIZED_EXECUTION")?
                .unwrap_or(!defaults.optimized_execution),
            inference_mode: flag("INFERENCE_MODE")?.unwrap_or(defaults.inference_mode),
            jit_executor: flag("ENABLE_JIT_EXECUTOR")?,
            jit_profiling: flag("ENABLE_JIT_PROFILING")?,
            tensor_fuser: flag("ENABLE_TENSOR_FUSER")?,
            weight_sharing: flag("ENABLE_WEIGHT_SHARING")?.unwrap_or(defaults.weight_sharing),
            intra_op_threads: threads("INTRA_OP_THREAD_COUNT")?,
            inter_op_threads: threads("INTER_OP_THREAD_COUNT")?,
        })
    }
}

/// A boolean parameter: true/false, 1/0, yes/no or on/off, in any case.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, BackendError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(BackendError::invalid_argument(format!(
            "parameter '{key}' must be a boolean (true or false), not '{value}'"
        ))),
    }
}

/// A thread count: a positive number sets it; zero or a negative number leaves libtorch's
/// default (as Triton does).
pub fn parse_threads(key: &str, value: &str) -> Result<Option<i32>, BackendError> {
    let n: i64 = value.trim().parse().map_err(|_| {
        BackendError::invalid_argument(format!(
            "parameter '{key}' must be an integer, not '{value}'"
        ))
    })?;
    if n <= 0 {
        return Ok(None);
    }
    i32::try_from(n).map(Some).map_err(|_| {
        BackendError::invalid_argument(format!("parameter '{key}' is too large: {value}"))
    })
}
