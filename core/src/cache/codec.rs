//! The bytes a cached response is stored as outside this process (in Redis): a version tag,
//! the model, the parameters and the outputs, every length checked when read back.

use bytes::Bytes;
use ferrum_backend_api::{DataType, ParamValue, Parameter};

use crate::server::{InferResponse, OutputData};

/// Leads every stored response; a different format is never misread.
const MAGIC: &[u8; 4] = b"FRC1";

/// The stored form of a response (outputs carried in shared memory are never stored).
pub fn encode(response: &InferResponse) -> Vec<u8> {
    let size = 64
        + response
            .outputs
            .iter()
            .map(|o| o.data.len() + 64)
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    text(&mut out, &response.model_name);
    out.extend_from_slice(&response.model_version.to_le_bytes());
    // The count goes first and is filled in once known: kinds this format does not know are
    // left out.
    let count_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut count = 0u32;
    for p in &response.parameters {
        let mark = out.len();
        text(&mut out, &p.key);
        match &p.value {
            ParamValue::Bool(b) => out.extend_from_slice(&[0, u8::from(*b)]),
            ParamValue::Int(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            ParamValue::Double(d) => {
                out.push(2);
                out.extend_from_slice(&d.to_le_bytes());
            }
            ParamValue::Str(s) => {
                out.push(3);
                text(&mut out, s);
            }
            _ => {
                out.truncate(mark);
                continue;
            }
        }
        count += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(response.outputs.len() as u32).to_le_bytes());
    for o in &response.outputs {
        text(&mut out, &o.name);
        out.extend_from_slice(&o.datatype.0.to_le_bytes());
        out.extend_from_slice(&(o.shape.len() as u32).to_le_bytes());
        for d in &o.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&(o.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&o.data);
    }
    out
}

/// Reads a stored response back; an error says what is wrong with the bytes.
pub fn decode(bytes: &[u8]) -> Result<InferResponse, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return Err("not a stored response (unknown format)".into());
    }
    let model_name = r.text()?;
    let model_version = i64::from_le_bytes(r.array()?);
    let count = r.u32()? as usize;
    let mut parameters = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let key = r.text()?;
        let value = match r.take(1)?[0] {
            0 => ParamValue::Bool(r.take(1)?[0] != 0),
            1 => ParamValue::Int(i64::from_le_bytes(r.array()?)),
            2 => ParamValue::Double(f64::from_le_bytes(r.array()?)),
            3 => ParamValue::Str(r.text()?),
            kind => return Err(format!("unknown parameter kind {kind}")),
        };
        parameters.push(Parameter { key, value });
    }
    let count = r.u32()? as usize;
    let mut outputs = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = r.text()?;
        let datatype = DataType(r.u32()?);
        let dims = r.u32()? as usize;
        let mut shape = Vec::with_capacity(dims.min(64));
        for _ in 0..dims {
            shape.push(i64::from_le_bytes(r.array()?));
        }
        let len = usize::try_from(u64::from_le_bytes(r.array()?))
            .map_err(|_| "an output is too long".to_string())?;
        let data = Bytes::copy_from_slice(r.take(len)?);
        outputs.push(OutputData {
            name,
            datatype,
            shape,
            data,
            shm: None,
        });
    }
    if r.at != bytes.len() {
        return Err("trailing bytes after the last output".into());
    }
    Ok(InferResponse {
        model_name,
        model_version,
        id: String::new(),
        parameters,
        outputs,
    })
}

/// Appends a length-prefixed string.
fn text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over stored bytes.
struct Reader<'a> {
    /// The bytes.
    bytes: &'a [u8],
    /// Where the next read starts.
    at: usize,
}

impl<'a> Reader<'a> {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| "the stored response is cut short".to_string())?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// The next little-endian u32.
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// The next length-prefixed string.
    fn text(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_survives_the_round_trip_and_damage_is_refused() {
        let response = InferResponse {
            model_name: "simple".into(),
            model_version: 3,
            id: "ignored".into(),
            parameters: vec![
                Parameter {
                    key: "b".into(),
                    value: ParamValue::Bool(true),
                },
                Parameter {
                    key: "s".into(),
                    value: ParamValue::Str("x".into()),
                },
                Parameter {
                    key: "d".into(),
                    value: ParamValue::Double(0.5),
                },
            ],
            outputs: vec![OutputData {
                name: "OUTPUT0".into(),
                datatype: DataType::INT32,
                shape: vec![1, 4],
                data: Bytes::from_static(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]),
                shm: None,
            }],
        };
        let bytes = encode(&response);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.model_name, "simple");
        assert_eq!(back.model_version, 3);
        assert_eq!(back.parameters.len(), 3);
        assert_eq!(back.outputs[0].shape, vec![1, 4]);
        assert_eq!(back.outputs[0].data, response.outputs[0].data);
        for cut in [0, 3, 10, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}
