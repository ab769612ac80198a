//! What the server says about a model: inputs, outputs, batching.

use crate::proto::inference as pb;
use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One input or output of a model, as its metadata describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    /// Tensor name.
    pub name: String,
    /// KServe datatype (INT32, FP32, BYTES, ...).
    pub datatype: String,
    /// Shape; -1 marks a variable dim (the batch dim included when batching).
    pub shape: Vec<i64>,
}

/// A model's metadata and the config fields that matter for load generation.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// Version to address ("" for the server's choice).
    pub version: String,
    /// max_batch_size from the config (0: no batching).
    pub max_batch_size: u32,
    /// Inputs.
    pub inputs: Vec<TensorMeta>,
    /// Outputs.
    pub outputs: Vec<TensorMeta>,
}

impl ModelInfo {
    /// Builds from the HTTP metadata (`GET /v2/models/m`) and config (`.../config`) JSON.
    pub fn from_json(metadata: &Value, config: &Value, version: &str) -> Result<Self> {
        let name = metadata["name"]
            .as_str()
            .context("model metadata has no 'name'")?
            .to_string();
        let tensors = |key: &str| -> Result<Vec<TensorMeta>> {
            let Some(list) = metadata.get(key) else {
                return Ok(Vec::new());
            };
            let list = list
                .as_array()
                .with_context(|| format!("model metadata '{key}' is not a list"))?;
            list.iter()
                .map(|t| {
                    let shape = t["shape"]
                        .as_array()
                        .context("tensor metadata has no 'shape' list")?
                        .iter()
                        .map(|d| d.as_i64().context("shape dims must be integers"))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(TensorMeta {
                        name: t["name"]
                            .as_str()
                            .context("tensor metadata has no 'name'")?
                            .to_string(),
                        datatype: t["datatype"]
                            .as_str()
                            .context("tensor metadata has no 'datatype'")?
                            .to_string(),
                        shape,
                    })
                })
                .collect()
        };
        let max_batch_size = config
            .get("max_batch_size")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok(Self {
            name,
            version: version.to_string(),
            max_batch_size: u32::try_from(max_batch_size).unwrap_or(u32::MAX),
            inputs: tensors("inputs")?,
            outputs: tensors("outputs")?,
        })
    }

    /// Builds from the gRPC ModelMetadata and ModelConfig responses.
    pub fn from_proto(
        metadata: &pb::ModelMetadataResponse,
        config: Option<&pb::ModelConfig>,
        version: &str,
    ) -> Self {
        let tensors = |list: &[pb::model_metadata_response::TensorMetadata]| {
            list.iter()
                .map(|t| TensorMeta {
                    name: t.name.clone(),
                    datatype: t.datatype.clone(),
                    shape: t.shape.clone(),
                })
                .collect()
        };
        Self {
            name: metadata.name.clone(),
            version: version.to_string(),
            max_batch_size: config.map_or(0, |c| u32::try_from(c.max_batch_size).unwrap_or(0)),
            inputs: tensors(&metadata.inputs),
            outputs: tensors(&metadata.outputs),
        }
    }

    /// Checks the batch size against max_batch_size.
    pub fn check_batch(&self, batch: u32) -> Result<()> {
        if batch == 0 {
            bail!("batch size must be at least 1");
        }
        if self.max_batch_size == 0 && batch > 1 {
            bail!(
                "model '{}' does not support batching (max_batch_size 0) but -b is {batch}",
                self.name
            );
        }
        if self.max_batch_size > 0 && batch > self.max_batch_size {
            bail!(
                "batch size {batch} exceeds model '{}' max_batch_size {}",
                self.name,
                self.max_batch_size
            );
        }
        Ok(())
    }

    /// The full request shape of a tensor: the batch dim (when batching) then the
    /// metadata dims, with -1 dims taken from `over` (which excludes the batch dim).
    pub fn request_shape(
        &self,
        meta: &TensorMeta,
        batch: u32,
        over: Option<&[i64]>,
    ) -> Result<Vec<i64>> {
        let dims: &[i64] = if self.max_batch_size > 0 {
            meta.shape.get(1..).unwrap_or(&[])
        } else {
            &meta.shape
        };
        let dims = match over {
            Some(o) => {
                if o.len() != dims.len() {
                    bail!(
                        "--shape for '{}' has {} dims, the model's has {} ({:?})",
                        meta.name,
                        o.len(),
                        dims.len(),
                        dims
                    );
                }
                for (m, v) in dims.iter().zip(o) {
                    if *m >= 0 && m != v {
                        bail!(
                            "--shape for '{}' ({o:?}) does not match the model's {dims:?}",
                            meta.name
                        );
                    }
                }
                o.to_vec()
            }
            None => {
                if dims.iter().any(|d| *d < 0) {
                    bail!(
                        "input '{}' has variable dims {dims:?}: give them with --shape {}:d1,d2,...",
                        meta.name,
                        meta.name
                    );
                }
                dims.to_vec()
            }
        };
        let mut shape = Vec::with_capacity(dims.len() + 1);
        if self.max_batch_size > 0 {
            shape.push(i64::from(batch));
        }
        shape.extend(dims);
        Ok(shape)
    }
}

/// Bytes per element of a fixed-size datatype (None for BYTES or unknown).
pub fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" | "BF16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_from_json() {
        let meta = json!({"name": "simple", "inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}],
            "outputs": [{"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]}]});
        let info = ModelInfo::from_json(&meta, &json!({"max_batch_size": 8}), "").unwrap();
        assert_eq!(info.max_batch_size, 8);
        let input = &info.inputs[0];
        assert_eq!(info.request_shape(input, 4, None).unwrap(), vec![4, 16]);
        assert!(info.request_shape(input, 4, Some(&[3])).is_err());
        assert!(info.check_batch(9).is_err());
        let var = TensorMeta {
            name: "V".into(),
            datatype: "FP32".into(),
            shape: vec![-1, -1],
        };
        assert!(info.request_shape(&var, 1, None).is_err());
        assert_eq!(info.request_shape(&var, 2, Some(&[5])).unwrap(), vec![2, 5]);
    }
}
