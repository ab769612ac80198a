//! Tensor data as JSON arrays (the HTTP protocol's `data` field) to and from little-endian bytes.

use ferrum_backend_api::DataType;
use serde_json::Value;

use ferrum_core::error::{Error, Result};

/// Flattens nested JSON arrays into their leaf values, row-major, with a depth limit.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>, depth: usize) -> Result<()> {
    if depth > 64 {
        return Err(Error::invalid("tensor data is nested too deeply"));
    }
    match value {
        Value::Array(items) => {
            for item in items {
                flatten(item, out, depth + 1)?;
            }
            Ok(())
        }
        leaf => {
            out.push(leaf);
            Ok(())
        }
    }
}

/// Converts an input's JSON `data` into bytes of the given type.
pub fn decode(name: &str, datatype: DataType, data: &Value) -> Result<Vec<u8>> {
    let mut leaves = Vec::new();
    flatten(data, &mut leaves, 0)?;
    let bad = |v: &Value| {
        Error::invalid(format!(
            "input '{name}': value {v} is not a valid {datatype} element"
        ))
    };
    let mut out = Vec::with_capacity(leaves.len() * datatype.element_size().unwrap_or(8));
    macro_rules! ints {
        ($t:ty) => {
            for v in &leaves {
                let x = v
                    .as_i64()
                    .and_then(|x| <$t>::try_from(x).ok())
                    .or_else(|| v.as_u64().and_then(|x| <$t>::try_from(x).ok()))
                    .ok_or_else(|| bad(v))?;
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match datatype {
        DataType::BOOL => {
            for v in &leaves {
                out.push(u8::from(v.as_bool().ok_or_else(|| bad(v))?));
            }
        }
        DataType::UINT8 => ints!(u8),
        DataType::UINT16 => ints!(u16),
        DataType::UINT32 => ints!(u32),
        DataType::UINT64 => ints!(u64),
        DataType::INT8 => ints!(i8),
        DataType::INT16 => ints!(i16),
        DataType::INT32 => ints!(i32),
        DataType::INT64 => ints!(i64),
        DataType::FP16 => {
            for v in &leaves {
                let x = v.as_f64().ok_or_else(|| bad(v))?;
                out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes());
            }
        }
        DataType::BF16 => {
            for v in &leaves {
                let x = v.as_f64().ok_or_else(|| bad(v))?;
                out.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes());
            }
        }
        DataType::FP32 => {
            for v in &leaves {
                let x = v.as_f64().ok_or_else(|| bad(v))? as f32;
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        DataType::FP64 => {
            for v in &leaves {
                out.extend_from_slice(&v.as_f64().ok_or_else(|| bad(v))?.to_le_bytes());
            }
        }
        DataType::BYTES => {
            for v in &leaves {
                let s = v.as_str().ok_or_else(|| bad(v))?;
                let len = u32::try_from(s.len()).map_err(|_| bad(v))?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        _ => {
            return Err(Error::invalid(format!(
                "input '{name}' has an unsupported data type"
            )));
        }
    }
    Ok(out)
}

/// Converts an output's bytes into a flat JSON array.
pub fn encode(datatype: DataType, data: &[u8]) -> Result<Value> {
    macro_rules! nums {
        ($t:ty) => {
            data.chunks_exact(std::mem::size_of::<$t>())
                .map(|c| {
                    let mut b = [0u8; std::mem::size_of::<$t>()];
                    b.copy_from_slice(c);
                    Value::from(<$t>::from_le_bytes(b))
                })
                .collect()
        };
    }
    let values: Vec<Value> = match datatype {
        DataType::BOOL => data.iter().map(|&b| Value::Bool(b != 0)).collect(),
        DataType::UINT8 => nums!(u8),
        DataType::UINT16 => nums!(u16),
        DataType::UINT32 => nums!(u32),
        DataType::UINT64 => nums!(u64),
        DataType::INT8 => nums!(i8),
        DataType::INT16 => nums!(i16),
        DataType::INT32 => nums!(i32),
        DataType::INT64 => nums!(i64),
        DataType::FP32 => nums!(f32),
        DataType::FP64 => nums!(f64),
        DataType::FP16 => data
            .chunks_exact(2)
            .map(|c| Value::from(half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        DataType::BF16 => data
            .chunks_exact(2)
            .map(|c| Value::from(half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        DataType::BYTES => ferrum_backend_api::bytes::decode(data)
            .map_err(|e| Error::internal(e.message.to_string()))?
            .into_iter()
            .map(|item| Value::String(String::from_utf8_lossy(item).into_owned()))
            .collect(),
        other => {
            return Err(Error::internal(format!(
                "output has unsupported data type {other}"
            )));
        }
    };
    Ok(Value::Array(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_every_numeric_type() {
        for dt in DataType::ALL {
            let data = match dt {
                DataType::BOOL => json!([[true, false], [false, true]]),
                DataType::BYTES => json!(["a", "", "ü"]),
                DataType::FP16 | DataType::BF16 | DataType::FP32 | DataType::FP64 => {
                    json!([1.5, -2.0])
                }
                DataType::INT8 | DataType::INT16 | DataType::INT32 | DataType::INT64 => {
                    json!([-3, 4])
                }
                _ => json!([3, 4]),
            };
            let bytes = decode("x", dt, &data).unwrap();
            let mut flat = Vec::new();
            flatten(&data, &mut flat, 0).unwrap();
            let back = encode(dt, &bytes).unwrap();
            let expected: Vec<Value> = flat.into_iter().cloned().collect();
            assert_eq!(back, Value::Array(expected), "{dt}");
        }
    }

    #[test]
    fn rejects_out_of_range_and_wrong_kinds() {
        assert!(decode("x", DataType::INT8, &json!([300])).is_err());
        assert!(decode("x", DataType::UINT32, &json!([-1])).is_err());
        assert!(decode("x", DataType::INT32, &json!([1.5])).is_err());
        assert!(decode("x", DataType::BOOL, &json!([1])).is_err());
        assert!(decode("x", DataType::BYTES, &json!([1])).is_err());
    }
}
