//! Ferrum's inference core: the model repository, model configs, backend plugins, the
//! scheduler, statistics, metrics, traces and shared memory, behind one API ([`Core`]) that
//! network frontends (or an embedding program) call. Build one with [`CoreBuilder`].

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
pub use repository::ControlMode;
pub use server::Core;
