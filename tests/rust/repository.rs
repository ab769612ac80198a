//! Model repository behaviour through the real server: reshape between the client's and the
//! backend's shapes, and models without a config.pbtxt.

#![allow(clippy::unwrap_used)] // test code: a failed step should fail the test

use ferrum_e2e::*;
use serde_json::json;

#[test]
fn reshape_changes_what_the_backend_sees() {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    install_backend(backends.path(), "identity", &built_library("identity"));
    // The client sends [B, 4]; the backend sees [B, 2, 2] and echoes it; OUTPUT0 is declared
    // [2, 2] without reshape, so the client gets [B, 2, 2] back.
    write_model(
        repo.path(),
        "reshaped",
        r#"
backend: "identity"
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 2, 2 ] } ]
"#,
    );
    // Both sides reshaped: [B, 6] in, [B, 2, 3] to the backend, [B, 6] out again.
    write_model(
        repo.path(),
        "round_trip",
        r#"
backend: "identity"
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] reshape: { shape: [ 2, -1 ] } } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] reshape: { shape: [ 2, -1 ] } } ]
"#,
    );
    let server = Server::start(repo.path(), backends.path(), &[]);

    let body = json!({ "inputs": [
        { "name": "INPUT0", "datatype": "INT32", "shape": [2, 4], "data": [1, 2, 3, 4, 5, 6, 7, 8] }
    ]});
    let (status, response) = server.post("/v2/models/reshaped/infer", &body);
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["outputs"][0]["shape"], json!([2, 2, 2]));
    assert_eq!(
        response["outputs"][0]["data"],
        json!([1, 2, 3, 4, 5, 6, 7, 8])
    );

    let body = json!({ "inputs": [
        { "name": "INPUT0", "datatype": "INT32", "shape": [1, 6], "data": [1, 2, 3, 4, 5, 6] }
    ]});
    let (status, response) = server.post("/v2/models/round_trip/infer", &body);
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["outputs"][0]["shape"], json!([1, 6]));

    let odd = json!({ "inputs": [
        { "name": "INPUT0", "datatype": "INT32", "shape": [1, 5], "data": [1, 2, 3, 4, 5] }
    ]});
    let (status, response) = server.post("/v2/models/round_trip/infer", &odd);
    assert_eq!(status, 400, "{response}");
    assert!(
        response["error"]
            .as_str()
            .unwrap()
            .contains("cannot be reshaped"),
        "{response}"
    );
    assert!(server.terminate().success());
}

#[test]
fn models_without_config() {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    install_backend(backends.path(), "identity", &built_library("identity"));
    std::fs::create_dir_all(repo.path().join("no_files/1")).unwrap();
    write_model(
        repo.path(),
        "good",
        &identity_config("good", "identity", &[]),
    );

    let server = Server::start(repo.path(), backends.path(), &[]);
    let reason = server.index_row("no_files")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("no model file in its version folders identifies one"),
        "{reason}"
    );
    assert_eq!(server.index_row("good")["state"], "READY");
    assert!(server.terminate().success());

    let strict = Server::start(
        repo.path(),
        backends.path(),
        &["--strict-model-config", "true"],
    );
    let reason = strict.index_row("no_files")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("auto-complete is off"), "{reason}");
    assert!(strict.terminate().success());
}

#[test]
fn version_folders_come_and_go_under_the_all_policy() {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    install_backend(backends.path(), "identity", &built_library("identity"));
    let config = format!(
        "{}version_policy: {{ all {{ }} }}\n",
        identity_config("multi", "identity", &[])
    );
    write_model(repo.path(), "multi", &config);
    let server = Server::start(
        repo.path(),
        backends.path(),
        &[
            "--model-control-mode",
            "poll",
            "--repository-poll-secs",
            "1",
        ],
    );
    let versions = |server: &Server| server.get("/v2/models/multi").1["versions"].clone();
    assert_eq!(versions(&server), json!(["1"]));

    std::fs::create_dir_all(repo.path().join("multi/2")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while versions(&server) != json!(["1", "2"]) {
        assert!(
            std::time::Instant::now() < deadline,
            "version 2 never loaded: {}",
            server.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, _) = server.post(
        "/v2/models/multi/versions/1/infer",
        &identity_request(&[1.0]),
    );
    assert_eq!(status, 200);

    std::fs::remove_dir_all(repo.path().join("multi/1")).unwrap();
    while versions(&server) != json!(["2"]) {
        assert!(
            std::time::Instant::now() < deadline,
            "version 1 never unloaded: {}",
            server.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, body) = server.post(
        "/v2/models/multi/versions/1/infer",
        &identity_request(&[1.0]),
    );
    assert_eq!(status, 404, "{body}");
    let (status, _) = server.post(
        "/v2/models/multi/versions/2/infer",
        &identity_request(&[1.0]),
    );
    assert_eq!(status, 200);
    assert!(server.terminate().success());
}
