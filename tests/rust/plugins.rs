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

#[test]
fn backend_libraries_dropped_in_or_replaced_at_run_time() {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    let params = [("mode", "error_execute")];
    write_model(
        repo.path(),
        "late",
        &identity_config("late", "late", &params),
    );
    let server = Server::start(
        repo.path(),
        backends.path(),
        &["--model-control-mode", "explicit", "--load-model", "*"],
    );
    let reason = server.index_row("late")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("not found"), "{reason}");

    // Dropped in while running: found the next time a model names it.
    install_backend(backends.path(), "late", &built_library("identity"));
    let (status, body) = server.post("/v2/repository/models/late/load", &json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post("/v2/models/late/infer", &identity_request(&[7.0]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([7.0]));

    // Replaced while in use: the serving model keeps its code, a reload gets the new code
    // (the testing backend, which honours mode=error_execute).
    install_backend(backends.path(), "late", &built_library("testing"));
    let (status, _) = server.post("/v2/models/late/infer", &identity_request(&[7.0]));
    assert_eq!(
        status, 200,
        "the serving model must keep running its loaded code"
    );
    let (status, body) = server.post("/v2/repository/models/late/load", &json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post("/v2/models/late/infer", &identity_request(&[7.0]));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("testing backend refuses"),
        "{body}"
    );
    assert!(server.terminate().success());
}

#[test]
fn a_backend_can_run_inference_on_another_model_through_the_server() {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    install_backend(backends.path(), "identity", &built_library("identity"));
    install_backend(backends.path(), "testing", &built_library("testing"));
    write_model(
        repo.path(),
        "good",
        &identity_config("good", "identity", &[]),
    );
    let params = [("mode", "forward"), ("forward_to", "good")];
    write_model(
        repo.path(),
        "pipeline",
        &identity_config("pipeline", "testing", &params),
    );
    let params = [("mode", "forward"), ("forward_to", "nowhere")];
    write_model(
        repo.path(),
        "broken_pipeline",
        &identity_config("broken_pipeline", "testing", &params),
    );
    let server = Server::start(repo.path(), backends.path(), &[]);

    let (status, body) = server.post("/v2/models/pipeline/infer", &identity_request(&[2.5, -1.0]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([2.5, -1.0]));
    let (_, stats) = server.get("/v2/models/good/stats");
    assert_eq!(
        stats["model_stats"][0]["inference_stats"]["success"]["count"], 1,
        "{stats}"
    );

    let (status, body) = server.post(
        "/v2/models/broken_pipeline/infer",
        &identity_request(&[1.0]),
    );
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("nowhere"),
        "{body}"
    );
    assert!(server.terminate().success());
}
