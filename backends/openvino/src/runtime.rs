//! Finding and loading the OpenVINO shared libraries, and mapping OpenVINO's errors.

use std::path::{Path, PathBuf};

use ferrum_backend_api::BackendError;
use openvino::{Core, InferenceError};

/// The OpenVINO release `runtime.sh` installs and this backend is tested with.
pub const OPENVINO_VERSION: &str = "2026.4.1";

/// The library the backend opens; it pulls in `libopenvino.so` and, on demand, the plugins.
const C_LIBRARY: &str = "libopenvino_c.so";

/// Environment variable naming a folder that holds the OpenVINO libraries.
const DIR_ENV: &str = "FERRUM_OPENVINO_DIR";

/// A `--backend-config openvino,<key>=<value>` setting, if given.
pub fn cmdline<'a>(config: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    config.get("cmdline")?.get(key)?.as_str()
}

/// Where to look for the runtime, and what told us to look there.
fn candidate(config: &serde_json::Value) -> Option<(PathBuf, String)> {
    if let Some(dir) = cmdline(config, "runtime-directory").filter(|d| !d.is_empty()) {
        return Some((
            dir.into(),
            "--backend-config openvino,runtime-directory".to_string(),
        ));
    }
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return Some((dir.into(), DIR_ENV.to_string()));
    }
    config
        .get("backend_directory")
        .and_then(|d| d.as_str())
        .map(|dir| (dir.into(), "the backend's own folder".to_string()))
}

/// Finds the OpenVINO libraries and loads them; returns the folder they came from.
pub fn load(config: &serde_json::Value) -> Result<PathBuf, BackendError> {
    let Some((dir, source)) = candidate(config) else {
        return Err(not_installed(None));
    };
    let library = dir.join(C_LIBRARY);
    if !library.is_file() {
        return Err(not_installed(Some((&dir, &source))));
    }
    openvino_sys::library::load_from(&library).map_err(|e| {
        BackendError::unavailable(format!(
            "the OpenVINO runtime at {} (from {source}) does not load: {e}. {}",
            library.display(),
            install_hint()
        ))
    })?;
    Ok(dir)
}

fn install_hint() -> String {
    format!(
        "Run `make build` (or backends/openvino/runtime.sh <folder>), which fetches openvino \
         {OPENVINO_VERSION} from PyPI and lays its libraries beside the backend, or point \
         --backend-config openvino,runtime-directory=<folder> or {DIR_ENV} at a folder holding \
         {C_LIBRARY} and its companions"
    )
}

fn not_installed(looked: Option<(&Path, &str)>) -> BackendError {
    let place = match looked {
        Some((dir, source)) => format!("no {C_LIBRARY} in {} ({source})", dir.display()),
        None => "no folder to look in was given".to_string(),
    };
    BackendError::unavailable(format!(
        "the OpenVINO runtime is not installed: {place}. {}",
        install_hint()
    ))
}

/// A new OpenVINO `Core` (the libraries must be loaded).
pub fn new_core() -> Result<Core, BackendError> {
    Core::new().map_err(|e| {
        BackendError::unavailable(format!("cannot create an OpenVINO runtime core: {e}"))
    })
}

/// The loaded runtime's build number, e.g. `2026.4.1-...`.
pub fn version() -> String {
    openvino::version().build_number
}

/// Turns an OpenVINO error into a backend error, saying what was being done.
pub fn ov_error(what: impl std::fmt::Display) -> impl FnOnce(InferenceError) -> BackendError {
    move |e| BackendError::internal(format!("{what}: {}", describe(&e)))
}

/// OpenVINO's message for an error, or its kind when it gave none.
pub fn describe(e: &InferenceError) -> String {
    match &e.message {
        Some(message) if !message.trim().is_empty() => message.trim().to_string(),
        _ => e.kind.to_string(),
    }
}
