//! The `fil` backend: serves tree ensembles (`backend: "fil"`) the way Triton's FIL backend
//! does, in pure Rust: XGBoost JSON/UBJSON, LightGBM text models and Treelite checkpoints
//! (scikit-learn forests), chosen by the config's `model_type` parameter; input `input__0`
//! (FP32 `[rows, features]`), output `output__0` (values, class probabilities or class
//! indices, after `output_class`/`is_classifier`, `predict_proba` and `threshold`), and exact
//! TreeSHAP values in `treeshap_output` when the config lists that output.
//!
//! A model is loaded once and shared by its instances; each request's rows are predicted
//! block by block, tree by tree, split over threads when the batch is large (see
//! [`forest`]).

mod forest;
mod lightgbm;
mod model;
mod shap;
mod treelite;
mod ubjson;
mod xgboost;

use std::sync::Arc;

use ferrum_backend_api::log;
use ferrum_backend_api::prelude::*;
use serde_json::{Value, json};

use crate::model::{FilModel, INPUT, OUTPUT, Settings};

/// `max_batch_size` auto-complete sets when the config has none.
const DEFAULT_MAX_BATCH_SIZE: i64 = 8192;

/// The backend (no state: models hold everything).
struct FilBackend;

impl Backend for FilBackend {
    type Model = SharedModel;

    fn new(_config: &Value) -> Result<Self, BackendError> {
        Ok(FilBackend)
    }

    fn describe(&self) -> String {
        "fil: pure-Rust tree ensembles (xgboost_json, xgboost_ubj, lightgbm, treelite_checkpoint)"
            .into()
    }

    fn load_model(&self, ctx: &ModelContext) -> Result<SharedModel, BackendError> {
        Ok(SharedModel(Arc::new(FilModel::load(ctx)?)))
    }

    fn auto_complete_config(&self, ctx: &ModelContext) -> Result<Option<Value>, BackendError> {
        let has = |key: &str| {
            ctx.config
                .get(key)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        if has("input") && has("output") {
            return Ok(None);
        }
        let Some(original) = ctx.config.as_object() else {
            return Err(BackendError::internal(
                "the model config handed to auto-complete is not an object",
            ));
        };
        let settings = Settings::from_config(ctx)
            .map_err(|e| BackendError::invalid_argument(format!("model '{}': {e}", ctx.name)))?;
        let path = model::model_file(ctx, settings.model_type);
        let forest = model::load_forest(&path, settings.model_type)?;
        let mut cfg = original.clone();
        let mut max_batch_size = ctx.max_batch_size();
        if max_batch_size == 0 {
            max_batch_size = DEFAULT_MAX_BATCH_SIZE;
            cfg.insert("max_batch_size".into(), json!(max_batch_size));
            log(
                LogLevel::INFO,
                &format!(
                    "model '{}': auto-complete set max_batch_size to {max_batch_size}",
                    ctx.name
                ),
            );
        }
        if !has("input") {
            cfg.insert(
                "input".into(),
                json!([{"name": INPUT, "data_type": "TYPE_FP32", "dims": [forest.num_features]}]),
            );
        }
        if !has("output") {
            let cols = model::output0_columns(&forest, &settings);
            cfg.insert(
                "output".into(),
                json!([{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [cols]}]),
            );
        }
        Ok(Some(Value::Object(cfg)))
    }
}

/// A loaded model, shared by its instances.
struct SharedModel(Arc<FilModel>);

impl Model for SharedModel {
    type Instance = SharedModel;

    fn create_instance(&self, _ctx: &InstanceContext) -> Result<SharedModel, BackendError> {
        Ok(SharedModel(Arc::clone(&self.0)))
    }
}

impl Instance for SharedModel {
    fn execute(&mut self, requests: Vec<Request>) -> Result<(), BackendError> {
        for request in requests {
            request.respond_with(|response| self.0.respond(&request, response));
        }
        Ok(())
    }
}

export_backend!(FilBackend);

#[cfg(test)]
mod bench {
    //! `cargo test --release -p ferrum-backend-fil -- --ignored bench --nocapture`, driven by
    //! `scripts/bench_fil.py`: times the forest's predict on a model and rows it wrote.

    use std::time::Instant;

    use crate::model::{ModelType, load_forest};

    /// Rows per second of `predict` over `rows`-row batches, for at least `seconds`.
    fn rate(mut predict: impl FnMut() -> usize, seconds: f64) -> f64 {
        let start = Instant::now();
        let mut done = 0usize;
        while start.elapsed().as_secs_f64() < seconds {
            done += predict();
        }
        done as f64 / start.elapsed().as_secs_f64()
    }

    #[test]
    #[ignore = "a benchmark: run by scripts/bench_fil.py"]
    fn bench() {
        let (Ok(model), Ok(data)) = (
            std::env::var("FIL_BENCH_MODEL"),
            std::env::var("FIL_BENCH_DATA"),
        ) else {
            eprintln!("FIL_BENCH_MODEL / FIL_BENCH_DATA not set: nothing to measure");
            return;
        };
        let seconds: f64 = std::env::var("FIL_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0);
        let forest =
            load_forest(std::path::Path::new(&model), ModelType::XgboostJson).expect("model loads");
        let bytes = std::fs::read(&data).expect("data file");
        let x: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let f = forest.num_features;
        let total = x.len() / f;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        for (batch, threads) in [(1, 1), (1024, 1), (1024, cores)] {
            let mut at = 0;
            let r = rate(
                || {
                    if at + batch > total {
                        at = 0;
                    }
                    let rows = &x[at * f..(at + batch) * f];
                    at += batch;
                    let mut m = forest.margins(rows, batch, threads);
                    forest.transform(&mut m);
                    std::hint::black_box(&m);
                    batch
                },
                seconds,
            );
            println!("FIL_BENCH batch={batch} threads={threads} rows_per_s={r:.1}");
        }
    }
}
