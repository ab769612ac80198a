//! The stable ABI between the Ferrum server and its backend libraries.
//!
//! A backend is a `cdylib` that depends on this crate, implements [`SimpleModel`] (or the full
//! [`Backend`] / [`Model`] / [`Instance`] trio) and exports it with [`export_model!`] (or
//! [`export_backend!`]). The server loads the library at run time, checks that it was built
//! against a compatible version of this crate, and refuses it with a clear error otherwise.

#![warn(missing_docs)]

mod author;
pub mod batch;
pub mod bytes;
mod element;
mod ffi;
mod request;
mod response;
mod types;

pub use abi_stable;
pub use author::{
    Backend, HostCall, Instance, InstanceContext, Model, ModelContext, SimpleBackend, SimpleModel,
    SimpleShared, create_backend, guard, host_infer, host_start, log, root_module,
};
pub use element::Element;
pub use ffi::*;
pub use request::{CorrelationId, InferResult, ParamValue, Parameter, Request, Tensor};
pub use response::{OutputTensor, Responder, Response};
pub use types::*;

/// Number of elements a shape describes (negative dims count as zero).
pub fn element_count(shape: &[i64]) -> usize {
    shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .product()
}

/// Everything a backend author usually needs.
pub mod prelude {
    pub use crate::{
        Backend, BackendError, DataType, Element, ErrorCode, Instance, InstanceContext, LogLevel,
        Model, ModelContext, OutputTensor, ParamValue, Request, Responder, Response, SimpleModel,
        Tensor, export_backend, export_model,
    };
}

/// The version of this crate. The server loads a library built against the same major version
/// and the same or an older minor version, and refuses a newer one.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
