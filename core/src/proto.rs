//! Rust types generated from model_config.proto (package `inference`): Triton's ModelConfig
//! message and everything it holds. The server's gRPC code refers to these same types.

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod inference {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

/// The compiled descriptors of model_config.proto, which the config parser reads.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/model_config_descriptor.bin"));
