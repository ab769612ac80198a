//! Compiles grpc_service.proto (no protoc needed) into the gRPC service and its messages.
//! The ModelConfig messages it imports from model_config.proto are ferrum-core's types
//! (`extern_path`), so each message has one Rust type.

/// Where ferrum-core keeps model_config.proto, which grpc_service.proto imports.
const CORE_PROTO_DIR: &str = "../core/proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = "proto/grpc_service.proto";
    println!("cargo:rerun-if-changed={service}");
    println!("cargo:rerun-if-changed={CORE_PROTO_DIR}/model_config.proto");
    let fds = protox::compile([service], ["proto", CORE_PROTO_DIR])?;
    let mut builder = tonic_prost_build::configure()
        .build_client(false)
        .generate_default_stubs(true)
        .bytes(".");
    // Every top-level message and enum of model_config.proto (nested ones follow their
    // parent). Their names are already CamelCase, as prost spells Rust types.
    for file in fds.file.iter().filter(|f| f.name() == "model_config.proto") {
        let names = file
            .message_type
            .iter()
            .map(|m| m.name())
            .chain(file.enum_type.iter().map(|e| e.name()));
        for name in names {
            builder = builder.extern_path(
                format!(".inference.{name}"),
                format!("::ferrum_core::proto::inference::{name}"),
            );
        }
    }
    builder.compile_fds(fds)?;
    Ok(())
}
