//! Treelite checkpoints (`checkpoint.tl`, as `treelite.Model.serialize` writes them, format
//! v4 of Treelite 4.x): the way Triton's FIL backend serves scikit-learn RandomForest,
//! ExtraTrees and GradientBoosting models. The file is a little-endian stream of scalars,
//! length-prefixed arrays and strings: a header (version, value types, task, classes,
//! per-tree target and class, postprocessor, base scores) and then every tree as parallel
//! per-node arrays.
//!
//! Vector leaves (scikit-learn classifiers' class-probability vectors) are split into one
//! scalar tree per class; averaging forests (`average_tree_output`) have their leaves
//! divided by the number of trees of each class, so the summed margins are the averages.

use crate::forest::{Forest, MAX_FEATURE, Node, Transform, f32_at_or_below, next_up};

/// The only checkpoint major version this reader understands (format v4).
const SUPPORTED_MAJOR: i32 = 4;
/// `TypeInfo` code of `float`.
const TYPE_F32: u8 = 2;
/// `TypeInfo` code of `double`.
const TYPE_F64: u8 = 3;
/// `TreeNodeType` of a leaf.
const NODE_LEAF: i8 = 0;
/// `TreeNodeType` of a numerical split.
const NODE_NUMERICAL: i8 = 1;
/// `TreeNodeType` of a categorical split.
const NODE_CATEGORICAL: i8 = 2;
/// Largest category an FP32 input can name exactly (2^24); larger ones never match.
const MAX_CATEGORY: u32 = 1 << 24;

/// A cursor over the checkpoint's bytes; every read checks the length first.
struct Reader<'a> {
    /// The whole file.
    bytes: &'a [u8],
    /// The next byte to read.
    at: usize,
}

impl<'a> Reader<'a> {
    /// The next `n` bytes, or an error naming `what` when the file ends first.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(format!(
                "the file is truncated: it ends inside {what} (byte {}, {n} bytes needed, {left} \
                 left)",
                self.at
            ));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    /// `N` bytes as an array.
    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// A `uint8_t`.
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.fixed::<1>(what)?[0])
    }

    /// A `bool` (one byte).
    fn bool(&mut self, what: &str) -> Result<bool, String> {
        Ok(self.u8(what)? != 0)
    }

    /// An `int32_t`.
    fn i32(&mut self, what: &str) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.fixed(what)?))
    }

    /// A `uint64_t`.
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    /// A `float`.
    fn f32(&mut self, what: &str) -> Result<f32, String> {
        Ok(f32::from_le_bytes(self.fixed(what)?))
    }

    /// The bytes of an array of `elem`-byte items (a `uint64_t` count, then the items).
    fn array_bytes(&mut self, elem: usize, what: &str) -> Result<&'a [u8], String> {
        let count = self.u64(what)?;
        let n = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(elem))
            .filter(|&n| n <= self.bytes.len() - self.at)
            .ok_or_else(|| {
                format!(
                    "the file is truncated or damaged: {what} claims {count} items, more than \
                     the {} bytes left",
                    self.bytes.len() - self.at
                )
            })?;
        self.take(n, what)
    }

    /// An array of `N`-byte items, each converted by `conv`.
    fn array<const N: usize, T>(
        &mut self,
        what: &str,
        conv: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, String> {
        Ok(self
            .array_bytes(N, what)?
            .chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                conv(b)
            })
            .collect())
    }

    /// An array of `float` or `double` values (by `TypeInfo` code), widened to `f64`.
    fn float_array(&mut self, ty: u8, what: &str) -> Result<Vec<f64>, String> {
        if ty == TYPE_F32 {
            self.array::<4, f64>(what, |b| f64::from(f32::from_le_bytes(b)))
        } else {
            self.array::<8, f64>(what, f64::from_le_bytes)
        }
    }

    /// A string (`uint64_t` length, then the bytes).
    fn string(&mut self, what: &str) -> Result<String, String> {
        Ok(String::from_utf8_lossy(self.array_bytes(1, what)?).into_owned())
    }

    /// Skips `count` optional fields (name, item size, item count, bytes).
    fn skip_optional(&mut self, count: i32, what: &str) -> Result<(), String> {
        if count < 0 {
            return Err(format!("{what}: negative optional field count {count}"));
        }
        for _ in 0..count {
            self.string(what)?;
            let size = self.u64(what)?;
            let n = self.u64(what)?;
            let bytes = size
                .checked_mul(n)
                .and_then(|b| usize::try_from(b).ok())
                .ok_or_else(|| format!("{what}: an optional field is too large"))?;
            self.take(bytes, what)?;
        }
        Ok(())
    }
}

/// One tree's per-node arrays, as stored.
struct RawTree {
    /// `TreeNodeType` per node.
    node_type: Vec<i8>,
    /// Left child (-1 for leaves).
    cleft: Vec<i32>,
    /// Right child (-1 for leaves).
    cright: Vec<i32>,
    /// Feature of each split.
    split_index: Vec<i32>,
    /// Whether NaN goes left.
    default_left: Vec<bool>,
    /// Scalar leaf outputs.
    leaf_value: Vec<f64>,
    /// Numerical thresholds.
    threshold: Vec<f64>,
    /// `Operator` of each numerical split.
    cmp: Vec<i8>,
    /// Whether a categorical split sends its listed categories right.
    category_right: Vec<bool>,
    /// All leaf vectors, addressed by `leaf_vector_begin`/`end`.
    leaf_vector: Vec<f64>,
    /// Start of each node's leaf vector.
    leaf_vector_begin: Vec<u64>,
    /// End of each node's leaf vector.
    leaf_vector_end: Vec<u64>,
    /// All category lists, addressed by `category_list_begin`/`end`.
    category_list: Vec<u32>,
    /// Start of each node's category list.
    category_list_begin: Vec<u64>,
    /// End of each node's category list.
    category_list_end: Vec<u64>,
    /// Training rows reaching each node (may be empty).
    data_count: Vec<u64>,
    /// Whether `data_count` holds a value for the node.
    data_count_present: Vec<bool>,
    /// Hessian sums (sample weights) per node (may be empty).
    sum_hess: Vec<f64>,
    /// Whether `sum_hess` holds a value for the node.
    sum_hess_present: Vec<bool>,
}

/// `array[begin..end]` of node `i`, checked.
fn segment<'a, T>(
    array: &'a [T],
    begin: &[u64],
    end: &[u64],
    i: usize,
    what: &str,
) -> Result<&'a [T], String> {
    let (b, e) = (begin[i], end[i]);
    if b > e || e > array.len() as u64 {
        return Err(format!(
            "node {i}'s {what} [{b}, {e}) lies outside its {} entries",
            array.len()
        ));
    }
    Ok(&array[b as usize..e as usize])
}

impl RawTree {
    /// Reads one tree.
    fn read(r: &mut Reader, threshold_type: u8, leaf_type: u8, t: usize) -> Result<Self, String> {
        let w = |field: &str| format!("tree {t}'s {field}");
        let num_nodes = r.i32(&w("num_nodes"))?;
        let n = usize::try_from(num_nodes)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("tree {t} has {num_nodes} nodes"))?;
        let _has_categorical = r.bool(&w("has_categorical_split"))?;
        let tree = RawTree {
            node_type: r.array::<1, i8>(&w("node_type"), i8::from_le_bytes)?,
            cleft: r.array::<4, i32>(&w("cleft"), i32::from_le_bytes)?,
            cright: r.array::<4, i32>(&w("cright"), i32::from_le_bytes)?,
            split_index: r.array::<4, i32>(&w("split_index"), i32::from_le_bytes)?,
            default_left: r.array::<1, bool>(&w("default_left"), |b| b[0] != 0)?,
            leaf_value: r.float_array(leaf_type, &w("leaf_value"))?,
            threshold: r.float_array(threshold_type, &w("threshold"))?,
            cmp: r.array::<1, i8>(&w("cmp"), i8::from_le_bytes)?,
            category_right: r.array::<1, bool>(&w("category_list_right_child"), |b| b[0] != 0)?,
            leaf_vector: r.float_array(leaf_type, &w("leaf_vector"))?,
            leaf_vector_begin: r.array::<8, u64>(&w("leaf_vector_begin"), u64::from_le_bytes)?,
            leaf_vector_end: r.array::<8, u64>(&w("leaf_vector_end"), u64::from_le_bytes)?,
            category_list: r.array::<4, u32>(&w("category_list"), u32::from_le_bytes)?,
            category_list_begin: r
                .array::<8, u64>(&w("category_list_begin"), u64::from_le_bytes)?,
            category_list_end: r.array::<8, u64>(&w("category_list_end"), u64::from_le_bytes)?,
            data_count: r.array::<8, u64>(&w("data_count"), u64::from_le_bytes)?,
            data_count_present: r.array::<1, bool>(&w("data_count_present"), |b| b[0] != 0)?,
            sum_hess: r.array::<8, f64>(&w("sum_hess"), f64::from_le_bytes)?,
            sum_hess_present: r.array::<1, bool>(&w("sum_hess_present"), |b| b[0] != 0)?,
        };
        r.array_bytes(8, &w("gain"))?;
        r.array_bytes(1, &w("gain_present"))?;
        let per_tree = r.i32(&w("optional field count"))?;
        r.skip_optional(per_tree, &w("optional fields"))?;
        let per_node = r.i32(&w("per-node optional field count"))?;
        r.skip_optional(per_node, &w("per-node optional fields"))?;
        let lengths = [
            ("node_type", tree.node_type.len()),
            ("cleft", tree.cleft.len()),
            ("cright", tree.cright.len()),
            ("split_index", tree.split_index.len()),
            ("default_left", tree.default_left.len()),
            ("leaf_value", tree.leaf_value.len()),
            ("threshold", tree.threshold.len()),
            ("cmp", tree.cmp.len()),
            ("category_list_right_child", tree.category_right.len()),
            ("leaf_vector_begin", tree.leaf_vector_begin.len()),
            ("leaf_vector_end", tree.leaf_vector_end.len()),
            ("category_list_begin", tree.category_list_begin.len()),
            ("category_list_end", tree.category_list_end.len()),
        ];
        for (name, len) in lengths {
            if len != n {
                return Err(format!("tree {t}: {name} has {len} entries for {n} nodes"));
            }
        }
        let optional = [
            ("data_count", tree.data_count.len()),
            ("data_count_present", tree.data_count_present.len()),
            ("sum_hess", tree.sum_hess.len()),
            ("sum_hess_present", tree.sum_hess_present.len()),
        ];
        for (name, len) in optional {
            if len != 0 && len != n {
                return Err(format!("tree {t}: {name} has {len} entries for {n} nodes"));
            }
        }
        Ok(tree)
    }

    /// Node `i`'s cover for SHAP: the weighted sample count, else the row count, else NaN.
    fn cover(&self, i: usize) -> f64 {
        if self.sum_hess_present.get(i) == Some(&true)
            && let Some(&h) = self.sum_hess.get(i)
        {
            return h;
        }
        if self.data_count_present.get(i) == Some(&true)
            && let Some(&c) = self.data_count.get(i)
        {
            return c as f64;
        }
        f64::NAN
    }

    /// Node `i`'s output: its leaf vector, or its scalar value as a one-element vector.
    fn leaf_output(&self, i: usize) -> Result<Vec<f64>, String> {
        let v = segment(
            &self.leaf_vector,
            &self.leaf_vector_begin,
            &self.leaf_vector_end,
            i,
            "leaf vector",
        )?;
        Ok(if v.is_empty() {
            vec![self.leaf_value[i]]
        } else {
            v.to_vec()
        })
    }
}

/// The f32 `b` with `x < t` ⇔ `x < b` for every f32 `x` (t not NaN).
fn less_than_bound(t: f64) -> f32 {
    let r = f32_at_or_below(t);
    if f64::from(r) == t { r } else { next_up(r) }
}

/// The f32 `b` with `x <= t` ⇔ `x < b` for every finite f32 `x` (t not NaN).
fn at_most_bound(t: f64) -> f32 {
    next_up(f32_at_or_below(t))
}

/// The transform a Treelite postprocessor name stands for.
fn postprocessor(name: &str, alpha: f32) -> Result<Transform, String> {
    Ok(match name {
        "identity" | "identity_multiclass" | "" => Transform::Identity,
        "sigmoid" | "multiclass_ova" => Transform::Sigmoid(f64::from(alpha)),
        "softmax" => Transform::Softmax,
        "exponential" => Transform::Exp,
        "signed_square" => Transform::SignedSquare,
        other => {
            return Err(format!(
                "postprocessor '{other}' is not supported (supported: identity, \
                 identity_multiclass, sigmoid, multiclass_ova, softmax, exponential, \
                 signed_square)"
            ));
        }
    })
}

/// Builds a forest from the bytes of a Treelite checkpoint.
pub fn forest_from_bytes(bytes: &[u8]) -> Result<Forest, String> {
    let mut r = Reader { bytes, at: 0 };
    if bytes.len() < 12 {
        return Err(format!(
            "not a Treelite checkpoint: {} bytes, too short for a version header",
            bytes.len()
        ));
    }
    let major = r.i32("the major version")?;
    let minor = r.i32("the minor version")?;
    let patch = r.i32("the patch version")?;
    if major != SUPPORTED_MAJOR {
        return Err(format!(
            "Treelite checkpoint version {major}.{minor}.{patch} is not supported: this backend \
             reads the format of Treelite {SUPPORTED_MAJOR}.x (checkpoints written by Treelite \
             4.0 to 4.8)"
        ));
    }
    let threshold_type = r.u8("the threshold type")?;
    let leaf_type = r.u8("the leaf output type")?;
    for (what, ty) in [("threshold", threshold_type), ("leaf output", leaf_type)] {
        if ty != TYPE_F32 && ty != TYPE_F64 {
            return Err(format!(
                "{what} type code {ty} is not supported (expected {TYPE_F32} float32 or \
                 {TYPE_F64} float64)"
            ));
        }
    }
    let num_tree = r.u64("the tree count")?;
    let num_feature = r.i32("num_feature")?;
    let task_type = r.u8("task_type")?;
    let average = r.bool("average_tree_output")?;
    let num_target = r.i32("num_target")?;
    let num_class = r.array::<4, i32>("num_class", i32::from_le_bytes)?;
    let leaf_vector_shape = r.array::<4, i32>("leaf_vector_shape", i32::from_le_bytes)?;
    let target_id = r.array::<4, i32>("target_id", i32::from_le_bytes)?;
    let class_id = r.array::<4, i32>("class_id", i32::from_le_bytes)?;
    let post = r.string("postprocessor")?;
    let sigmoid_alpha = r.f32("sigmoid_alpha")?;
    let _ratio_c = r.f32("ratio_c")?;
    let base_scores = r.array::<8, f64>("base_scores", f64::from_le_bytes)?;
    let _attributes = r.string("attributes")?;
    let per_model = r.i32("the optional field count")?;
    r.skip_optional(per_model, "the model's optional fields")?;

    if num_feature <= 0 || num_feature as usize > MAX_FEATURE {
        return Err(format!("num_feature {num_feature} is out of range"));
    }
    let is_classifier = match task_type {
        0 | 2 => true,
        1 | 3 => false,
        4 => return Err("isolation forests (task type 4) are not supported".into()),
        other => return Err(format!("unknown task type {other}")),
    };
    if num_target != 1 {
        return Err(format!(
            "multi-target models (num_target {num_target}) are not supported"
        ));
    }
    let classes = match num_class.as_slice() {
        [k] if *k >= 1 => *k as usize,
        other => return Err(format!("num_class {other:?} is invalid for one target")),
    };
    if !matches!(leaf_vector_shape.as_slice(), [1, k] if *k == 1 || *k as usize == classes) {
        return Err(format!(
            "leaf_vector_shape {leaf_vector_shape:?} does not fit {classes} class(es)"
        ));
    }
    let trees = usize::try_from(num_tree)
        .ok()
        .filter(|&n| n > 0 && n <= bytes.len())
        .ok_or_else(|| format!("the tree count {num_tree} is invalid"))?;
    if target_id.len() != trees || class_id.len() != trees {
        return Err(format!(
            "target_id has {} and class_id {} entries for {trees} trees",
            target_id.len(),
            class_id.len()
        ));
    }
    if base_scores.len() != classes {
        return Err(format!(
            "base_scores has {} values for {classes} class(es)",
            base_scores.len()
        ));
    }
    let transform = postprocessor(&post, sigmoid_alpha)?;
    // Trees per output group, for averaging.
    let mut per_group = vec![0usize; classes];
    for (t, (&tg, &c)) in target_id.iter().zip(&class_id).enumerate() {
        if tg != 0 && tg != -1 {
            return Err(format!("tree {t} has target_id {tg} in a one-target model"));
        }
        match c {
            -1 => per_group.iter_mut().for_each(|n| *n += 1),
            c if c >= 0 && (c as usize) < classes => per_group[c as usize] += 1,
            c => return Err(format!("tree {t} has class_id {c} of {classes} classes")),
        }
    }
    let mut forest = Forest {
        num_features: num_feature as usize,
        num_groups: classes,
        nodes: Vec::new(),
        covers: Vec::new(),
        values: Vec::new(),
        depths: Vec::new(),
        roots: Vec::new(),
        groups: Vec::new(),
        set_words: Vec::new(),
        set_ranges: Vec::new(),
        members_go_left: false,
        base_margin: base_scores,
        transform,
        is_classifier,
        max_depth: 0,
    };
    for (t, &c) in class_id.iter().enumerate() {
        let tree = RawTree::read(&mut r, threshold_type, leaf_type, t)?;
        let groups: Vec<usize> = if c < 0 {
            (0..classes).collect()
        } else {
            vec![c as usize]
        };
        add_tree(&mut forest, &tree, &groups, &per_group, average)
            .map_err(|e| format!("tree {t}: {e}"))?;
    }
    if r.at != bytes.len() {
        return Err(format!(
            "{} unexpected bytes after the last of {trees} trees",
            bytes.len() - r.at
        ));
    }
    forest.validate()?;
    Ok(forest)
}

/// Appends one stored tree as one scalar tree per output group in `groups` (a vector-leaf
/// tree gives element `k` of its leaves to `groups[k]`).
fn add_tree(
    forest: &mut Forest,
    tree: &RawTree,
    groups: &[usize],
    per_group: &[usize],
    average: bool,
) -> Result<(), String> {
    let n = tree.node_type.len();
    // Each split's node (with tree-local children) and each leaf's outputs.
    let mut splits: Vec<Option<Node>> = Vec::with_capacity(n);
    let mut outputs: Vec<Vec<f64>> = Vec::with_capacity(n);
    let child = |c: i32, i: usize| -> Result<u32, String> {
        usize::try_from(c)
            .ok()
            .filter(|&c| c < n)
            .map(|c| c as u32)
            .ok_or_else(|| format!("node {i} has a child index {c} outside its {n} nodes"))
    };
    for i in 0..n {
        if tree.node_type[i] == NODE_LEAF {
            let out = tree.leaf_output(i)?;
            if out.len() != groups.len() {
                return Err(format!(
                    "leaf {i} has {} output(s), expected {}",
                    out.len(),
                    groups.len()
                ));
            }
            splits.push(None);
            outputs.push(out);
            continue;
        }
        let (l, r) = (child(tree.cleft[i], i)?, child(tree.cright[i], i)?);
        let feature = u32::try_from(tree.split_index[i])
            .map_err(|_| format!("node {i} splits on feature {}", tree.split_index[i]))?;
        let dl = tree.default_left[i];
        let node = match tree.node_type[i] {
            NODE_NUMERICAL => {
                let t = tree.threshold[i];
                if t.is_nan() {
                    return Err(format!("node {i} has a NaN threshold"));
                }
                // Node::numerical goes left when x < bound; `>` and `>=` swap the children.
                match tree.cmp[i] {
                    2 => Node::numerical(feature, less_than_bound(t), dl, l, r),
                    3 => Node::numerical(feature, at_most_bound(t), dl, l, r),
                    4 => Node::numerical(feature, at_most_bound(t), !dl, r, l),
                    5 => Node::numerical(feature, less_than_bound(t), !dl, r, l),
                    op => {
                        return Err(format!(
                            "node {i} has comparison operator {op}, which is not supported \
                             (only <, <=, >, >=)"
                        ));
                    }
                }
            }
            NODE_CATEGORICAL => {
                let list = segment(
                    &tree.category_list,
                    &tree.category_list_begin,
                    &tree.category_list_end,
                    i,
                    "category list",
                )?;
                let set = add_category_set(forest, list)?;
                // The forest sends members right; a list whose members go left swaps.
                if tree.category_right[i] {
                    Node::categorical(feature, set, dl, l, r)
                } else {
                    Node::categorical(feature, set, !dl, r, l)
                }
            }
            other => return Err(format!("node {i} has unknown node type {other}")),
        };
        splits.push(Some(node));
        outputs.push(Vec::new());
    }
    for (k, &group) in groups.iter().enumerate() {
        let offset = u32::try_from(forest.nodes.len())
            .ok()
            .filter(|o| o.checked_add(n as u32).is_some())
            .ok_or_else(|| "too many nodes".to_string())?;
        let scale = if average {
            1.0 / per_group[group].max(1) as f64
        } else {
            1.0
        };
        for i in 0..n {
            let node = match splits[i] {
                Some(mut s) => {
                    let (l, r) = s.children();
                    s = s.with_children(l + offset, r + offset);
                    s
                }
                None => Node::leaf(outputs[i][k] * scale),
            };
            forest.nodes.push(node);
            forest.covers.push(tree.cover(i));
        }
        forest.roots.push(offset);
        forest.groups.push(group as u32);
    }
    Ok(())
}

/// Adds a category set (a bitset over `list`) to the forest and returns its index.
/// Categories above 2^24 are left out: no FP32 input names them exactly.
fn add_category_set(forest: &mut Forest, list: &[u32]) -> Result<u32, String> {
    let max = list
        .iter()
        .copied()
        .filter(|&c| c <= MAX_CATEGORY)
        .max()
        .map_or(0, |m| m as usize + 1);
    let words = max.div_ceil(32);
    let start = forest.set_words.len();
    forest.set_words.resize(start + words, 0);
    for &c in list.iter().filter(|&&c| c <= MAX_CATEGORY) {
        forest.set_words[start + c as usize / 32] |= 1 << (c % 32);
    }
    let index = u32::try_from(forest.set_ranges.len()).map_err(|_| "too many category sets")?;
    forest.set_ranges.push((start as u32, words as u32));
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes checkpoints field by field, as Treelite's serializer lays them out.
    #[derive(Default)]
    struct Writer(Vec<u8>);

    impl Writer {
        fn raw(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn i32(&mut self, v: i32) -> &mut Self {
            self.raw(&v.to_le_bytes())
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.raw(&v.to_le_bytes())
        }
        fn u8(&mut self, v: u8) -> &mut Self {
            self.raw(&[v])
        }
        fn arr<const N: usize>(&mut self, items: &[[u8; N]]) -> &mut Self {
            self.u64(items.len() as u64);
            for i in items {
                self.raw(i);
            }
            self
        }
        fn i32s(&mut self, v: &[i32]) -> &mut Self {
            self.arr(&v.iter().map(|x| x.to_le_bytes()).collect::<Vec<_>>())
        }
        fn i8s(&mut self, v: &[i8]) -> &mut Self {
            self.arr(&v.iter().map(|x| x.to_le_bytes()).collect::<Vec<_>>())
        }
        fn u64s(&mut self, v: &[u64]) -> &mut Self {
            self.arr(&v.iter().map(|x| x.to_le_bytes()).collect::<Vec<_>>())
        }
        fn u32s(&mut self, v: &[u32]) -> &mut Self {
            self.arr(&v.iter().map(|x| x.to_le_bytes()).collect::<Vec<_>>())
        }
        fn f64s(&mut self, v: &[f64]) -> &mut Self {
            self.arr(&v.iter().map(|x| x.to_le_bytes()).collect::<Vec<_>>())
        }
        fn floats(&mut self, f32s: bool, v: &[f64]) -> &mut Self {
            if f32s {
                self.arr(
                    &v.iter()
                        .map(|&x| (x as f32).to_le_bytes())
                        .collect::<Vec<_>>(),
                )
            } else {
                self.f64s(v)
            }
        }
        fn bools(&mut self, v: &[bool]) -> &mut Self {
            self.arr(&v.iter().map(|&x| [u8::from(x)]).collect::<Vec<_>>())
        }
        fn string(&mut self, s: &str) -> &mut Self {
            self.u64(s.len() as u64).raw(s.as_bytes())
        }
    }

    /// The options of the test model.
    struct Spec {
        version: i32,
        f32s: bool,
        classes: i32,
        /// Leaf vectors of `classes` values (one tree per class otherwise).
        vector: bool,
        average: bool,
        post: &'static str,
        cmp: i8,
        categorical: bool,
        counts: bool,
    }

    impl Default for Spec {
        fn default() -> Self {
            Spec {
                version: 4,
                f32s: false,
                classes: 1,
                vector: false,
                average: false,
                post: "identity",
                cmp: 3,
                categorical: false,
                counts: true,
            }
        }
    }

    /// Two stumps on feature 0 at 0.5 (leaves -1 | +1, then -3 | +3) over 2 features.
    fn checkpoint(s: &Spec) -> Vec<u8> {
        let k = s.classes as usize;
        let vector = s.vector && k > 1;
        let trees: Vec<i32> = if vector || k == 1 {
            vec![-1, -1]
        } else {
            (0..2 * s.classes).map(|t| t % s.classes).collect()
        };
        let mut w = Writer::default();
        w.i32(s.version).i32(8).i32(1);
        let ty = if s.f32s { TYPE_F32 } else { TYPE_F64 };
        w.u8(ty).u8(ty).u64(trees.len() as u64);
        w.i32(2)
            .u8(if k > 1 { 2 } else { 1 })
            .u8(u8::from(s.average));
        w.i32(1)
            .i32s(&[s.classes])
            .i32s(&[1, if vector { s.classes } else { 1 }]);
        let class_id: Vec<i32> = trees.iter().map(|&c| if k == 1 { 0 } else { c }).collect();
        w.i32s(&vec![0; trees.len()]).i32s(&class_id);
        w.string(s.post)
            .raw(&1.0f32.to_le_bytes())
            .raw(&1.0f32.to_le_bytes());
        w.f64s(&vec![0.5; k]).string("").i32(0);
        for (t, _) in trees.iter().enumerate() {
            let scale = if t < trees.len() / 2 { 1.0 } else { 3.0 };
            let cat = s.categorical;
            w.i32(3).u8(u8::from(cat));
            w.i8s(&[if cat { 2 } else { 1 }, 0, 0])
                .i32s(&[1, -1, -1])
                .i32s(&[2, -1, -1]);
            w.i32s(&[0, -1, -1]).bools(&[true, false, false]);
            w.floats(s.f32s, &[0.0, -scale, scale])
                .floats(s.f32s, &[0.5, 0.0, 0.0]);
            w.i8s(&[s.cmp, 0, 0]).bools(&[true, false, false]);
            if vector {
                let lv: Vec<f64> = (0..2 * k)
                    .map(|i| if i < k { -scale } else { scale })
                    .collect();
                let k = k as u64;
                w.floats(s.f32s, &lv).u64s(&[0, 0, k]).u64s(&[0, k, 2 * k]);
            } else {
                w.floats(s.f32s, &[]).u64s(&[0; 3]).u64s(&[0; 3]);
            }
            if cat {
                w.u32s(&[1, 3]).u64s(&[0, 2, 2]).u64s(&[2, 2, 2]);
            } else {
                w.u32s(&[]).u64s(&[0; 3]).u64s(&[0; 3]);
            }
            if s.counts {
                w.u64s(&[4, 2, 2]).bools(&[true; 3]);
            } else {
                w.u64s(&[]).bools(&[]);
            }
            w.f64s(&[]).bools(&[]).f64s(&[]).bools(&[]).i32(0).i32(0);
        }
        w.0
    }

    fn predict(f: &Forest, x: f32) -> Vec<f64> {
        let mut m = f.margins(&[x, 0.0], 1, 1);
        f.transform(&mut m);
        m
    }

    #[test]
    fn less_or_equal_is_exact_for_f32_inputs() {
        let f = forest_from_bytes(&checkpoint(&Spec::default())).unwrap();
        assert_eq!(predict(&f, 0.5), vec![0.5 - 4.0], "0.5 <= 0.5 goes left");
        assert_eq!(predict(&f, next_up(0.5)), vec![4.5]);
        assert_eq!(
            predict(&f, f32::NAN),
            vec![-3.5],
            "NaN goes the default (left) way"
        );
        assert!(!f.is_classifier);
        assert!(f.covers.iter().all(|c| !c.is_nan()));
    }

    #[test]
    fn other_operators_and_float32() {
        let lt = forest_from_bytes(&checkpoint(&Spec {
            cmp: 2,
            f32s: true,
            ..Spec::default()
        }))
        .unwrap();
        assert_eq!(predict(&lt, 0.5), vec![4.5], "0.5 < 0.5 is false");
        assert_eq!(predict(&lt, 0.49), vec![-3.5]);
        let gt = forest_from_bytes(&checkpoint(&Spec {
            cmp: 4,
            ..Spec::default()
        }))
        .unwrap();
        assert_eq!(predict(&gt, 0.5), vec![4.5], "0.5 > 0.5 is false: right");
        assert_eq!(predict(&gt, 0.6), vec![-3.5]);
        assert_eq!(
            predict(&gt, f32::NAN),
            vec![-3.5],
            "NaN still goes to the left child"
        );
        let ge = forest_from_bytes(&checkpoint(&Spec {
            cmp: 5,
            ..Spec::default()
        }))
        .unwrap();
        assert_eq!(predict(&ge, 0.5), vec![-3.5]);
        assert_eq!(predict(&ge, 0.4), vec![4.5]);
        let eq = forest_from_bytes(&checkpoint(&Spec {
            cmp: 1,
            ..Spec::default()
        }));
        assert!(eq.unwrap_err().contains("operator 1"));
    }

    #[test]
    fn averaged_vector_leaves() {
        let f = forest_from_bytes(&checkpoint(&Spec {
            classes: 3,
            vector: true,
            average: true,
            post: "identity_multiclass",
            ..Spec::default()
        }))
        .unwrap();
        assert_eq!(f.num_groups, 3);
        assert_eq!(f.roots.len(), 6, "one scalar tree per class");
        assert!(f.is_classifier);
        // Left in both trees: (-1 + -3) / 2 plus base 0.5.
        assert_eq!(predict(&f, 0.0), vec![-1.5; 3]);
        assert_eq!(predict(&f, 1.0), vec![2.5; 3]);
    }

    #[test]
    fn grove_per_class_with_softmax() {
        let f = forest_from_bytes(&checkpoint(&Spec {
            classes: 3,
            post: "softmax",
            ..Spec::default()
        }))
        .unwrap();
        let p = predict(&f, 0.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn categorical_lists() {
        let f = forest_from_bytes(&checkpoint(&Spec {
            categorical: true,
            ..Spec::default()
        }))
        .unwrap();
        // Categories {1, 3} go right (category_list_right_child = true).
        assert_eq!(predict(&f, 1.0), vec![4.5]);
        assert_eq!(predict(&f, 3.0), vec![4.5]);
        assert_eq!(predict(&f, 2.0), vec![-3.5]);
        assert_eq!(predict(&f, -1.0), vec![-3.5]);
        assert_eq!(predict(&f, f32::NAN), vec![-3.5]);
    }

    #[test]
    fn missing_counts_give_nan_covers() {
        let f = forest_from_bytes(&checkpoint(&Spec {
            counts: false,
            ..Spec::default()
        }))
        .unwrap();
        assert!(f.covers.iter().all(|c| c.is_nan()));
    }

    #[test]
    fn other_versions_are_refused_with_the_version() {
        let e = forest_from_bytes(&checkpoint(&Spec {
            version: 3,
            ..Spec::default()
        }))
        .unwrap_err();
        assert!(e.contains("version 3.8.1"), "{e}");
    }

    #[test]
    fn damaged_files_are_refused() {
        let good = checkpoint(&Spec::default());
        for cut in [0, 5, 13, 40, good.len() / 2, good.len() - 1] {
            let e = forest_from_bytes(&good[..cut]).unwrap_err();
            assert!(
                e.contains("truncated") || e.contains("too short") || e.contains("claims"),
                "{cut}: {e}"
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(
            forest_from_bytes(&extra)
                .unwrap_err()
                .contains("unexpected bytes")
        );
        let e = forest_from_bytes(&checkpoint(&Spec {
            post: "hinge",
            ..Spec::default()
        }))
        .unwrap_err();
        assert!(e.contains("hinge"));
        // A huge array count must not allocate.
        let mut huge = good.clone();
        let at = 4 * 3 + 2 + 8 + 4 + 2 + 4; // the num_class array's count
        huge[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(forest_from_bytes(&huge).unwrap_err().contains("claims"));
        // A child outside the tree.
        let mut bad = good.clone();
        let cleft = good
            .windows(20)
            .position(|w| {
                w[..8] == 3u64.to_le_bytes()
                    && w[8..12] == 1i32.to_le_bytes()
                    && w[12..16] == (-1i32).to_le_bytes()
            })
            .unwrap();
        bad[cleft + 8..cleft + 12].copy_from_slice(&9i32.to_le_bytes());
        assert!(
            forest_from_bytes(&bad)
                .unwrap_err()
                .contains("child index 9")
        );
    }
}
