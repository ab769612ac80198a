//! Instance groups and the dynamic batcher through the real server, with the `testing`
//! backend reporting the batch size it saw (output `BATCH`).

#![allow(clippy::unwrap_used)] // test code: a failed step should fail the test

use std::path::Path;
use std::time::{Duration, Instant};

use ferrum_e2e::*;
use serde_json::{Value, json};

/// A testing-backend model: FP32 INPUT0 → OUTPUT0 (echo) and BATCH (batch size seen).
fn batch_config(max_batch: u32, instances: u32, extra: &str, params: &[(&str, &str)]) -> String {
    let params: String = params
        .iter()
        .map(|(k, v)| format!("parameters {{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}\n"))
        .collect();
    format!(
        r#"
backend: "testing"
max_batch_size: {max_batch}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "BATCH" data_type: TYPE_INT32 dims: [ 1 ] }}
]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
{extra}
{params}"#
    )
}

fn start(models: &[(&str, String)]) -> (Server, tempfile::TempDir, tempfile::TempDir) {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    install_backend(backends.path(), "testing", &built_library("testing"));
    for (name, config) in models {
        write_model(repo.path(), name, config);
    }
    let server = Server::start(repo.path(), backends.path(), &[]);
    (server, repo, backends)
}

/// One request of `rows` rows, each row `[value, value]`.
fn request(rows: usize, value: f32, parameters: Value) -> Value {
    let data: Vec<f32> = std::iter::repeat_n(value, rows * 2).collect();
    json!({
        "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [rows, 2], "data": data }],
        "parameters": parameters,
    })
}

/// Sends requests concurrently (one thread each); returns (status, body, finished at).
fn concurrently(server: &Server, model: &str, bodies: Vec<Value>) -> Vec<(u16, Value, Instant)> {
    let url = format!("{}/v2/models/{model}/infer", server.http);
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (status, value) = match ureq::post(&url)
                    .timeout(Duration::from_secs(60))
                    .send_json(body)
                {
                    Ok(r) => (r.status(), r.into_json().unwrap()),
                    Err(ureq::Error::Status(code, r)) => {
                        (code, r.into_json().unwrap_or(Value::Null))
                    }
                    Err(e) => panic!("{e}"),
                };
                (status, value, Instant::now())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn batch_seen(body: &Value) -> i64 {
    body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "BATCH")
        .unwrap()["data"][0]
        .as_i64()
        .unwrap()
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn batches_respect_max_batch_size_and_answer_every_request_with_its_own_rows() {
    let config = batch_config(
        8,
        1,
        "dynamic_batching { max_queue_delay_microseconds: 100000 }",
        &[("sleep_ms", "50")],
    );
    let (server, _r, _b) = start(&[("batched", config)]);
    let bodies: Vec<Value> = (0..64).map(|i| request(3, i as f32, json!({}))).collect();
    let results = concurrently(&server, "batched", bodies);
    let mut merged = false;
    for (i, (status, body, _)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        let seen = batch_seen(body);
        assert!(seen <= 8 && seen % 3 == 0, "batch of {seen} rows: {body}");
        merged |= seen > 3;
        let output = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "OUTPUT0")
            .unwrap();
        assert_eq!(output["shape"], json!([3, 2]));
        assert_eq!(
            output["data"],
            json!(vec![i as f32; 6]),
            "request {i} got someone else's rows"
        );
    }
    assert!(merged, "no two requests were ever merged");
}

#[test]
fn preferred_batch_size_is_cut_at_once_and_the_rest_waits_for_the_delay() {
    let extra =
        "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 300000 }";
    let config = batch_config(8, 1, extra, &[]);
    let (server, _r, _b) = start(&[("preferred", config)]);

    // A lone request waits for the queue delay before it runs alone.
    let started = Instant::now();
    let results = concurrently(&server, "preferred", vec![request(1, 1.0, json!({}))]);
    assert_eq!(batch_seen(&results[0].1), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "ran before max_queue_delay"
    );

    // Six at once: four (the preferred size) go together, the last two wait and go as two.
    let results = concurrently(
        &server,
        "preferred",
        (0..6).map(|i| request(1, i as f32, json!({}))).collect(),
    );
    let mut sizes: Vec<i64> = results.iter().map(|(_, b, _)| batch_seen(b)).collect();
    sizes.sort_unstable();
    assert_eq!(
        sizes,
        vec![2, 2, 4, 4, 4, 4],
        "batch sizes seen by the requests"
    );
}

#[test]
fn higher_priority_requests_run_first() {
    let repo_marker = tempfile::tempdir().unwrap();
    let marker = repo_marker.path().join("started");
    let marker_text = marker.to_string_lossy().to_string();
    let extra = "dynamic_batching { priority_levels: 2 default_priority_level: 2 }";
    let params = [
        ("sleep_from_input", "true"),
        ("marker_file", marker_text.as_str()),
    ];
    let (server, _r, _b) = start(&[("prio", batch_config(1, 1, extra, &params))]);

    let url = format!("{}/v2/models/prio/infer", server.http);
    let blocker = std::thread::spawn(move || {
        ureq::post(&url)
            .send_json(request(1, 800.0, json!({})))
            .unwrap()
            .status()
    });
    wait_for(&marker);
    let mut bodies: Vec<Value> = (0..3)
        .map(|_| request(1, 1.0, json!({ "priority": 2 })))
        .collect();
    bodies.extend((0..3).map(|_| request(1, 2.0, json!({ "priority": 1 }))));
    let results = concurrently(&server, "prio", bodies);
    assert_eq!(blocker.join().unwrap(), 200);
    let last_high = results[3..].iter().map(|r| r.2).max().unwrap();
    let first_low = results[..3].iter().map(|r| r.2).min().unwrap();
    assert!(
        last_high <= first_low,
        "a priority-2 request finished before all priority-1 ones"
    );
    let (status, body) = server.post(
        "/v2/models/prio/infer",
        &request(1, 1.0, json!({ "priority": 3 })),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn full_queues_reject_and_timeouts_reject_or_delay() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = |name: &str| marker_dir.path().join(name);
    let model = |extra: &str, name: &str| {
        let m = marker(name).to_string_lossy().to_string();
        batch_config(
            1,
            1,
            extra,
            &[("sleep_from_input", "true"), ("marker_file", m.as_str())],
        )
    };
    let (server, _r, _b) = start(&[
        (
            "small_queue",
            model(
                "dynamic_batching { default_queue_policy { max_queue_size: 2 } }",
                "a",
            ),
        ),
        (
            "reject",
            model(
                "dynamic_batching { default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 100000 } }",
                "b",
            ),
        ),
        (
            "delay",
            model(
                "dynamic_batching { default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 100000 } }",
                "c",
            ),
        ),
        (
            "override",
            model(
                "dynamic_batching { default_queue_policy { allow_timeout_override: true } }",
                "d",
            ),
        ),
    ]);
    let block = |model: &str, marker_name: &str| {
        let url = format!("{}/v2/models/{model}/infer", server.http);
        let t = std::thread::spawn(move || {
            ureq::post(&url)
                .send_json(request(1, 600.0, json!({})))
                .unwrap()
                .status()
        });
        wait_for(&marker(marker_name));
        std::fs::remove_file(marker(marker_name)).unwrap();
        t
    };

    let blocker = block("small_queue", "a");
    let queued = concurrently(&server, "small_queue", vec![request(1, 0.0, json!({})); 3]);
    let rejected: Vec<_> = queued.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(rejected.len(), 1, "{queued:?}");
    assert!(
        rejected[0].1["error"]
            .as_str()
            .unwrap()
            .contains("maximum queue size")
    );
    assert_eq!(queued.iter().filter(|r| r.0 == 200).count(), 2);
    assert_eq!(blocker.join().unwrap(), 200);

    let blocker = block("reject", "b");
    let (status, body) = server.post("/v2/models/reject/infer", &request(1, 0.0, json!({})));
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("timed out"),
        "{body}"
    );
    assert_eq!(blocker.join().unwrap(), 200);

    let blocker = block("delay", "c");
    let (status, body) = server.post("/v2/models/delay/infer", &request(1, 0.0, json!({})));
    assert_eq!(status, 200, "DELAY keeps the request: {body}");
    assert_eq!(blocker.join().unwrap(), 200);

    let blocker = block("override", "d");
    let results = concurrently(
        &server,
        "override",
        vec![
            request(1, 0.0, json!({ "timeout": 50000 })),
            request(1, 0.0, json!({})),
        ],
    );
    assert_eq!(results[0].0, 503, "{:?}", results[0].1);
    assert_eq!(results[1].0, 200, "{:?}", results[1].1);
    assert_eq!(blocker.join().unwrap(), 200);
}

#[test]
fn preserve_ordering_holds_back_responses_that_finish_early() {
    let markers = tempfile::tempdir().unwrap();
    let marker = |model: &str| markers.path().join(model);
    let config = |extra: &str, model: &str| {
        let m = marker(model).to_string_lossy().to_string();
        batch_config(
            1,
            2,
            extra,
            &[("sleep_from_input", "true"), ("marker_file", m.as_str())],
        )
    };
    let (server, _r, _b) = start(&[
        (
            "ordered",
            config("dynamic_batching { preserve_ordering: true }", "ordered"),
        ),
        ("unordered", config("dynamic_batching { }", "unordered")),
    ]);
    for (model, ordered) in [("ordered", true), ("unordered", false)] {
        // A slow request (600 ms) is executing on one instance when a fast one arrives and
        // runs on the other.
        let url = format!("{}/v2/models/{model}/infer", server.http);
        let slow = std::thread::spawn({
            let url = url.clone();
            move || {
                ureq::post(&url)
                    .send_json(request(1, 600.0, json!({})))
                    .unwrap()
                    .status()
            }
        });
        wait_for(&marker(model));
        let sent = Instant::now();
        ureq::post(&url)
            .send_json(request(1, 1.0, json!({})))
            .unwrap();
        let fast_latency = sent.elapsed();
        assert_eq!(slow.join().unwrap(), 200);
        if ordered {
            assert!(
                fast_latency >= Duration::from_millis(300),
                "the later request was answered after {fast_latency:?}, before the earlier one finished"
            );
        } else {
            assert!(
                fast_latency < Duration::from_millis(300),
                "without preserve_ordering the fast request waited {fast_latency:?}"
            );
        }
    }
}

#[test]
fn instances_run_concurrently() {
    let (server, _r, _b) = start(&[("four", batch_config(8, 4, "", &[("sleep_ms", "300")]))]);
    let started = Instant::now();
    let results = concurrently(
        &server,
        "four",
        (0..4).map(|i| request(1, i as f32, json!({}))).collect(),
    );
    assert!(results.iter().all(|r| r.0 == 200));
    // One instance would need 4 × 300 ms; four take about 300 ms.
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "requests ran one after another"
    );
}

#[test]
fn gpu_instances_fail_cleanly_without_a_gpu() {
    let config = batch_config(8, 1, "", &[]).replace("KIND_CPU", "KIND_GPU");
    let (server, _r, _b) = start(&[("gpu", config)]);
    let reason = server.index_row("gpu")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("KIND_GPU"), "{reason}");
}

#[test]
fn requests_with_different_shapes_are_not_merged() {
    let config = batch_config(
        8,
        1,
        "dynamic_batching { max_queue_delay_microseconds: 300000 }",
        &[],
    );
    let (server, _r, _b) = start(&[("shapes", config)]);
    let body = |width: usize, value: f32| json!({ "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [1, width], "data": vec![value; width] }] });
    let bodies: Vec<Value> = (0..6)
        .map(|i| {
            if i % 2 == 0 {
                body(2, i as f32)
            } else {
                body(3, i as f32)
            }
        })
        .collect();
    let results = concurrently(&server, "shapes", bodies);
    for (i, (status, response, _)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "{response}");
        let width = if i % 2 == 0 { 2 } else { 3 };
        let output = response["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "OUTPUT0")
            .unwrap();
        assert_eq!(output["data"], json!(vec![i as f32; width]));
        assert!(
            batch_seen(response) <= 3,
            "requests of different shapes were merged: {response}"
        );
    }
}
