//! Protocol clients: HTTP/1.1 (hyper) and gRPC (tonic), plus control-plane calls.

pub mod control;
pub mod grpc;
pub mod http;
