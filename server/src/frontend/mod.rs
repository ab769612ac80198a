//! The wire protocols: each frontend translates its wire format to the core's requests and
//! back, and holds no rules of its own.

mod generate;
pub mod grpc;
pub mod http;
mod tensor_json;
