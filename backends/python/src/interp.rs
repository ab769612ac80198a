//! The embedded interpreter: starting it once per process, the module search path (the
//! backend's own folder, a model's virtual environment), loading a model file, and turning
//! Python exceptions into messages.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferrum_backend_api::{BackendError, LogLevel};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The module models import as `pb_utils`, shipped beside the plugin.
pub const UTILS: &str = "triton_python_backend_utils";

/// The interpreter's start, once per process; an error is kept and repeated.
static STARTED: OnceLock<Result<(), String>> = OnceLock::new();

/// Starts the interpreter (once per process) and puts the backend's folder first on the
/// module search path (so `import triton_python_backend_utils` finds ours) and its
/// `site-packages` folder last (the packages shipped with the backend, numpy among them).
pub fn start(backend_directory: Option<&Path>) -> Result<(), BackendError> {
    STARTED
        .get_or_init(|| start_once(backend_directory).map_err(|e| e.message.to_string()))
        .clone()
        .map_err(BackendError::internal)
}

fn start_once(backend_directory: Option<&Path>) -> Result<(), BackendError> {
    promote_libpython();
    Python::initialize();
    Python::attach(|py| -> PyResult<()> {
        crate::native::register(py)?;
        let locals = PyDict::new(py);
        locals.set_item(
            "backend_dir",
            backend_directory.map(|d| d.to_string_lossy().into_owned()),
        )?;
        run(
            py,
            r#"
import os, sys
# Never write __pycache__ into a model repository: a watched repository would see it change.
sys.dont_write_bytecode = True
if backend_dir:
    if backend_dir not in sys.path:
        sys.path.insert(0, backend_dir)
    bundled = os.path.join(backend_dir, "site-packages")
    if os.path.isdir(bundled) and bundled not in sys.path:
        sys.path.append(bundled)
for stream in (sys.stdout, sys.stderr):
    try:
        stream.reconfigure(line_buffering=True)
    except Exception:
        pass
"#,
            &locals,
        )
    })
    .map_err(|e| BackendError::internal(format!("cannot start Python: {}", error_line(&e))))
}

/// Runs a snippet of Python with these locals.
fn run(py: Python<'_>, code: &str, locals: &Bound<'_, PyDict>) -> PyResult<()> {
    let code = CString::new(code)
        .map_err(|_| pyo3::exceptions::PyValueError::new_err("code holds a NUL byte"))?;
    py.run(&code, Some(locals), None)
}

/// Makes libpython's symbols global. The server loads the plugin (and with it libpython)
/// with local symbols, but Python's extension modules (numpy's) expect to find the
/// interpreter's symbols globally.
fn promote_libpython() {
    let Ok(soname) = CString::new(env!("FERRUM_LIBPYTHON_SONAME")) else {
        return;
    };
    // SAFETY: RTLD_NOLOAD only looks up a library that is already loaded (our dependency)
    // and changes its symbols' scope; the handle is kept for the life of the process.
    let _ = unsafe {
        libc::dlopen(
            soname.as_ptr(),
            libc::RTLD_NOW | libc::RTLD_GLOBAL | libc::RTLD_NOLOAD,
        )
    };
}

/// The interpreter the plugin was built against, for the server's log.
pub fn describe() -> String {
    format!(
        "embedded CPython {} ({})",
        env!("FERRUM_PYTHON_VERSION"),
        env!("FERRUM_PYTHON_PREFIX")
    )
}

/// Puts a virtual environment's (or conda environment's) `site-packages` first on the module
/// search path, with its `.pth` files. `env` is the environment's folder.
pub fn add_environment(py: Python<'_>, env: &Path) -> Result<(), BackendError> {
    if !env.is_dir() {
        let hint = if env.is_file() {
            " (packed environments such as conda-pack archives are not supported: unpack it and name the folder)"
        } else {
            ""
        };
        return Err(BackendError::invalid_argument(format!(
            "execution environment '{}' is not a folder{hint}",
            env.display()
        )));
    }
    let version = py.version_info();
    let python = format!("python{}.{}", version.major, version.minor);
    let site = env.join("lib").join(&python).join("site-packages");
    if !site.is_dir() {
        return Err(BackendError::invalid_argument(format!(
            "execution environment '{}' has no lib/{python}/site-packages: the python backend runs {python}, \
             and the environment must be made with it",
            env.display()
        )));
    }
    let locals = PyDict::new(py);
    let result = locals
        .set_item("site_dir", site.to_string_lossy().into_owned())
        .and_then(|()| {
            run(
                py,
                r#"
import site, sys
if site_dir not in sys.path:
    before = list(sys.path)
    site.addsitedir(site_dir)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
"#,
                &locals,
            )
        });
    result.map_err(|e| {
        BackendError::internal(format!(
            "cannot add execution environment '{}': {}",
            env.display(),
            error_line(&e)
        ))
    })
}

/// Puts a folder first on the module search path (a model's version folder, so model.py can
/// import the modules beside it).
pub fn add_path(py: Python<'_>, folder: &Path) -> PyResult<()> {
    let path = py.import("sys")?.getattr("path")?;
    let folder = folder.to_string_lossy().into_owned();
    if !path.contains(&folder)? {
        path.call_method1("insert", (0, folder))?;
    }
    Ok(())
}

/// Imports the `pb_utils` module.
pub fn utils(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import(UTILS)
}

/// Executes a model file as a fresh module named `name` and returns it.
pub fn load_file<'py>(py: Python<'py>, file: &Path, name: &str) -> PyResult<Bound<'py, PyAny>> {
    utils(py)?
        .getattr("_ferrum_load_module")?
        .call1((file.to_string_lossy().into_owned(), name))
}

/// The last line of a Python exception's traceback (`ValueError: message`).
pub fn error_line(err: &PyErr) -> String {
    Python::attach(|py| {
        let formatted = py
            .import("traceback")
            .and_then(|tb| tb.getattr("format_exception_only"))
            .and_then(|f| f.call1((err.value(py),)))
            .and_then(|lines| lines.extract::<Vec<String>>());
        match formatted {
            Ok(lines) => lines
                .iter()
                .flat_map(|l| l.lines())
                .rfind(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
                .unwrap_or_else(|| err.to_string()),
            Err(_) => err.to_string(),
        }
    })
}

/// The whole traceback of a Python exception, for the server's log.
pub fn traceback(err: &PyErr) -> String {
    Python::attach(|py| {
        py.import("traceback")
            .and_then(|tb| tb.getattr("format_exception"))
            .and_then(|f| f.call1((err.value(py),)))
            .and_then(|lines| lines.extract::<Vec<String>>())
            .map(|lines| lines.concat())
            .unwrap_or_else(|_| err.to_string())
    })
}

/// Logs a Python exception's traceback with some context.
pub fn log_traceback(context: &str, err: &PyErr) {
    ferrum_backend_api::log(
        LogLevel::ERROR,
        &format!("{context}\n{}", traceback(err).trim_end()),
    );
}

/// A model's execution environment: its `EXECUTION_ENV_PATH` parameter (with
/// `$$TRITON_MODEL_DIRECTORY` standing for the model's folder), or the backend's default.
pub fn environment_of(
    parameter: Option<&str>,
    model_path: &Path,
    default: Option<&Path>,
) -> Option<PathBuf> {
    match parameter.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(
            p.replace("$$TRITON_MODEL_DIRECTORY", &model_path.to_string_lossy()),
        )),
        None => default.map(Path::to_path_buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_parameter_wins_and_expands_the_model_folder() {
        let model = Path::new("/repo/m");
        assert_eq!(
            environment_of(
                Some("$$TRITON_MODEL_DIRECTORY/env"),
                model,
                Some(Path::new("/d"))
            ),
            Some(PathBuf::from("/repo/m/env"))
        );
        assert_eq!(
            environment_of(Some("  "), model, Some(Path::new("/d"))),
            Some(PathBuf::from("/d"))
        );
        assert_eq!(environment_of(None, model, None), None);
    }
}
