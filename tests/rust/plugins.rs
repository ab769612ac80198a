//! Backend libraries through the real server: panics stay inside the plugin boundary, and
//! libraries that are missing, not backends, or built against another ABI are refused clearly
//! while the other models keep serving.

#![allow(clippy::unwrap_used)] // test code: a failed step should fail the test

use ferrum_e2e::*;
use serde_json::json;

fn healthy_identity(server: &Server) {
    let (status, body) = server.post("/v2/models/good/infer", &identity_request(&[1.5, -2.0]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([1.5, -2.0]));
}

#[test]
fn a_panicking_backend_fails_the_request_not_the_server() {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    install_backend(backends.path(), "identity", &built_library("identity"));
    install_backend(backends.path(), "testing", &built_library("testing"));
    write_model(
        repo.path(),
        "good",
        &identity_config("good", "identity", &[]),
    );
    write_model(
        repo.path(),
        "boom",
        &identity_config("boom", "testing", &[("mode", "panic_execute")]),
    );
    write_model(
        repo.path(),
        "boom_load",
        &identity_config("boom_load", "testing", &[("mode", "panic_load")]),
    );
    let mut server = Server::start(repo.path(), backends.path(), &[]);

    for _ in 0..3 {
        let (status, body) = server.post("/v2/models/boom/infer", &identity_request(&[1.0]));
        assert_eq!(status, 500, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("panicked") && message.contains("asked to panic in execute"),
            "{message}"
        );
        healthy_identity(&server);
    }

    let row = server.index_row("boom_load");
    assert_eq!(row["state"], "UNAVAILABLE");
    assert!(
        row["reason"].as_str().unwrap().contains("panicked"),
        "{row}"
    );
    let (status, _) = server.post("/v2/models/boom_load/infer", &identity_request(&[1.0]));
    assert_eq!(status, 503);

    assert!(server.is_running());
    assert!(server.terminate().success());
}

#[test]
fn broken_libraries_are_refused_with_clear_errors() {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    install_backend(backends.path(), "identity", &built_library("identity"));
    install_backend(backends.path(), "mismatched", &built_library("bad_abi"));
    install_backend(backends.path(), "plain", &built_library("not_a_backend"));
    let garbage = backends.path().join("garbage_bytes.so");
    std::fs::write(&garbage, b"\x7fELF but not really a shared library").unwrap();
    install_backend(backends.path(), "garbage", &garbage);

    write_model(
        repo.path(),
        "good",
        &identity_config("good", "identity", &[]),
    );
    let cases = [
        ("uses_mismatched", "mismatched", "incompatible backend-api"),
        ("uses_plain", "plain", "is not a Ferrum backend"),
        (
            "uses_garbage",
            "garbage",
            "cannot be opened as a shared library",
        ),
        ("uses_missing", "missing", "not found: no library at"),
    ];
    for (model, backend, _) in cases {
        write_model(repo.path(), model, &identity_config(model, backend, &[]));
    }
    let mut server = Server::start(repo.path(), backends.path(), &[]);

    for (model, backend, expected) in cases {
        let row = server.index_row(model);
        assert_eq!(row["state"], "UNAVAILABLE", "{row}");
        let reason = row["reason"].as_str().unwrap();
        assert!(
            reason.contains(expected) && reason.contains(backend),
            "{model}: {reason}"
        );
        let (status, body) = server.post(
            &format!("/v2/models/{model}/infer"),
            &identity_request(&[1.0]),
        );
        assert_eq!(status, 503, "{body}");
        assert!(body["error"].as_str().unwrap().contains(expected), "{body}");
        assert!(
            server.log_text().contains(expected),
            "log lacks '{expected}'"
        );
    }
    healthy_identity(&server);
    assert_eq!(server.index_row("good")["state"], "READY");
    assert!(server.is_running());
    assert!(server.terminate().success());
}
