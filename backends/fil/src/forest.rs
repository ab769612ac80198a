//! The in-memory forest every model format is converted to, and batch prediction over it.
//!
//! All trees live in one flat array of 16-byte nodes; a tree is a range of it, laid out
//! breadth first with the two children of a split next to each other (right = left + 1), so
//! the step to a child is `left + go_right`, without a branch. A split compares one feature
//! against an `f32` threshold with "go left when `x < threshold`" (LightGBM's `x <= t` is
//! turned into that form at load time), and the rare cases (categorical splits, LightGBM's
//! zero-as-missing) are flagged so the common case stays one comparison. A leaf points to
//! itself, so a walk of exactly the tree's depth steps ends on the leaf whatever the path;
//! leaf values are kept apart as `f64` (LightGBM's double leaves lose nothing).
//!
//! Prediction walks a block of rows through one tree at a time (the tree stays in cache),
//! eight rows in step (independent walks overlap in the CPU), and splits large batches over
//! threads.

/// Node flag: the node is a leaf.
const LEAF: u32 = 1 << 31;
/// Node flag: a missing value (NaN) goes to the left child.
const DEFAULT_LEFT: u32 = 1 << 30;
/// Node flag: a categorical split (the threshold field holds the category set's index).
const CATEGORICAL: u32 = 1 << 29;
/// Node flag: values with `|x| <= 1e-35` count as missing (LightGBM's zero missing type).
const ZERO_MISSING: u32 = 1 << 28;
/// The flags that need the slow path.
const SPECIAL: u32 = CATEGORICAL | ZERO_MISSING;
/// The bits of `info` that hold the feature index.
const FEATURE_MASK: u32 = (1 << 28) - 1;
/// The largest feature index a node can hold.
pub const MAX_FEATURE: usize = FEATURE_MASK as usize;
/// LightGBM's threshold below which a value counts as zero.
const ZERO_THRESHOLD: f32 = 1e-35;
/// Rows walked through one tree before moving to the next.
const BLOCK_ROWS: usize = 64;
/// Least work (rows × trees) per thread before a batch is split over threads.
const WORK_PER_THREAD: usize = 1 << 15;

/// One tree node (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Node {
    /// Split threshold; for a categorical split, the bits of the category set's index.
    threshold: f32,
    /// Feature index in the low bits, flags in the high bits.
    info: u32,
    /// Left child (absolute index); for a leaf, the low half of the value's bits.
    left: u32,
    /// Right child (absolute index); for a leaf, the high half of the value's bits.
    right: u32,
}

impl Node {
    /// A leaf holding `value`.
    pub fn leaf(value: f64) -> Node {
        let bits = value.to_bits();
        Node {
            threshold: 0.0,
            info: LEAF,
            left: bits as u32,
            right: (bits >> 32) as u32,
        }
    }

    /// A numerical split: left when `x < threshold`, NaN to the left when `default_left`.
    pub fn numerical(
        feature: u32,
        threshold: f32,
        default_left: bool,
        left: u32,
        right: u32,
    ) -> Node {
        let mut info = feature & FEATURE_MASK;
        if default_left {
            info |= DEFAULT_LEFT;
        }
        Node {
            threshold,
            info,
            left,
            right,
        }
    }

    /// The same split with other children.
    pub fn with_children(mut self, left: u32, right: u32) -> Node {
        self.left = left;
        self.right = right;
        self
    }

    /// Marks a numerical split as treating zero (|x| <= 1e-35) as missing.
    pub fn with_zero_missing(mut self) -> Node {
        self.info |= ZERO_MISSING;
        self
    }

    /// A categorical split over category set `set`: members go left or right as the
    /// forest's `members_go_left` says; NaN goes left when `default_left`.
    pub fn categorical(feature: u32, set: u32, default_left: bool, left: u32, right: u32) -> Node {
        let mut info = (feature & FEATURE_MASK) | CATEGORICAL;
        if default_left {
            info |= DEFAULT_LEFT;
        }
        Node {
            threshold: f32::from_bits(set),
            info,
            left,
            right,
        }
    }

    /// Whether the node is a leaf.
    #[inline]
    pub fn is_leaf(&self) -> bool {
        self.info & LEAF != 0
    }

    /// A leaf's value.
    #[inline]
    pub fn value(&self) -> f64 {
        f64::from_bits(u64::from(self.left) | (u64::from(self.right) << 32))
    }

    /// The feature a split reads.
    #[inline]
    pub fn feature(&self) -> usize {
        (self.info & FEATURE_MASK) as usize
    }

    /// The children (left, right) of a split.
    #[inline]
    pub fn children(&self) -> (u32, u32) {
        (self.left, self.right)
    }

    /// Whether a missing value goes left.
    #[inline]
    pub fn default_left(&self) -> bool {
        self.info & DEFAULT_LEFT != 0
    }

    /// Whether the split is categorical.
    pub fn is_categorical(&self) -> bool {
        self.info & CATEGORICAL != 0
    }
}

/// The function from summed margins to outputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// Output = margin (regression, raw scores).
    Identity,
    /// Output = 1 / (1 + exp(-alpha * margin)) per output.
    Sigmoid(f64),
    /// Softmax over the groups of a row.
    Softmax,
    /// Output = exp(margin) (Poisson, gamma, Tweedie).
    Exp,
    /// Output = sign(margin) * margin² (LightGBM regression with `sqrt`).
    SignedSquare,
}

/// A tree ensemble ready to predict.
#[derive(Clone, Debug)]
pub struct Forest {
    /// Number of input features a row has.
    pub num_features: usize,
    /// Margins per row (1 for regression and binary, classes for multi-class).
    pub num_groups: usize,
    /// Every tree's nodes.
    pub nodes: Vec<Node>,
    /// Each node's cover (training weight or count reaching it), for SHAP.
    pub covers: Vec<f64>,
    /// Each node's leaf value (0 for splits); filled by [`Forest::validate`].
    pub values: Vec<f64>,
    /// Each tree's depth; filled by [`Forest::validate`].
    pub depths: Vec<u32>,
    /// Each tree's root node.
    pub roots: Vec<u32>,
    /// Each tree's output group.
    pub groups: Vec<u32>,
    /// Category sets: bit words, addressed by `set_ranges`.
    pub set_words: Vec<u32>,
    /// (first word, word count) of each category set.
    pub set_ranges: Vec<(u32, u32)>,
    /// Whether a category in a split's set goes left (LightGBM) or right (XGBoost).
    pub members_go_left: bool,
    /// Margin added to each group before the trees (base score in margin space).
    pub base_margin: Vec<f64>,
    /// The objective's output transform.
    pub transform: Transform,
    /// Whether the model is a classifier (binary or multi-class).
    pub is_classifier: bool,
    /// Depth of the deepest tree (a lone leaf is depth 0).
    pub max_depth: usize,
}

impl Forest {
    /// Checks the forest's invariants (children in range, features in range, trees acyclic)
    /// and computes the maximum depth; a model file that breaks them is refused here.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.num_groups == 0 {
            return Err("the model has no outputs".into());
        }
        if self.roots.len() != self.groups.len() {
            return Err("tree count and tree group count differ".into());
        }
        if self.covers.len() != self.nodes.len() {
            return Err("node count and cover count differ".into());
        }
        if self.base_margin.len() != self.num_groups {
            return Err(format!(
                "the base score has {} values for {} outputs",
                self.base_margin.len(),
                self.num_groups
            ));
        }
        if let Some(g) = self.groups.iter().find(|&&g| g as usize >= self.num_groups) {
            return Err(format!(
                "a tree belongs to output group {g} of {}",
                self.num_groups
            ));
        }
        for &(start, len) in &self.set_ranges {
            if start as usize + len as usize > self.set_words.len() {
                return Err("a category set lies outside the category table".into());
            }
        }
        let mut max_depth = 0;
        let mut stack = Vec::new();
        let mut seen = vec![false; self.nodes.len()];
        for (t, &root) in self.roots.iter().enumerate() {
            stack.push((root, 0usize));
            while let Some((index, depth)) = stack.pop() {
                let node = self.nodes.get(index as usize).ok_or_else(|| {
                    format!("tree {t} refers to node {index}, which does not exist")
                })?;
                if std::mem::replace(&mut seen[index as usize], true) {
                    return Err(format!("tree {t} reaches node {index} twice"));
                }
                max_depth = max_depth.max(depth);
                if node.is_leaf() {
                    continue;
                }
                if node.feature() >= self.num_features {
                    return Err(format!(
                        "tree {t} splits on feature {} but the model has {} features",
                        node.feature(),
                        self.num_features
                    ));
                }
                if node.is_categorical()
                    && node.threshold.to_bits() as usize >= self.set_ranges.len()
                {
                    return Err(format!("tree {t} names a category set that does not exist"));
                }
                let (l, r) = node.children();
                stack.push((l, depth + 1));
                stack.push((r, depth + 1));
            }
        }
        self.max_depth = max_depth;
        if self.num_features == 0 {
            return Err("the model has no features".into());
        }
        self.relayout();
        Ok(())
    }

    /// Lays every tree out breadth first with adjacent children, moves leaf values to
    /// `values` and makes leaves point to themselves. Only for trees [`Forest::validate`]
    /// checked (every node reached once).
    fn relayout(&mut self) {
        let mut nodes = Vec::with_capacity(self.nodes.len());
        let mut covers = Vec::with_capacity(self.nodes.len());
        let mut values = Vec::with_capacity(self.nodes.len());
        let mut depths = Vec::with_capacity(self.roots.len());
        let mut queue = std::collections::VecDeque::new();
        for root in self.roots.iter_mut() {
            let new_root = nodes.len() as u32;
            // (old index, depth); each popped node lands at its queue position.
            queue.push_back((*root, 0u32));
            let mut depth = 0;
            while let Some((old, d)) = queue.pop_front() {
                depth = depth.max(d);
                let at = nodes.len() as u32;
                let mut node = self.nodes[old as usize];
                covers.push(self.covers[old as usize]);
                if node.is_leaf() {
                    values.push(node.value());
                    node = Node {
                        threshold: f32::NAN,
                        info: LEAF | DEFAULT_LEFT,
                        left: at,
                        right: at,
                    };
                } else {
                    values.push(0.0);
                    // The children land after everything queued so far.
                    let first = at + 1 + queue.len() as u32;
                    queue.push_back((node.left, d + 1));
                    queue.push_back((node.right, d + 1));
                    node.left = first;
                    node.right = first + 1;
                }
                nodes.push(node);
            }
            *root = new_root;
            depths.push(depth);
        }
        self.nodes = nodes;
        self.covers = covers;
        self.values = values;
        self.depths = depths;
    }

    /// Whether a categorical split sends category value `x` (not NaN) left.
    fn category_left(&self, node: &Node, x: f32) -> bool {
        // Categories truncate toward zero; XGBoost refuses any negative value, LightGBM only
        // those that truncate to a negative integer.
        let invalid = if self.members_go_left {
            x <= -1.0
        } else {
            x < 0.0
        };
        let member = if invalid || x >= 2_147_483_648.0 {
            false
        } else {
            let category = x as u32;
            let set = node.threshold.to_bits() as usize;
            let (start, len) = self.set_ranges.get(set).copied().unwrap_or((0, 0));
            let word = (category / 32) as usize;
            word < len as usize
                && self
                    .set_words
                    .get(start as usize + word)
                    .is_some_and(|w| w & (1 << (category % 32)) != 0)
        };
        member == self.members_go_left
    }

    /// The child a row goes to from `node` (a leaf goes to itself).
    #[inline(always)]
    fn next(&self, node: &Node, row: &[f32]) -> u32 {
        let x = row[node.feature()];
        if node.info & SPECIAL == 0 {
            // NaN compares false both ways: it goes right only without DEFAULT_LEFT.
            let go_right = (x >= node.threshold) | (x.is_nan() & (node.info & DEFAULT_LEFT == 0));
            return node.left + u32::from(go_right);
        }
        let left = if x.is_nan() {
            node.default_left()
        } else if node.is_categorical() {
            self.category_left(node, x)
        } else if x.abs() <= ZERO_THRESHOLD {
            node.default_left()
        } else {
            x < node.threshold
        };
        if left { node.left } else { node.right }
    }

    /// The leaf (node index) a row reaches in tree `t`.
    #[inline]
    pub fn leaf_of(&self, t: usize, row: &[f32]) -> usize {
        let mut i = self.roots[t];
        for _ in 0..self.depths[t] {
            i = self.next(&self.nodes[i as usize], row);
        }
        i as usize
    }

    /// Whether a row goes left at split `node` (for SHAP's hot path).
    pub fn goes_left(&self, node: &Node, row: &[f32]) -> bool {
        self.next(node, row) == node.left
    }

    /// Sums the trees' margins (plus the base margin) of rows `x` (row-major,
    /// `num_features` per row) into `out` (`num_groups` per row).
    fn margins_serial(&self, x: &[f32], out: &mut [f64]) {
        const LANES: usize = 8;
        let (f, g) = (self.num_features, self.num_groups);
        for (rows, acc) in x.chunks(BLOCK_ROWS * f).zip(out.chunks_mut(BLOCK_ROWS * g)) {
            for a in acc.chunks_mut(g) {
                a.copy_from_slice(&self.base_margin);
            }
            for (t, (&root, &group)) in self.roots.iter().zip(&self.groups).enumerate() {
                let group = group as usize;
                let depth = self.depths[t];
                for (lanes, acc) in rows.chunks(LANES * f).zip(acc.chunks_mut(LANES * g)) {
                    let n = lanes.len() / f;
                    if n < LANES {
                        for (row, a) in lanes.chunks(f).zip(acc.chunks_mut(g)) {
                            a[group] += self.values[self.leaf_of(t, row)];
                        }
                        continue;
                    }
                    let mut at = [root; LANES];
                    for _ in 0..depth {
                        for (lane, i) in at.iter_mut().enumerate() {
                            let row = &lanes[lane * f..(lane + 1) * f];
                            *i = self.next(&self.nodes[*i as usize], row);
                        }
                    }
                    for (lane, &i) in at.iter().enumerate() {
                        acc[lane * g + group] += self.values[i as usize];
                    }
                }
            }
        }
    }

    /// Margins of `rows` rows (row-major input), split over up to `threads` threads.
    pub fn margins(&self, x: &[f32], rows: usize, threads: usize) -> Vec<f64> {
        let g = self.num_groups;
        let mut out = vec![0.0; rows * g];
        let work = rows.saturating_mul(self.roots.len().max(1));
        let threads = threads
            .min(work / WORK_PER_THREAD)
            .min(rows.div_ceil(BLOCK_ROWS))
            .max(1);
        if threads <= 1 {
            self.margins_serial(x, &mut out);
            return out;
        }
        let per = rows.div_ceil(threads).div_ceil(BLOCK_ROWS) * BLOCK_ROWS;
        let f = self.num_features;
        std::thread::scope(|s| {
            let mut parts = x.chunks(per * f).zip(out.chunks_mut(per * g));
            // The first part runs here; the others on their own threads.
            let first = parts.next();
            for (xs, os) in parts {
                s.spawn(move || self.margins_serial(xs, os));
            }
            if let Some((xs, os)) = first {
                self.margins_serial(xs, os);
            }
        });
        out
    }

    /// Applies the objective's transform to each row's margins in place.
    pub fn transform(&self, margins: &mut [f64]) {
        match self.transform {
            Transform::Identity => {}
            Transform::Sigmoid(alpha) => {
                for m in margins.iter_mut() {
                    *m = 1.0 / (1.0 + (-alpha * *m).exp());
                }
            }
            Transform::Exp => {
                for m in margins.iter_mut() {
                    *m = m.exp();
                }
            }
            Transform::SignedSquare => {
                for m in margins.iter_mut() {
                    *m = m.signum() * *m * *m;
                }
            }
            Transform::Softmax => {
                for row in margins.chunks_mut(self.num_groups) {
                    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0.0;
                    for m in row.iter_mut() {
                        *m = (*m - max).exp();
                        sum += *m;
                    }
                    for m in row.iter_mut() {
                        *m /= sum;
                    }
                }
            }
        }
    }
}

/// The largest `f32` not above `t` (so that for every `f32` x, `x <= t` ⇔ `x <= result`).
pub fn f32_at_or_below(t: f64) -> f32 {
    let r = t as f32;
    if f64::from(r) > t { next_down(r) } else { r }
}

/// The next `f32` above `x` (`x` not NaN).
pub fn next_up(x: f32) -> f32 {
    if x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let bits = x.to_bits();
    f32::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

/// The next `f32` below `x` (`x` not NaN).
pub fn next_down(x: f32) -> f32 {
    -next_up(-x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One split on feature 0 at 0.5 with two leaves; `node` customises the split.
    fn stump(node: Node) -> Forest {
        let mut f = Forest {
            num_features: 2,
            num_groups: 1,
            nodes: vec![node, Node::leaf(-1.0), Node::leaf(1.0)],
            covers: vec![2.0, 1.0, 1.0],
            values: Vec::new(),
            depths: Vec::new(),
            roots: vec![0],
            groups: vec![0],
            set_words: vec![0b1010, 0, 1],
            set_ranges: vec![(0, 1), (0, 3)],
            members_go_left: false,
            base_margin: vec![0.0],
            transform: Transform::Identity,
            is_classifier: false,
            max_depth: 0,
        };
        f.validate().expect("valid stump");
        f
    }

    fn predict(f: &Forest, x: f32) -> f64 {
        f.margins(&[x, 0.0], 1, 1)[0]
    }

    #[test]
    fn nan_follows_the_default_direction() {
        let right = stump(Node::numerical(0, 0.5, false, 1, 2));
        assert_eq!(predict(&right, f32::NAN), 1.0);
        assert_eq!(predict(&right, 0.4), -1.0);
        assert_eq!(predict(&right, 0.5), 1.0);
        let left = stump(Node::numerical(0, 0.5, true, 1, 2));
        assert_eq!(predict(&left, f32::NAN), -1.0);
        assert_eq!(predict(&left, 0.6), 1.0);
    }

    #[test]
    fn zero_missing_sends_zero_and_nan_the_default_way() {
        let f = stump(Node::numerical(0, 0.5, false, 1, 2).with_zero_missing());
        assert_eq!(predict(&f, 0.0), 1.0);
        assert_eq!(predict(&f, 1e-36), 1.0);
        assert_eq!(predict(&f, f32::NAN), 1.0);
        assert_eq!(predict(&f, 0.1), -1.0);
    }

    #[test]
    fn categorical_bitsets() {
        // Set 0 = {1, 3}; members go right (XGBoost's convention).
        let mut f = stump(Node::categorical(0, 0, true, 1, 2));
        assert_eq!(predict(&f, 1.0), 1.0);
        assert_eq!(predict(&f, 3.0), 1.0);
        assert_eq!(predict(&f, 3.7), 1.0, "categories truncate");
        assert_eq!(predict(&f, 2.0), -1.0);
        assert_eq!(predict(&f, 40.0), -1.0, "beyond the set");
        assert_eq!(predict(&f, -1.0), -1.0, "negative is no member");
        assert_eq!(predict(&f, f32::NAN), -1.0, "NaN follows default_left");
        f.members_go_left = true;
        assert_eq!(predict(&f, 1.0), -1.0);
        assert_eq!(predict(&f, 2.0), 1.0);
        // Set 1 spans three words: category 64 is a member.
        let g = stump(Node::categorical(0, 1, false, 1, 2));
        assert_eq!(predict(&g, 64.0), 1.0);
        assert_eq!(predict(&g, 65.0), -1.0);
    }

    #[test]
    fn broken_trees_are_refused() {
        let mut f = stump(Node::numerical(0, 0.5, false, 1, 2));
        f.nodes[0] = Node::numerical(0, 0.5, false, 1, 7);
        assert!(f.validate().unwrap_err().contains("node 7"));
        f.nodes[0] = Node::numerical(5, 0.5, false, 1, 2);
        assert!(f.validate().unwrap_err().contains("feature 5"));
        f.nodes[0] = Node::numerical(0, 0.5, false, 0, 2);
        assert!(f.validate().unwrap_err().contains("twice"));
    }

    #[test]
    fn rounding_thresholds_keeps_less_or_equal() {
        let t = 0.1f64;
        let r = f32_at_or_below(t);
        assert!(f64::from(r) <= t && f64::from(next_up(r)) > t);
        assert_eq!(f32_at_or_below(1e300), f32::MAX);
        assert_eq!(next_up(f32::MAX), f32::INFINITY);
        assert_eq!(next_up(-0.0), f32::from_bits(1));
    }

    #[test]
    fn threads_give_the_same_margins() {
        let f = stump(Node::numerical(0, 0.5, false, 1, 2));
        let x: Vec<f32> = (0..20_000).map(|i| (i % 7) as f32 / 7.0).collect();
        let mut many = f.clone();
        many.roots = vec![0; 100];
        many.groups = vec![0; 100];
        many.depths = vec![1; 100];
        let a = many.margins(&x, 10_000, 1);
        let b = many.margins(&x, 10_000, 4);
        assert_eq!(a, b);
    }
}
