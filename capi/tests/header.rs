//! The committed header `capi/include/ferrum.h` is the one `build.rs` generates.

#[test]
fn committed_header_matches_the_generated_one() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/ferrum.h"));
    let committed = include_str!("../include/ferrum.h");
    assert!(
        generated == committed,
        "capi/include/ferrum.h is stale: copy target/include/ferrum.h (written by the build) over it"
    );
}
