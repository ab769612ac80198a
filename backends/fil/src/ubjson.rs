//! A reader for Universal Binary JSON (as XGBoost writes `xgboost.ubj`) into a
//! `serde_json::Value`, so both XGBoost formats share one loader. Supports the typed and
//! counted container forms (`$` type, `#` count) XGBoost uses for its arrays.

use serde_json::{Map, Number, Value};

/// Deepest container nesting accepted (a damaged file must not overflow the stack).
const MAX_DEPTH: usize = 64;

/// Parses a whole UBJSON document.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { bytes, at: 0 };
    let marker = r.marker()?;
    let value = r.value(marker, 0)?;
    Ok(value)
}

/// A cursor over the document.
struct Reader<'a> {
    /// The document.
    bytes: &'a [u8],
    /// Read position.
    at: usize,
}

impl Reader<'_> {
    /// Takes `n` bytes.
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("UBJSON ends early (at byte {})", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// Takes `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// The next type marker, skipping no-ops.
    fn marker(&mut self) -> Result<u8, String> {
        loop {
            let [m] = self.array::<1>()?;
            if m != b'N' {
                return Ok(m);
            }
        }
    }

    /// An integer of the type `marker`.
    fn integer(&mut self, marker: u8) -> Result<i64, String> {
        Ok(match marker {
            b'i' => i64::from(i8::from_be_bytes(self.array()?)),
            b'U' => i64::from(u8::from_be_bytes(self.array()?)),
            b'I' => i64::from(i16::from_be_bytes(self.array()?)),
            b'l' => i64::from(i32::from_be_bytes(self.array()?)),
            b'L' => i64::from_be_bytes(self.array()?),
            other => {
                return Err(format!(
                    "UBJSON: expected an integer, found marker {:?} at byte {}",
                    other as char, self.at
                ));
            }
        })
    }

    /// A length (an integer with its own marker).
    fn length(&mut self) -> Result<usize, String> {
        let marker = self.marker()?;
        let n = self.integer(marker)?;
        let n = usize::try_from(n).map_err(|_| format!("UBJSON: negative length {n}"))?;
        if n > self.bytes.len() {
            return Err(format!("UBJSON: length {n} is larger than the file"));
        }
        Ok(n)
    }

    /// A string of `length` bytes.
    fn string(&mut self) -> Result<String, String> {
        let n = self.length()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "UBJSON: a string is not UTF-8".to_string())
    }

    /// A float as a JSON number (non-finite values become null, as JSON has none).
    fn float(x: f64) -> Value {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }

    /// The value whose marker was just read.
    fn value(&mut self, marker: u8, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("UBJSON: containers nest too deep".into());
        }
        Ok(match marker {
            b'Z' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' | b'U' | b'I' | b'l' | b'L' => Value::from(self.integer(marker)?),
            b'd' => Self::float(f64::from(f32::from_be_bytes(self.array()?))),
            b'D' => Self::float(f64::from_be_bytes(self.array()?)),
            b'C' => {
                let [c] = self.array::<1>()?;
                Value::String(char::from(c).to_string())
            }
            b'S' | b'H' => Value::String(self.string()?),
            b'[' => self.container(false, depth)?,
            b'{' => self.container(true, depth)?,
            other => {
                return Err(format!(
                    "UBJSON: unknown marker {:?} at byte {}",
                    other as char,
                    self.at.saturating_sub(1)
                ));
            }
        })
    }

    /// An array or object (its opening marker read).
    fn container(&mut self, object: bool, depth: usize) -> Result<Value, String> {
        let end = if object { b'}' } else { b']' };
        let mut element_type = None;
        let mut count = None;
        let mut pending = Some(self.marker()?);
        if pending == Some(b'$') {
            element_type = Some(self.array::<1>()?[0]);
            pending = Some(self.marker()?);
            if pending != Some(b'#') {
                return Err("UBJSON: a typed container has no count".into());
            }
        }
        if pending == Some(b'#') {
            count = Some(self.length()?);
            pending = None;
        }
        let mut items = Vec::new();
        let mut map = Map::new();
        let mut i = 0;
        loop {
            match count {
                Some(n) if i == n => break,
                Some(_) => {}
                None => {
                    let m = match pending.take() {
                        Some(m) => m,
                        None => self.marker()?,
                    };
                    if m == end {
                        break;
                    }
                    pending = Some(m);
                }
            }
            let key = if object {
                let m = match pending.take() {
                    Some(m) => m,
                    None => self.marker()?,
                };
                let n = self.integer(m)?;
                let n = usize::try_from(n).map_err(|_| "UBJSON: negative key length")?;
                let b = self.take(n)?;
                Some(String::from_utf8(b.to_vec()).map_err(|_| "UBJSON: a key is not UTF-8")?)
            } else {
                None
            };
            let marker = match (element_type, pending.take()) {
                (Some(t), _) => t,
                (None, Some(m)) => m,
                (None, None) => self.marker()?,
            };
            let value = self.value(marker, depth + 1)?;
            match key {
                Some(k) => {
                    map.insert(k, value);
                }
                None => items.push(value),
            }
            i += 1;
        }
        Ok(if object {
            Value::Object(map)
        } else {
            Value::Array(items)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_arrays_and_typed_arrays() {
        // {"a": [1, 2.5], "b": [$d#i2 1.0 -2.0], "c": "x"}
        let mut doc = vec![b'{'];
        doc.extend([b'i', 1, b'a', b'[', b'i', 1, b'D']);
        doc.extend(2.5f64.to_be_bytes());
        doc.push(b']');
        doc.extend([b'i', 1, b'b', b'[', b'$', b'd', b'#', b'i', 2]);
        doc.extend(1.0f32.to_be_bytes());
        doc.extend((-2.0f32).to_be_bytes());
        doc.extend([b'i', 1, b'c', b'S', b'i', 1, b'x', b'}']);
        let v = parse(&doc).expect("parses");
        assert_eq!(v, json!({"a": [1, 2.5], "b": [1.0, -2.0], "c": "x"}));
    }

    #[test]
    fn truncated_documents_are_errors() {
        assert!(parse(&[b'{', b'i', 5, b'a']).is_err());
        assert!(parse(&[b'[', b'#', b'L', 0x7f, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse(b"?").is_err());
    }
}
