//! The config.pbtxt parser, the checks that follow it, and the JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(mut config) = ferrum_core::config::parse_text(text) else { return };
    let _ = ferrum_core::config::unimplemented_fields(&config);
    if ferrum_core::config::normalize(&mut config, "m").is_ok() {
        if let Ok(json) = ferrum_core::config::to_json(&config) {
            let back = ferrum_core::config::parse_json(&json.to_string());
            assert_eq!(back.ok(), Some(config), "a normalized config must survive its JSON form");
        }
    }
});
