//! In-process service kind: the ferrum inference core runs inside this process (like
//! perf_analyzer's `triton_c_api` service kind) and requests go straight to `Core::infer`,
//! with no sockets and no wire encoding.

use crate::inputs::InputTensor;
use crate::model::{ModelInfo, TensorMeta};
use crate::stats::ServerStats;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use ferrum_backend_api::DataType;
use ferrum_core::server::{self as core_server, InferRequest, InferResponse};
use ferrum_core::{Core, CoreBuilder};
use std::path::Path;
use std::sync::Arc;

/// A shared handle on an in-process core (Debug-printable, unlike [`Core`]).
#[derive(Clone)]
pub struct CoreHandle(pub Arc<Core>);

impl std::fmt::Debug for CoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoreHandle(in-process ferrum core)")
    }
}

impl CoreHandle {
    /// Starts a core over a model repository (every model loaded, no repository polling)
    /// with backends from `backends` (none: the core's default folder); returns it ready.
    pub async fn start(repository: &Path, backends: Option<&Path>) -> Result<Self> {
        if !repository.is_dir() {
            bail!(
                "--model-repository '{}' is not a directory",
                repository.display()
            );
        }
        let mut builder = CoreBuilder::new([repository]);
        if let Some(dir) = backends {
            builder = builder.backend_directory(dir);
        }
        let core = builder.start().await.map_err(|e| {
            anyhow!(
                "cannot start the in-process core over '{}': {e}",
                repository.display()
            )
        })?;
        Ok(Self(core))
    }

    /// Stops the core: not ready any more, every model unloaded.
    pub async fn shutdown(&self) {
        self.0.begin_shutdown();
        if let Err(e) = self.0.unload_all().await {
            eprintln!("warning: in-process core shutdown: {e}");
        }
    }

    /// Reads a model's metadata and config from the core.
    pub fn model_info(&self, model: &str, version: &str) -> Result<ModelInfo> {
        let v = parse_version(version)?;
        let meta = self
            .0
            .model_metadata(model, v)
            .map_err(|e| anyhow!("cannot read metadata of model '{model}': {e}"))?;
        let live = self
            .0
            .model_config(model, v)
            .map_err(|e| anyhow!("cannot read config of model '{model}': {e}"))?;
        if live.decoupled() {
            bail!(
                "model '{model}' is decoupled; the in-process service kind sends unary \
                 requests only (Core::infer), which decoupled models refuse"
            );
        }
        let tensors = |list: &[(String, String, Vec<i64>)]| {
            list.iter()
                .map(|(name, datatype, shape)| TensorMeta {
                    name: name.clone(),
                    datatype: datatype.clone(),
                    shape: shape.clone(),
                })
                .collect()
        };
        Ok(ModelInfo {
            name: meta.name.clone(),
            version: version.to_string(),
            max_batch_size: u32::try_from(live.config.max_batch_size).unwrap_or(0),
            inputs: tensors(&meta.inputs),
            outputs: tensors(&meta.outputs),
        })
    }

    /// Reads a model's cumulative inference statistics from the core.
    pub fn stats(&self, model: &str, version: &str) -> Result<ServerStats> {
        let stats = self
            .0
            .statistics(Some(model), parse_version(version)?)
            .map_err(|e| anyhow!("cannot read model statistics: {e}"))?;
        Ok(ServerStats::from_core(&stats))
    }

    /// Runs one inference and returns its response.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        self.0
            .infer(request)
            .await
            .map_err(|e| anyhow!("Core::infer: {e}"))
    }

    /// The in-process floor: whether the core is ready.
    pub fn health(&self) -> Result<()> {
        if !self.0.is_ready() {
            bail!("in-process core not ready");
        }
        Ok(())
    }
}

fn parse_version(version: &str) -> Result<Option<i64>> {
    core_server::parse_version(version).map_err(|e| anyhow!("-x: {e}"))
}

/// Builds a core request for one data set (the tensors' raw little-endian bytes).
pub fn infer_request(
    model: &str,
    version: &str,
    inputs: &[InputTensor],
    outputs: &[String],
) -> Result<InferRequest> {
    let inputs = inputs
        .iter()
        .map(|t| {
            let datatype = DataType::from_name(&t.datatype)
                .with_context(|| format!("input '{}': unknown datatype {}", t.name, t.datatype))?;
            Ok(core_server::InputTensor {
                name: t.name.clone(),
                datatype,
                shape: t.shape.clone(),
                data: Bytes::from(t.raw()).into(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(InferRequest {
        model_name: model.to_string(),
        model_version: parse_version(version)?,
        inputs,
        outputs: outputs.to_vec(),
        ..InferRequest::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::Values;

    #[test]
    fn request_layout() {
        let t = InputTensor {
            name: "A".into(),
            datatype: "INT32".into(),
            shape: vec![1, 2],
            values: Values::Int(vec![1, 2]),
        };
        let req = infer_request("m", "2", std::slice::from_ref(&t), &["O".into()]).unwrap();
        assert_eq!(req.model_version, Some(2));
        assert_eq!(req.outputs, vec!["O".to_string()]);
        assert_eq!(
            req.inputs[0].data.to_bytes().as_ref(),
            &[1, 0, 0, 0, 2, 0, 0, 0]
        );
        assert!(req.inputs[0].check_byte_size().is_ok());
        assert!(infer_request("m", "x", std::slice::from_ref(&t), &[]).is_err());
        let bad = InputTensor {
            datatype: "NOPE".into(),
            ..t
        };
        assert!(infer_request("m", "", &[bad], &[]).is_err());
    }
}
