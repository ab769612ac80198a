//! A loaded FIL model: its settings (the config's `parameters`, as Triton's FIL backend
//! reads them), its forest, and how a request's rows become `output__0` and
//! `treeshap_output`.

use std::path::{Path, PathBuf};

use ferrum_backend_api::prelude::*;
use serde_json::Value;

use crate::forest::Forest;
use crate::{lightgbm, shap, treelite, ubjson, xgboost};

/// The input's name when the config names none.
pub const INPUT: &str = "input__0";
/// The prediction output's name.
pub const OUTPUT: &str = "output__0";
/// The SHAP output's name (FIL's).
pub const SHAP_OUTPUT: &str = "treeshap_output";
/// Deepest tree SHAP values are computed for (the walk recurses once per level).
const MAX_SHAP_DEPTH: usize = 256;

/// A serialization format (`model_type`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ModelType {
    /// XGBoost JSON (`xgboost.json`).
    XgboostJson,
    /// XGBoost UBJSON (`xgboost.ubj`).
    XgboostUbj,
    /// LightGBM text (`model.txt`).
    Lightgbm,
    /// Treelite checkpoint (`checkpoint.tl`), e.g. of a scikit-learn forest.
    TreeliteCheckpoint,
}

impl ModelType {
    /// Reads the `model_type` parameter.
    fn parse(value: &str) -> Result<ModelType, String> {
        match value {
            "xgboost_json" => Ok(ModelType::XgboostJson),
            "xgboost_ubj" => Ok(ModelType::XgboostUbj),
            "lightgbm" => Ok(ModelType::Lightgbm),
            "treelite_checkpoint" => Ok(ModelType::TreeliteCheckpoint),
            "xgboost" => Err(format!(
                "model_type '{value}' is not supported by this backend yet (use xgboost_json, \
                 xgboost_ubj, lightgbm or treelite_checkpoint)"
            )),
            other => Err(format!(
                "unknown model_type '{other}' (expected xgboost_json, xgboost_ubj, lightgbm or \
                 treelite_checkpoint)"
            )),
        }
    }

    /// The file name FIL expects in a version folder.
    pub fn default_file(self) -> &'static str {
        match self {
            ModelType::XgboostJson => "xgboost.json",
            ModelType::XgboostUbj => "xgboost.ubj",
            ModelType::Lightgbm => "model.txt",
            ModelType::TreeliteCheckpoint => "checkpoint.tl",
        }
    }

    /// Guesses the type from the files of a version folder (for configs without one).
    fn detect(folder: &Path) -> Option<ModelType> {
        [
            ModelType::XgboostJson,
            ModelType::XgboostUbj,
            ModelType::Lightgbm,
            ModelType::TreeliteCheckpoint,
        ]
        .into_iter()
        .find(|t| folder.join(t.default_file()).is_file())
    }
}

/// The config's FIL parameters.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The model format.
    pub model_type: ModelType,
    /// Whether output__0 is a class (or class probabilities); `None`: from the objective.
    pub output_class: Option<bool>,
    /// Whether output__0 holds class probabilities.
    pub predict_proba: bool,
    /// Binary decision threshold on the positive class's probability.
    pub threshold: f64,
    /// Threads one request may use.
    pub threads: usize,
}

/// A boolean parameter ("true"/"false", any case, or 1/0).
fn flag(ctx: &ModelContext, key: &str) -> Result<Option<bool>, String> {
    match ctx.parameter(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v == "true" || v == "1" => Ok(Some(true)),
        Some(v) if v == "false" || v == "0" => Ok(Some(false)),
        Some(v) => Err(format!(
            "parameter '{key}' is '{v}', expected true or false"
        )),
    }
}

impl Settings {
    /// Reads the parameters; `model_type` may be guessed from the version folder's files.
    pub fn from_config(ctx: &ModelContext) -> Result<Settings, String> {
        let model_type = match ctx.parameter("model_type") {
            Some(v) => ModelType::parse(v.trim())?,
            None => ModelType::detect(&ctx.version_path).ok_or_else(|| {
                "the config has no model_type parameter (xgboost_json, xgboost_ubj, \
                 lightgbm or treelite_checkpoint) and no model file with a default name was found"
                    .to_string()
            })?,
        };
        let output_class = match flag(ctx, "output_class")? {
            Some(v) => Some(v),
            None => flag(ctx, "is_classifier")?,
        };
        let predict_proba = flag(ctx, "predict_proba")?.unwrap_or(false);
        let threshold = match ctx.parameter("threshold") {
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite())
                .ok_or_else(|| format!("parameter 'threshold' is '{v}', not a number"))?,
            None => 0.5,
        };
        let default_threads = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = match ctx.parameter("threads") {
            Some(v) => match v.trim().parse::<usize>() {
                Ok(0) => default_threads,
                Ok(n) => n,
                Err(_) => return Err(format!("parameter 'threads' is '{v}', not a count")),
            },
            None => default_threads,
        };
        Ok(Settings {
            model_type,
            output_class,
            predict_proba,
            threshold,
            threads,
        })
    }
}

/// The model file of a version: the config's `default_model_filename` or FIL's default name.
pub fn model_file(ctx: &ModelContext, model_type: ModelType) -> PathBuf {
    let name = ctx
        .config
        .get("default_model_filename")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(model_type.default_file());
    ctx.version_path.join(name)
}

/// Reads and parses a model file.
pub fn load_forest(path: &Path, model_type: ModelType) -> Result<Forest, BackendError> {
    let bytes = std::fs::read(path).map_err(|e| {
        BackendError::not_found(format!("cannot read model file {}: {e}", path.display()))
    })?;
    let parsed = match model_type {
        ModelType::XgboostJson => serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| format!("not valid JSON: {e}"))
            .and_then(|v| xgboost::forest_from_value(&v)),
        ModelType::XgboostUbj => ubjson::parse(&bytes).and_then(|v| xgboost::forest_from_value(&v)),
        ModelType::Lightgbm => std::str::from_utf8(&bytes)
            .map_err(|_| "not a text file (invalid UTF-8)".to_string())
            .and_then(lightgbm::forest_from_text),
        ModelType::TreeliteCheckpoint => treelite::forest_from_bytes(&bytes),
    };
    parsed.map_err(|e| {
        BackendError::invalid_argument(format!(
            "model file {} ({:?}) is damaged or unsupported: {e}",
            path.display(),
            model_type
        ))
    })
}

/// What output__0 holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Output0 {
    /// The transformed prediction per group (regression value, probability, raw score).
    Values,
    /// Class probabilities; `positive_only` for a binary model whose config asks for one
    /// column.
    Probabilities {
        /// Return only the positive class's probability.
        positive_only: bool,
    },
    /// The class index (as FP32).
    Class,
}

/// A loaded model, shared by all instances.
pub struct FilModel {
    /// The model's name, for messages.
    name: String,
    /// The forest.
    forest: Forest,
    /// Each tree's expected value (for SHAP).
    expected: Vec<f64>,
    /// The config's parameters.
    settings: Settings,
    /// The input's name.
    input: String,
    /// What output__0 holds.
    output0: Output0,
    /// Columns of output__0.
    output0_columns: usize,
    /// Whether the config has the SHAP output.
    has_shap: bool,
    /// Whether the model batches (rows are the first dimension).
    batching: bool,
}

/// The configured dims (without the batch dimension) of output `name`, if listed.
fn config_dims(config: &Value, section: &str, name: &str) -> Option<Vec<i64>> {
    let entry = config
        .get(section)?
        .as_array()?
        .iter()
        .find(|o| o.get("name").and_then(Value::as_str) == Some(name))?;
    Some(
        entry
            .get("dims")
            .and_then(Value::as_array)
            .map(|dims| {
                dims.iter()
                    .filter_map(|d| {
                        d.as_i64()
                            .or_else(|| d.as_str().and_then(|s| s.parse().ok()))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Whether configured dims fit a shape (dims of -1 fit anything).
fn dims_fit(dims: &[i64], shape: &[usize]) -> bool {
    dims.len() == shape.len()
        && dims
            .iter()
            .zip(shape)
            .all(|(&d, &s)| d < 0 || d as usize == s)
}

/// What output__0 holds, and its width, for a forest and settings.
fn output0_kind(forest: &Forest, settings: &Settings, dims: Option<&[i64]>) -> (Output0, usize) {
    let groups = forest.num_groups;
    let classes = if groups == 1 { 2 } else { groups };
    if settings.predict_proba {
        let positive_only = groups == 1 && dims.is_some_and(|d| d == [1]);
        let cols = if positive_only { 1 } else { classes };
        (Output0::Probabilities { positive_only }, cols)
    } else if settings.output_class.unwrap_or(forest.is_classifier) {
        (Output0::Class, 1)
    } else {
        (Output0::Values, groups)
    }
}

/// The width of output__0 a config would get (for auto-complete).
pub fn output0_columns(forest: &Forest, settings: &Settings) -> usize {
    output0_kind(forest, settings, None).1
}

impl FilModel {
    /// Loads a model version.
    pub fn load(ctx: &ModelContext) -> Result<FilModel, BackendError> {
        let settings = Settings::from_config(ctx)
            .map_err(|e| BackendError::invalid_argument(format!("model '{}': {e}", ctx.name)))?;
        let path = model_file(ctx, settings.model_type);
        let forest = load_forest(&path, settings.model_type)?;
        let input = ctx
            .tensor_names("input")
            .into_iter()
            .next()
            .unwrap_or_else(|| INPUT.to_string());
        let invalid =
            |m: String| BackendError::invalid_argument(format!("model '{}': {m}", ctx.name));
        let out_dims = config_dims(&ctx.config, "output", OUTPUT);
        let (output0, output0_columns) = output0_kind(&forest, &settings, out_dims.as_deref());
        if let Some(dims) = &out_dims
            && !dims_fit(dims, &[output0_columns])
        {
            return Err(invalid(format!(
                "output '{OUTPUT}' has dims {dims:?} in the config, but this model gives {output0_columns} \
                 value(s) per row ({output0:?}, predict_proba {}, output_class {})",
                settings.predict_proba,
                settings.output_class.unwrap_or(forest.is_classifier),
            )));
        }
        if let Some(dims) = config_dims(&ctx.config, "input", &input)
            && !dims_fit(&dims, &[forest.num_features])
        {
            return Err(invalid(format!(
                "input '{input}' has dims {dims:?} in the config, but {} has {} features",
                path.display(),
                forest.num_features
            )));
        }
        let shap_dims = config_dims(&ctx.config, "output", SHAP_OUTPUT);
        if let Some(dims) = &shap_dims {
            let width = forest.num_features + 1;
            let fits = if forest.num_groups == 1 {
                dims_fit(dims, &[width])
            } else {
                dims_fit(dims, &[forest.num_groups, width])
            };
            if !fits {
                return Err(invalid(format!(
                    "output '{SHAP_OUTPUT}' has dims {dims:?} in the config; this model needs [{}]",
                    if forest.num_groups == 1 {
                        format!("{width}")
                    } else {
                        format!("{}, {width}", forest.num_groups)
                    }
                )));
            }
        }
        if shap_dims.is_some() && forest.max_depth > MAX_SHAP_DEPTH {
            return Err(invalid(format!(
                "{} has a tree of depth {}; SHAP values ('{SHAP_OUTPUT}') are computed for trees \
                 up to depth {MAX_SHAP_DEPTH}",
                path.display(),
                forest.max_depth
            )));
        }
        if shap_dims.is_some() && forest.covers.iter().any(|c| c.is_nan()) {
            return Err(invalid(format!(
                "{} stores no node sample counts or weights, which SHAP values \
                 ('{SHAP_OUTPUT}') need; remove that output from the config",
                path.display()
            )));
        }
        let expected = shap::expected_values(&forest);
        Ok(FilModel {
            name: ctx.name.clone(),
            forest,
            expected,
            settings,
            input,
            output0,
            output0_columns,
            has_shap: shap_dims.is_some(),
            batching: ctx.max_batch_size() > 0,
        })
    }

    /// The request's rows as `f32`, row-major, their count, and whether the input has a
    /// rows dimension (a model that does not batch may take one row as `[features]`).
    fn rows(&self, request: &Request) -> Result<(Vec<f32>, usize, bool), BackendError> {
        let tensor = request.require_input(&self.input)?;
        if tensor.datatype != DataType::FP32 {
            return Err(BackendError::invalid_argument(format!(
                "model '{}': input '{}' must be FP32, got {}",
                self.name, self.input, tensor.datatype
            )));
        }
        let f = self.forest.num_features;
        let shape = tensor.shape();
        let (rows, width, ranked) = match shape {
            [n, w] => (*n, *w, true),
            [w] if !self.batching => (1, *w, false),
            _ => {
                return Err(BackendError::invalid_argument(format!(
                    "model '{}': input '{}' has shape {shape:?}; expected [rows, {f}]",
                    self.name, self.input
                )));
            }
        };
        if width != f as i64 {
            return Err(BackendError::invalid_argument(format!(
                "model '{}': input '{}' has {width} features per row, the model takes {f}",
                self.name, self.input
            )));
        }
        let rows = usize::try_from(rows).map_err(|_| {
            BackendError::invalid_argument(format!(
                "input '{}' has a negative dimension",
                self.input
            ))
        })?;
        let data = tensor.data();
        if data.len() != rows * f * 4 {
            return Err(BackendError::invalid_argument(format!(
                "input '{}' holds {} bytes, its shape {shape:?} needs {}",
                self.input,
                data.len(),
                rows * f * 4
            )));
        }
        let x = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((x, rows, ranked))
    }

    /// output__0 for `rows` rows of transformed predictions.
    fn output0_values(&self, mut values: Vec<f64>, rows: usize) -> Vec<f32> {
        let g = self.forest.num_groups;
        self.forest.transform(&mut values);
        match self.output0 {
            Output0::Values => values.iter().map(|&v| v as f32).collect(),
            Output0::Probabilities { positive_only } => {
                if g > 1 || positive_only {
                    values.iter().map(|&v| v as f32).collect()
                } else {
                    values
                        .iter()
                        .flat_map(|&p| [(1.0 - p) as f32, p as f32])
                        .collect()
                }
            }
            Output0::Class => {
                if g == 2 && self.forest.is_classifier {
                    // Two probability columns (scikit-learn's binary classifiers): the
                    // threshold applies to the second.
                    values
                        .chunks(2)
                        .map(|p| {
                            if p[1] > self.settings.threshold {
                                1.0
                            } else {
                                0.0
                            }
                        })
                        .collect()
                } else if g == 1 {
                    values
                        .iter()
                        .map(|&p| {
                            if p > self.settings.threshold {
                                1.0
                            } else {
                                0.0
                            }
                        })
                        .collect()
                } else {
                    values
                        .chunks(g)
                        .take(rows)
                        .map(|row| {
                            let mut best = 0;
                            for (i, &v) in row.iter().enumerate() {
                                if v > row[best] {
                                    best = i;
                                }
                            }
                            best as f32
                        })
                        .collect()
                }
            }
        }
    }

    /// Runs one request, writing its outputs into the response.
    pub fn respond(&self, request: &Request, response: &mut Response) -> Result<(), BackendError> {
        let (x, rows, ranked) = self.rows(request)?;
        let n = rows as i64;
        if request.wants_output(OUTPUT) {
            let margins = self.forest.margins(&x, rows, self.settings.threads);
            let values = self.output0_values(margins, rows);
            let shape: Vec<i64> = if ranked {
                vec![n, self.output0_columns as i64]
            } else {
                vec![self.output0_columns as i64]
            };
            write_f32(response.output(OUTPUT, DataType::FP32, &shape)?, &values);
        }
        if self.has_shap && request.wants_output(SHAP_OUTPUT) {
            let phi = shap::shap_values(&self.forest, &self.expected, &x, rows);
            let (g, w) = (
                self.forest.num_groups as i64,
                self.forest.num_features as i64 + 1,
            );
            let mut shape = if g == 1 { vec![w] } else { vec![g, w] };
            if ranked {
                shape.insert(0, n);
            }
            let values: Vec<f32> = phi.iter().map(|&v| v as f32).collect();
            write_f32(
                response.output(SHAP_OUTPUT, DataType::FP32, &shape)?,
                &values,
            );
        }
        Ok(())
    }
}

/// Writes `f32` values little-endian into an output buffer of the same size.
fn write_f32(out: &mut [u8], values: &[f32]) {
    for (dst, v) in out.chunks_exact_mut(4).zip(values) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::{Node, Transform};

    fn forest(groups: usize, is_classifier: bool) -> Forest {
        let mut f = Forest {
            num_features: 1,
            num_groups: groups,
            nodes: (0..groups).map(|g| Node::leaf(g as f64)).collect(),
            covers: vec![1.0; groups],
            values: Vec::new(),
            depths: Vec::new(),
            roots: (0..groups as u32).collect(),
            groups: (0..groups as u32).collect(),
            set_words: Vec::new(),
            set_ranges: Vec::new(),
            members_go_left: false,
            base_margin: vec![0.0; groups],
            transform: if groups > 1 {
                Transform::Softmax
            } else {
                Transform::Sigmoid(1.0)
            },
            is_classifier,
            max_depth: 0,
        };
        f.validate().expect("valid");
        f
    }

    fn settings(output_class: Option<bool>, predict_proba: bool) -> Settings {
        Settings {
            model_type: ModelType::XgboostJson,
            output_class,
            predict_proba,
            threshold: 0.5,
            threads: 1,
        }
    }

    #[test]
    fn output_kinds_follow_fil() {
        let binary = forest(1, true);
        let multi = forest(3, true);
        let proba = settings(Some(true), true);
        assert_eq!(
            output0_kind(&binary, &proba, None),
            (
                Output0::Probabilities {
                    positive_only: false
                },
                2
            )
        );
        assert_eq!(
            output0_kind(&binary, &proba, Some(&[1])),
            (
                Output0::Probabilities {
                    positive_only: true
                },
                1
            )
        );
        assert_eq!(
            output0_kind(&multi, &proba, Some(&[3])),
            (
                Output0::Probabilities {
                    positive_only: false
                },
                3
            )
        );
        assert_eq!(
            output0_kind(&multi, &settings(None, false), None),
            (Output0::Class, 1)
        );
        assert_eq!(
            output0_kind(&multi, &settings(Some(false), false), None),
            (Output0::Values, 3)
        );
        assert_eq!(
            output0_kind(&forest(1, false), &settings(None, false), None),
            (Output0::Values, 1)
        );
    }

    #[test]
    fn dims_fit_with_wildcards() {
        assert!(dims_fit(&[3], &[3]));
        assert!(dims_fit(&[-1], &[3]));
        assert!(!dims_fit(&[2], &[3]));
        assert!(dims_fit(&[3, -1], &[3, 9]));
        assert!(!dims_fit(&[9], &[3, 9]));
    }

    #[test]
    fn model_types() {
        assert_eq!(ModelType::parse("lightgbm"), Ok(ModelType::Lightgbm));
        assert_eq!(
            ModelType::parse("treelite_checkpoint"),
            Ok(ModelType::TreeliteCheckpoint)
        );
        assert_eq!(
            ModelType::TreeliteCheckpoint.default_file(),
            "checkpoint.tl"
        );
        assert!(
            ModelType::parse("xgboost")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            ModelType::parse("catboost")
                .unwrap_err()
                .contains("catboost")
        );
    }
}
