//! Ferrum's inference core: the model repository, model configs, backend plugins, the
//! scheduler, statistics, metrics, traces and shared memory, behind one API ([`Core`]) that
//! network frontends (or an embedding program) call. Build one with [`CoreBuilder`].
//!
//! # Embedding
//!
//! The core is a library: it opens no socket (the HTTP and gRPC frontends live in the
//! `ferrum` server crate), so a program can serve models in its own process and call them
//! directly. It runs on the caller's tokio runtime (multi-threaded; models load on its
//! blocking pool).
//!
//! - **Build and start**: [`CoreBuilder::new`] takes the model repositories; set the
//!   [`ControlMode`] ([`CoreBuilder::control_mode`]), the backend directory
//!   ([`CoreBuilder::backend_directory`], laid out as `<dir>/<name>/libferrum_<name>.so`),
//!   the models to load at start in explicit mode ([`CoreBuilder::startup_models`]) and
//!   limits such as [`CoreBuilder::queue_limit`]; [`CoreBuilder::start`] loads the start-up
//!   models and returns a ready [`Core`]. In poll and watch modes, also run
//!   [`Core::follow_repository`] on a task.
//! - **Models**: [`Core::load_model`] / [`Core::unload_model`] (explicit mode),
//!   [`Core::model_ready`], [`Core::model_metadata`], [`Core::model_config`],
//!   [`Core::repository_index`].
//! - **Inference**: [`Core::infer`] runs a request of a model that is not decoupled and
//!   returns its one response; [`Core::infer_stream`] returns a [`ResponseStream`] of
//!   [`StreamItem`]s (0..N responses, the last flagged final) and serves decoupled models;
//!   dropping the stream cancels the request.
//! - **Statistics**: [`Core::statistics`] (Triton's statistics extension, per model version).
//! - **Stop**: [`Core::begin_shutdown`] (readiness goes false), then [`Core::unload_all`],
//!   which waits for in-flight requests.
//!
//! Inputs are [`bytes::Bytes`] (shared, not copied again by the core) or bytes lent through
//! [`server::LentBytes`]; outputs come back as [`bytes::Bytes`] the core allocated, or, with
//! an [`OutputAllocator`] on the request ([`InferRequest::allocator`]), in the caller's own
//! buffers: the backend writes each output straight into the vector the allocator returned,
//! and the response hands that allocation back.
//!
//! ```no_run
//! use bytes::Bytes;
//! use ferrum_core::{ControlMode, CoreBuilder, DataType, InferRequest, InputTensor};
//!
//! # async fn example() -> ferrum_core::Result<()> {
//! let core = CoreBuilder::new(["model_repository"])
//!     .control_mode(ControlMode::Explicit)
//!     .backend_directory("target/debug/backends")
//!     .startup_models(vec!["simple".into()])
//!     .start()
//!     .await?;
//! let ints = |v: i32| Bytes::from((0..16).flat_map(|_| v.to_le_bytes()).collect::<Vec<u8>>());
//! let input = |name: &str, value: i32| InputTensor {
//!     name: name.into(),
//!     datatype: DataType::INT32,
//!     shape: vec![1, 16],
//!     data: ints(value).into(),
//! };
//! let request = InferRequest {
//!     model_name: "simple".into(),
//!     inputs: vec![input("INPUT0", 2), input("INPUT1", 1)],
//!     ..Default::default()
//! };
//! let response = core.infer(request).await?;
//! assert_eq!(response.outputs[0].name, "OUTPUT0"); // 3 everywhere
//! core.begin_shutdown();
//! core.unload_all().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The full example is `examples/embedded.rs` (`cargo run -p ferrum-examples --bin
//! embedded`); `docs/embedding.md` covers the C and Java APIs built on this one.

pub mod builder;
pub mod cache;
pub mod config;
pub mod error;
pub mod isolation;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod plugins;
pub mod proto;
pub mod repository;
pub mod scheduler;
pub mod server;
pub mod shm;
pub mod stats;
pub mod trace;

pub use builder::{CoreBuilder, DEFAULT_QUEUE_LIMIT};
pub use error::{Error, ErrorKind, Result};
/// Element types and request parameters, re-exported from the backend ABI crate.
pub use ferrum_backend_api::{DataType, ParamValue, Parameter};
pub use repository::ControlMode;
pub use server::Core;
/// Request and response types of [`Core::infer`] and [`Core::infer_stream`], re-exported for
/// embedding programs.
pub use server::{
    Allocator, InferRequest, InferResponse, InputData, InputTensor, ModelMetadata, OutputAllocator,
    OutputData, ResponseStream, StreamItem,
};
