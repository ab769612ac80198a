//! Backend libraries: found in the backend directory by name, loaded and checked through
//! abi_stable, created once, and kept loaded for the life of the process.

pub(crate) mod host;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::StableAbi;
use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
use abi_stable::library::{LibHeader, LibraryError, RootModule, lib_header_from_path};
use abi_stable::std_types::RStr;
use ferrum_backend_api::{BackendBox, BackendLibRef};
use parking_lot::Mutex;

use crate::error::{Error, Result};
pub use host::{ServerHost, executing};

/// The backend directory used when none is given: `../backends` from the running
/// executable's folder (`<prefix>/bin/ferrum` finds `<prefix>/backends`).
pub fn default_backend_directory() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .and_then(|bin| bin.parent())
                .map(|p| p.join("backends"))
        })
        .unwrap_or_else(|| PathBuf::from("backends"))
}

/// A backend library, loaded and its backend object created.
pub struct LoadedBackend {
    /// The backend object.
    pub backend: BackendBox,
    /// The backend's name (its folder in the backend directory).
    pub name: String,
    /// The library file it came from.
    pub path: PathBuf,
    /// The backend-api version it was built against.
    pub api_version: String,
    /// The private copy the library was loaded from.
    pub load_path: PathBuf,
    /// The JSON the backend object was created with.
    pub config_json: String,
    /// Size, modification time and inode of that file when it was loaded.
    stamp: FileStamp,
}

/// What identifies one version of a library file on disk.
type FileStamp = (u64, i64, i64, u64);

fn file_stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

/// The backend directory and the backends loaded from it so far.
pub struct Plugins {
    /// Where backend libraries live: `<dir>/<name>/libferrum_<name>.so`.
    dir: PathBuf,
    /// Settings from `--backend-config`, per backend name, as a JSON object.
    configs: HashMap<String, serde_json::Value>,
    /// Services offered to every backend.
    host: ServerHost,
    /// Backends loaded so far, by name. Failures are not cached, so a library dropped in
    /// later is found on the next load.
    loaded: Mutex<HashMap<String, Arc<LoadedBackend>>>,
    /// Private copies of the libraries, so that a replaced file is loaded afresh rather
    /// than handed back from the dynamic loader's cache.
    copies: tempfile::TempDir,
    /// Numbers the private copies.
    copy_count: std::sync::atomic::AtomicU64,
}

impl Plugins {
    /// A plugin set over this backend directory.
    pub fn new(
        dir: PathBuf,
        configs: HashMap<String, serde_json::Value>,
        host: ServerHost,
    ) -> std::io::Result<Self> {
        let copies = tempfile::Builder::new()
            .prefix("ferrum-backends-")
            .tempdir()?;
        Ok(Plugins {
            dir,
            configs,
            host,
            loaded: Mutex::new(HashMap::new()),
            copies,
            copy_count: Default::default(),
        })
    }

    /// The services offered to backends (and the way to the core).
    pub fn host(&self) -> &ServerHost {
        &self.host
    }

    /// The backend directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The library path a backend name maps to.
    pub fn library_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join(format!("libferrum_{name}.so"))
    }

    /// The backend with this name, loading its library the first time it is asked for.
    pub fn get(&self, name: &str) -> Result<Arc<LoadedBackend>> {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(Error::invalid(format!(
                "'{name}' is not a valid backend name"
            )));
        }
        let mut loaded = self.loaded.lock();
        let path = self.library_path(name);
        let stamp = file_stamp(&path);
        if let Some(backend) = loaded.get(name) {
            if Some(backend.stamp) == stamp {
                return Ok(Arc::clone(backend));
            }
            tracing::info!(
                backend = name,
                "backend library changed on disk; models loaded from now on use the new one"
            );
        }
        let backend = Arc::new(self.load(name, &path)?);
        let description = backend.backend.describe();
        tracing::info!(
            backend = name,
            path = %path.display(),
            built_against = %backend.api_version,
            description = %description,
            "loaded backend library"
        );
        loaded.insert(name.to_string(), Arc::clone(&backend));
        Ok(backend)
    }

    /// Copies a library into a folder of its own and links every other file of its backend
    /// folder beside it. The dynamic loader hands back the library it already has for a file
    /// it has seen (same path or inode), so a replaced file is only picked up from a fresh
    /// copy; and a file overwritten in place never changes code that is running. The links
    /// keep the copy's `$ORIGIN` run path finding the runtime libraries shipped beside it.
    fn private_copy(&self, name: &str, path: &Path) -> Result<PathBuf> {
        let n = self
            .copy_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let folder = self.copies.path().join(format!("{name}.{n}"));
        let fail = |e: std::io::Error| {
            Error::unavailable(format!(
                "backend '{name}' library '{}' cannot be copied for loading: {e}",
                path.display()
            ))
        };
        std::fs::create_dir_all(&folder).map_err(fail)?;
        let file_name = path.file_name().unwrap_or_default();
        let copy = folder.join(file_name);
        std::fs::copy(path, &copy).map_err(fail)?;
        // Absolute targets: the backend directory may have been given as a relative path.
        let parent = path.parent().and_then(|p| p.canonicalize().ok());
        if let Some(siblings) = parent.and_then(|p| std::fs::read_dir(p).ok()) {
            for sibling in siblings.flatten() {
                if sibling.file_name() != file_name {
                    std::os::unix::fs::symlink(sibling.path(), folder.join(sibling.file_name()))
                        .map_err(fail)?;
                }
            }
        }
        Ok(copy)
    }

    fn load(&self, name: &str, path: &Path) -> Result<LoadedBackend> {
        if !path.is_file() {
            return Err(Error::unavailable(format!(
                "backend '{name}' not found: no library at '{}' (backend directory '{}')",
                path.display(),
                self.dir.display()
            )));
        }
        let stamp = file_stamp(path).ok_or_else(|| {
            Error::unavailable(format!(
                "backend '{name}' library '{}' cannot be read",
                path.display()
            ))
        })?;
        let load_path = self.private_copy(name, path)?;
        let (header, root) = open_library(name, path, &load_path)?;
        let config = serde_json::json!({
            "backend_directory": path.parent().map(|p| p.to_string_lossy()),
            "library_path": path.to_string_lossy(),
            "cmdline": self.configs.get(name).cloned().unwrap_or_else(|| serde_json::json!({})),
        })
        .to_string();
        let create = root.create_backend();
        let backend = create(self.host.to_ffi(), RStr::from_str(&config))
            .into_result()
            .map_err(|e| {
                Error::unavailable(format!(
                    "backend '{name}' failed to initialize: {}",
                    e.message
                ))
            })?;
        Ok(LoadedBackend {
            backend,
            name: name.to_string(),
            path: path.to_path_buf(),
            api_version: header.version_strings().version.to_string(),
            load_path,
            config_json: config,
            stamp,
        })
    }
}

/// Opens a backend library file (`load_path`; `path` names it in errors) and checks it
/// against this server's backend-api.
pub(crate) fn open_library(
    name: &str,
    path: &Path,
    load_path: &Path,
) -> Result<(&'static LibHeader, BackendLibRef)> {
    let header = lib_header_from_path(load_path).map_err(|e| library_error(name, path, e))?;
    let root = open_root_module(header).map_err(|what| {
        Error::unavailable(format!(
            "backend '{name}' library '{}' {what}",
            path.display()
        ))
    })?;
    Ok((header, root))
}

/// Checks a library's backend-api version and ABI against the server's, then returns its root
/// module; the error says why it was refused.
///
/// The rule (docs/design/backend-abi.md): same major version, and a minor version no newer
/// than the server's. abi_stable's own check is the other way round (it lets a newer library
/// into an older program), so the layouts are compared with the library's as the interface:
/// every type the library knows must be a prefix of the server's.
fn open_root_module(header: &'static LibHeader) -> std::result::Result<BackendLibRef, String> {
    let server = BackendLibRef::VERSION_STRINGS;
    let plugin = header.version_strings();
    let ours = server
        .parsed()
        .map_err(|e| format!("cannot be checked: the server's own version is invalid: {e}"))?;
    let theirs = plugin.parsed().map_err(|e| {
        format!(
            "was built against backend-api '{}', which is not a valid version: {e}",
            plugin.version
        )
    })?;
    if theirs.major != ours.major || theirs.minor > ours.minor {
        let why = if theirs.major != ours.major {
            "a different major version"
        } else {
            "a newer minor version than the server knows"
        };
        return Err(format!(
            "was built against backend-api {}.{}.{}, {why}; this server uses backend-api {}.{}.{} \
             and loads libraries built against {}.0 up to {}.{}",
            theirs.major,
            theirs.minor,
            theirs.patch,
            ours.major,
            ours.minor,
            ours.patch,
            ours.major,
            ours.major,
            ours.minor
        ));
    }
    let layout = header
        .layout()
        .ok_or("carries no ABI layout to check, so it cannot be loaded safely")?;
    check_layout_compatibility(layout, <BackendLibRef as StableAbi>::LAYOUT).map_err(|e| {
        tracing::debug!("backend layout mismatch: {e}");
        format!(
            "was built against an incompatible backend-api: its ABI types differ from this \
             server's (backend-api {}); rebuild it against this version",
            ferrum_backend_api::VERSION
        )
    })?;
    // SAFETY: the library's layout was checked above to be a prefix of the server's.
    unsafe { header.unchecked_layout::<BackendLibRef>() }
        .map_err(|e| format!("failed to initialize its root module: {e}"))
}

fn library_error(name: &str, path: &Path, error: LibraryError) -> Error {
    // abi_stable's full report (a type-layout dump for ABI mismatches) goes to the debug log;
    // the error names the cause in one line.
    tracing::debug!(backend = name, "library load failure: {error}");
    let what = match &error {
        LibraryError::OpenError { .. } => {
            format!(
                "cannot be opened as a shared library: {}",
                first_line(&error)
            )
        }
        LibraryError::GetSymbolError { .. } => {
            "is not a Ferrum backend (it exports no backend root module)".to_string()
        }
        LibraryError::IncompatibleVersionNumber { .. } => format!(
            "was built against an incompatible backend-api version (this server uses {}): {}",
            ferrum_backend_api::VERSION,
            first_line(&error)
        ),
        LibraryError::AbiInstability(..) => format!(
            "was built against an incompatible backend-api: its ABI types differ from this server's (backend-api {}); rebuild it against this version",
            ferrum_backend_api::VERSION
        ),
        _ => format!("could not be loaded: {}", first_line(&error)),
    };
    Error::unavailable(format!(
        "backend '{name}' library '{}' {what}",
        path.display()
    ))
}

fn first_line(error: &LibraryError) -> String {
    let text = error.to_string();
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect()
}
