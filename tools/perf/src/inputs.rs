//! Input tensor contents: random, zero, or from a perf_analyzer JSON data file.

use crate::cli::DataMode;
use crate::model::{ModelInfo, element_size};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Typed element values of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// BOOL elements.
    Bool(Vec<bool>),
    /// Signed integer elements.
    Int(Vec<i64>),
    /// Unsigned integer elements.
    UInt(Vec<u64>),
    /// Floating-point elements (FP16/BF16/FP32/FP64).
    Float(Vec<f64>),
    /// BYTES elements.
    Bytes(Vec<Vec<u8>>),
}

/// One input tensor of a request, ready to encode.
#[derive(Clone, Debug, PartialEq)]
pub struct InputTensor {
    /// Input name.
    pub name: String,
    /// KServe datatype.
    pub datatype: String,
    /// Full request shape (batch dim included).
    pub shape: Vec<i64>,
    /// Element values.
    pub values: Values,
}

/// A small deterministic PRNG (xorshift64*), enough for test data and arrival times.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn element_count(shape: &[i64]) -> usize {
    shape
        .iter()
        .map(|d| usize::try_from(*d).unwrap_or(0))
        .product()
}

impl InputTensor {
    /// Generates random or zero contents for a tensor.
    pub fn generate(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
        mode: DataMode,
        rng: &mut Rng,
    ) -> Result<Self> {
        let n = element_count(&shape);
        let zero = mode == DataMode::Zero;
        let values = match datatype {
            "BOOL" => Values::Bool((0..n).map(|_| !zero && rng.next_u64() & 1 == 1).collect()),
            "INT8" | "INT16" | "INT32" | "INT64" => Values::Int(
                (0..n)
                    .map(|_| {
                        if zero {
                            0
                        } else {
                            (rng.next_u64() % 100) as i64
                        }
                    })
                    .collect(),
            ),
            "UINT8" | "UINT16" | "UINT32" | "UINT64" => Values::UInt(
                (0..n)
                    .map(|_| if zero { 0 } else { rng.next_u64() % 100 })
                    .collect(),
            ),
            "FP16" | "BF16" | "FP32" | "FP64" => Values::Float(
                (0..n)
                    .map(|_| if zero { 0.0 } else { rng.next_f64() })
                    .collect(),
            ),
            "BYTES" => Values::Bytes(
                (0..n)
                    .map(|_| {
                        if zero {
                            return Vec::new();
                        }
                        let len = 1 + (rng.next_u64() % 8) as usize;
                        (0..len)
                            .map(|_| b'a' + (rng.next_u64() % 26) as u8)
                            .collect()
                    })
                    .collect(),
            ),
            other => bail!("input '{name}' has unsupported datatype {other}"),
        };
        Ok(Self {
            name: name.to_string(),
            datatype: datatype.to_string(),
            shape,
            values,
        })
    }

    /// Parses JSON values (a flat or nested array) for a tensor.
    pub fn from_json(name: &str, datatype: &str, shape: Vec<i64>, data: &Value) -> Result<Self> {
        let mut flat = Vec::new();
        flatten(data, &mut flat);
        let bad = || format!("input-data for '{name}' does not match datatype {datatype}");
        let values = match datatype {
            "BOOL" => Values::Bool(
                flat.iter()
                    .map(|v| v.as_bool())
                    .collect::<Option<_>>()
                    .with_context(bad)?,
            ),
            "INT8" | "INT16" | "INT32" | "INT64" => Values::Int(
                flat.iter()
                    .map(|v| v.as_i64())
                    .collect::<Option<_>>()
                    .with_context(bad)?,
            ),
            "UINT8" | "UINT16" | "UINT32" | "UINT64" => Values::UInt(
                flat.iter()
                    .map(|v| v.as_u64())
                    .collect::<Option<_>>()
                    .with_context(bad)?,
            ),
            "FP16" | "BF16" | "FP32" | "FP64" => Values::Float(
                flat.iter()
                    .map(|v| v.as_f64())
                    .collect::<Option<_>>()
                    .with_context(bad)?,
            ),
            "BYTES" => Values::Bytes(
                flat.iter()
                    .map(|v| v.as_str().map(|s| s.as_bytes().to_vec()))
                    .collect::<Option<_>>()
                    .with_context(bad)?,
            ),
            other => bail!("input '{name}' has unsupported datatype {other}"),
        };
        let t = Self {
            name: name.to_string(),
            datatype: datatype.to_string(),
            shape,
            values,
        };
        if t.len() != element_count(&t.shape) {
            bail!(
                "input-data for '{name}' has {} elements, shape {:?} needs {}",
                t.len(),
                t.shape,
                element_count(&t.shape)
            );
        }
        Ok(t)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.values {
            Values::Bool(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::UInt(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Bytes(v) => v.len(),
        }
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Little-endian raw bytes (BYTES: each element 4-byte length-prefixed).
    pub fn raw(&self) -> Vec<u8> {
        let size = element_size(&self.datatype).unwrap_or(1);
        let mut out = Vec::with_capacity(self.len() * size);
        match &self.values {
            Values::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
            Values::Int(v) => {
                for x in v {
                    out.extend_from_slice(&x.to_le_bytes()[..size]);
                }
            }
            Values::UInt(v) => {
                for x in v {
                    out.extend_from_slice(&x.to_le_bytes()[..size]);
                }
            }
            Values::Float(v) => {
                for x in v {
                    match self.datatype.as_str() {
                        "FP16" => out.extend_from_slice(&half::f16::from_f64(*x).to_le_bytes()),
                        "BF16" => out.extend_from_slice(&half::bf16::from_f64(*x).to_le_bytes()),
                        "FP32" => out.extend_from_slice(&(*x as f32).to_le_bytes()),
                        _ => out.extend_from_slice(&x.to_le_bytes()),
                    }
                }
            }
            Values::Bytes(v) => {
                for s in v {
                    out.extend_from_slice(
                        &u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes(),
                    );
                    out.extend_from_slice(s);
                }
            }
        }
        out
    }

    /// The values as a flat JSON array (BYTES as strings).
    pub fn json_data(&self) -> Value {
        match &self.values {
            Values::Bool(v) => json!(v),
            Values::Int(v) => json!(v),
            Values::UInt(v) => json!(v),
            Values::Float(v) => json!(v),
            Values::Bytes(v) => Value::Array(
                v.iter()
                    .map(|s| Value::String(String::from_utf8_lossy(s).into_owned()))
                    .collect(),
            ),
        }
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        other => out.push(other),
    }
}

/// Builds the data sets (one per request variant) for a model's inputs.
///
/// `source` is "random", "zero" or a path to a perf_analyzer JSON data file.
pub fn build_inputs(
    model: &ModelInfo,
    batch: u32,
    shapes: &[(String, Vec<i64>)],
    source: &str,
) -> Result<Vec<Vec<InputTensor>>> {
    for (name, _) in shapes {
        if !model.inputs.iter().any(|i| &i.name == name) {
            bail!(
                "--shape names '{name}', which is not an input of model '{}'",
                model.name
            );
        }
    }
    let over = |name: &str| {
        shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    };
    let mode = match source {
        "random" => Some(DataMode::Random),
        "zero" => Some(DataMode::Zero),
        _ => None,
    };
    if let Some(mode) = mode {
        let mut rng = Rng::new(0x5eed);
        let set = model
            .inputs
            .iter()
            .map(|m| {
                let shape = model.request_shape(m, batch, over(&m.name))?;
                InputTensor::generate(&m.name, &m.datatype, shape, mode, &mut rng)
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(vec![set]);
    }
    let text = std::fs::read_to_string(source)
        .with_context(|| format!("cannot read --input-data file '{source}'"))?;
    let doc: Value = serde_json::from_str(&text)
        .with_context(|| format!("--input-data file '{source}' is not JSON"))?;
    let entries = doc["data"]
        .as_array()
        .with_context(|| format!("--input-data file '{source}' has no \"data\" list"))?;
    if entries.is_empty() {
        bail!("--input-data file '{source}' has an empty \"data\" list");
    }
    entries
        .iter()
        .map(|entry| {
            model
                .inputs
                .iter()
                .map(|m| {
                    let v = entry
                        .get(&m.name)
                        .with_context(|| format!("--input-data entry has no input '{}'", m.name))?;
                    // {"content": [...], "shape": [...]} or a plain array.
                    let (data, shape) = match v.get("content") {
                        Some(content) => {
                            let dims = v
                                .get("shape")
                                .and_then(Value::as_array)
                                .map(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
                                .map(|d| {
                                    d.with_context(|| {
                                        format!(
                                            "--input-data shape of '{}' is not integers",
                                            m.name
                                        )
                                    })
                                })
                                .transpose()?;
                            (content, dims)
                        }
                        None => (v, None),
                    };
                    let dims = shape.as_deref().or(over(&m.name));
                    let full = model.request_shape(m, batch, dims)?;
                    // One sample per entry: repeat it for the batch.
                    let one = InputTensor::from_json(
                        &m.name,
                        &m.datatype,
                        full.get(usize::from(model.max_batch_size > 0)..)
                            .unwrap_or(&[])
                            .to_vec(),
                        data,
                    )?;
                    Ok(repeat_batch(one, full, batch, model.max_batch_size > 0))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

/// Repeats one sample `batch` times along a leading batch dim.
fn repeat_batch(mut t: InputTensor, full: Vec<i64>, batch: u32, batching: bool) -> InputTensor {
    if batching {
        let b = batch as usize;
        t.values = match t.values {
            Values::Bool(v) => Values::Bool(v.repeat(b)),
            Values::Int(v) => Values::Int(v.repeat(b)),
            Values::UInt(v) => Values::UInt(v.repeat(b)),
            Values::Float(v) => Values::Float(v.repeat(b)),
            Values::Bytes(v) => Values::Bytes((0..b).flat_map(|_| v.iter().cloned()).collect()),
        };
    }
    t.shape = full;
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TensorMeta;

    fn model() -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            version: String::new(),
            max_batch_size: 8,
            inputs: vec![
                TensorMeta {
                    name: "A".into(),
                    datatype: "INT32".into(),
                    shape: vec![-1, 2],
                },
                TensorMeta {
                    name: "S".into(),
                    datatype: "BYTES".into(),
                    shape: vec![-1, 1],
                },
            ],
            outputs: vec![],
        }
    }

    #[test]
    fn random_and_raw() {
        let sets = build_inputs(&model(), 3, &[], "random").unwrap();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0][0].shape, vec![3, 2]);
        assert_eq!(sets[0][0].raw().len(), 24);
        assert_eq!(sets[0][1].len(), 3);
        let zero = build_inputs(&model(), 1, &[], "zero").unwrap();
        assert_eq!(zero[0][0].raw(), vec![0; 8]);
        assert_eq!(zero[0][1].raw(), vec![0; 4]);
    }

    #[test]
    fn data_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        std::fs::write(
            &path,
            r#"{"data":[{"A":[1,2],"S":["hi"]},{"A":{"content":[3,4],"shape":[2]},"S":["x"]}]}"#,
        )
        .unwrap();
        let sets = build_inputs(&model(), 2, &[], path.to_str().unwrap()).unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0][0].values, Values::Int(vec![1, 2, 1, 2]));
        assert_eq!(sets[1][0].shape, vec![2, 2]);
        assert_eq!(
            sets[0][1].raw(),
            vec![2, 0, 0, 0, b'h', b'i', 2, 0, 0, 0, b'h', b'i']
        );
        std::fs::write(&path, r#"{"data":[{"A":[1,2,3]}]}"#).unwrap();
        assert!(build_inputs(&model(), 1, &[], path.to_str().unwrap()).is_err());
    }
}
