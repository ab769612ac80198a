//! Server options and the server: an in-process core on its own tokio runtime.

use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferrum_core::{ControlMode, Core, CoreBuilder, Error};

use crate::error::{FERRUM_Error, guard, owned_string};
use crate::handles::{self, Kind};

/// How the server follows its repositories (Triton's `TRITONSERVER_ModelControlMode`).
pub type FERRUM_ModelControlMode = u32;
/// Load every model at start, never change.
pub const FERRUM_MODEL_CONTROL_NONE: FERRUM_ModelControlMode = 0;
/// Rescan the repositories periodically.
pub const FERRUM_MODEL_CONTROL_POLL: FERRUM_ModelControlMode = 1;
/// Load and unload only through `FERRUM_ServerLoadModel` / `FERRUM_ServerUnloadModel`.
pub const FERRUM_MODEL_CONTROL_EXPLICIT: FERRUM_ModelControlMode = 2;
/// Watch the repositories' files (Ferrum's addition).
pub const FERRUM_MODEL_CONTROL_WATCH: FERRUM_ModelControlMode = 3;

/// The settings a server starts with; freed with `FERRUM_ServerOptionsDelete`.
pub struct FERRUM_ServerOptions {
    /// Model repositories.
    repositories: Vec<PathBuf>,
    /// Backend directory (none: the core's default, `../backends` from the executable).
    backend_directory: Option<PathBuf>,
    /// Control mode.
    control_mode: ControlMode,
    /// Models loaded at start in explicit mode.
    startup_models: Vec<String>,
    /// Strict model config (no auto-complete).
    strict: bool,
    /// Poll interval.
    poll_secs: u64,
    /// Runtime worker threads (0: one per core).
    threads: usize,
}

/// A running in-process server; freed (stopped) with `FERRUM_ServerDelete`.
pub struct FERRUM_Server {
    /// The runtime the core and its requests run on; taken at delete.
    runtime: Option<tokio::runtime::Runtime>,
    /// The core.
    pub(crate) core: Arc<Core>,
    /// The repository follower (poll and watch modes).
    follower: Option<tokio::task::JoinHandle<()>>,
    /// Whether `FERRUM_ServerStop` already ran.
    stopped: bool,
}

impl FERRUM_Server {
    /// The runtime's handle.
    pub(crate) fn handle(&self) -> Result<&tokio::runtime::Runtime, Error> {
        self.runtime
            .as_ref()
            .ok_or_else(|| Error::unavailable("the server is stopped"))
    }

    /// Runs a future to completion on the server's runtime, from a thread outside it.
    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::new(
                ferrum_core::ErrorKind::Unsupported,
                "this call blocks and cannot run inside a response callback (a server thread)",
            ));
        }
        Ok(self.handle()?.block_on(f))
    }
}

/// Creates server options with the defaults (no repository yet, control mode NONE).
///
/// # Safety
/// `options` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerOptionsNew(
    options: *mut *mut FERRUM_ServerOptions,
) -> *mut FERRUM_Error {
    guard(|| {
        if options.is_null() {
            return Err(Error::invalid("options is NULL"));
        }
        let value = FERRUM_ServerOptions {
            repositories: Vec::new(),
            backend_directory: None,
            control_mode: ControlMode::None,
            startup_models: Vec::new(),
            strict: false,
            poll_secs: 15,
            threads: 0,
        };
        let ptr = handles::register(Kind::Options, value);
        // SAFETY: checked non-NULL; the caller passes a valid pointer.
        unsafe { options.write(ptr) };
        Ok(())
    })
}

/// Frees server options.
///
/// # Safety
/// `options` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerOptionsDelete(
    options: *mut FERRUM_ServerOptions,
) -> *mut FERRUM_Error {
    // SAFETY: checked against the registry.
    guard(|| unsafe { handles::take(options, Kind::Options) }.map(drop))
}

fn with_options(
    options: *mut FERRUM_ServerOptions,
    f: impl FnOnce(&mut FERRUM_ServerOptions) -> Result<(), Error>,
) -> *mut FERRUM_Error {
    // SAFETY: checked against the registry.
    guard(|| f(unsafe { handles::get_mut(options, Kind::Options) }?))
}

/// Adds a model repository folder (Triton's call of the same name; may be called again to
/// serve several repositories).
///
/// # Safety
/// `path` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerOptionsSetModelRepositoryPath(
    options: *mut FERRUM_ServerOptions,
    path: *const c_char,
) -> *mut FERRUM_Error {
    with_options(options, |o| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { handles::string(path, "path") }?;
        o.repositories.push(PathBuf::from(path));
        Ok(())
    })
}

/// Sets the folder of backend libraries (`<dir>/<name>/libferrum_<name>.so`).
///
/// # Safety
/// `path` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerOptionsSetBackendDirectory(
    options: *mut FERRUM_ServerOptions,
    path: *const c_char,
) -> *mut FERRUM_Error {
    with_options(options, |o| {
        // SAFETY: the caller passes a NUL-terminated string.
        let path = unsafe { handles::string(path, "path") }?;
        o.backend_directory = Some(PathBuf::from(path));
        Ok(())
    })
}

/// Sets the model control mode (`FERRUM_MODEL_CONTROL_*`).
///
/// # Safety
/// `options` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerOptionsSetModelControlMode(
    options: *mut FERRUM_ServerOptions,
    mode: FERRUM_ModelControlMode,
) -> *mut FERRUM_Error {
    with_options(options, |o| {
        o.control_mode = match mode {
            FERRUM_MODEL_CONTROL_NONE => ControlMode::None,
            FERRUM_MODEL_CONTROL_POLL => ControlMode::Poll,
            FERRUM_MODEL_CONTROL_EXPLICIT => ControlMode::Explicit,
            FERRUM_MODEL_CONTROL_WATCH => ControlMode::Watch,
            other => {
                return Err(Error::invalid(format!(
                    "unknown model control mode {other}"
                )));
            }
        };
        Ok(())
    })
}

/// Adds a model to load at start in explicit mode (`*` loads every model).
///
/// # Safety
/// `model` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerOptionsSetStartupModel(
    options: *mut FERRUM_ServerOptions,
    model: *const c_char,
) -> *mut FERRUM_Error {
    with_options(options, |o| {
        // SAFETY: the caller passes a NUL-terminated string.
        let model = unsafe { handles::string(model, "model") }?;
        o.startup_models.push(model.to_string());
        Ok(())
    })
}

/// Strict model configs: backends do not complete configs from model files.
///
/// # Safety
/// `options` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerOptionsSetStrictModelConfig(
    options: *mut FERRUM_ServerOptions,
    strict: bool,
) -> *mut FERRUM_Error {
    with_options(options, |o| {
        o.strict = strict;
        Ok(())
    })
}

/// Seconds between repository rescans in poll mode (default 15).
///
/// # Safety
/// `options` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerOptionsSetRepositoryPollSecs(
    options: *mut FERRUM_ServerOptions,
    secs: u64,
) -> *mut FERRUM_Error {
    with_options(options, |o| {
        o.poll_secs = secs.max(1);
        Ok(())
    })
}

/// Worker threads of the server's runtime (0, the default: one per CPU core).
///
/// # Safety
/// `options` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerOptionsSetThreadCount(
    options: *mut FERRUM_ServerOptions,
    threads: u32,
) -> *mut FERRUM_Error {
    with_options(options, |o| {
        o.threads = threads as usize;
        Ok(())
    })
}

/// Starts a server with these options: loads the models the control mode starts with and
/// returns once it is ready (or failed). The options may be deleted afterwards.
///
/// # Safety
/// `server` must be valid for a write; `options` is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerNew(
    server: *mut *mut FERRUM_Server,
    options: *mut FERRUM_ServerOptions,
) -> *mut FERRUM_Error {
    guard(|| {
        if server.is_null() {
            return Err(Error::invalid("server is NULL"));
        }
        // SAFETY: checked against the registry.
        let o = unsafe { handles::get(options, Kind::Options) }?;
        if o.repositories.is_empty() {
            return Err(Error::invalid(
                "no model repository: call FERRUM_ServerOptionsSetModelRepositoryPath",
            ));
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::new(
                ferrum_core::ErrorKind::Unsupported,
                "FERRUM_ServerNew cannot run inside a server's callback",
            ));
        }
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        runtime.enable_all().thread_name("ferrum-capi");
        if o.threads > 0 {
            runtime.worker_threads(o.threads);
        }
        let runtime = runtime
            .build()
            .map_err(|e| Error::internal(format!("cannot start a runtime: {e}")))?;
        let mut builder = CoreBuilder::new(o.repositories.clone())
            .control_mode(o.control_mode)
            .auto_complete(!o.strict)
            .startup_models(o.startup_models.clone())
            .poll_interval(Duration::from_secs(o.poll_secs));
        if let Some(dir) = &o.backend_directory {
            builder = builder.backend_directory(dir);
        }
        let core = match runtime.block_on(builder.start()) {
            Ok(core) => core,
            Err(e) => {
                runtime.shutdown_timeout(Duration::from_secs(5));
                return Err(e);
            }
        };
        let follower =
            matches!(o.control_mode, ControlMode::Poll | ControlMode::Watch).then(|| {
                let core = Arc::clone(&core);
                runtime.spawn(async move { core.follow_repository().await })
            });
        let ptr = handles::register(
            Kind::Server,
            FERRUM_Server {
                runtime: Some(runtime),
                core,
                follower,
                stopped: false,
            },
        );
        // SAFETY: checked non-NULL; the caller passes a valid pointer.
        unsafe { server.write(ptr) };
        Ok(())
    })
}

/// Stops the server: readiness goes false, every model unloads after its in-flight requests
/// finish. The server object stays valid until `FERRUM_ServerDelete`.
///
/// # Safety
/// `server` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerStop(server: *mut FERRUM_Server) -> *mut FERRUM_Error {
    guard(|| {
        // SAFETY: checked against the registry.
        let s = unsafe { handles::get_mut(server, Kind::Server) }?;
        stop(s)
    })
}

fn stop(s: &mut FERRUM_Server) -> Result<(), Error> {
    if s.stopped {
        return Ok(());
    }
    s.core.begin_shutdown();
    if let Some(follower) = s.follower.take() {
        follower.abort();
    }
    let core = Arc::clone(&s.core);
    s.block_on(async move { core.unload_all().await })??;
    s.stopped = true;
    Ok(())
}

/// Stops the server (if not yet stopped) and frees it, with its runtime. Call it after every
/// response of every request arrived; requests still running are cancelled.
///
/// # Safety
/// `server` is any pointer; it is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerDelete(server: *mut FERRUM_Server) -> *mut FERRUM_Error {
    guard(|| {
        handles::check(server, Kind::Server)?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::new(
                ferrum_core::ErrorKind::Unsupported,
                "FERRUM_ServerDelete cannot run inside a response callback (a server thread)",
            ));
        }
        // SAFETY: checked against the registry.
        let mut s = unsafe { handles::take(server, Kind::Server) }?;
        let stopped = stop(&mut s);
        if let Some(runtime) = s.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(10));
        }
        stopped
    })
}

fn with_server(
    server: *mut FERRUM_Server,
    f: impl FnOnce(&FERRUM_Server) -> Result<(), Error>,
) -> *mut FERRUM_Error {
    // SAFETY: checked against the registry.
    guard(|| f(unsafe { handles::get(server, Kind::Server) }?))
}

/// Writes whether the server is live.
///
/// # Safety
/// `live` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerIsLive(
    server: *mut FERRUM_Server,
    live: *mut bool,
) -> *mut FERRUM_Error {
    with_server(server, |s| {
        // SAFETY: the caller passes a valid pointer.
        unsafe { handles::write_required(live, s.core.is_live() && !s.stopped, "live") }
    })
}

/// Writes whether the server is ready for inference.
///
/// # Safety
/// `ready` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerIsReady(
    server: *mut FERRUM_Server,
    ready: *mut bool,
) -> *mut FERRUM_Error {
    with_server(server, |s| {
        // SAFETY: the caller passes a valid pointer.
        unsafe { handles::write_required(ready, s.core.is_ready(), "ready") }
    })
}

fn version_of(version: i64) -> Option<i64> {
    (version > 0).then_some(version)
}

/// Writes whether a model version is ready (`version` -1 or 0: any version).
///
/// # Safety
/// `model` must be a NUL-terminated string and `ready` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerModelIsReady(
    server: *mut FERRUM_Server,
    model: *const c_char,
    version: i64,
    ready: *mut bool,
) -> *mut FERRUM_Error {
    with_server(server, |s| {
        // SAFETY: the caller passes a NUL-terminated string.
        let model = unsafe { handles::string(model, "model") }?;
        let is = s.core.model_ready(model, version_of(version));
        // SAFETY: the caller passes a valid pointer.
        unsafe { handles::write_required(ready, is, "ready") }
    })
}

/// Loads (or reloads) a model; explicit control mode only. Returns once it serves or failed.
///
/// # Safety
/// `model` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerLoadModel(
    server: *mut FERRUM_Server,
    model: *const c_char,
) -> *mut FERRUM_Error {
    with_server(server, |s| {
        // SAFETY: the caller passes a NUL-terminated string.
        let model = unsafe { handles::string(model, "model") }?.to_string();
        let core = Arc::clone(&s.core);
        s.block_on(async move { core.load_model(model, Vec::new()).await })?
    })
}

/// Unloads a model; explicit control mode only. Returns once it is unloaded (its in-flight
/// requests finish first).
///
/// # Safety
/// `model` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerUnloadModel(
    server: *mut FERRUM_Server,
    model: *const c_char,
) -> *mut FERRUM_Error {
    with_server(server, |s| {
        // SAFETY: the caller passes a NUL-terminated string.
        let model = unsafe { handles::string(model, "model") }?.to_string();
        let core = Arc::clone(&s.core);
        s.block_on(async move { core.unload_model(model, &[]).await })?
    })
}

/// Writes a model's metadata as JSON (the protocol's model metadata object) into `json`;
/// free it with `FERRUM_StringDelete`.
///
/// # Safety
/// `model` must be a NUL-terminated string and `json` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerModelMetadata(
    server: *mut FERRUM_Server,
    model: *const c_char,
    version: i64,
    json: *mut *mut c_char,
) -> *mut FERRUM_Error {
    with_server(server, |s| {
        // SAFETY: the caller passes a NUL-terminated string.
        let model = unsafe { handles::string(model, "model") }?;
        if json.is_null() {
            return Err(Error::invalid("json is NULL"));
        }
        let m = s.core.model_metadata(model, version_of(version))?;
        let tensors = |list: &[(String, String, Vec<i64>)]| {
            list.iter()
                .map(|(name, datatype, shape)| {
                    serde_json::json!({"name": name, "datatype": datatype, "shape": shape})
                })
                .collect::<Vec<_>>()
        };
        let text = serde_json::json!({
            "name": m.name,
            "versions": m.versions,
            "platform": m.platform,
            "inputs": tensors(&m.inputs),
            "outputs": tensors(&m.outputs),
        })
        .to_string();
        // SAFETY: checked non-NULL above.
        unsafe { json.write(owned_string(&text)) };
        Ok(())
    })
}

/// Writes a model's config as JSON (Triton's model config JSON) into `json`; free it with
/// `FERRUM_StringDelete`.
///
/// # Safety
/// `model` must be a NUL-terminated string and `json` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerModelConfig(
    server: *mut FERRUM_Server,
    model: *const c_char,
    version: i64,
    json: *mut *mut c_char,
) -> *mut FERRUM_Error {
    with_server(server, |s| {
        // SAFETY: the caller passes a NUL-terminated string.
        let model = unsafe { handles::string(model, "model") }?;
        if json.is_null() {
            return Err(Error::invalid("json is NULL"));
        }
        let live = s.core.model_config(model, version_of(version))?;
        // SAFETY: checked non-NULL above.
        unsafe { json.write(owned_string(&live.config_json.to_string())) };
        Ok(())
    })
}

/// Writes the statistics of a model's ready versions (of every model when `model` is NULL
/// or empty) as JSON `{"model_stats":[...]}` with Triton's field names (counts and
/// nanoseconds); free it with `FERRUM_StringDelete`.
///
/// # Safety
/// A non-NULL `model` must be a NUL-terminated string and `json` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FERRUM_ServerModelStatistics(
    server: *mut FERRUM_Server,
    model: *const c_char,
    version: i64,
    json: *mut *mut c_char,
) -> *mut FERRUM_Error {
    with_server(server, |s| {
        let model = if model.is_null() {
            None
        } else {
            // SAFETY: the caller passes a NUL-terminated string.
            Some(unsafe { handles::string(model, "model") }?).filter(|m| !m.is_empty())
        };
        if json.is_null() {
            return Err(Error::invalid("json is NULL"));
        }
        let stats = s.core.statistics(model, version_of(version))?;
        let d =
            |d: ferrum_core::stats::DurationStat| serde_json::json!({"count": d.count, "ns": d.ns});
        let rows: Vec<serde_json::Value> = stats
            .iter()
            .map(|m| {
                let i = &m.inference;
                serde_json::json!({
                    "name": m.name,
                    "version": m.version.to_string(),
                    "last_inference": m.last_inference,
                    "inference_count": m.inference_count,
                    "execution_count": m.execution_count,
                    "inference_stats": {
                        "success": d(i.success),
                        "fail": d(i.fail),
                        "queue": d(i.queue),
                        "compute_input": d(i.compute_input),
                        "compute_infer": d(i.compute_infer),
                        "compute_output": d(i.compute_output),
                    },
                })
            })
            .collect();
        let text = serde_json::json!({ "model_stats": rows }).to_string();
        // SAFETY: checked non-NULL above.
        unsafe { json.write(owned_string(&text)) };
        Ok(())
    })
}
