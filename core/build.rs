//! Compiles model_config.proto (no protoc needed) into Rust types, and writes the descriptor
//! set that the config parser reads the ModelConfig message from at run time.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/model_config.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("model_config_descriptor.bin"), fds.encode_to_vec())?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
