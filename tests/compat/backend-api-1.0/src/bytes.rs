//! The `BYTES` tensor encoding: each element is a 4-byte little-endian length, then its bytes.

use crate::types::BackendError;

/// Splits a `BYTES` buffer into its elements, failing on a length that runs past the end.
pub fn decode(mut data: &[u8]) -> Result<Vec<&[u8]>, BackendError> {
    let mut items = Vec::new();
    while !data.is_empty() {
        let (len, rest) = data.split_first_chunk::<4>().ok_or_else(|| {
            BackendError::invalid_argument("BYTES element is cut off inside its length prefix")
        })?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(BackendError::invalid_argument(format!(
                "BYTES element claims {len} bytes but only {} remain",
                rest.len()
            )));
        }
        let (item, tail) = rest.split_at(len);
        items.push(item);
        data = tail;
    }
    Ok(items)
}

/// Joins elements into a `BYTES` buffer.
pub fn encode<I, T>(items: I) -> Vec<u8>
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let mut out = Vec::new();
    for item in items {
        let item = item.as_ref();
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let items: Vec<&[u8]> = vec![b"", b"abc", &[0xff, 0x00]];
        let encoded = encode(&items);
        assert_eq!(decode(&encoded).unwrap(), items);
    }

    #[test]
    fn rejects_truncated() {
        assert!(decode(&[1, 0]).is_err());
        assert!(decode(&[5, 0, 0, 0, b'a']).is_err());
    }
}
