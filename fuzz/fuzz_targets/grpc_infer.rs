//! The gRPC ModelInferRequest → core request conversion, from raw protobuf bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ferrum::proto::inference::ModelInferRequest::decode(data) else { return };
    let shm = ferrum_core::shm::SharedMemory::default();
    if let Ok(request) = ferrum::frontend::grpc::decode_request(&shm, request) {
        for input in &request.inputs {
            let _ = input.check_byte_size();
        }
    }
});
