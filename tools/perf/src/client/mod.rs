//! Protocol clients: HTTP/1.1 (hyper), gRPC (tonic) and the in-process core, plus
//! control-plane calls.

pub mod control;
pub mod grpc;
pub mod http;
pub mod inprocess;
