//! The HTTP infer body decoder (JSON, and JSON followed by binary tensor data).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the Inference-Header-Content-Length (0xffff: none).
    let (head, body) = data.split_at(data.len().min(2));
    let mut headers = http::HeaderMap::new();
    if head.len() == 2 {
        let len = u16::from_le_bytes([head[0], head[1]]);
        if len != u16::MAX {
            headers.insert("inference-header-content-length", http::HeaderValue::from(len));
        }
    }
    let shm = ferrum_core::shm::SharedMemory::default();
    let body = bytes::Bytes::copy_from_slice(body);
    if let Ok((request, _)) = ferrum::frontend::http::decode_request(&shm, "m".into(), None, &headers, body) {
        for input in &request.inputs {
            let _ = input.check_byte_size();
        }
    }
});
