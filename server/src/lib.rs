//! Ferrum: an inference server that speaks Triton's protocol and loads its backends as
//! plugins. This crate holds the network frontends (HTTP, gRPC, metrics), the command line
//! and the assembly; everything else is [`ferrum_core`].

pub mod cli;
pub mod connections;
pub mod frontend;
pub mod logging;
pub mod otlp;
pub mod proto;
pub mod restricted;
pub mod server;
pub mod tls;
