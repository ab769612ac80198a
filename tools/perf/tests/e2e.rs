//! End-to-end tests: the real ferrum server with the `simple` add_sub model, driven by
//! the ferrum-perf binary over each protocol and load mode.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tests share 2 cores: run one server at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Three distinct ports that were free a moment ago (all three held at once while picked).
fn free_ports() -> (u16, u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b, c) = (bind(), bind(), bind());
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    (port(&a), port(&b), port(&c))
}

/// A file cargo built for the workspace (`cargo build --workspace` or `make test-build`).
fn built(file: &str) -> PathBuf {
    let path = workspace().join("target/debug").join(file);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Backend libraries laid out as <dir>/<name>/libferrum_<name>.so.
fn backend_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("backends/add_sub");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        built("libferrum_add_sub.so"),
        dir.join("libferrum_add_sub.so"),
    )
    .unwrap();
    tmp.join("backends")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A running server, killed on drop.
struct Server {
    child: Child,
    http: u16,
    grpc: u16,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

fn start_server() -> Server {
    // Another test process may take a port between the check and the bind: the server then
    // exits at once, and a start on fresh ports follows.
    for _ in 0..5 {
        if let Some(server) = try_start_server() {
            return server;
        }
    }
    panic!("the server exited at start five times (ports taken?)");
}

fn try_start_server() -> Option<Server> {
    let binary = built("ferrum");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &workspace().join("model_repository/simple"),
        &dir.path().join("repo/simple"),
    );
    let backends = backend_dir(dir.path());
    let (http, grpc, metrics) = free_ports();
    let child = Command::new(binary)
        .arg("--model-repository")
        .arg(dir.path().join("repo"))
        .arg("--backend-directory")
        .arg(backends)
        .args([
            "--http-port",
            &http.to_string(),
            "--grpc-port",
            &grpc.to_string(),
        ])
        .args(["--metrics-port", &metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        http,
        grpc,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(http) {
        if server.child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(server)
}

fn perf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrum-perf"))
        .args(args)
        .output()
        .unwrap()
}

/// Checks a point's client breakdown: present, non-negative, and send/recv + response wait
/// no more than the mean latency (they split it, so they add up to it).
fn check_breakdown(r: &Value) {
    let f = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing or not a number: {r}"))
    };
    let (send_recv, wait, avg) = (f("client_send_recv_us"), f("client_wait_us"), f("avg_us"));
    assert!(send_recv >= 0.0 && wait >= 0.0, "{r}");
    assert!(send_recv + wait <= avg * 1.01 + 1.0, "{r}");
}

/// Checks the breakdown columns of a CSV report: one per row, numbers that add up to no
/// more than the Avg latency column (all rounded to whole µs).
fn check_csv_breakdown(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = rows[0].split(',').collect();
    assert_eq!(
        header[header.len() - 2..],
        ["Client Send/Recv", "Client Response Wait"],
        "{text}"
    );
    for row in &rows[1..] {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), header.len(), "{text}");
        let col = |name: &str| {
            cells[header.iter().position(|h| *h == name).unwrap()]
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("{name} is not a number: {text}"))
        };
        let (send_recv, wait) = (col("Client Send/Recv"), col("Client Response Wait"));
        assert!(send_recv >= 0.0 && wait >= 0.0, "{text}");
        assert!(
            send_recv + wait <= col("Avg latency") * 1.01 + 2.0,
            "{text}"
        );
    }
}

/// Runs a sweep with short windows and returns the JSON results (checked for sanity).
fn sweep(server: &Server, grpc: bool, extra: &[&str], points: usize) -> Vec<Value> {
    sweep_windows(server, grpc, &["-p", "200", "-r", "3"], extra, points)
}

/// Runs a sweep with the given window flags and returns the JSON results (checked for
/// sanity).
fn sweep_windows(
    server: &Server,
    grpc: bool,
    windows: &[&str],
    extra: &[&str],
    points: usize,
) -> Vec<Value> {
    let json = server.dir.path().join("out.json");
    let url = format!("127.0.0.1:{}", if grpc { server.grpc } else { server.http });
    let mut args = vec!["-m", "simple", "-u", &url, "--json", json.to_str().unwrap()];
    args.extend(windows);
    if grpc {
        args.extend(["-i", "grpc"]);
    }
    args.extend(extra);
    let out = perf(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferrum-perf failed: {stderr}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), points, "{doc}");
    for r in &results {
        let f = |k: &str| r[k].as_f64().unwrap();
        assert!(f("throughput") > 0.0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(f("p50_us") > 0.0);
        assert!(
            f("p50_us") <= f("p90_us") && f("p90_us") <= f("p95_us") && f("p95_us") <= f("p99_us"),
            "{r}"
        );
        assert!(r["server"]["requests"].as_u64().unwrap() > 0, "{r}");
        assert!(
            r["server"]["compute_infer_us"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        check_breakdown(r);
        assert_eq!(
            r["window_details"].as_array().unwrap().len() as u64,
            r["windows"].as_u64().unwrap(),
            "{r}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("infer/s"), "{stdout}");
    assert!(stdout.contains("avg client time:"), "{stdout}");
    results
}

#[test]
fn http_json_concurrency_sweep_with_reports() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_server();
    let csv = server.dir.path().join("out.csv");
    let svg = server.dir.path().join("out.svg");
    let args = [
        "--concurrency-range",
        "1:2",
        "--input-tensor-format",
        "json",
        "--output-tensor-format",
        "json",
        "-f",
        csv.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ];
    let results = sweep(&server, false, &args, 2);
    assert_eq!(results[0]["value"], 1.0);
    assert_eq!(results[1]["value"], 2.0);
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows[0].starts_with("Concurrency,Inferences/Second,"));
    let header: Vec<&str> = rows[0].split(',').collect();
    for row in &rows[1..] {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), header.len());
        let col = |name: &str| {
            cells[header.iter().position(|h| *h == name).unwrap()]
                .parse::<f64>()
                .unwrap()
        };
        assert!(col("Inferences/Second") > 0.0);
        assert!(col("p50 latency") <= col("p99 latency"));
        col("Server Queue");
        col("Server Compute Infer");
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
    assert_eq!(plot.matches(r#"<circle class="p50""#).count(), 2);
    assert_eq!(plot.matches(r#"<circle class="p99""#).count(), 2);
}

#[test]
fn count_windows_hold_the_request_count() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_server();
    // A 10-minute interval: were the windows timed, the run would not end in the test's time.
    let windows = [
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        "40",
        "-p",
        "600000",
        "-r",
        "4",
    ];
    for grpc in [false, true] {
        let started = Instant::now();
        let results = sweep_windows(&server, grpc, &windows, &["--concurrency-range", "1:2"], 2);
        assert!(started.elapsed() < Duration::from_secs(120));
        for r in &results {
            let details = r["window_details"].as_array().unwrap();
            assert!(!details.is_empty() && details.len() <= 4, "{r}");
            for w in details {
                let done = w["requests"].as_u64().unwrap() + w["errors"].as_u64().unwrap();
                assert!(done >= 40, "a window ended before 40 requests: {r}");
                assert!(w["duration_ms"].as_f64().unwrap() > 0.0, "{r}");
                assert!(w["throughput"].as_f64().unwrap() > 0.0, "{r}");
            }
            // The point reports the last (up to three) windows, 40 requests or more each.
            let reported = details.len().min(3) as u64;
            assert!(r["requests"].as_u64().unwrap() >= 40 * reported, "{r}");
        }
    }
}

#[test]
fn client_breakdown_http_and_grpc() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_server();
    let csv = server.dir.path().join("breakdown.csv");
    let report = ["-f", csv.to_str().unwrap(), "--concurrency-range", "1:2"];
    for (grpc, extra) in [
        (false, &[][..]),
        (true, &[][..]),
        (true, &["--streaming"][..]),
    ] {
        let mut args = report.to_vec();
        args.extend(extra);
        let results = sweep(&server, grpc, &args, 2);
        for r in &results {
            check_breakdown(r);
            // The server's work lies inside the response wait.
            assert!(r["client_wait_us"].as_f64().unwrap() > 0.0, "{r}");
        }
        check_csv_breakdown(&csv);
    }
}

#[test]
fn http_binary_batched() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_server();
    let results = sweep(&server, false, &["--concurrency-range", "2", "-b", "4"], 1);
    assert_eq!(results[0]["batch_size"], 4);
}

#[test]
fn http_input_data_file() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_server();
    let data = server.dir.path().join("data.json");
    let row: Vec<i32> = (0..16).collect();
    let doc = serde_json::json!({"data": [{"INPUT0": row, "INPUT1": row}, {"INPUT0": row, "INPUT1": {"content": row, "shape": [16]}}]});
    std::fs::write(&data, doc.to_string()).unwrap();
    sweep(&server, false, &["--input-data", data.to_str().unwrap()], 1);
}

#[test]
fn grpc_unary_and_streaming() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_server();
    sweep(&server, true, &["--concurrency-range", "1:2"], 2);
    sweep(
        &server,
        true,
        &["--streaming", "--concurrency-range", "1:2"],
        2,
    );
}

#[test]
fn request_rate_constant_and_poisson() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_server();
    let results = sweep(&server, false, &["--request-rate-range", "50:100:50"], 2);
    assert_eq!(results[0]["mode"], "request_rate");
    let rate = results[1]["throughput"].as_f64().unwrap();
    assert!(rate > 50.0 && rate < 150.0, "asked 100/s, got {rate}");
    sweep(
        &server,
        true,
        &[
            "--request-rate-range",
            "80",
            "--request-distribution",
            "poisson",
        ],
        1,
    );
}

fn shm_leftovers() -> usize {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("ferrum_perf_")
        })
        .count()
}

#[test]
fn system_shared_memory_http_and_grpc() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_server();
    let before = shm_leftovers();
    sweep(&server, false, &["--shared-memory", "system", "-b", "2"], 1);
    sweep(&server, true, &["--shared-memory", "system"], 1);
    assert_eq!(shm_leftovers(), before, "shm objects left behind");
}

#[test]
fn health_floor_and_bad_model() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_server();
    for (port, proto) in [(server.http, "http"), (server.grpc, "grpc")] {
        let out = perf(&[
            "-u",
            &format!("127.0.0.1:{port}"),
            "-i",
            proto,
            "--health",
            "--concurrency-range",
            "2",
            "-p",
            "200",
            "-r",
            "3",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = perf(&[
        "-m",
        "nosuch",
        "-u",
        &format!("127.0.0.1:{}", server.http),
        "-p",
        "100",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("nosuch"),
        "{stderr}"
    );
    let out = perf(&[
        "-m",
        "nosuch",
        "-u",
        &format!("127.0.0.1:{}", server.grpc),
        "-i",
        "grpc",
        "-p",
        "100",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
}

/// A temp copy of the `simple` repository and the add_sub backend, for in-process runs.
fn in_process_dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &workspace().join("model_repository/simple"),
        &dir.path().join("repo/simple"),
    );
    let backends = backend_dir(dir.path());
    let repo = dir.path().join("repo");
    (dir, repo, backends)
}

#[test]
fn in_process_concurrency_sweep() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, repo, backends) = in_process_dirs();
    let json = dir.path().join("out.json");
    let csv = dir.path().join("out.csv");
    let out = perf(&[
        "-m",
        "simple",
        "-i",
        "in-process",
        "--model-repository",
        repo.to_str().unwrap(),
        "--backend-directory",
        backends.to_str().unwrap(),
        "--concurrency-range",
        "1:2",
        "-p",
        "200",
        "-r",
        "3",
        "--json",
        json.to_str().unwrap(),
        "-f",
        csv.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferrum-perf failed: {stderr}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{doc}");
    assert_eq!(results[0]["value"], 1.0);
    assert_eq!(results[1]["value"], 2.0);
    for r in results {
        let f = |k: &str| r[k].as_f64().unwrap();
        assert!(f("throughput") > 0.0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(f("p50_us") > 0.0);
        assert!(
            f("p50_us") <= f("p90_us") && f("p90_us") <= f("p95_us") && f("p95_us") <= f("p99_us"),
            "{r}"
        );
        assert!(r["server"]["requests"].as_u64().unwrap() > 0, "{r}");
        assert!(
            r["server"]["compute_infer_us"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("infer/s"), "{stdout}");
    assert!(stdout.contains("avg client time:"), "{stdout}");
    for r in results {
        check_breakdown(r);
        assert!(r["client_wait_us"].as_f64().unwrap() > 0.0, "{r}");
    }
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    check_csv_breakdown(&csv);
}

#[test]
fn in_process_health_and_refusals() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, repo, backends) = in_process_dirs();
    let base = [
        "-i",
        "in-process",
        "--model-repository",
        repo.to_str().unwrap(),
        "--backend-directory",
        backends.to_str().unwrap(),
        "-p",
        "200",
        "-r",
        "3",
    ];
    let mut args = base.to_vec();
    args.extend(["--health", "--concurrency-range", "2"]);
    let out = perf(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("infer/s"));
    let mut args = base.to_vec();
    args.extend(["-m", "simple", "--shared-memory", "system"]);
    let out = perf(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shared-memory"));
    let mut args = base.to_vec();
    args.extend(["-m", "nosuch"]);
    let out = perf(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
}
