//! The process as an operator sees it: a relocatable install tree, and a clean shutdown on
//! SIGTERM that lets in-flight requests finish.

#![allow(clippy::unwrap_used)] // test code: a failed step should fail the test

use std::path::Path;
use std::time::{Duration, Instant};

use ferrum_e2e::*;
use serde_json::json;

/// A server with one model, `slow`, that sleeps `sleep_ms` per request and touches the
/// returned marker file when it starts executing one.
fn slow_model_server(
    sleep_ms: &str,
    args: &[&str],
) -> (Server, std::path::PathBuf, [tempfile::TempDir; 2]) {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    let marker = repo.path().join("started");
    install_backend(backends.path(), "testing", &built_library("testing"));
    let marker_text = marker.to_string_lossy().to_string();
    let config = identity_config(
        "slow",
        "testing",
        &[("sleep_ms", sleep_ms), ("marker_file", &marker_text)],
    );
    write_model(repo.path(), "slow", &config);
    let server = Server::start(repo.path(), backends.path(), args);
    (server, marker, [repo, backends])
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let (server, marker, _dirs) = slow_model_server("1500", &[]);

    let in_flight = request_in_flight(&server, "slow", identity_request(&[4.0, 2.0]), &marker);
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    let body = in_flight.join().expect("request thread");
    assert_eq!(body["outputs"][0]["data"], json!([4.0, 2.0]));
}

#[test]
fn unloading_lets_in_flight_requests_finish() {
    let (server, marker, _dirs) = slow_model_server(
        "1000",
        &["--model-control-mode", "explicit", "--load-model", "slow"],
    );
    let in_flight = request_in_flight(&server, "slow", identity_request(&[3.0]), &marker);
    let (status, body) = server.post("/v2/repository/models/slow/unload", &json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post("/v2/models/slow/infer", &identity_request(&[3.0]));
    assert_eq!(status, 503, "new requests after unload: {body}");
    assert_eq!(
        in_flight.join().unwrap()["outputs"][0]["data"],
        json!([3.0])
    );
    assert!(server.terminate().success());
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn install_tree_is_relocatable() {
    // <prefix>/bin/ferrum finds <prefix>/backends without --backend-directory.
    let prefix = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(prefix.path().join("bin")).unwrap();
    std::fs::copy(ferrum_bin(), prefix.path().join("bin/ferrum")).unwrap();
    install_backend(
        &prefix.path().join("backends"),
        "add_sub",
        &built_library("add_sub"),
    );
    let repo = prefix.path().join("models");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../model_repository/simple"),
        &repo.join("simple"),
    );

    let log = prefix.path().join("log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(prefix.path().join("bin/ferrum"))
        .arg("--model-repository")
        .arg(&repo)
        .args([
            "--http-address",
            "127.0.0.1",
            "--http-port",
            &port.to_string(),
        ])
        .args(["--allow-grpc", "false", "--allow-metrics", "false"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{url}/v2/health/ready")).call().is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(Instant::now() < deadline, "not ready in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    let a: Vec<i32> = (0..16).collect();
    let body = json!({ "inputs": [
        { "name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a },
        { "name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": vec![1; 16] },
    ]});
    let response: serde_json::Value = ureq::post(&format!("{url}/v2/models/simple/infer"))
        .send_json(body)
        .map(|r| r.into_json().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&log).unwrap()));
    let expected: Vec<i32> = (1..17).collect();
    assert_eq!(response["outputs"][0]["data"], json!(expected));
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    assert!(child.wait().unwrap().success());
}
