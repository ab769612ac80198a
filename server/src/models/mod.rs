//! The lifecycle manager: loads model versions through their backends, keeps the routing
//! table (model, version) → live model, and reports every model's state.

mod live;
mod reshape;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::{self, ModelConfig};
use crate::error::{Error, Result};
use crate::plugins::Plugins;
use crate::repository::{self, ModelDir};
pub use live::{LiveModel, TensorSpec};

/// A model version's state, as the repository index reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelState {
    /// Serving.
    Ready,
    /// Failed to load, or not loaded.
    Unavailable,
    /// Being loaded.
    Loading,
    /// Being unloaded.
    Unloading,
}

impl ModelState {
    /// The protocol's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
            ModelState::Loading => "LOADING",
            ModelState::Unloading => "UNLOADING",
        }
    }
}

/// One row of the repository index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version, when the row is about one version.
    pub version: Option<i64>,
    /// State.
    pub state: ModelState,
    /// Why the model is not ready (empty when it is).
    pub reason: String,
}

/// A version's place in the routing table.
struct VersionRecord {
    /// Its state.
    state: ModelState,
    /// Why it is not ready.
    reason: String,
    /// The loaded version, when ready.
    live: Option<Arc<LiveModel>>,
}

/// A model's place in the routing table.
#[derive(Default)]
struct ModelRecord {
    /// Versions by number.
    versions: BTreeMap<i64, VersionRecord>,
    /// A failure that concerns the whole model (config, backend), if any.
    error: Option<String>,
}

/// A model ready to have its versions loaded.
struct Prepared {
    /// The completed, checked config.
    config: ModelConfig,
    /// The backend that serves it.
    backend: Arc<crate::plugins::LoadedBackend>,
    /// The versions to load, with their folders.
    versions: Vec<(i64, PathBuf)>,
}

/// Loads models and routes requests to their live versions.
pub struct ModelManager {
    /// Backend libraries.
    plugins: Arc<Plugins>,
    /// The repositories to serve.
    repositories: Vec<PathBuf>,
    /// Whether backends may complete configs from model files.
    auto_complete: bool,
    /// The routing table.
    models: RwLock<BTreeMap<String, ModelRecord>>,
}

impl ModelManager {
    /// A manager over these repositories, with nothing loaded yet.
    pub fn new(plugins: Arc<Plugins>, repositories: Vec<PathBuf>, auto_complete: bool) -> Self {
        ModelManager {
            plugins,
            repositories,
            auto_complete,
            models: RwLock::new(BTreeMap::new()),
        }
    }

    /// Loads every model found in the repositories. A model that fails is recorded as
    /// unavailable with its reason; the others load regardless. Blocking: run it off the
    /// async runtime.
    pub fn load_all(&self) -> Result<()> {
        let scan = repository::scan(&self.repositories)?;
        for (name, error) in scan.conflicts {
            tracing::error!(model = %name, "{}", error.message);
            self.models.write().insert(
                name,
                ModelRecord {
                    error: Some(error.message),
                    ..Default::default()
                },
            );
        }
        for dir in scan.models {
            let record = self.load_model(&dir);
            self.models.write().insert(dir.name.clone(), record);
        }
        Ok(())
    }

    fn load_model(&self, dir: &ModelDir) -> ModelRecord {
        match self.prepare(dir) {
            Err(e) => {
                tracing::error!(model = %dir.name, "failed to load: {}", e.message);
                ModelRecord {
                    error: Some(e.message),
                    ..Default::default()
                }
            }
            Ok(Prepared {
                config,
                backend,
                versions,
            }) => {
                let mut record = ModelRecord::default();
                for (version, path) in versions {
                    let loaded =
                        LiveModel::load(&config, Arc::clone(&backend), &dir.path, version, &path);
                    let entry = match loaded {
                        Ok(live) => {
                            tracing::info!(model = %dir.name, version, "loaded, ready");
                            VersionRecord {
                                state: ModelState::Ready,
                                reason: String::new(),
                                live: Some(Arc::new(live)),
                            }
                        }
                        Err(e) => {
                            tracing::error!(model = %dir.name, version, "failed to load: {}", e.message);
                            VersionRecord {
                                state: ModelState::Unavailable,
                                reason: e.message,
                                live: None,
                            }
                        }
                    };
                    record.versions.insert(version, entry);
                }
                record
            }
        }
    }

    /// Reads and completes a model's config, loads its backend and picks its versions.
    fn prepare(&self, dir: &ModelDir) -> Result<Prepared> {
        let folders = repository::version_folders(&dir.path)?;
        let mut config = match repository::read_config(&dir.path)? {
            Some(config) => config,
            None if self.auto_complete => ModelConfig::default(),
            None => {
                return Err(Error::invalid(format!(
                    "model folder '{}' has no {} and config auto-complete is off \
                     (--strict-model-config=true or --disable-auto-complete-config)",
                    dir.path.display(),
                    repository::CONFIG_FILE
                )));
            }
        };
        if config.backend.is_empty() && config.platform.is_empty() {
            match repository::guess_backend(&folders) {
                Some(backend) => config.backend = backend.to_string(),
                None => {
                    return Err(Error::invalid(format!(
                        "model '{}' names no backend or platform, and no model file in its version \
                         folders identifies one",
                        dir.name
                    )));
                }
            }
        }
        let backend = self.plugins.get(&config::backend_name(&config)?)?;
        if self.auto_complete {
            config = live::auto_complete(&backend, config, &dir.name, &dir.path, &folders)?;
        }
        config::normalize(&mut config, &dir.name)?;
        for field in config::unimplemented_fields(&config) {
            tracing::warn!(model = %dir.name, "config field '{field}' is not implemented yet and has no effect");
        }
        let available: Vec<i64> = folders.keys().copied().collect();
        let selected = repository::select_versions(config.version_policy.as_ref(), &available);
        if selected.is_empty() {
            return Err(Error::invalid(format!(
                "model '{}' has no version folder that its version policy selects (found {:?})",
                dir.name, available
            )));
        }
        let versions = selected
            .into_iter()
            .filter_map(|v| folders.get(&v).map(|p| (v, p.clone())))
            .collect();
        Ok(Prepared {
            config,
            backend,
            versions,
        })
    }

    /// The live model for a request: the given version, or the highest ready one.
    pub fn get(&self, name: &str, version: Option<i64>) -> Result<Arc<LiveModel>> {
        let models = self.models.read();
        let record = models.get(name).ok_or_else(|| {
            Error::not_found(format!("Request for unknown model: '{name}' is not found"))
        })?;
        match version {
            Some(v) => match record.versions.get(&v) {
                Some(VersionRecord {
                    live: Some(live), ..
                }) => Ok(Arc::clone(live)),
                Some(VersionRecord { reason, .. }) => Err(Error::unavailable(format!(
                    "model '{name}' version {v} is not ready: {reason}"
                ))),
                None => Err(Error::not_found(format!(
                    "Request for unknown model: '{name}' version {v} is not found"
                ))),
            },
            None => record
                .versions
                .values()
                .rev()
                .find_map(|r| r.live.clone())
                .ok_or_else(|| {
                    let reason = record.error.clone().or_else(|| {
                        record
                            .versions
                            .values()
                            .map(|r| r.reason.clone())
                            .find(|r| !r.is_empty())
                    });
                    Error::unavailable(format!(
                        "model '{name}' has no available versions: {}",
                        reason.unwrap_or_else(|| "not loaded".to_string())
                    ))
                }),
        }
    }

    /// Whether a model (or one version of it) is ready.
    pub fn is_ready(&self, name: &str, version: Option<i64>) -> bool {
        self.get(name, version).is_ok()
    }

    /// The versions of a model that are ready, ascending.
    pub fn ready_versions(&self, name: &str) -> Vec<i64> {
        self.models
            .read()
            .get(name)
            .map(|r| {
                r.versions
                    .iter()
                    .filter(|(_, v)| v.live.is_some())
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every model and version with its state.
    pub fn index(&self) -> Vec<IndexEntry> {
        let models = self.models.read();
        let mut rows = Vec::new();
        for (name, record) in models.iter() {
            if let Some(error) = &record.error {
                rows.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: ModelState::Unavailable,
                    reason: error.clone(),
                });
            }
            for (version, v) in &record.versions {
                rows.push(IndexEntry {
                    name: name.clone(),
                    version: Some(*version),
                    state: v.state,
                    reason: v.reason.clone(),
                });
            }
        }
        rows
    }

    /// Unloads everything; in-flight requests finish first.
    pub fn unload_all(&self) {
        let drained: Vec<ModelRecord> = {
            let mut models = self.models.write();
            std::mem::take(&mut *models).into_values().collect()
        };
        drop(drained);
    }
}
