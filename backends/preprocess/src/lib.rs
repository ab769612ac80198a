//! The `preprocess` backend: the first step of the example classification pipeline.
//! Turns raw bytes (`RAW`, UINT8) into normalised features (`FEATURES`, FP32):
//! `(x / 255 - 0.5) / 0.25` for each byte, same shape.

use ferrum_backend_api::prelude::*;

/// Mean subtracted after scaling a byte to `[0, 1]`.
const MEAN: f32 = 0.5;
/// Standard deviation the centred value is divided by.
const STD: f32 = 0.25;

/// Normalises one byte: scale to `[0, 1]`, centre on [`MEAN`], divide by [`STD`].
fn normalise(x: u8) -> f32 {
    (f32::from(x) / 255.0 - MEAN) / STD
}

/// The preprocess model; it holds no state.
struct Preprocess;

impl SimpleModel for Preprocess {
    fn load(ctx: &ModelContext) -> Result<Self, BackendError> {
        let (inputs, outputs) = (ctx.tensor_names("input"), ctx.tensor_names("output"));
        if inputs != ["RAW"] || outputs != ["FEATURES"] {
            return Err(BackendError::invalid_argument(format!(
                "preprocess model '{}' needs exactly one input RAW and one output FEATURES \
                 (the config has inputs {inputs:?}, outputs {outputs:?})",
                ctx.name
            )));
        }
        Ok(Preprocess)
    }

    /// Writes the features of every row of the request (batched or not) straight into the
    /// server's buffer.
    fn respond(&self, request: &Request, response: &mut Response) -> Result<(), BackendError> {
        let raw = request.require_input("RAW")?;
        if raw.datatype != DataType::UINT8 {
            return Err(BackendError::invalid_argument(format!(
                "input 'RAW' has type {}, expected UINT8",
                raw.datatype
            )));
        }
        let bytes = raw.data();
        let out = response.output("FEATURES", DataType::FP32, raw.shape())?;
        if out.len() != bytes.len() * 4 {
            return Err(BackendError::internal(format!(
                "RAW holds {} bytes but FEATURES got a buffer of {} bytes",
                bytes.len(),
                out.len()
            )));
        }
        for (slot, &x) in out.chunks_exact_mut(4).zip(bytes.iter()) {
            slot.copy_from_slice(&normalise(x).to_le_bytes());
        }
        Ok(())
    }
}

export_model!(Preprocess);

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn bytes_map_onto_the_normalised_range() {
        assert_eq!(normalise(0), -2.0);
        assert_eq!(normalise(255), 2.0);
        assert!((normalise(128) - (128.0 / 255.0 - 0.5) / 0.25).abs() < 1e-7);
    }
}
