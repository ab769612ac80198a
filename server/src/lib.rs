//! Ferrum: an inference server that speaks Triton's protocol and loads its backends as plugins.

pub mod cli;
pub mod config;
pub mod core;
pub mod error;
pub mod frontend;
pub mod logging;
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
