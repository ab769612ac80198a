//! Triton's classification extension: instead of an output tensor, the top-k classes of
//! each batch row as BYTES strings `value:index` or `value:index:label`, highest first.

use bytes::Bytes;
use ferrum_backend_api::DataType;

use crate::error::{Error, Result};
use crate::server::OutputData;

/// One element of a numeric tensor as f64 (for ordering) and as the text Triton prints.
fn element(datatype: DataType, bytes: &[u8]) -> Option<(f64, String)> {
    macro_rules! int {
        ($t:ty) => {{
            let v = <$t>::from_le_bytes(bytes.try_into().ok()?);
            (v as f64, v.to_string())
        }};
    }
    macro_rules! float {
        ($v:expr) => {{
            let v = f64::from($v);
            (v, format!("{v:.6}"))
        }};
    }
    Some(match datatype {
        DataType::BOOL => {
            let v = u8::from(*bytes.first()? != 0);
            (f64::from(v), v.to_string())
        }
        DataType::UINT8 => int!(u8),
        DataType::UINT16 => int!(u16),
        DataType::UINT32 => int!(u32),
        DataType::UINT64 => int!(u64),
        DataType::INT8 => int!(i8),
        DataType::INT16 => int!(i16),
        DataType::INT32 => int!(i32),
        DataType::INT64 => int!(i64),
        DataType::FP16 => float!(half::f16::from_le_bytes(bytes.try_into().ok()?).to_f32()),
        DataType::BF16 => float!(half::bf16::from_le_bytes(bytes.try_into().ok()?).to_f32()),
        DataType::FP32 => float!(f32::from_le_bytes(bytes.try_into().ok()?)),
        DataType::FP64 => {
            let v = f64::from_le_bytes(bytes.try_into().ok()?);
            (v, format!("{v:.6}"))
        }
        _ => return None,
    })
}

/// The top `k` classes of every row of `output` (rows along dim 0 when the model batches).
pub fn classify(
    output: &OutputData,
    k: usize,
    batched: bool,
    labels: Option<&[String]>,
) -> Result<OutputData> {
    let size = output.datatype.element_size().ok_or_else(|| {
        Error::invalid(format!(
            "output '{}' of type {} cannot be classified",
            output.name, output.datatype
        ))
    })?;
    let rows = if batched {
        output.shape.first().copied().unwrap_or(1).max(1) as usize
    } else {
        1
    };
    let per_row = output.data.len() / size / rows;
    let k = k.min(per_row);
    if per_row == 0 {
        let shape = if batched {
            vec![rows as i64, 0]
        } else {
            vec![0]
        };
        let data = Bytes::new();
        return Ok(OutputData {
            name: output.name.clone(),
            datatype: DataType::BYTES,
            shape,
            data,
            shm: None,
        });
    }
    let mut items = Vec::with_capacity(rows * k);
    for row in output.data.chunks(per_row * size).take(rows) {
        let mut scored: Vec<(usize, f64, String)> = row
            .chunks_exact(size)
            .enumerate()
            .filter_map(|(i, b)| element(output.datatype, b).map(|(v, text)| (i, v, text)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (index, _, text) in scored.into_iter().take(k) {
            let item = match labels.and_then(|l| l.get(index)) {
                Some(label) => format!("{text}:{index}:{label}"),
                None => format!("{text}:{index}"),
            };
            items.push(item);
        }
    }
    let shape = if batched {
        vec![rows as i64, k as i64]
    } else {
        vec![k as i64]
    };
    Ok(OutputData {
        name: output.name.clone(),
        datatype: DataType::BYTES,
        shape,
        data: Bytes::from(ferrum_backend_api::bytes::encode(items)),
        shm: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_per_row_with_labels() {
        let values: Vec<u8> = [0.1f32, 0.7, 0.2, 0.9, 0.05, 0.05]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let output = OutputData {
            name: "P".into(),
            datatype: DataType::FP32,
            shape: vec![2, 3],
            data: Bytes::from(values),
            shm: None,
        };
        let labels = vec!["cat".to_string(), "dog".to_string(), "eel".to_string()];
        let top = classify(&output, 2, true, Some(&labels)).unwrap();
        assert_eq!(top.shape, vec![2, 2]);
        let items = ferrum_backend_api::bytes::decode(&top.data).unwrap();
        let text: Vec<&str> = items
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect();
        assert_eq!(
            text,
            [
                "0.700000:1:dog",
                "0.200000:2:eel",
                "0.900000:0:cat",
                "0.050000:1:dog"
            ]
        );
    }
}
