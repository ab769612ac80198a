//! Rust types generated from grpc_service.proto (package `inference`): the gRPC service and
//! its messages. The ModelConfig messages it uses are [`ferrum_core::proto::inference`]'s.

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod inference {
    tonic::include_proto!("inference");
}
