//! Backend libraries built against other backend-api versions, through the real server:
//! one built against the frozen 1.0 copy (tests/compat/backend-api-1.0) loads and serves in
//! this newer server; one built against a newer minor version than the server's is refused,
//! naming both versions. scripts/build-compat-plugins.sh builds both (`make test-build` runs it).

#![allow(clippy::unwrap_used)] // test code: a failed step should fail the test

use std::path::PathBuf;

use ferrum_e2e::*;
use serde_json::json;

/// A build of the `compat` test backend: `1_0` or `future`.
fn compat_library(which: &str) -> PathBuf {
    let path = build_dir()
        .join("..")
        .join("compat")
        .join(format!("libferrum_compat_{which}.so"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-compat-plugins.sh (make test-build does)",
        path.display()
    );
    path
}

#[test]
fn libraries_from_older_minor_versions_load_and_newer_ones_are_refused() {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    install_backend(backends.path(), "compat_old", &compat_library("1_0"));
    install_backend(backends.path(), "compat_future", &compat_library("future"));
    write_model(
        repo.path(),
        "old",
        &identity_config("old", "compat_old", &[]),
    );
    write_model(
        repo.path(),
        "future",
        &identity_config("future", "compat_future", &[]),
    );
    let mut server = Server::start(repo.path(), backends.path(), &[]);

    // Built against 1.0: serves, through the handles and buffers of the newer server.
    assert_eq!(server.index_row("old")["state"], "READY");
    let (status, body) = server.post("/v2/models/old/infer", &identity_request(&[1.5, -2.0]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([1.5, -2.0]));
    assert_eq!(body["parameters"]["built_against"], "1.0.0", "{body}");

    // Built against a newer minor version: refused, with both versions named.
    let server_version = ferrum_backend_api::VERSION;
    let row = server.index_row("future");
    assert_eq!(row["state"], "UNAVAILABLE", "{row}");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("a newer minor version") && reason.contains(server_version),
        "{reason}"
    );
    let (status, body) = server.post("/v2/models/future/infer", &identity_request(&[1.0]));
    assert_eq!(status, 503, "{body}");

    // The older library still serves after the refusal.
    let (status, _) = server.post("/v2/models/old/infer", &identity_request(&[3.0]));
    assert_eq!(status, 200);
    assert!(server.is_running());
}
