//! Starts the real `ferrum` binary on free ports with a repository and backend directory made
//! for the test, and talks to it over HTTP.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The cargo output folder the tests were built into (`target/debug`).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable sits in target/<profile>/deps")
        .to_path_buf()
}

/// The ferrum binary under test: `FERRUM_BIN`, or the one cargo built beside the tests.
pub fn ferrum_bin() -> PathBuf {
    std::env::var_os("FERRUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| build_dir().join("ferrum"))
}

/// A library cargo built, by crate library name (`identity` → `libferrum_identity.so`).
pub fn built_library(name: &str) -> PathBuf {
    let path = build_dir().join(format!("libferrum_{name}.so"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Puts a library into `<dir>/<backend>/libferrum_<backend>.so`.
pub fn install_backend(dir: &Path, backend: &str, library: &Path) {
    let folder = dir.join(backend);
    std::fs::create_dir_all(&folder).expect("create backend folder");
    std::fs::copy(library, folder.join(format!("libferrum_{backend}.so")))
        .expect("copy backend library");
}

/// Writes a model folder with a config and an empty version 1.
pub fn write_model(repo: &Path, name: &str, config: &str) {
    let folder = repo.join(name);
    std::fs::create_dir_all(folder.join("1")).expect("create model folder");
    std::fs::write(folder.join("config.pbtxt"), config).expect("write config");
}

/// An identity-style model config over one FP32 input for backend `backend`.
pub fn identity_config(name: &str, backend: &str, parameters: &[(&str, &str)]) -> String {
    let params: String = parameters
        .iter()
        .map(|(k, v)| format!("parameters {{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}\n"))
        .collect();
    format!(
        "name: \"{name}\"\nbackend: \"{backend}\"\nmax_batch_size: 8\n\
         input [ {{ name: \"INPUT0\" data_type: TYPE_FP32 dims: [ -1 ] }} ]\n\
         output [ {{ name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ -1 ] }} ]\n{params}"
    )
}

/// A request body for an identity model over `values`.
pub fn identity_request(values: &[f32]) -> Value {
    serde_json::json!({
        "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [1, values.len()], "data": values }]
    })
}

/// Sends `body` to `model` from another thread; returns once the backend has started
/// executing it (the testing backend touches `marker`), with the handle to the response.
pub fn request_in_flight(
    server: &Server,
    model: &str,
    body: Value,
    marker: &Path,
) -> std::thread::JoinHandle<Value> {
    let url = format!("{}/v2/models/{model}/infer", server.http);
    let handle = std::thread::spawn(move || {
        let response = ureq::post(&url).send_json(body).expect("in-flight request");
        response.into_json::<Value>().expect("JSON response")
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the backend never started executing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    handle
}

/// Three distinct ports that were free a moment ago: all three listeners are held at once, so
/// the kernel cannot hand the same port out twice.
fn free_ports() -> (u16, u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("free port");
    let (a, b, c) = (bind(), bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("bound address").port();
    (port(&a), port(&b), port(&c))
}

/// How many times a start is retried when another process took one of its ports first.
const PORT_RETRIES: usize = 5;

/// A running server.
pub struct Server {
    /// The process.
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub http: String,
    /// Where the server's log goes.
    pub log: PathBuf,
    /// Keeps the log folder alive.
    _log_dir: tempfile::TempDir,
}

impl Server {
    /// Starts ferrum on free ports and waits until `/v2/health/ready` answers 200.
    pub fn start(repo: &Path, backend_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(repo, backend_dir, extra, &[])
    }

    /// Like [`Server::start`], with extra environment variables.
    pub fn start_with_env(
        repo: &Path,
        backend_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        for attempt in 1..=PORT_RETRIES {
            let mut server = Self::spawn(repo, backend_dir, extra, env);
            match server.wait_ready() {
                Ok(()) => return server,
                // A test running beside this one took a port between the check and the bind.
                Err(log) if attempt < PORT_RETRIES && log.contains("Address already in use") => {
                    continue;
                }
                Err(log) => panic!("{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(repo: &Path, backend_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let log_dir = tempfile::tempdir().expect("log folder");
        let log = log_dir.path().join("ferrum.log");
        let (http, grpc, metrics) = free_ports();
        let child = Command::new(ferrum_bin())
            .arg("--model-repository")
            .arg(repo)
            .arg("--backend-directory")
            .arg(backend_dir)
            .args([
                "--http-address",
                "127.0.0.1",
                "--grpc-address",
                "127.0.0.1",
                "--metrics-address",
                "127.0.0.1",
            ])
            .args([
                "--http-port",
                &http.to_string(),
                "--grpc-port",
                &grpc.to_string(),
            ])
            .args(["--metrics-port", &metrics.to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start ferrum");
        Server {
            child: Some(child),
            http: format!("http://127.0.0.1:{http}"),
            log,
            _log_dir: log_dir,
        }
    }

    /// Waits for readiness; on failure, the reason with the server's log.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/v2/health/ready", self.http);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "ferrum exited early with {status}:\n{}",
                    self.log_text()
                ));
            }
            if ureq::get(&url)
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "ferrum did not become ready in 60 s:\n{}",
            self.log_text()
        ))
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// GET a path; returns the status and the JSON body (Null when not JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        respond(ureq::get(&format!("{}{path}", self.http)).call())
    }

    /// POST JSON to a path; returns the status and the JSON body.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        respond(ureq::post(&format!("{}{path}", self.http)).send_json(body.clone()))
    }

    /// The repository index row of a model (its first row).
    pub fn index_row(&self, model: &str) -> Value {
        let (status, rows) = self.post("/v2/repository/index", &serde_json::json!({}));
        assert_eq!(status, 200);
        rows.as_array()
            .and_then(|r| r.iter().find(|row| row["name"] == model))
            .cloned()
            .unwrap_or_else(|| panic!("model {model} not in the index: {rows}"))
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        signal(&child, "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for ferrum") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "ferrum did not exit within 30 s of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
}

fn respond(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
