//! Exact TreeSHAP (Lundberg, Erion and Lee, "Consistent individualized feature attribution
//! for tree ensembles", algorithm 2): SHAP values of each feature for each row in margin
//! space, from node covers, with the expected value (bias) in the last column, as XGBoost's
//! `pred_contribs=True` and LightGBM's `pred_contrib=True` return them.

use crate::forest::Forest;

/// One element of the path of unique features from the root to the current node.
#[derive(Clone, Copy, Default)]
struct PathElement {
    /// The feature split on (`usize::MAX` for the root's placeholder).
    feature: usize,
    /// Fraction of zero paths (feature not in the coalition) flowing through.
    zero_fraction: f64,
    /// Fraction of one paths (feature in the coalition) flowing through.
    one_fraction: f64,
    /// Weight of the path's subsets of this size.
    weight: f64,
}

/// Adds a feature to the path `path[..=depth]`.
fn extend(path: &mut [PathElement], depth: usize, zero: f64, one: f64, feature: usize) {
    path[depth] = PathElement {
        feature,
        zero_fraction: zero,
        one_fraction: one,
        weight: if depth == 0 { 1.0 } else { 0.0 },
    };
    let d = depth as f64;
    for i in (0..depth).rev() {
        let w = path[i].weight;
        path[i + 1].weight += one * w * (i as f64 + 1.0) / (d + 1.0);
        path[i].weight = zero * w * (d - i as f64) / (d + 1.0);
    }
}

/// Removes element `index` from the path `path[..=depth]` (undoes its extension).
fn unwind(path: &mut [PathElement], depth: usize, index: usize) {
    let one = path[index].one_fraction;
    let zero = path[index].zero_fraction;
    let d = depth as f64;
    let mut next_one = path[depth].weight;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let w = path[i].weight;
            path[i].weight = next_one * (d + 1.0) / ((i as f64 + 1.0) * one);
            next_one = w - path[i].weight * zero * (d - i as f64) / (d + 1.0);
        } else {
            path[i].weight = path[i].weight * (d + 1.0) / (zero * (d - i as f64));
        }
    }
    for i in index..depth {
        path[i].feature = path[i + 1].feature;
        path[i].zero_fraction = path[i + 1].zero_fraction;
        path[i].one_fraction = path[i + 1].one_fraction;
    }
}

/// The total weight the path would have with element `index` removed.
fn unwound_sum(path: &[PathElement], depth: usize, index: usize) -> f64 {
    let one = path[index].one_fraction;
    let zero = path[index].zero_fraction;
    let d = depth as f64;
    let mut next_one = path[depth].weight;
    let mut total = 0.0;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = next_one * (d + 1.0) / ((i as f64 + 1.0) * one);
            total += tmp;
            next_one = path[i].weight - tmp * zero * ((d - i as f64) / (d + 1.0));
        } else if zero != 0.0 {
            total += (path[i].weight / zero) / ((d - i as f64) / (d + 1.0));
        }
    }
    total
}

/// One row's recursion state.
struct Walk<'a> {
    /// The forest.
    forest: &'a Forest,
    /// The row.
    row: &'a [f32],
    /// SHAP values of one output group (`num_features + 1`).
    phi: &'a mut [f64],
    /// Room for the path of every level: a level's path is a copy of its parent's,
    /// placed right after it.
    paths: &'a mut [PathElement],
}

impl Walk<'_> {
    /// Recurses into `node`, whose parent's path (`depth` elements plus one) starts at
    /// `parent`; the split that led here was on `feature`, with these path fractions.
    fn recurse(
        &mut self,
        node: u32,
        parent: usize,
        depth: usize,
        zero: f64,
        one: f64,
        feature: usize,
    ) {
        let start = parent + depth + 1;
        self.paths.copy_within(parent..parent + depth + 1, start);
        let here = &mut self.paths[start..];
        let mut depth = depth;
        extend(here, depth, zero, one, feature);
        let forest = self.forest;
        let n = &forest.nodes[node as usize];
        if n.is_leaf() {
            let value = forest.values[node as usize];
            for i in 1..=depth {
                let w = unwound_sum(here, depth, i);
                let el = here[i];
                if let Some(p) = self.phi.get_mut(el.feature) {
                    *p += w * (el.one_fraction - el.zero_fraction) * value;
                }
            }
            return;
        }
        let (left, right) = n.children();
        let (hot, cold) = if forest.goes_left(n, self.row) {
            (left, right)
        } else {
            (right, left)
        };
        let cover = forest.covers[node as usize];
        let fraction = |c: u32| {
            if cover > 0.0 {
                forest.covers[c as usize] / cover
            } else {
                0.0
            }
        };
        let (hot_zero, cold_zero) = (fraction(hot), fraction(cold));
        let split = n.feature();
        let mut incoming_zero = 1.0;
        let mut incoming_one = 1.0;
        if let Some(k) = (1..=depth).find(|&k| here[k].feature == split) {
            incoming_zero = here[k].zero_fraction;
            incoming_one = here[k].one_fraction;
            unwind(here, depth, k);
            depth -= 1;
        }
        self.recurse(
            hot,
            start,
            depth + 1,
            hot_zero * incoming_zero,
            incoming_one,
            split,
        );
        self.recurse(
            cold,
            start,
            depth + 1,
            cold_zero * incoming_zero,
            0.0,
            split,
        );
    }
}

/// The expected value of a tree: its leaves weighted by cover.
fn expected_value(forest: &Forest, root: u32) -> f64 {
    let total = forest.covers[root as usize];
    let mut stack = vec![root];
    let mut sum = 0.0;
    let mut only_leaf = None;
    while let Some(i) = stack.pop() {
        let n = &forest.nodes[i as usize];
        if n.is_leaf() {
            if i == root {
                only_leaf = Some(forest.values[i as usize]);
            } else if total > 0.0 {
                sum += forest.covers[i as usize] / total * forest.values[i as usize];
            }
        } else {
            let (l, r) = n.children();
            stack.push(l);
            stack.push(r);
        }
    }
    only_leaf.unwrap_or(sum)
}

/// The per-tree expected values, computed once at load.
pub fn expected_values(forest: &Forest) -> Vec<f64> {
    forest
        .roots
        .iter()
        .map(|&root| expected_value(forest, root))
        .collect()
}

/// SHAP values of `rows` rows: `rows × num_groups × (num_features + 1)`, bias last.
pub fn shap_values(forest: &Forest, expected: &[f64], x: &[f32], rows: usize) -> Vec<f64> {
    let f = forest.num_features;
    let g = forest.num_groups;
    let width = f + 1;
    let mut out = vec![0.0; rows * g * width];
    let levels = forest.max_depth + 2;
    let mut paths = vec![PathElement::default(); (levels + 1) * (levels + 2) / 2 + 4];
    for (row, phis) in x.chunks(f.max(1)).zip(out.chunks_mut(g * width)).take(rows) {
        for (group, phi) in phis.chunks_mut(width).enumerate() {
            phi[f] = forest.base_margin[group];
        }
        for ((&root, &group), &ev) in forest.roots.iter().zip(&forest.groups).zip(expected) {
            let start = group as usize * width;
            let phi = &mut phis[start..start + width];
            phi[f] += ev;
            let mut walk = Walk {
                forest,
                row,
                phi,
                paths: &mut paths,
            };
            walk.recurse(root, 0, 0, 1.0, 1.0, usize::MAX);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::{Node, Transform};

    /// Two trees over two features: x0 < 0 → (x1 < 1 → 1 | 2) | 4, and x1 < 0.5 → -1 | 3.
    fn forest() -> Forest {
        let mut f = Forest {
            num_features: 2,
            num_groups: 1,
            nodes: vec![
                Node::numerical(0, 0.0, true, 1, 2),
                Node::numerical(1, 1.0, false, 3, 4),
                Node::leaf(4.0),
                Node::leaf(1.0),
                Node::leaf(2.0),
                Node::numerical(1, 0.5, false, 6, 7),
                Node::leaf(-1.0),
                Node::leaf(3.0),
            ],
            covers: vec![10.0, 6.0, 4.0, 2.0, 4.0, 10.0, 5.0, 5.0],
            values: Vec::new(),
            depths: Vec::new(),
            roots: vec![0, 5],
            groups: vec![0, 0],
            set_words: Vec::new(),
            set_ranges: Vec::new(),
            members_go_left: false,
            base_margin: vec![0.5],
            transform: Transform::Identity,
            is_classifier: false,
            max_depth: 0,
        };
        f.validate().expect("valid");
        f
    }

    #[test]
    fn values_sum_to_the_margin_and_bias_is_the_expectation() {
        let f = forest();
        let expected = expected_values(&f);
        // Tree 1: 0.6 * (2/6 * 1 + 4/6 * 2) + 0.4 * 4 = 2.6; tree 2: 0.5 * -1 + 0.5 * 3 = 1.
        assert!((expected[0] - 2.6).abs() < 1e-12 && (expected[1] - 1.0).abs() < 1e-12);
        let rows = [-1.0, 2.0, 1.0, f32::NAN, f32::NAN, 0.0];
        let margins = f.margins(&rows, 3, 1);
        let phi = shap_values(&f, &expected, &rows, 3);
        for (r, m) in margins.iter().enumerate() {
            let row = &phi[r * 3..r * 3 + 3];
            assert!(
                (row.iter().sum::<f64>() - m).abs() < 1e-9,
                "row {r}: {row:?} vs {m}"
            );
            assert!((row[2] - 4.1).abs() < 1e-12, "bias = base + expectations");
        }
    }

    #[test]
    fn a_feature_never_split_on_gets_nothing() {
        let mut f = forest();
        f.num_features = 3;
        let expected = expected_values(&f);
        let phi = shap_values(&f, &expected, &[1.0, 0.0, 7.0], 1);
        assert_eq!(phi[2], 0.0);
    }
}
