//! Compiles a gRPC *client* for grpc_service.proto (and the model_config.proto it imports)
//! with protox, so no protoc is needed. The .proto files stay where the server keeps them.

/// Where the server keeps grpc_service.proto.
const SERVER_PROTO_DIR: &str = "../../server/proto";
/// Where ferrum-core keeps model_config.proto, which grpc_service.proto imports.
const CORE_PROTO_DIR: &str = "../../core/proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = format!("{SERVER_PROTO_DIR}/grpc_service.proto");
    println!("cargo:rerun-if-changed={service}");
    println!("cargo:rerun-if-changed={CORE_PROTO_DIR}/model_config.proto");
    let fds = protox::compile(["grpc_service.proto"], [SERVER_PROTO_DIR, CORE_PROTO_DIR])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
