//! Rust types and the gRPC client generated from grpc_service.proto (package `inference`).

/// The `inference` package: messages and `grpc_inference_service_client`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod inference {
    tonic::include_proto!("inference");
}
