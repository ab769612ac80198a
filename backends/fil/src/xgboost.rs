//! XGBoost models saved with `save_model` as JSON (`xgboost.json`) or UBJSON
//! (`xgboost.ubj`, read by [`crate::ubjson`] into the same tree): `gbtree` and `dart`
//! boosters with single-output trees, numerical and categorical splits.

use serde_json::Value;

use crate::forest::{Forest, MAX_FEATURE, Node, Transform};

/// Field `key` of an object, or an error naming it.
fn field<'a>(v: &'a Value, key: &str, within: &str) -> Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("{within} has no '{key}'"))
}

/// A number written as a number or as a string (XGBoost writes parameters as strings).
fn number(v: &Value, what: &str) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
    .ok_or_else(|| format!("{what} is not a number: {v}"))
}

/// A non-negative integer written as a number or a string.
fn count(v: &Value, what: &str) -> Result<usize, String> {
    let n = number(v, what)?;
    if n < 0.0 || n.fract() != 0.0 || n > u32::MAX as f64 {
        return Err(format!("{what} is not a count: {v}"));
    }
    Ok(n as usize)
}

/// An array of numbers.
fn numbers(v: &Value, key: &str, within: &str) -> Result<Vec<f64>, String> {
    let list = field(v, key, within)?
        .as_array()
        .ok_or_else(|| format!("{within}: '{key}' is not an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, x)| number(x, &format!("{within}: {key}[{i}]")))
        .collect()
}

/// An optional array of numbers (empty when absent).
fn numbers_or_empty(v: &Value, key: &str, within: &str) -> Result<Vec<f64>, String> {
    if v.get(key).is_none() {
        return Ok(Vec::new());
    }
    numbers(v, key, within)
}

/// XGBoost's base score: `"5E-1"`, or since 3.1 a vector `"[a,b,c]"`.
fn base_scores(v: &Value) -> Result<Vec<f64>, String> {
    let text = match v {
        Value::String(s) => s.trim(),
        other => return Ok(vec![number(other, "base_score")?]),
    };
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    inner
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("base_score is not a number: {s}"))
        })
        .collect()
}

/// Logit: the margin of a probability.
fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// Builds a forest from a parsed XGBoost model (JSON or UBJSON).
pub fn forest_from_value(root: &Value) -> Result<Forest, String> {
    let learner = field(root, "learner", "the model")?;
    let params = field(learner, "learner_model_param", "learner")?;
    let num_features = count(
        field(params, "num_feature", "learner_model_param")?,
        "num_feature",
    )?;
    let num_class = count(
        field(params, "num_class", "learner_model_param")?,
        "num_class",
    )?;
    if let Some(t) = params.get("num_target") {
        let t = count(t, "num_target")?;
        if t > 1 {
            return Err(format!(
                "multi-target models (num_target {t}) are not supported"
            ));
        }
    }
    let objective = field(field(learner, "objective", "learner")?, "name", "objective")?
        .as_str()
        .ok_or("the objective name is not a string")?;
    let num_groups = num_class.max(1);
    let (transform, margin_of): (Transform, fn(f64) -> f64) = match objective {
        "binary:logistic" | "reg:logistic" => (Transform::Sigmoid(1.0), logit),
        "binary:logitraw"
        | "multi:softmax"
        | "reg:squarederror"
        | "reg:linear"
        | "reg:absoluteerror"
        | "reg:pseudohubererror"
        | "reg:quantileerror"
        | "reg:squaredlogerror"
        | "rank:pairwise"
        | "rank:ndcg"
        | "rank:map" => (Transform::Identity, |m| m),
        "multi:softprob" => (Transform::Softmax, |m| m),
        "count:poisson" | "reg:gamma" | "reg:tweedie" | "survival:cox" => (Transform::Exp, f64::ln),
        other => return Err(format!("objective '{other}' is not supported")),
    };
    // multi:softmax predicts the class; as a FIL classifier it is the same as softprob.
    let transform = if objective == "multi:softmax" {
        Transform::Softmax
    } else {
        transform
    };
    let scores = base_scores(field(params, "base_score", "learner_model_param")?)?;
    let base_margin = match scores.len() {
        1 => vec![margin_of(scores[0]); num_groups],
        n if n == num_groups => scores.into_iter().map(margin_of).collect(),
        n => {
            return Err(format!(
                "base_score has {n} values for {num_groups} outputs"
            ));
        }
    };

    let booster = field(learner, "gradient_booster", "learner")?;
    let name = booster
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("gbtree");
    let (model, weights) = match name {
        "gbtree" => (field(booster, "model", "gradient_booster")?, Vec::new()),
        "dart" => {
            let gbtree = field(booster, "gbtree", "the dart booster")?;
            (
                field(gbtree, "model", "the dart booster")?,
                numbers(booster, "weight_drop", "the dart booster")?,
            )
        }
        other => {
            return Err(format!(
                "booster '{other}' is not supported (only gbtree and dart)"
            ));
        }
    };
    let trees = field(model, "trees", "the booster model")?
        .as_array()
        .ok_or("'trees' is not an array")?;
    let tree_info = numbers(model, "tree_info", "the booster model")?;
    if tree_info.len() != trees.len() {
        return Err(format!(
            "tree_info lists {} trees, the model has {}",
            tree_info.len(),
            trees.len()
        ));
    }
    if num_features > MAX_FEATURE {
        return Err(format!("{num_features} features is more than supported"));
    }

    let mut forest = Forest {
        num_features,
        num_groups,
        nodes: Vec::new(),
        covers: Vec::new(),
        values: Vec::new(),
        depths: Vec::new(),
        roots: Vec::new(),
        groups: Vec::new(),
        set_words: Vec::new(),
        set_ranges: Vec::new(),
        members_go_left: false,
        base_margin,
        transform,
        is_classifier: objective.starts_with("binary:") || objective.starts_with("multi:"),
        max_depth: 0,
    };
    for (t, tree) in trees.iter().enumerate() {
        let weight = weights.get(t).copied().unwrap_or(1.0);
        let group = tree_info[t];
        if group < 0.0 || group as usize >= num_groups {
            return Err(format!("tree {t} belongs to group {group} of {num_groups}"));
        }
        add_tree(&mut forest, tree, t, weight)?;
        forest.groups.push(group as u32);
    }
    forest.validate()?;
    Ok(forest)
}

/// Appends one tree.
fn add_tree(forest: &mut Forest, tree: &Value, t: usize, weight: f64) -> Result<(), String> {
    let within = format!("tree {t}");
    let w = within.as_str();
    if let Some(size) = tree
        .get("tree_param")
        .and_then(|p| p.get("size_leaf_vector"))
    {
        let size = count(size, "size_leaf_vector")?;
        if size > 1 {
            return Err(format!(
                "{w} has vector leaves (size {size}), which are not supported"
            ));
        }
    }
    let left = numbers(tree, "left_children", w)?;
    let right = numbers(tree, "right_children", w)?;
    let feature = numbers(tree, "split_indices", w)?;
    let condition = numbers(tree, "split_conditions", w)?;
    let default_left = numbers(tree, "default_left", w)?;
    let hessian = numbers_or_empty(tree, "sum_hessian", w)?;
    let split_type = numbers_or_empty(tree, "split_type", w)?;
    let cat_nodes = numbers_or_empty(tree, "categories_nodes", w)?;
    let cat_segments = numbers_or_empty(tree, "categories_segments", w)?;
    let cat_sizes = numbers_or_empty(tree, "categories_sizes", w)?;
    let categories = numbers_or_empty(tree, "categories", w)?;
    let n = left.len();
    if n == 0 {
        return Err(format!("{w} has no nodes"));
    }
    for (name, len) in [
        ("right_children", right.len()),
        ("split_indices", feature.len()),
        ("split_conditions", condition.len()),
        ("default_left", default_left.len()),
    ] {
        if len != n {
            return Err(format!("{w}: {name} has {len} entries, left_children {n}"));
        }
    }
    if !hessian.is_empty() && hessian.len() != n {
        return Err(format!(
            "{w}: sum_hessian has {} entries for {n} nodes",
            hessian.len()
        ));
    }
    if cat_nodes.len() != cat_segments.len() || cat_nodes.len() != cat_sizes.len() {
        return Err(format!("{w}: the category lists differ in length"));
    }
    let offset = u32::try_from(forest.nodes.len()).map_err(|_| "too many nodes".to_string())?;
    let child = |c: f64| -> Result<u32, String> {
        if c < 0.0 || c as usize >= n || c.fract() != 0.0 {
            return Err(format!("{w} has a child index {c} outside its {n} nodes"));
        }
        Ok(offset + c as u32)
    };
    for i in 0..n {
        let node = if left[i] < 0.0 {
            Node::leaf(f64::from(condition[i] as f32) * weight)
        } else {
            let (l, r) = (child(left[i])?, child(right[i])?);
            let f = feature[i];
            if f < 0.0 || f.fract() != 0.0 || f as usize > MAX_FEATURE {
                return Err(format!("{w}: node {i} has feature index {f}"));
            }
            let dl = default_left[i] != 0.0;
            if split_type.get(i).copied().unwrap_or(0.0) == 1.0 {
                let k = cat_nodes
                    .iter()
                    .position(|&c| c == i as f64)
                    .ok_or_else(|| format!("{w}: categorical node {i} has no category list"))?;
                let (start, size) = (cat_segments[k] as usize, cat_sizes[k] as usize);
                let members = categories
                    .get(start..start + size)
                    .ok_or_else(|| format!("{w}: node {i}'s categories lie outside the list"))?;
                let set = add_set(forest, members)?;
                Node::categorical(f as u32, set, dl, l, r)
            } else {
                Node::numerical(f as u32, condition[i] as f32, dl, l, r)
            }
        };
        forest.nodes.push(node);
        forest.covers.push(hessian.get(i).copied().unwrap_or(0.0));
    }
    forest.roots.push(offset);
    Ok(())
}

/// Adds a category set (as a bitset) and returns its index.
pub fn add_set(forest: &mut Forest, members: &[f64]) -> Result<u32, String> {
    let mut words: Vec<u32> = Vec::new();
    for &c in members {
        if c < 0.0 || c.fract() != 0.0 || c > 1e7 {
            return Err(format!("category {c} is not a small non-negative integer"));
        }
        let c = c as usize;
        if words.len() <= c / 32 {
            words.resize(c / 32 + 1, 0);
        }
        words[c / 32] |= 1 << (c % 32);
    }
    let start = u32::try_from(forest.set_words.len()).map_err(|_| "too many categories")?;
    let len = u32::try_from(words.len()).map_err(|_| "too many categories")?;
    forest.set_words.extend(words);
    forest.set_ranges.push((start, len));
    u32::try_from(forest.set_ranges.len() - 1).map_err(|_| "too many category sets".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A one-split binary model: feature 1 < 0.5 → -0.4 else 0.6, NaN left.
    fn model() -> Value {
        json!({"learner": {
            "learner_model_param": {"base_score": "[5E-1]", "num_class": "0", "num_feature": "3", "num_target": "1"},
            "objective": {"name": "binary:logistic"},
            "gradient_booster": {"name": "gbtree", "model": {
                "tree_info": [0],
                "trees": [{
                    "left_children": [1, -1, -1], "right_children": [2, -1, -1],
                    "split_indices": [1, 0, 0], "split_conditions": [0.5, -0.4, 0.6],
                    "default_left": [1, 0, 0], "sum_hessian": [10.0, 4.0, 6.0],
                    "split_type": [0, 0, 0],
                    "tree_param": {"num_nodes": "3", "size_leaf_vector": "1"}
                }]
            }}
        }, "version": [3, 2, 0]})
    }

    #[test]
    fn reads_a_binary_model() {
        let f = forest_from_value(&model()).expect("loads");
        assert_eq!((f.num_features, f.num_groups), (3, 1));
        assert!(f.base_margin[0].abs() < 1e-12);
        let m = f.margins(&[0.0, f32::NAN, 0.0, 0.0, 0.7, 0.0], 2, 1);
        assert!((m[0] - f64::from(-0.4f32)).abs() < 1e-9);
        assert!((m[1] - f64::from(0.6f32)).abs() < 1e-9);
    }

    #[test]
    fn categorical_split_members_go_right() {
        let mut m = model();
        let tree = &mut m["learner"]["gradient_booster"]["model"]["trees"][0];
        tree["split_type"] = json!([1, 0, 0]);
        tree["categories_nodes"] = json!([0]);
        tree["categories_segments"] = json!([0]);
        tree["categories_sizes"] = json!([2]);
        tree["categories"] = json!([2, 5]);
        let f = forest_from_value(&m).expect("loads");
        let got = f.margins(&[0.0, 5.0, 0.0, 0.0, 3.0, 0.0, 0.0, f32::NAN, 0.0], 3, 1);
        assert!(got[0] > 0.0 && got[1] < 0.0 && got[2] < 0.0);
    }

    #[test]
    fn damaged_models_say_what_is_wrong() {
        let mut m = model();
        m["learner"]["gradient_booster"]["model"]["trees"][0]["left_children"] = json!([1, -1]);
        assert!(
            forest_from_value(&m)
                .unwrap_err()
                .contains("right_children")
        );
        let mut m = model();
        m["learner"]["gradient_booster"]["model"]["trees"][0]["right_children"] =
            json!([9, -1, -1]);
        assert!(forest_from_value(&m).unwrap_err().contains("child index 9"));
        let mut m = model();
        m["learner"]["objective"]["name"] = json!("binary:hinge");
        assert!(forest_from_value(&m).unwrap_err().contains("binary:hinge"));
        assert!(
            forest_from_value(&json!({}))
                .unwrap_err()
                .contains("learner")
        );
    }

    #[test]
    fn base_score_forms() {
        assert_eq!(base_scores(&json!("5E-1")).expect("scalar"), vec![0.5]);
        assert_eq!(
            base_scores(&json!("[1E0,-2E0]")).expect("vector"),
            vec![1.0, -2.0]
        );
        assert!(base_scores(&json!("[x]")).is_err());
    }
}
