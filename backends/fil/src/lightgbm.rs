//! LightGBM text models (`model.txt`, as `save_model` writes them): numerical splits with
//! their missing types (none, zero, NaN) and default directions, categorical splits over
//! `cat_threshold` bitsets, and the objective's transform.

use std::collections::HashMap;

use crate::forest::{Forest, MAX_FEATURE, Node, Transform, f32_at_or_below, next_up};

/// Bit 0 of `decision_type`: categorical split.
const CATEGORICAL_BIT: u8 = 1;
/// Bit 1 of `decision_type`: missing values go left.
const DEFAULT_LEFT_BIT: u8 = 2;

/// `key=value` lines of one section.
fn section(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// A whitespace-separated list of numbers under `key` (empty value: empty list).
fn list<T: std::str::FromStr>(
    s: &HashMap<&str, &str>,
    key: &str,
    within: &str,
) -> Result<Vec<T>, String> {
    let value = s
        .get(key)
        .ok_or_else(|| format!("{within} has no '{key}'"))?;
    value
        .split_whitespace()
        .map(|x| {
            x.parse::<T>()
                .map_err(|_| format!("{within}: '{key}' holds '{x}', which is not a number"))
        })
        .collect()
}

/// A single number under `key`.
fn one<T: std::str::FromStr>(
    s: &HashMap<&str, &str>,
    key: &str,
    within: &str,
) -> Result<T, String> {
    let value = s
        .get(key)
        .ok_or_else(|| format!("{within} has no '{key}'"))?;
    value
        .parse()
        .map_err(|_| format!("{within}: '{key}' is '{value}', not a number"))
}

/// The transform and class count named by the `objective=` line.
fn objective(line: &str, num_class: usize) -> Result<(Transform, bool), String> {
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or("regression");
    let mut sigmoid = 1.0;
    let mut sqrt = false;
    for w in words {
        if let Some(v) = w.strip_prefix("sigmoid:") {
            sigmoid = v
                .parse()
                .map_err(|_| format!("objective '{line}': bad sigmoid '{v}'"))?;
        } else if w == "sqrt" {
            sqrt = true;
        }
    }
    Ok(match name {
        "binary" => (Transform::Sigmoid(sigmoid), true),
        "multiclass" | "softmax" => (Transform::Softmax, true),
        "multiclassova" | "multiclass_ova" | "ova" | "ovr" => (Transform::Sigmoid(sigmoid), true),
        "cross_entropy" | "xentropy" => (Transform::Sigmoid(1.0), false),
        "poisson" | "gamma" | "tweedie" => (Transform::Exp, false),
        "regression"
        | "regression_l2"
        | "l2"
        | "mean_squared_error"
        | "mse"
        | "l2_root"
        | "root_mean_squared_error"
        | "rmse"
        | "regression_l1"
        | "l1"
        | "mean_absolute_error"
        | "mae"
        | "huber"
        | "fair"
        | "quantile"
        | "mape"
        | "mean_absolute_percentage_error" => {
            if sqrt {
                (Transform::SignedSquare, false)
            } else {
                (Transform::Identity, false)
            }
        }
        "lambdarank" | "rank_xendcg" | "custom" | "none" | "null" | "na" => {
            (Transform::Identity, false)
        }
        other => {
            return Err(format!(
                "objective '{other}' is not supported (num_class {num_class})"
            ));
        }
    })
}

/// Builds a forest from the text of a LightGBM model file.
pub fn forest_from_text(text: &str) -> Result<Forest, String> {
    let text = text.replace("\r\n", "\n");
    let body = text.split("end of trees").next().unwrap_or_default();
    let mut parts = body.split("\nTree=");
    let header = section(parts.next().unwrap_or_default());
    if !header.contains_key("version") && !header.contains_key("max_feature_idx") {
        return Err("this is not a LightGBM text model (no header)".into());
    }
    let num_class: usize = one(&header, "num_class", "the header")?;
    let per_iteration: usize = match header.get("num_tree_per_iteration") {
        Some(_) => one(&header, "num_tree_per_iteration", "the header")?,
        None => num_class,
    };
    let max_feature_idx: i64 = one(&header, "max_feature_idx", "the header")?;
    if max_feature_idx < -1 || max_feature_idx as usize >= MAX_FEATURE {
        return Err(format!("max_feature_idx {max_feature_idx} is out of range"));
    }
    let num_features = (max_feature_idx + 1) as usize;
    let (transform, is_classifier) = objective(
        header.get("objective").copied().unwrap_or("regression"),
        num_class,
    )?;
    if per_iteration == 0 {
        return Err("num_tree_per_iteration is 0".into());
    }
    let mut forest = Forest {
        num_features,
        num_groups: per_iteration,
        nodes: Vec::new(),
        covers: Vec::new(),
        values: Vec::new(),
        depths: Vec::new(),
        roots: Vec::new(),
        groups: Vec::new(),
        set_words: Vec::new(),
        set_ranges: Vec::new(),
        members_go_left: true,
        base_margin: vec![0.0; per_iteration],
        transform,
        is_classifier,
        max_depth: 0,
    };
    let mut expected = 0;
    for part in parts {
        let (index, rest) = part.split_once('\n').unwrap_or((part, ""));
        let within = format!("Tree={}", index.trim());
        if index.trim().parse::<usize>() != Ok(expected) {
            return Err(format!(
                "{within} is out of order (expected Tree={expected})"
            ));
        }
        let s = section(rest);
        add_tree(&mut forest, &s, &within)?;
        forest.groups.push((expected % per_iteration) as u32);
        expected += 1;
    }
    if expected == 0 {
        return Err("the model has no trees".into());
    }
    forest.validate()?;
    Ok(forest)
}

/// Appends one tree.
fn add_tree(forest: &mut Forest, s: &HashMap<&str, &str>, w: &str) -> Result<(), String> {
    if s.get("is_linear").is_some_and(|v| *v != "0") {
        return Err(format!("{w} is a linear tree, which is not supported"));
    }
    let num_leaves: usize = one(s, "num_leaves", w)?;
    let shrinkage_ok = s.contains_key("leaf_value");
    if !shrinkage_ok || num_leaves == 0 {
        return Err(format!("{w} has no leaves"));
    }
    let leaf_value: Vec<f64> = list(s, "leaf_value", w)?;
    if leaf_value.len() != num_leaves {
        return Err(format!(
            "{w}: leaf_value has {} entries for {num_leaves} leaves",
            leaf_value.len()
        ));
    }
    let offset = u32::try_from(forest.nodes.len()).map_err(|_| "too many nodes".to_string())?;
    if num_leaves == 1 {
        forest.nodes.push(Node::leaf(leaf_value[0]));
        forest
            .covers
            .push(one::<f64>(s, "leaf_count", w).unwrap_or(0.0));
        forest.roots.push(offset);
        return Ok(());
    }
    let splits = num_leaves - 1;
    let feature: Vec<i64> = list(s, "split_feature", w)?;
    let threshold: Vec<f64> = list(s, "threshold", w)?;
    let decision: Vec<u8> = list(s, "decision_type", w)?;
    let left: Vec<i64> = list(s, "left_child", w)?;
    let right: Vec<i64> = list(s, "right_child", w)?;
    let leaf_count: Vec<f64> = list(s, "leaf_count", w).unwrap_or_default();
    let internal_count: Vec<f64> = list(s, "internal_count", w).unwrap_or_default();
    for (name, len) in [
        ("split_feature", feature.len()),
        ("threshold", threshold.len()),
        ("decision_type", decision.len()),
        ("left_child", left.len()),
        ("right_child", right.len()),
    ] {
        if len != splits {
            return Err(format!(
                "{w}: {name} has {len} entries for {splits} splits ({num_leaves} leaves)"
            ));
        }
    }
    let num_cat: usize = one(s, "num_cat", w).unwrap_or(0);
    let (boundaries, cat_words): (Vec<usize>, Vec<u32>) = if num_cat > 0 {
        (list(s, "cat_boundaries", w)?, list(s, "cat_threshold", w)?)
    } else {
        (Vec::new(), Vec::new())
    };
    if num_cat > 0 && boundaries.len() != num_cat + 1 {
        return Err(format!(
            "{w}: cat_boundaries has {} entries for {num_cat} categorical splits",
            boundaries.len()
        ));
    }
    // The tree's category sets, added to the forest's table as they are.
    let first_set = forest.set_ranges.len();
    for k in 0..num_cat {
        let (a, b) = (boundaries[k], boundaries[k + 1]);
        if a > b || b > cat_words.len() {
            return Err(format!("{w}: cat_boundaries point outside cat_threshold"));
        }
        let start = u32::try_from(forest.set_words.len()).map_err(|_| "too many categories")?;
        forest.set_words.extend_from_slice(&cat_words[a..b]);
        forest.set_ranges.push((
            start,
            u32::try_from(b - a).map_err(|_| "too many categories")?,
        ));
    }
    // Splits are nodes 0..splits, leaves splits..splits+num_leaves.
    let child = |c: i64| -> Result<u32, String> {
        let index = if c < 0 {
            let leaf = (!c) as usize;
            if leaf >= num_leaves {
                return Err(format!("{w} refers to leaf {leaf} of {num_leaves}"));
            }
            splits + leaf
        } else {
            if c as usize >= splits {
                return Err(format!("{w} refers to split {c} of {splits}"));
            }
            c as usize
        };
        Ok(offset + index as u32)
    };
    for i in 0..splits {
        let f = feature[i];
        if f < 0 || f as usize >= forest.num_features {
            return Err(format!(
                "{w}: split {i} is on feature {f}, the model has {} features",
                forest.num_features
            ));
        }
        let (l, r) = (child(left[i])?, child(right[i])?);
        let d = decision[i];
        let missing = (d >> 2) & 3;
        let node = if d & CATEGORICAL_BIT != 0 {
            let k = threshold[i];
            if k < 0.0 || k.fract() != 0.0 || k as usize >= num_cat {
                return Err(format!("{w}: categorical split {i} names category set {k}"));
            }
            let set = u32::try_from(first_set + k as usize).map_err(|_| "too many sets")?;
            // NaN goes right in a categorical split.
            Node::categorical(f as u32, set, false, l, r)
        } else {
            // `x <= t` for every f32 x is `x < next_up(t rounded down to f32)`.
            let t = next_up(f32_at_or_below(threshold[i]));
            let default_left = d & DEFAULT_LEFT_BIT != 0;
            match missing {
                // None: NaN is read as 0.0.
                0 => Node::numerical(f as u32, t, 0.0 < t, l, r),
                // Zero: NaN and zero take the default direction.
                1 => Node::numerical(f as u32, t, default_left, l, r).with_zero_missing(),
                // NaN: NaN takes the default direction.
                _ => Node::numerical(f as u32, t, default_left, l, r),
            }
        };
        forest.nodes.push(node);
        forest
            .covers
            .push(internal_count.get(i).copied().unwrap_or(0.0));
    }
    for (j, &v) in leaf_value.iter().enumerate() {
        forest.nodes.push(Node::leaf(v));
        forest
            .covers
            .push(leaf_count.get(j).copied().unwrap_or(0.0));
    }
    forest.roots.push(offset);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary model whose one tree splits feature 0 at 1.5 (missing type from `decision`)
    /// and then feature 1 by the category set {1, 3}.
    fn model(decision: u8) -> String {
        format!(
            "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n\
             max_feature_idx=1\nobjective=binary sigmoid:1\n\n\
             Tree=0\nnum_leaves=3\nnum_cat=1\nsplit_feature=0 1\nsplit_gain=1 1\n\
             threshold=1.5 0\ndecision_type={decision} 1\nleft_child=1 -2\nright_child=-1 -3\n\
             leaf_value=0.5 -0.25 0.125\nleaf_weight=1 1 1\nleaf_count=10 20 30\n\
             internal_value=0 0\ninternal_weight=1 1\ninternal_count=60 50\n\
             cat_boundaries=0 1\ncat_threshold=10\nis_linear=0\nshrinkage=1\n\n\n\
             end of trees\n"
        )
    }

    fn leaf(f: &Forest, row: [f32; 2]) -> f64 {
        f.margins(&row, 1, 1)[0]
    }

    #[test]
    fn less_or_equal_and_missing_types() {
        // Missing type NaN (8), default right: NaN → right leaf 0 (0.5).
        let f = forest_from_text(&model(8)).expect("loads");
        assert_eq!(leaf(&f, [f32::NAN, 1.0]), 0.5);
        assert_eq!(leaf(&f, [1.5, 1.0]), -0.25, "1.5 <= 1.5 goes left");
        assert_eq!(leaf(&f, [0.0, 1.0]), -0.25, "zero is a value");
        // NaN type, default left (8 | 2).
        let f = forest_from_text(&model(10)).expect("loads");
        assert_eq!(leaf(&f, [f32::NAN, 3.0]), -0.25);
        // Zero type (4), default right: zero and NaN go right.
        let f = forest_from_text(&model(4)).expect("loads");
        assert_eq!(leaf(&f, [0.0, 1.0]), 0.5);
        assert_eq!(leaf(&f, [f32::NAN, 1.0]), 0.5);
        assert_eq!(leaf(&f, [1.0, 1.0]), -0.25);
        // None (0): NaN is read as 0.0, which is <= 1.5.
        let f = forest_from_text(&model(0)).expect("loads");
        assert_eq!(leaf(&f, [f32::NAN, 1.0]), -0.25);
    }

    #[test]
    fn categorical_members_go_left() {
        let f = forest_from_text(&model(8)).expect("loads");
        assert_eq!(leaf(&f, [0.0, 1.0]), -0.25);
        assert_eq!(leaf(&f, [0.0, 3.0]), -0.25);
        assert_eq!(leaf(&f, [0.0, 2.0]), 0.125);
        assert_eq!(leaf(&f, [0.0, f32::NAN]), 0.125, "NaN goes right");
        assert_eq!(leaf(&f, [0.0, -1.0]), 0.125, "negative goes right");
        assert_eq!(leaf(&f, [0.0, 99.0]), 0.125);
    }

    #[test]
    fn damaged_models_say_what_is_wrong() {
        let m = model(8).replace("left_child=1 -2", "left_child=1 -7");
        assert!(forest_from_text(&m).unwrap_err().contains("leaf 6"));
        let m = model(8).replace("threshold=1.5 0", "threshold=abc 0");
        assert!(forest_from_text(&m).unwrap_err().contains("abc"));
        let m = model(8).replace("split_feature=0 1", "split_feature=0 4");
        assert!(forest_from_text(&m).unwrap_err().contains("feature 4"));
        assert!(forest_from_text("garbage").is_err());
        let m = model(8).replace("objective=binary sigmoid:1", "objective=weird");
        assert!(forest_from_text(&m).unwrap_err().contains("weird"));
    }
}
