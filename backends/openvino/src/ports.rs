//! What an OpenVINO model says about its inputs and outputs, and finding its file.

use std::ffi::{CStr, c_char};
use std::path::{Path, PathBuf};

use ferrum_backend_api::{BackendError, DataType, ModelContext};
use openvino::{Core, ElementType, InferenceError, InferenceErrorKind, Model, Node};
use openvino_sys::{
    ov_free, ov_output_const_port_free, ov_output_const_port_t, ov_port_get_any_name, ov_status_e,
};

use crate::dtype;
use crate::runtime::ov_error;

/// One input or output of an OpenVINO model.
#[derive(Clone, Debug)]
pub struct Port {
    /// Its tensor name.
    pub name: String,
    /// Its position among the model's inputs (or outputs).
    pub index: usize,
    /// OpenVINO's element type.
    pub element: ElementType,
    /// Its dims, -1 where dynamic; `None` when even the rank is dynamic.
    pub dims: Option<Vec<i64>>,
}

impl Port {
    /// The Triton data type, or an error naming the tensor when there is none.
    pub fn datatype(&self, what: &str) -> Result<DataType, BackendError> {
        dtype::from_openvino(self.element).ok_or_else(|| {
            BackendError::unsupported(format!(
                "model {what} '{}' has element type {}, which this backend cannot exchange \
                 (supported: boolean, i8..i64, u8..u64, f16, bf16, f32, f64)",
                self.name, self.element
            ))
        })
    }

    /// The dims written as a readable shape (`[?,4]`).
    pub fn shape_text(&self) -> String {
        match &self.dims {
            None => "[...]".to_string(),
            Some(dims) => shape_text(dims),
        }
    }
}

/// A shape written with `?` for dynamic dims.
pub fn shape_text(dims: &[i64]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|&d| {
            if d < 0 {
                "?".to_string()
            } else {
                d.to_string()
            }
        })
        .collect();
    format!("[{}]", parts.join(","))
}

/// A port of a model, freed when this goes.
///
/// The `openvino` crate's `Node` (0.11) never frees the `ov_output_const_port_t` it wraps,
/// nor the name string `get_name` receives. A port that is never freed keeps its node alive,
/// and a node keeps every node upstream of it: one output port held the whole graph read for
/// a model version, weights included, so every load leaked it. Ports are therefore only ever
/// handled through this wrapper, which frees them.
struct OwnedPort(Node);

// `Node` holds nothing but the port pointer: the same size means that pointer is all of it.
const _: () =
    assert!(std::mem::size_of::<Node>() == std::mem::size_of::<*mut ov_output_const_port_t>());

impl OwnedPort {
    /// The `ov_output_const_port_t` the node wraps.
    fn raw(&self) -> *mut ov_output_const_port_t {
        // SAFETY: `Node` is exactly one raw port pointer (its only field; sizes checked above,
        // the crate version pinned in Cargo.toml), so its bytes are that pointer.
        unsafe { std::mem::transmute_copy::<Node, *mut ov_output_const_port_t>(&self.0) }
    }

    /// The port's tensor name; the string OpenVINO allocates for it is freed here.
    fn name(&self) -> Result<String, InferenceError> {
        let mut c_name: *mut c_char = std::ptr::null_mut();
        // SAFETY: a live port, and a place for the string pointer.
        let status = unsafe { ov_port_get_any_name(self.raw(), &raw mut c_name) };
        if status != ov_status_e::OK || c_name.is_null() {
            InferenceError::convert(status, openvino::get_last_error_message())?;
            return Err(InferenceError {
                kind: InferenceErrorKind::Unexpected,
                message: Some("OpenVINO returned no tensor name".to_string()),
            });
        }
        // SAFETY: OpenVINO gave a NUL-terminated string that the caller owns and frees with
        // `ov_free`; it is copied before it is freed.
        let name = unsafe { CStr::from_ptr(c_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: allocated by OpenVINO for this call, freed once.
        unsafe { ov_free(c_name) };
        Ok(name)
    }
}

impl Drop for OwnedPort {
    fn drop(&mut self) {
        let port = self.raw();
        if !port.is_null() {
            // SAFETY: the port came from OpenVINO, is freed only here, and `Node` itself has no
            // `Drop` that would free it again.
            unsafe { ov_output_const_port_free(port) };
        }
    }
}

fn describe(port: &OwnedPort, index: usize, what: &str) -> Result<Port, BackendError> {
    let name = port
        .name()
        .map_err(ov_error(format!("model {what} #{index} has no name")))?;
    let node = &port.0;
    let element = node.get_element_type().map_err(ov_error(format!(
        "cannot read the type of model {what} '{name}'"
    )))?;
    let shape = node.get_partial_shape().map_err(ov_error(format!(
        "cannot read the shape of model {what} '{name}'"
    )))?;
    let dims = if shape.get_rank().is_dynamic() {
        None
    } else {
        Some(
            shape
                .get_dimensions()
                .iter()
                .map(|d| if d.is_dynamic() { -1 } else { d.get_min() })
                .collect(),
        )
    };
    Ok(Port {
        name,
        index,
        element,
        dims,
    })
}

/// The model's inputs, in order.
pub fn inputs(model: &Model) -> Result<Vec<Port>, BackendError> {
    let count = model
        .get_inputs_len()
        .map_err(ov_error("cannot count the model's inputs"))?;
    (0..count)
        .map(|i| {
            let port = model
                .get_input_by_index(i)
                .map(OwnedPort)
                .map_err(ov_error(format!("cannot read model input #{i}")))?;
            describe(&port, i, "input")
        })
        .collect()
}

/// The model's outputs, in order.
pub fn outputs(model: &Model) -> Result<Vec<Port>, BackendError> {
    let count = model
        .get_outputs_len()
        .map_err(ov_error("cannot count the model's outputs"))?;
    (0..count)
        .map(|i| {
            let port = model
                .get_output_by_index(i)
                .map(OwnedPort)
                .map_err(ov_error(format!("cannot read model output #{i}")))?;
            describe(&port, i, "output")
        })
        .collect()
}

/// The model file of a version: `default_model_filename`, else `model.xml`, else `model.onnx`.
pub fn model_file(ctx: &ModelContext) -> Result<PathBuf, BackendError> {
    let configured = ctx
        .config
        .get("default_model_filename")
        .and_then(|v| v.as_str())
        .filter(|name| !name.is_empty());
    if let Some(name) = configured {
        let plain = Path::new(name).components().count() == 1
            && !name.contains(['/', '\\'])
            && name != ".."
            && name != ".";
        if !plain {
            return Err(BackendError::invalid_argument(format!(
                "default_model_filename '{name}' must be a file name inside the version folder"
            )));
        }
        let path = ctx.version_path.join(name);
        if !path.is_file() {
            return Err(BackendError::not_found(format!(
                "model '{}' version {}: default_model_filename '{name}' is not a file in {}",
                ctx.name,
                ctx.version,
                ctx.version_path.display()
            )));
        }
        return Ok(path);
    }
    ["model.xml", "model.onnx"]
        .iter()
        .map(|name| ctx.version_path.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            BackendError::not_found(format!(
                "model '{}' version {}: {} holds neither model.xml (OpenVINO IR, with model.bin) \
                 nor model.onnx; name another file with default_model_filename",
                ctx.name,
                ctx.version,
                ctx.version_path.display()
            ))
        })
}

/// Reads a model file (IR `.xml` with its `.bin` beside it, or ONNX).
pub fn read_model(core: &mut Core, path: &Path) -> Result<Model, BackendError> {
    let text = |p: &Path| {
        p.to_str().map(str::to_string).ok_or_else(|| {
            BackendError::invalid_argument(format!("model path {} is not valid UTF-8", p.display()))
        })
    };
    let model_path = text(path)?;
    if model_path.contains('\0') {
        return Err(BackendError::invalid_argument(format!(
            "model path {} contains a NUL byte",
            path.display()
        )));
    }
    let is_ir = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("xml"));
    // IR keeps its weights in a .bin of the same name; an empty path lets OpenVINO decide.
    let weights = path.with_extension("bin");
    let weights_path = if is_ir && weights.is_file() {
        text(&weights)?
    } else {
        String::new()
    };
    core.read_model_from_file(&model_path, &weights_path)
        .map_err(ov_error(format!("OpenVINO cannot read {}", path.display())))
}
