//! Finding and opening the ONNX Runtime shared library, once per process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferrum_backend_api::{BackendError, LogLevel, log};
use ort::environment::Environment;

/// The ONNX Runtime version the build fetches and `ort` is written against.
pub const ORT_VERSION: &str = "1.31.1";

/// Environment variable naming the library (or a folder holding it).
pub const LIBRARY_ENV: &str = "FERRUM_ONNXRUNTIME_LIBRARY";

/// Backend-config key naming the library (or a folder holding it).
pub const LIBRARY_KEY: &str = "runtime-library";

/// The unversioned file name of the library.
const LIBRARY_NAME: &str = "libonnxruntime.so";

/// Where the library came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--backend-config onnxruntime,runtime-library=...`.
    Cmdline,
    /// The environment variable.
    Env,
    /// The plugin's own folder.
    BackendDirectory,
}

/// Picks the library: the backend config's `runtime-library`, else the environment variable,
/// else `libonnxruntime.so*` in the plugin's folder. A path that is named but holds no library is
/// an error rather than a silent fall-through to the next place.
pub fn locate(
    cmdline: Option<&str>,
    env: Option<OsString>,
    backend_directory: Option<&Path>,
) -> Result<(PathBuf, Source), BackendError> {
    if let Some(named) = cmdline.filter(|s| !s.is_empty()) {
        let found = resolve(Path::new(named)).ok_or_else(|| {
            BackendError::unavailable(format!(
                "ONNX Runtime library not found: --backend-config onnxruntime,{LIBRARY_KEY}={named} \
                 names no {LIBRARY_NAME}* file (nor a folder holding one)"
            ))
        })?;
        return Ok((found, Source::Cmdline));
    }
    if let Some(named) = env.filter(|s| !s.is_empty()) {
        let found = resolve(Path::new(&named)).ok_or_else(|| {
            BackendError::unavailable(format!(
                "ONNX Runtime library not found: {LIBRARY_ENV}={} names no {LIBRARY_NAME}* file \
                 (nor a folder holding one)",
                Path::new(&named).display()
            ))
        })?;
        return Ok((found, Source::Env));
    }
    if let Some(found) = backend_directory.and_then(search_folder) {
        return Ok((found, Source::BackendDirectory));
    }
    let looked = match backend_directory {
        Some(dir) => format!("looked for {LIBRARY_NAME}* in {}", dir.display()),
        None => "the server did not say where the backend lives".to_string(),
    };
    Err(BackendError::unavailable(format!(
        "ONNX Runtime library not found: {looked}, and neither {LIBRARY_ENV} nor \
         --backend-config onnxruntime,{LIBRARY_KEY}=<path> is set. Run `make build` (which fetches \
         onnxruntime {ORT_VERSION} from PyPI and puts {LIBRARY_NAME} beside the plugin; \
         backends/onnxruntime/runtime.sh <backend folder> does just that step), or set \
         {LIBRARY_ENV} to a {LIBRARY_NAME} of ONNX Runtime {ORT_VERSION}"
    )))
}

/// A file is taken as it is; a folder is searched.
fn resolve(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        Some(path.to_path_buf())
    } else if path.is_dir() {
        search_folder(path)
    } else {
        None
    }
}

/// `libonnxruntime.so` in a folder, else its highest-versioned `libonnxruntime.so.X.Y.Z`.
fn search_folder(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join(LIBRARY_NAME);
    if plain.is_file() {
        return Some(plain);
    }
    let prefix = format!("{LIBRARY_NAME}.");
    let mut versioned: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let version = name.strip_prefix(&prefix)?;
            let key = version
                .split('.')
                .map(|part| part.parse::<u64>().ok())
                .collect::<Option<Vec<u64>>>()?;
            path.is_file().then_some((key, path))
        })
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, path)| path)
}

/// The process's ONNX Runtime environment: ONNX Runtime allows one, and `ort` loads one library.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// Opens the library and creates the environment, or returns the one made earlier.
pub fn environment(library: &Path) -> Result<Environment, BackendError> {
    let mut slot = ENVIRONMENT
        .lock()
        .map_err(|_| BackendError::internal("ONNX Runtime environment lock is poisoned"))?;
    if let Some((path, env)) = slot.as_ref() {
        if path != library {
            log(
                LogLevel::WARN,
                &format!(
                    "ONNX Runtime is already loaded from {}; ignoring {}",
                    path.display(),
                    library.display()
                ),
            );
        }
        return Ok(env.clone());
    }
    let builder = ort::init_from(library).map_err(|e| {
        BackendError::unavailable(format!(
            "ONNX Runtime library {} could not be loaded: {e}. This backend needs ONNX Runtime \
             {ORT_VERSION} (run `make build`, or point {LIBRARY_ENV} at its {LIBRARY_NAME})",
            library.display()
        ))
    })?;
    let env = builder
        .with_name("ferrum")
        .with_telemetry(false)
        .with_logger(Arc::new(forward_log))
        .build()
        .map_err(|e| {
            BackendError::unavailable(format!(
                "ONNX Runtime ({}) could not create its environment: {e}",
                library.display()
            ))
        })?;
    // The logger is registered at the most verbose level; only warnings and worse are wanted.
    env.set_log_level(ort::logging::LogLevel::Warning);
    *slot = Some((library.to_path_buf(), env.clone()));
    Ok(env)
}

/// Sends ONNX Runtime's log lines to the server's log.
fn forward_log(
    level: ort::logging::LogLevel,
    category: &str,
    _id: &str,
    location: &str,
    message: &str,
) {
    use ort::logging::LogLevel as Ort;
    let level = match level {
        Ort::Verbose => LogLevel::VERBOSE,
        Ort::Info => LogLevel::VERBOSE,
        Ort::Warning => LogLevel::WARN,
        Ort::Error | Ort::Fatal => LogLevel::ERROR,
    };
    log(
        level,
        &format!("onnxruntime [{category}] {location}: {message}"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::write(path, b"not really a library").unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferrum-ort-runtime-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn backend_directory_prefers_plain_name_then_highest_version() {
        let dir = temp_dir("order");
        touch(&dir.join("libonnxruntime.so.1.9.0"));
        touch(&dir.join("libonnxruntime.so.1.31.1"));
        touch(&dir.join("libonnxruntime.so.1.31.1.txt"));
        let (found, source) = locate(None, None, Some(&dir)).unwrap();
        assert_eq!(found, dir.join("libonnxruntime.so.1.31.1"));
        assert_eq!(source, Source::BackendDirectory);
        touch(&dir.join("libonnxruntime.so"));
        let (found, _) = locate(None, None, Some(&dir)).unwrap();
        assert_eq!(found, dir.join("libonnxruntime.so"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cmdline_wins_over_env_and_folder() {
        let dir = temp_dir("cmdline");
        let lib = dir.join("custom.so");
        touch(&lib);
        touch(&dir.join("libonnxruntime.so"));
        let (found, source) = locate(
            Some(lib.to_str().unwrap()),
            Some(OsString::from("/nonexistent")),
            Some(&dir),
        )
        .unwrap();
        assert_eq!((found, source), (lib.clone(), Source::Cmdline));
        let (found, source) = locate(
            None,
            Some(dir.clone().into_os_string()),
            Some(Path::new("/")),
        )
        .unwrap();
        assert_eq!(
            (found, source),
            (dir.join("libonnxruntime.so"), Source::Env)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_library_says_what_to_do() {
        let dir = temp_dir("missing");
        let err = locate(None, None, Some(&dir)).unwrap_err();
        let msg = err.message.as_str();
        assert!(msg.contains("ONNX Runtime library not found"), "{msg}");
        assert!(msg.contains(LIBRARY_ENV), "{msg}");
        assert!(msg.contains("make build"), "{msg}");
        assert!(msg.contains(ORT_VERSION), "{msg}");
        assert!(msg.contains(dir.to_str().unwrap()), "{msg}");
        let err = locate(None, Some(OsString::from("/no/such/lib.so")), Some(&dir)).unwrap_err();
        assert!(err.message.as_str().contains("/no/such/lib.so"));
        let err = locate(Some("/no/such/dir"), None, Some(&dir)).unwrap_err();
        assert!(
            err.message
                .as_str()
                .contains("runtime-library=/no/such/dir")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
