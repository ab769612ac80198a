//! Compiles the protocol's .proto files (no protoc needed) into Rust types, the gRPC service,
//! and a descriptor set that the config parser reads model_config.proto from at run time.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/grpc_service.proto", "proto/model_config.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("inference_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(false)
        .generate_default_stubs(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
