//! Reload under load: eight clients infer without pause while the model's version folder is
//! replaced, a new version is added, and its config is changed, ten times in a row, in watch
//! mode and in poll mode. No request may fail, every answer must come from a complete version
//! folder with a config that was beside it, and the new version must answer soon after each
//! change (printed).

#![allow(clippy::unwrap_used)] // test code: a failed step should fail the test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrum_e2e::*;
use serde_json::json;

const CLIENTS: usize = 8;
const CHANGES: usize = 10;

fn tag_config(suffix: &str) -> String {
    format!(
        r#"
backend: "testing"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "TAG" data_type: TYPE_STRING dims: [ 1 ] }}
]
parameters {{ key: "mode" value: {{ string_value: "tag" }} }}
parameters {{ key: "tag_suffix" value: {{ string_value: "{suffix}" }} }}
"#
    )
}

/// Writes a version folder's two tag files with a pause between them, as a slow copy would:
/// the server sees the half-written folder first and must not serve it.
fn write_version(model: &Path, version: u32, tag: &str) {
    let dir = model.join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tag.txt"), tag).unwrap();
    std::thread::sleep(Duration::from_millis(350));
    std::fs::write(dir.join("tag_check.txt"), tag).unwrap();
}

/// Writes the config the way editors save: a temporary file renamed over the old one.
fn write_config(model: &Path, suffix: &str) {
    let tmp = model.join(".config.pbtxt.swp");
    std::fs::write(&tmp, tag_config(suffix)).unwrap();
    std::fs::rename(tmp, model.join("config.pbtxt")).unwrap();
}

#[derive(Default)]
struct Observed {
    /// Requests answered, per tag.
    per_tag: BTreeMap<String, usize>,
    /// When each tag was first seen.
    first_seen: BTreeMap<String, Instant>,
    /// Every failure, described.
    failures: Vec<String>,
}

fn client(url: String, id: usize, stop: Arc<AtomicBool>, observed: Arc<Mutex<Observed>>) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        n += 1;
        let values = [id as f32, n as f32, -(n as f32)];
        let body = json!({ "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": values }] });
        let outcome = agent.post(&url).send_json(body);
        let mut seen = observed.lock().unwrap();
        match outcome {
            Ok(response) => {
                let value: serde_json::Value = response.into_json().unwrap();
                let output = value["outputs"]
                    .as_array()
                    .and_then(|o| o.iter().find(|t| t["name"] == "OUTPUT0"));
                let tag = value["outputs"]
                    .as_array()
                    .and_then(|o| o.iter().find(|t| t["name"] == "TAG"))
                    .and_then(|t| t["data"][0].as_str())
                    .map(str::to_string);
                match (output.map(|o| o["data"].clone()), tag) {
                    (Some(data), Some(tag)) if data == json!(values) => {
                        *seen.per_tag.entry(tag.clone()).or_default() += 1;
                        seen.first_seen.entry(tag).or_insert_with(Instant::now);
                    }
                    _ => seen.failures.push(format!("wrong answer: {value}")),
                }
            }
            Err(e) => seen.failures.push(format!("request failed: {e}")),
        }
    }
}

/// A repository with the `tagged` model at version 1 tagged `tag`, and a backend directory
/// with the testing backend; returns the model's folder too.
fn tagged_repository(tag: &str) -> (tempfile::TempDir, tempfile::TempDir, std::path::PathBuf) {
    let repo = tempfile::tempdir().unwrap();
    let backends = tempfile::tempdir().unwrap();
    install_backend(backends.path(), "testing", &built_library("testing"));
    let model = repo.path().join("tagged");
    std::fs::create_dir_all(&model).unwrap();
    write_config(&model, "");
    write_version(&model, 1, tag);
    (repo, backends, model)
}

fn reload_under_load(mode_args: &[&str], label: &str) {
    let (repo, backends, model) = tagged_repository("v1-a");
    let server = Server::start(repo.path(), backends.path(), mode_args);

    let stop = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let url = format!("{}/v2/models/tagged/infer", server.http);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (url, stop, observed) = (url.clone(), Arc::clone(&stop), Arc::clone(&observed));
            std::thread::spawn(move || client(url, id, stop, observed))
        })
        .collect();

    // Every pairing of a complete version folder with the config it sat beside is a valid
    // answer: while the latest folder is being replaced, the one below it is briefly the
    // latest, and serving it with the current config is right.
    let mut valid: BTreeSet<String> = ["v1-a".to_string()].into();
    let mut folders: BTreeMap<u32, String> = [(1, "v1-a".to_string())].into();
    let (mut version, mut file_tag, mut suffix) = (1u32, "v1-a".to_string(), String::new());
    let mut latencies = Vec::new();
    for change in 0..CHANGES {
        let what = match change % 3 {
            0 => {
                file_tag = format!("v{version}-r{change}");
                let dir = model.join(version.to_string());
                std::fs::remove_dir_all(&dir).unwrap();
                write_version(&model, version, &file_tag);
                "version folder replaced"
            }
            1 => {
                version += 1;
                file_tag = format!("v{version}-n{change}");
                write_version(&model, version, &file_tag);
                "new version added"
            }
            _ => {
                suffix = format!("+c{change}");
                write_config(&model, &suffix);
                "config changed"
            }
        };
        let changed_at = Instant::now();
        let expected = format!("{file_tag}{suffix}");
        folders.insert(version, file_tag.clone());
        valid.extend(folders.values().map(|tag| format!("{tag}{suffix}")));
        let deadline = changed_at + Duration::from_secs(20);
        let seen_at = loop {
            if let Some(at) = observed.lock().unwrap().first_seen.get(&expected) {
                break *at;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: '{expected}' never answered after: {what}\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let latency = seen_at.saturating_duration_since(changed_at);
        println!(
            "{label}: change {change} ({what}): new version answered after {} ms",
            latency.as_millis()
        );
        latencies.push(latency);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let observed = observed.lock().unwrap();
    let total: usize = observed.per_tag.values().sum();
    let max = latencies.iter().max().copied().unwrap_or_default();
    println!(
        "{label}: {total} requests, 0 allowed failures, max change-to-answer {} ms",
        max.as_millis()
    );
    assert!(
        observed.failures.is_empty(),
        "{label}: {} failures, first: {}",
        observed.failures.len(),
        observed.failures[0]
    );
    for tag in observed.per_tag.keys() {
        assert!(
            valid.contains(tag),
            "{label}: answer from an incomplete or unknown version '{tag}'"
        );
    }
    assert!(
        total > CHANGES * CLIENTS,
        "{label}: too little traffic to mean anything ({total})"
    );
    assert!(server.terminate().success());
}

#[test]
fn reload_under_load_in_watch_mode() {
    reload_under_load(&["--model-control-mode", "watch"], "watch");
}

#[test]
fn reload_under_load_in_poll_mode() {
    reload_under_load(
        &[
            "--model-control-mode",
            "poll",
            "--repository-poll-secs",
            "1",
        ],
        "poll",
    );
}

#[test]
fn watch_mode_falls_back_to_polling_when_file_events_are_unavailable() {
    let (repo, backends, model) = tagged_repository("first");
    let server = Server::start_with_env(
        repo.path(),
        backends.path(),
        &["--model-control-mode", "watch"],
        &[("FERRUM_WATCH_POLL", "1")],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_text().contains("falling back to polling") {
        assert!(
            Instant::now() < deadline,
            "no fallback logged:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    write_version(&model, 2, "second");
    loop {
        let (status, body) = server.post(
            "/v2/models/tagged/infer",
            &json!({ "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1.0] }] }),
        );
        assert_eq!(status, 200, "{body}");
        let tag = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "TAG")
            .unwrap()["data"][0]
            .clone();
        if tag == "second" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "polling never picked up version 2"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.terminate().success());
}
