//! The `postprocess` backend: the last step of the example classification pipeline.
//! For each row of `SCORES` (FP32), answers `CLASS` (the label of the highest score, as a
//! string) and `SCORE` (the highest score). Labels come from `labels.txt` in the model
//! folder, one per line, at least as many as a row has scores.

use std::path::Path;

use ferrum_backend_api::bytes;
use ferrum_backend_api::prelude::*;

/// Name of the labels file, in the model folder.
const LABELS_FILE: &str = "labels.txt";

/// A loaded postprocess model: its labels, indexed by score position.
struct Postprocess {
    /// One label per score position.
    labels: Vec<String>,
}

/// Reads the labels file: one label per line, trailing blank lines ignored, none empty.
fn read_labels(path: &Path) -> Result<Vec<String>, BackendError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        BackendError::invalid_argument(format!(
            "cannot read the labels file {}: {e}",
            path.display()
        ))
    })?;
    parse_labels(&text)
        .map_err(|e| BackendError::invalid_argument(format!("labels file {}: {e}", path.display())))
}

/// Parses labels text: one label per line (surrounding whitespace trimmed), trailing blank
/// lines ignored; a blank line before the last label is an error.
fn parse_labels(text: &str) -> Result<Vec<String>, String> {
    let mut labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while labels.last().is_some_and(String::is_empty) {
        labels.pop();
    }
    if let Some(at) = labels.iter().position(String::is_empty) {
        return Err(format!(
            "line {} is empty; each line must hold a label",
            at + 1
        ));
    }
    Ok(labels)
}

/// The number of scores per row the config declares for `SCORES` (its last dim), if fixed.
fn scores_per_row(ctx: &ModelContext) -> Option<usize> {
    let inputs = ctx.config.get("input")?.as_array()?;
    let scores = inputs
        .iter()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("SCORES"))?;
    let last = scores.get("dims")?.as_array()?.last()?;
    // Dims come as numbers or as strings (64-bit integers in proto JSON).
    let dim = last
        .as_i64()
        .or_else(|| last.as_str().and_then(|s| s.parse().ok()))?;
    usize::try_from(dim).ok()
}

/// The index and value of the highest score (the first one on a tie); `None` for no scores.
fn best(scores: &[f32]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &s) in scores.iter().enumerate() {
        match best {
            Some((_, b)) if s <= b || s.is_nan() => {}
            _ => best = Some((i, s)),
        }
    }
    best
}

impl SimpleModel for Postprocess {
    fn load(ctx: &ModelContext) -> Result<Self, BackendError> {
        let (inputs, outputs) = (ctx.tensor_names("input"), ctx.tensor_names("output"));
        if inputs != ["SCORES"] || !outputs.iter().all(|o| o == "CLASS" || o == "SCORE") {
            return Err(BackendError::invalid_argument(format!(
                "postprocess model '{}' needs one input SCORES and outputs among CLASS, SCORE \
                 (the config has inputs {inputs:?}, outputs {outputs:?})",
                ctx.name
            )));
        }
        let path = ctx.model_path.join(LABELS_FILE);
        let labels = read_labels(&path).map_err(|e| {
            BackendError::new(
                e.code,
                format!("postprocess model '{}': {}", ctx.name, e.message),
            )
        })?;
        let needed = scores_per_row(ctx).unwrap_or(1).max(1);
        if labels.len() < needed {
            return Err(BackendError::invalid_argument(format!(
                "postprocess model '{}': labels file {} has {} label(s) but SCORES has {needed} \
                 scores per row; it needs one label per line for each",
                ctx.name,
                path.display(),
                labels.len()
            )));
        }
        Ok(Postprocess { labels })
    }

    fn infer(&self, request: &Request) -> Result<Vec<OutputTensor>, BackendError> {
        let scores = request.require_input("SCORES")?;
        let values = scores.to_vec::<f32>()?;
        let (&per_row, outer) = scores.shape().split_last().ok_or_else(|| {
            BackendError::invalid_argument("input 'SCORES' must have at least one dimension")
        })?;
        let per_row = usize::try_from(per_row)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                BackendError::invalid_argument("input 'SCORES' needs at least one score per row")
            })?;
        if per_row > self.labels.len() {
            return Err(BackendError::invalid_argument(format!(
                "input 'SCORES' has {per_row} scores per row but there are only {} labels",
                self.labels.len()
            )));
        }
        let mut classes = Vec::new();
        let mut best_scores = Vec::new();
        for row in values.chunks_exact(per_row) {
            let (index, score) = best(row).ok_or_else(|| {
                BackendError::invalid_argument("a row of 'SCORES' holds no comparable score")
            })?;
            let label = self.labels.get(index).ok_or_else(|| {
                BackendError::internal(format!("no label for score position {index}"))
            })?;
            classes.push(label.as_bytes());
            best_scores.push(score);
        }
        let mut shape = outer.to_vec();
        shape.push(1);
        Ok(vec![
            OutputTensor::new(
                "CLASS",
                DataType::BYTES,
                shape.clone(),
                bytes::encode(classes),
            ),
            OutputTensor::from_elements("SCORE", shape, &best_scores),
        ])
    }
}

export_model!(Postprocess);

#[cfg(test)]
mod tests {
    use super::{best, parse_labels};

    #[test]
    fn labels_are_one_per_line() {
        assert_eq!(
            parse_labels("cat\r\ndog\nbird\nfish\n\n"),
            Ok(vec![
                "cat".into(),
                "dog".into(),
                "bird".into(),
                "fish".into()
            ])
        );
        assert!(parse_labels("cat\n\ndog\n").is_err());
        assert_eq!(parse_labels(""), Ok(vec![]));
    }

    #[test]
    fn the_first_highest_score_wins() {
        assert_eq!(best(&[0.1, 0.7, 0.7, -1.0]), Some((1, 0.7)));
        assert_eq!(best(&[f32::NAN, 0.2]), Some((1, 0.2)));
        assert_eq!(best(&[]), None);
    }
}
