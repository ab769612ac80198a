//! The `classify_bls` backend: the example classification pipeline as business logic.
//! Each request's `RAW` goes through three other models of the same server in turn, via the
//! host: `preprocess` (RAW → FEATURES), `onnx_mlp` (INPUT0 → OUTPUT0) and `postprocess`
//! (SCORES → CLASS, SCORE); the answer is the last step's CLASS and SCORE. The same pipeline
//! as the `classify_pipeline` ensemble, written as code.
//!
//! The step models can be renamed with the config parameters `preprocess_model`,
//! `classifier_model` and `postprocess_model`.

use ferrum_backend_api::prelude::*;
use ferrum_backend_api::{InferResult, host_infer};

/// The latest version of a step model.
const LATEST: i64 = -1;

/// A loaded pipeline: the names of the three models it calls.
struct ClassifyBls {
    /// Turns RAW into FEATURES.
    preprocess: String,
    /// Turns INPUT0 (the features) into OUTPUT0 (the scores).
    classifier: String,
    /// Turns SCORES into CLASS and SCORE.
    postprocess: String,
}

/// Runs one step on another model and returns its single response.
fn call(
    model: &str,
    inputs: &[Tensor<'_>],
    outputs: &[&str],
    request: &Request,
) -> Result<InferResult, BackendError> {
    if request.is_cancelled() {
        return Err(BackendError::new(
            ErrorCode::CANCELLED,
            format!("the request was cancelled before step '{model}'"),
        ));
    }
    let mut responses = host_infer(model, LATEST, inputs, outputs, &[]).map_err(|e| {
        BackendError::new(
            e.code,
            format!("pipeline step '{model}' failed: {}", e.message),
        )
    })?;
    if responses.len() != 1 {
        return Err(BackendError::internal(format!(
            "pipeline step '{model}' gave {} responses, expected one",
            responses.len()
        )));
    }
    responses
        .pop()
        .ok_or_else(|| BackendError::internal(format!("pipeline step '{model}' gave no response")))
}

/// The output of a step's response, renamed to the input name of the next step.
fn take<'a>(
    result: &'a InferResult,
    model: &str,
    output: &str,
    as_name: &'a str,
) -> Result<Tensor<'a>, BackendError> {
    let mut tensor = result.output(output).ok_or_else(|| {
        BackendError::internal(format!(
            "pipeline step '{model}' did not return its output '{output}'"
        ))
    })?;
    tensor.name = as_name;
    Ok(tensor)
}

impl SimpleModel for ClassifyBls {
    fn load(ctx: &ModelContext) -> Result<Self, BackendError> {
        let name = |key: &str, default: &str| ctx.parameter(key).unwrap_or(default).to_string();
        let model = ClassifyBls {
            preprocess: name("preprocess_model", "preprocess"),
            classifier: name("classifier_model", "onnx_mlp"),
            postprocess: name("postprocess_model", "postprocess"),
        };
        // A model may not call itself: its instances would wait on themselves.
        for step in [&model.preprocess, &model.classifier, &model.postprocess] {
            if step.is_empty() || *step == ctx.name {
                return Err(BackendError::invalid_argument(format!(
                    "classify_bls model '{}' cannot use '{step}' as a pipeline step: a step \
                     must name another model",
                    ctx.name
                )));
            }
        }
        Ok(model)
    }

    /// Runs the three steps in turn and copies CLASS and SCORE into the response.
    fn respond(&self, request: &Request, response: &mut Response) -> Result<(), BackendError> {
        let raw = request.require_input("RAW")?;
        let pre = call(&self.preprocess, &[raw], &["FEATURES"], request)?;
        let features = take(&pre, &self.preprocess, "FEATURES", "INPUT0")?;
        let mlp = call(&self.classifier, &[features], &["OUTPUT0"], request)?;
        let scores = take(&mlp, &self.classifier, "OUTPUT0", "SCORES")?;
        let post = call(&self.postprocess, &[scores], &["CLASS", "SCORE"], request)?;
        for output in ["CLASS", "SCORE"] {
            let tensor = take(&post, &self.postprocess, output, output)?;
            response.output_copy_of(output, &tensor)?;
        }
        Ok(())
    }
}

export_model!(ClassifyBls);
