//! BYTES tensor decoding (4-byte little-endian length prefixes) and re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = ferrum_backend_api::bytes::decode(data) {
        assert_eq!(ferrum_backend_api::bytes::encode(&items), data, "decode then encode is the identity");
    }
});
