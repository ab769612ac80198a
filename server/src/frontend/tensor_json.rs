//! Tensor data as JSON arrays (the HTTP protocol's `data` field) to and from little-endian bytes.

use std::fmt;

use ferrum_backend_api::DataType;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
#[cfg(test)]
use serde_json::Value;

use ferrum_core::error::{Error, Result};

/// Most nesting levels a tensor's `data` may have.
const MAX_DEPTH: usize = 64;

/// Converts an input's JSON `data`, given as its JSON text, into bytes of the given type,
/// straight from the text: no JSON values are built on the way.
pub fn decode_text(name: &str, datatype: DataType, text: &str) -> Result<Vec<u8>> {
    if datatype.element_size().is_none() && datatype != DataType::BYTES {
        return Err(Error::invalid(format!(
            "input '{name}' has an unsupported data type"
        )));
    }
    let mut out = Vec::with_capacity(text.len());
    let mut problem = None;
    let mut reader = serde_json::Deserializer::from_str(text);
    let leaves = Leaves {
        name,
        datatype,
        out: &mut out,
        problem: &mut problem,
        depth: 0,
    };
    match leaves.deserialize(&mut reader).and_then(|()| reader.end()) {
        Ok(()) => Ok(out),
        Err(e) => Err(problem
            .unwrap_or_else(|| Error::invalid(format!("input '{name}' has malformed data: {e}")))),
    }
}

/// Writes the leaves of (nested) JSON arrays as elements of one type, row-major.
struct Leaves<'s> {
    /// The input's name, for messages.
    name: &'s str,
    /// The element type.
    datatype: DataType,
    /// Where the elements go.
    out: &'s mut Vec<u8>,
    /// Why decoding stopped, in our words (serde's error only carries it along).
    problem: &'s mut Option<Error>,
    /// Nesting level of the values visited.
    depth: usize,
}

impl Leaves<'_> {
    /// Records why a value is refused and returns the error serde carries out.
    fn refuse<E: serde::de::Error>(self, shown: fmt::Arguments<'_>) -> E {
        let message = format!(
            "input '{}': value {shown} is not a valid {} element",
            self.name, self.datatype
        );
        *self.problem = Some(Error::invalid(message.clone()));
        E::custom(message)
    }

    fn int<E: serde::de::Error>(self, wide: i128) -> std::result::Result<(), E> {
        macro_rules! put {
            ($t:ty) => {
                match <$t>::try_from(wide) {
                    Ok(x) => self.out.extend_from_slice(&x.to_le_bytes()),
                    Err(_) => return Err(self.refuse(format_args!("{wide}"))),
                }
            };
        }
        match self.datatype {
            DataType::UINT8 => put!(u8),
            DataType::UINT16 => put!(u16),
            DataType::UINT32 => put!(u32),
            DataType::UINT64 => put!(u64),
            DataType::INT8 => put!(i8),
            DataType::INT16 => put!(i16),
            DataType::INT32 => put!(i32),
            DataType::INT64 => put!(i64),
            DataType::FP16 | DataType::BF16 | DataType::FP32 | DataType::FP64 => {
                return self.float(wide as f64);
            }
            _ => return Err(self.refuse(format_args!("{wide}"))),
        }
        Ok(())
    }

    fn float<E: serde::de::Error>(self, x: f64) -> std::result::Result<(), E> {
        match self.datatype {
            DataType::FP16 => self
                .out
                .extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
            DataType::BF16 => self
                .out
                .extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
            DataType::FP32 => self.out.extend_from_slice(&(x as f32).to_le_bytes()),
            DataType::FP64 => self.out.extend_from_slice(&x.to_le_bytes()),
            _ => return Err(self.refuse(format_args!("{x}"))),
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Leaves<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Leaves<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} elements, possibly in nested arrays", self.datatype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            let message = "tensor data is nested too deeply";
            *self.problem = Some(Error::invalid(message));
            return Err(serde::de::Error::custom(message));
        }
        loop {
            let inner = Leaves {
                name: self.name,
                datatype: self.datatype,
                out: &mut *self.out,
                problem: &mut *self.problem,
                depth: self.depth + 1,
            };
            if seq.next_element_seed(inner)?.is_none() {
                return Ok(());
            }
        }
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<(), E> {
        if self.datatype != DataType::BOOL {
            return Err(self.refuse(format_args!("{v}")));
        }
        self.out.push(u8::from(v));
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.int(i128::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.int(i128::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.float(v)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<(), E> {
        if self.datatype != DataType::BYTES {
            return Err(self.refuse(format_args!("{v:?}")));
        }
        let Ok(len) = u32::try_from(v.len()) else {
            return Err(self.refuse(format_args!("of {} bytes", v.len())));
        };
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        Err(self.refuse(format_args!("null")))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> std::result::Result<(), A::Error> {
        Err(self.refuse(format_args!("{{...}}")))
    }
}

/// Flattens nested JSON arrays into their leaf values, row-major, with a depth limit (the
/// reference the text decoder is tested against).
#[cfg(test)]
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

/// Converts an input's JSON `data` value into bytes of the given type (the reference the text
/// decoder is tested against).
#[cfg(test)]
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

/// An output's bytes, serialized as a flat JSON array of its elements (written straight to
/// the JSON text; no JSON values are built).
pub struct TensorJson<'a> {
    /// The element type.
    pub datatype: DataType,
    /// Little-endian elements; for BYTES, length-prefixed strings.
    pub data: &'a [u8],
}

impl serde::Serialize for TensorJson<'_> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq};
        let data = self.data;
        macro_rules! nums {
            ($t:ty, $put:ident) => {{
                let chunks = data.chunks_exact(std::mem::size_of::<$t>());
                let mut seq = serializer.serialize_seq(Some(chunks.len()))?;
                for c in chunks {
                    let mut b = [0u8; std::mem::size_of::<$t>()];
                    b.copy_from_slice(c);
                    seq.serialize_element(&<$t>::from_le_bytes(b))?;
                }
                seq.end()
            }};
        }
        match self.datatype {
            DataType::BOOL => {
                let mut seq = serializer.serialize_seq(Some(data.len()))?;
                for &b in data {
                    seq.serialize_element(&(b != 0))?;
                }
                seq.end()
            }
            DataType::UINT8 => nums!(u8, u8),
            DataType::UINT16 => nums!(u16, u16),
            DataType::UINT32 => nums!(u32, u32),
            DataType::UINT64 => nums!(u64, u64),
            DataType::INT8 => nums!(i8, i8),
            DataType::INT16 => nums!(i16, i16),
            DataType::INT32 => nums!(i32, i32),
            DataType::INT64 => nums!(i64, i64),
            DataType::FP32 => nums!(f32, f32),
            DataType::FP64 => nums!(f64, f64),
            DataType::FP16 | DataType::BF16 => {
                let chunks = data.chunks_exact(2);
                let mut seq = serializer.serialize_seq(Some(chunks.len()))?;
                for c in chunks {
                    let x = if self.datatype == DataType::FP16 {
                        half::f16::from_le_bytes([c[0], c[1]]).to_f32()
                    } else {
                        half::bf16::from_le_bytes([c[0], c[1]]).to_f32()
                    };
                    seq.serialize_element(&x)?;
                }
                seq.end()
            }
            DataType::BYTES => {
                let items = ferrum_backend_api::bytes::decode(data)
                    .map_err(|e| S::Error::custom(e.message.as_str()))?;
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&String::from_utf8_lossy(item))?;
                }
                seq.end()
            }
            other => Err(S::Error::custom(format!(
                "output has unsupported data type {other}"
            ))),
        }
    }
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
            let text = serde_json::to_string(&TensorJson {
                datatype: dt,
                data: &bytes,
            })
            .unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            let expected: Vec<Value> = flat.into_iter().cloned().collect();
            assert_eq!(back, Value::Array(expected), "{dt}");
        }
    }

    #[test]
    fn decoding_the_text_agrees_with_decoding_the_values() {
        let cases = [
            (DataType::FP32, json!([[1.5, -2], [3, 4.25]])),
            (DataType::INT8, json!([[-128, 127]])),
            (DataType::UINT64, json!([18446744073709551615u64, 0])),
            (DataType::BOOL, json!([true, [false]])),
            (DataType::BYTES, json!(["a", "", "ü\"x"])),
            (DataType::FP16, json!([0.5, 2])),
            (DataType::INT32, json!(7)),
        ];
        for (dt, data) in cases {
            let text = data.to_string();
            assert_eq!(
                decode_text("x", dt, &text).unwrap(),
                decode("x", dt, &data).unwrap(),
                "{dt} {text}"
            );
        }
    }

    #[test]
    fn decoding_the_text_refuses_what_decoding_the_values_refuses() {
        for (dt, text) in [
            (DataType::INT8, "[300]"),
            (DataType::UINT32, "[-1]"),
            (DataType::INT32, "[1.5]"),
            (DataType::BOOL, "[1]"),
            (DataType::BYTES, "[1]"),
            (DataType::FP32, "[null]"),
            (DataType::FP32, "[{\"a\": 1}]"),
            (DataType::FP32, "[1, 2"),
        ] {
            let e = decode_text("x", dt, text).unwrap_err();
            assert!(
                e.message.contains("input 'x'"),
                "{dt} {text}: {}",
                e.message
            );
        }
        let e = decode_text("x", DataType::INT32, "[300, \"a\"]").unwrap_err();
        assert!(
            e.message.contains("\"a\" is not a valid INT32"),
            "{}",
            e.message
        );
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let e = decode_text("x", DataType::INT32, &deep).unwrap_err();
        assert!(e.message.contains("nested too deeply"), "{}", e.message);
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
