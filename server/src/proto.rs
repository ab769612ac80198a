//! Rust types generated from the protocol's .proto files (package `inference`).

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// The compiled descriptors of grpc_service.proto and model_config.proto.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
