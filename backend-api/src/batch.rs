//! Helpers for backends that run a batch of whole requests as one call of their runtime:
//! join the requests' inputs along the batch dimension, run, and split each output back
//! into one response per request.

use std::borrow::Cow;

use crate::request::Request;
use crate::response::Response;
use crate::types::{BackendError, DataType};

/// How a batch of requests lines up along the batch dimension (dimension 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Each request's number of rows, in request order.
    rows: Vec<usize>,
}

impl Batch {
    /// Reads each request's batch size from dimension 0 of its input `input`.
    pub fn of(requests: &[Request], input: &str) -> Result<Batch, BackendError> {
        let rows = requests
            .iter()
            .map(|r| {
                let t = r.require_input(input)?;
                t.shape
                    .first()
                    .and_then(|&d| usize::try_from(d).ok())
                    .ok_or_else(|| {
                        BackendError::invalid_argument(format!(
                            "input '{input}' has shape {:?}, which has no batch dimension",
                            t.shape
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Batch { rows })
    }

    /// Each request's number of rows.
    pub fn rows(&self) -> &[usize] {
        &self.rows
    }

    /// Rows over all requests.
    pub fn total(&self) -> usize {
        self.rows.iter().sum()
    }
}

/// Whether two requests can run in one call: the same inputs (in any order) with the same
/// types and the same dimensions after the batch dimension.
pub fn joinable(a: &Request, b: &Request) -> bool {
    let count = a.inputs().count();
    count == b.inputs().count()
        && a.inputs().all(|x| {
            b.input(x.name).is_some_and(|y| {
                x.datatype == y.datatype
                    && x.shape.len() == y.shape.len()
                    && x.shape.get(1..) == y.shape.get(1..)
            })
        })
}

/// Splits requests into runs of [`joinable`] neighbours, keeping their order.
pub fn group(requests: Vec<Request>) -> Vec<Vec<Request>> {
    let mut groups: Vec<Vec<Request>> = Vec::new();
    for request in requests {
        match groups.last_mut() {
            Some(last) if last.last().is_some_and(|prev| joinable(prev, &request)) => {
                last.push(request)
            }
            _ => groups.push(vec![request]),
        }
    }
    groups
}

/// Cuts requests of `rows` rows each into consecutive runs of at most `max` rows (a request
/// over the limit runs alone); returns how many requests each run takes.
pub fn runs_within(rows: &[usize], max: usize) -> Vec<usize> {
    let mut runs = Vec::new();
    let (mut count, mut total) = (0usize, 0usize);
    for &r in rows {
        if count > 0 && total.saturating_add(r) > max {
            runs.push(count);
            (count, total) = (0, 0);
        }
        count += 1;
        total = total.saturating_add(r);
    }
    if count > 0 {
        runs.push(count);
    }
    runs
}

/// One input joined across a batch of requests.
#[derive(Debug)]
pub struct Joined<'r> {
    /// Element type.
    pub datatype: DataType,
    /// The joined shape: the batch's total rows, then the common dimensions.
    pub shape: Vec<i64>,
    /// The joined bytes (borrowed for a batch of one request in one private buffer).
    pub data: Cow<'r, [u8]>,
}

/// Joins input `name` of every request along the batch dimension.
pub fn join_input<'r>(requests: &'r [Request], name: &str) -> Result<Joined<'r>, BackendError> {
    let tensors = requests
        .iter()
        .map(|r| r.require_input(name))
        .collect::<Result<Vec<_>, _>>()?;
    let first = tensors
        .first()
        .ok_or_else(|| BackendError::internal("join_input called with no requests"))?;
    if tensors.len() == 1 {
        return Ok(Joined {
            datatype: first.datatype,
            shape: first.shape.to_vec(),
            data: first.data(),
        });
    }
    let mut rows = 0i64;
    let mut size = 0usize;
    for t in &tensors {
        if t.datatype != first.datatype || t.shape.get(1..) != first.shape.get(1..) {
            return Err(BackendError::invalid_argument(format!(
                "input '{name}' differs between the requests of a batch ({} {:?} vs {} {:?})",
                first.datatype, first.shape, t.datatype, t.shape
            )));
        }
        rows += t.shape.first().copied().unwrap_or(0);
        size += t.byte_size();
    }
    let mut data = vec![0u8; size];
    let mut at = 0;
    for t in &tensors {
        t.copy_to(&mut data[at..at + t.byte_size()])?;
        at += t.byte_size();
    }
    let mut shape = first.shape.to_vec();
    if let Some(d) = shape.first_mut() {
        *d = rows;
    }
    Ok(Joined {
        datatype: first.datatype,
        shape,
        data: Cow::Owned(data),
    })
}

/// Splits a batch output (`shape[0]` = the batch's total rows) into one output per response,
/// each holding its request's rows, written into the response's server-allocated buffer.
pub fn split_output(
    responses: &mut [Response],
    batch: &Batch,
    name: &str,
    datatype: DataType,
    shape: &[i64],
    data: &[u8],
) -> Result<(), BackendError> {
    let every = vec![true; batch.rows.len()];
    split_output_where(responses, batch, &every, name, datatype, shape, data)
}

/// Like [`split_output`], but only the responses whose entry in `wanted` is true get the
/// output (typically: whose request asked for it, [`Request::wants_output`]).
///
/// A response whose own output cannot be written (its client's shared memory region is too
/// small, say) is marked failed ([`Response::fail`]) and the others go on; an error returned
/// here concerns the whole batch.
pub fn split_output_where(
    responses: &mut [Response],
    batch: &Batch,
    wanted: &[bool],
    name: &str,
    datatype: DataType,
    shape: &[i64],
    data: &[u8],
) -> Result<(), BackendError> {
    let total = batch.total();
    if responses.len() != batch.rows.len() || wanted.len() != batch.rows.len() {
        return Err(BackendError::internal(format!(
            "split_output got {} responses and {} flags for a batch of {} requests",
            responses.len(),
            wanted.len(),
            batch.rows.len()
        )));
    }
    if shape.first().copied() != i64::try_from(total).ok() {
        return Err(BackendError::internal(format!(
            "output '{name}' has shape {shape:?}, but the batch holds {total} rows"
        )));
    }
    let offsets = row_offsets(name, datatype, data, total)?;
    let mut row = 0;
    for ((response, &rows), &wants) in responses.iter_mut().zip(&batch.rows).zip(wanted) {
        let (start, end) = (offsets[row], offsets[row + rows]);
        row += rows;
        if !wants {
            continue;
        }
        let mut part_shape = shape.to_vec();
        part_shape[0] = rows as i64;
        if let Err(e) = response.output_from(name, datatype, &part_shape, &data[start..end]) {
            response.fail(e);
        }
    }
    Ok(())
}

/// Byte offset where each row of an output starts, plus the end.
fn row_offsets(
    name: &str,
    datatype: DataType,
    data: &[u8],
    rows: usize,
) -> Result<Vec<usize>, BackendError> {
    if rows == 0 {
        return Ok(vec![0]);
    }
    if datatype.element_size().is_some() {
        if !data.len().is_multiple_of(rows) {
            return Err(BackendError::internal(format!(
                "output '{name}' holds {} bytes, not a whole number of {rows} rows",
                data.len()
            )));
        }
        let row_bytes = data.len() / rows;
        return Ok((0..=rows).map(|r| r * row_bytes).collect());
    }
    let items = crate::bytes::decode(data)?;
    if !items.len().is_multiple_of(rows) {
        return Err(BackendError::internal(format!(
            "output '{name}' holds {} strings, not a whole number of {rows} rows",
            items.len()
        )));
    }
    let per_row = items.len() / rows;
    let mut starts = Vec::with_capacity(items.len() + 1);
    let mut offset = 0;
    for item in &items {
        starts.push(offset);
        offset += 4 + item.len();
    }
    starts.push(offset);
    Ok((0..=rows).map(|r| starts[r * per_row]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_stay_within_the_batch_limit() {
        assert_eq!(runs_within(&[1, 2, 3, 2], 4), vec![2, 1, 1]);
        assert_eq!(runs_within(&[4, 4], 8), vec![2]);
        assert_eq!(runs_within(&[9, 1], 8), vec![1, 1]);
        assert_eq!(runs_within(&[1; 5], 2), vec![2, 2, 1]);
        assert!(runs_within(&[], 4).is_empty());
    }

    #[test]
    fn row_offsets_fixed_and_bytes() {
        let data: Vec<u8> = (0..12).collect();
        assert_eq!(
            row_offsets("o", DataType::INT32, &data, 3).unwrap(),
            vec![0, 4, 8, 12]
        );
        let strings = crate::bytes::encode(["a", "bb", "", "ccc"]);
        assert_eq!(
            row_offsets("o", DataType::BYTES, &strings, 2).unwrap(),
            vec![0, 11, strings.len()]
        );
        assert!(row_offsets("o", DataType::INT32, &data[..10], 3).is_err());
    }
}
