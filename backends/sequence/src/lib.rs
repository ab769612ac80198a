//! The `sequence` backend: the small stateful models Triton's sequence examples talk to.
//! Each request of a sequence carries INT32 `INPUT`; the answer is INT32 `OUTPUT` of the same
//! shape. The config parameter `mode` picks the model:
//!
//! - `offset` (`simple_sequence`): `OUTPUT = INPUT + 1` on the request that starts a
//!   sequence, `OUTPUT = INPUT` on the others;
//! - `dyna` (`simple_dyna_sequence`): as `offset`, and the request that ends the sequence
//!   adds the correlation id;
//! - `accumulate` (`simple_string_dyna_sequence`): the running sum of the sequence's inputs
//!   (the start resets it), and the request that ends the sequence adds the correlation id.
//!
//! The start and end flags and the correlation id come with each request from the sequence
//! batcher; string correlation ids are added as the integers they spell.

use std::collections::HashMap;
use std::sync::Mutex;

use ferrum_backend_api::prelude::*;
use ferrum_backend_api::{CorrelationId, SEQUENCE_END, SEQUENCE_START};

/// Most sequences whose running sums are kept at once; beyond it the oldest-looking entry is
/// dropped (a sequence that never ended, cut by the batcher's idle timeout).
const MAX_SEQUENCES: usize = 65_536;

/// What the model computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Input plus one at the start.
    Offset,
    /// Input plus one at the start, plus the correlation id at the end.
    Dyna,
    /// Running sum, plus the correlation id at the end.
    Accumulate,
}

/// A sequence model and the running sums of its open sequences.
struct SequenceModel {
    /// What it computes.
    mode: Mode,
    /// Running sums by correlation id (mode `accumulate`).
    sums: Mutex<HashMap<String, Vec<i64>>>,
}

/// The correlation id as a key, and as the integer the end of a `dyna` sequence adds.
fn correlation(request: &Request) -> Result<(String, Option<i64>), BackendError> {
    match request.correlation_id() {
        CorrelationId::U64(n) => Ok((n.to_string(), i64::try_from(n).ok())),
        CorrelationId::Str(s) => Ok((s.to_string(), s.trim().parse::<i64>().ok())),
        _ => Err(BackendError::invalid_argument(
            "this model answers requests of a sequence only: give a sequence_id",
        )),
    }
}

impl SimpleModel for SequenceModel {
    fn load(ctx: &ModelContext) -> Result<Self, BackendError> {
        let mode = match ctx.parameter("mode").unwrap_or("offset") {
            "offset" => Mode::Offset,
            "dyna" => Mode::Dyna,
            "accumulate" => Mode::Accumulate,
            other => {
                return Err(BackendError::invalid_argument(format!(
                    "model '{}': parameter mode is '{other}'; use offset, dyna or accumulate",
                    ctx.name
                )));
            }
        };
        Ok(SequenceModel {
            mode,
            sums: Mutex::new(HashMap::new()),
        })
    }

    fn infer(&self, request: &Request) -> Result<Vec<OutputTensor>, BackendError> {
        let input = request.require_input("INPUT")?;
        let values = input.to_vec::<i32>()?;
        let (key, number) = correlation(request)?;
        let (start, end) = (
            request.flags() & SEQUENCE_START != 0,
            request.flags() & SEQUENCE_END != 0,
        );
        let at_end = |id: Option<i64>| -> Result<i64, BackendError> {
            if !end || self.mode == Mode::Offset {
                return Ok(0);
            }
            id.ok_or_else(|| {
                BackendError::invalid_argument(format!(
                    "correlation id '{key}' is not an integer, which this model adds at the end"
                ))
            })
        };
        let extra = at_end(number)?;
        let out: Vec<i64> = match self.mode {
            Mode::Offset | Mode::Dyna => values
                .iter()
                .map(|&v| i64::from(v) + i64::from(start) + extra)
                .collect(),
            Mode::Accumulate => {
                let mut sums = self.sums.lock().unwrap_or_else(|e| e.into_inner());
                if !start && !sums.contains_key(&key) {
                    return Err(BackendError::invalid_argument(format!(
                        "sequence '{key}' has no running sum: its first request must start it"
                    )));
                }
                if start
                    && sums.len() >= MAX_SEQUENCES
                    && !sums.contains_key(&key)
                    && let Some(old) = sums.keys().next().cloned()
                {
                    sums.remove(&old);
                }
                let sum = sums.entry(key.clone()).or_default();
                if start || sum.len() != values.len() {
                    *sum = vec![0; values.len()];
                }
                for (s, &v) in sum.iter_mut().zip(&values) {
                    *s = s.wrapping_add(i64::from(v));
                }
                let out = sum.iter().map(|s| s.wrapping_add(extra)).collect();
                if end {
                    sums.remove(&key);
                }
                out
            }
        };
        // INT32 like the inputs; the sums wrap as the C++ example models' do.
        let out: Vec<i32> = out.iter().map(|&v| v as i32).collect();
        Ok(vec![OutputTensor::from_elements(
            "OUTPUT",
            input.shape().to_vec(),
            &out,
        )])
    }
}

export_model!(SequenceModel);
