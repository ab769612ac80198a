//! Makes the TorchScript models that the repository serves and the tests run: TorchScript
//! source compiled by the same libtorch the backend links (no Python torch needed).
//!
//! ```sh
//! cargo run -p ferrum-backend-pytorch --example make_torch_models -- \
//!     model_repository tests/models/pytorch
//! ```
//!
//! Writes `<repository>/pytorch_mlp/1/model.pt` (its config.pbtxt is in git) and, under the
//! tests folder, one model folder per test model with its config.pbtxt. Every weight and every
//! operation is chosen so that tests/python/test_pytorch.py can recompute the outputs in NumPy;
//! keep the two in step.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use ferrum_pytorch::shim::script_and_save;
use tch::{CModule, Tensor};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The MLP's sizes: features in, hidden units, classes out.
const MLP_IN: i64 = 32;
const MLP_HIDDEN: i64 = 64;
const MLP_OUT: i64 = 10;

/// The MLP's weights, as exact multiples of powers of two so that any summation order gives
/// the same FP32 result for inputs on a 1/16 grid. The test recomputes them with the same
/// formulas.
fn mlp_weights() -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let w1 = (0..MLP_HIDDEN)
        .flat_map(|j| (0..MLP_IN).map(move |i| ((7 * i + 3 * j) % 17 - 8) as f32 / 64.0))
        .collect();
    let b1 = (0..MLP_HIDDEN).map(|j| (j % 5 - 2) as f32 / 16.0).collect();
    let w2 = (0..MLP_OUT)
        .flat_map(|k| (0..MLP_HIDDEN).map(move |j| ((5 * j + 11 * k) % 13 - 6) as f32 / 64.0))
        .collect();
    let b2 = (0..MLP_OUT).map(|k| (k % 3 - 1) as f32 / 8.0).collect();
    (w1, b1, w2, b2)
}

/// Compiles TorchScript `source` into a module holding `buffers` and saves it to `path`
/// (through a temporary file, so a reader never sees half a model), then checks it loads.
fn script_to(path: &Path, source: &str, buffers: &[(&str, &Tensor)]) -> Result<()> {
    let dir = path.parent().ok_or("model path has no folder")?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(".model.pt.tmp");
    script_and_save("FerrumTestModel", source, buffers, &tmp)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    fs::rename(&tmp, path)?;
    CModule::load(path)?;
    Ok(())
}

fn write_config(folder: &Path, text: &str) -> Result<()> {
    fs::create_dir_all(folder)?;
    fs::write(folder.join("config.pbtxt"), text.trim_start())?;
    Ok(())
}

/// The example MLP served from model_repository/: FP32, dynamic batch.
fn mlp(repository: &Path) -> Result<()> {
    let (w1, b1, w2, b2) = mlp_weights();
    let w1 = Tensor::f_from_slice(&w1)?.f_view([MLP_HIDDEN, MLP_IN])?;
    let b1 = Tensor::f_from_slice(&b1)?;
    let w2 = Tensor::f_from_slice(&w2)?.f_view([MLP_OUT, MLP_HIDDEN])?;
    let b2 = Tensor::f_from_slice(&b2)?;
    script_to(
        &repository.join("pytorch_mlp/1/model.pt"),
        r#"
def forward(self, x: Tensor) -> Tensor:
    hidden = torch.relu(torch.matmul(x, self.w1.t()) + self.b1)
    return torch.matmul(hidden, self.w2.t()) + self.b2
"#,
        &[("w1", &w1), ("b1", &b1), ("w2", &w2), ("b2", &b2)],
    )
}

/// Integer types, batched; inputs and outputs follow `<name>__<index>` and the config lists
/// them out of order, so only the indices can place them.
fn int_ops(tests: &Path) -> Result<()> {
    let folder = tests.join("torch_int_ops");
    script_to(
        &folder.join("1/model.pt"),
        r#"
def forward(self, a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor):
    return (a * 3 - 7, b + a.long(), c * 2, -d, e + 1)
"#,
        &[],
    )?;
    write_config(
        &folder,
        r#"
backend: "pytorch"
max_batch_size: 8
input [
  { name: "INPUT__3" data_type: TYPE_INT8 dims: [ 4 ] },
  { name: "INPUT__0" data_type: TYPE_INT32 dims: [ 4 ] },
  { name: "INPUT__4" data_type: TYPE_UINT8 dims: [ 4 ] },
  { name: "INPUT__1" data_type: TYPE_INT64 dims: [ 4 ] },
  { name: "INPUT__2" data_type: TYPE_INT16 dims: [ 4 ] }
]
output [
  { name: "OUTPUT__4" data_type: TYPE_UINT8 dims: [ 4 ] },
  { name: "OUTPUT__2" data_type: TYPE_INT16 dims: [ 4 ] },
  { name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 4 ] },
  { name: "OUTPUT__3" data_type: TYPE_INT8 dims: [ 4 ] },
  { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ 4 ] }
]
instance_group [ { count: 2 kind: KIND_CPU } ]
"#,
    )
}

/// FP16, BF16 and FP64 in, those and FP32 out; batched, variable length.
fn float_ops(tests: &Path) -> Result<()> {
    let folder = tests.join("torch_float_ops");
    script_to(
        &folder.join("1/model.pt"),
        r#"
def forward(self, h: Tensor, bf: Tensor, d: Tensor):
    return (h * 2.0 + 0.5, bf * 0.5 - 1.0, d * d - d / 3.0, h.float() * bf.float())
"#,
        &[],
    )?;
    write_config(
        &folder,
        r#"
platform: "pytorch_libtorch"
max_batch_size: 16
input [
  { name: "HALF__0" data_type: TYPE_FP16 dims: [ -1 ] },
  { name: "BRAIN__1" data_type: TYPE_BF16 dims: [ -1 ] },
  { name: "DOUBLE__2" data_type: TYPE_FP64 dims: [ -1 ] }
]
output [
  { name: "HALF_OUT__0" data_type: TYPE_FP16 dims: [ -1 ] },
  { name: "BRAIN_OUT__1" data_type: TYPE_BF16 dims: [ -1 ] },
  { name: "DOUBLE_OUT__2" data_type: TYPE_FP64 dims: [ -1 ] },
  { name: "PRODUCT__3" data_type: TYPE_FP32 dims: [ -1 ] }
]
"#,
    )
}

/// BOOL in and out, no batching; plain names, placed by their order in the config.
fn bool_ops(tests: &Path) -> Result<()> {
    let folder = tests.join("torch_bool_ops");
    script_to(
        &folder.join("1/model.pt"),
        r#"
def forward(self, a: Tensor, b: Tensor, x: Tensor):
    return (torch.logical_and(a, b), torch.logical_or(a, x > 0.0), x * a.float())
"#,
        &[],
    )?;
    write_config(
        &folder,
        r#"
backend: "pytorch"
max_batch_size: 0
input [
  { name: "a" data_type: TYPE_BOOL dims: [ 2, 3 ] },
  { name: "b" data_type: TYPE_BOOL dims: [ 2, 3 ] },
  { name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] }
]
output [
  { name: "both" data_type: TYPE_BOOL dims: [ 2, 3 ] },
  { name: "a_or_positive" data_type: TYPE_BOOL dims: [ 2, 3 ] },
  { name: "x_where_a" data_type: TYPE_FP32 dims: [ 2, 3 ] }
]
"#,
    )
}

/// One tensor out (not a tuple), from a file with another name; refuses NaN with an assertion
/// that fails inside TorchScript.
fn single(tests: &Path) -> Result<()> {
    let folder = tests.join("torch_single");
    script_to(
        &folder.join("1/net.pt"),
        r#"
def forward(self, x: Tensor) -> Tensor:
    assert not bool(torch.any(torch.isnan(x))), "the input holds NaN"
    return torch.tanh(x) * 2.0
"#,
        &[],
    )?;
    write_config(
        &folder,
        r#"
backend: "pytorch"
default_model_filename: "net.pt"
max_batch_size: 4
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"#,
    )
}

/// An optional second input (passed as None when left out), and a list returned.
fn optional(tests: &Path) -> Result<()> {
    let folder = tests.join("torch_optional");
    script_to(
        &folder.join("1/model.pt"),
        r#"
def forward(self, x: Tensor, y: Optional[Tensor]) -> List[Tensor]:
    if y is None:
        return [x + 1.0, x * 2.0]
    return [x + y, x * 2.0]
"#,
        &[],
    )?;
    write_config(
        &folder,
        r#"
backend: "pytorch"
max_batch_size: 8
input [
  { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "INPUT__1" data_type: TYPE_FP32 dims: [ 3 ] optional: true }
]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 3 ] }
]
"#,
    )
}

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [repository, tests] = args.as_slice() else {
        return Err("usage: make_torch_models <model repository> <tests model folder>".into());
    };
    mlp(repository)?;
    int_ops(tests)?;
    float_ops(tests)?;
    bool_ops(tests)?;
    single(tests)?;
    optional(tests)?;
    println!(
        "make_torch_models: wrote pytorch_mlp to {} and the test models to {}",
        repository.display(),
        tests.display()
    );
    Ok(())
}
