//! The lifecycle manager: loads model versions through their backends, keeps the routing
//! table (model, version) → live model, and reports every model's state.

mod classify;
mod ensemble;
mod lifecycle;
mod live;
mod reshape;
mod sequences;
mod warmup;

use std::collections::{BTreeMap, HashMap};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::plugins::Plugins;
pub use classify::classify;
pub use ensemble::{is_ensemble, members};
pub use lifecycle::{LoadOverride, LoadValue, RepositoryParameter, check_unload_parameters};
pub use live::{LiveModel, TensorSpec};
pub use sequences::SequenceOwners;

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
#[derive(Clone)]
struct VersionRecord {
    /// Its state.
    state: ModelState,
    /// Why it is not ready, or why a reload of it failed while it kept serving.
    reason: String,
    /// The loaded version, when ready.
    live: Option<Arc<LiveModel>>,
    /// Fingerprint of the version folder it was loaded from.
    fingerprint: u64,
}

/// A model's place in the routing table.
#[derive(Default)]
struct ModelRecord {
    /// The folder the model is loaded from.
    dir: PathBuf,
    /// A config given through the load API instead of config.pbtxt.
    config_override: Option<ModelConfig>,
    /// The temporary folder holding files uploaded through the load API.
    uploaded: Option<Arc<tempfile::TempDir>>,
    /// Fingerprint of the folder at the last load attempt.
    fingerprint: Option<crate::repository::Fingerprint>,
    /// The config the live versions were loaded with.
    config: Option<ModelConfig>,
    /// Versions by number.
    versions: BTreeMap<i64, VersionRecord>,
    /// A failure that concerns the whole model (config, backend), if any.
    error: Option<String>,
}

/// What requests are routed by: each model's live versions, a snapshot of the routing table
/// taken after every change to it, read without a lock.
#[derive(Default)]
struct Routes(HashMap<String, ModelRoutes>);

/// One model's live versions in a [`Routes`] snapshot.
struct ModelRoutes {
    /// The highest live version.
    latest: Option<Arc<LiveModel>>,
    /// Every live version by number.
    versions: HashMap<i64, Arc<LiveModel>>,
}

impl Routes {
    fn of(table: &BTreeMap<String, ModelRecord>) -> Self {
        Routes(
            table
                .iter()
                .map(|(name, record)| {
                    let versions: HashMap<i64, Arc<LiveModel>> = record
                        .versions
                        .iter()
                        .filter_map(|(v, r)| r.live.clone().map(|live| (*v, live)))
                        .collect();
                    let latest = record.versions.values().rev().find_map(|r| r.live.clone());
                    (name.clone(), ModelRoutes { latest, versions })
                })
                .collect(),
        )
    }
}

/// The routing table held for writing; the snapshot requests read is renewed when it is
/// released.
struct TableWrite<'a> {
    /// The table.
    table: RwLockWriteGuard<'a, BTreeMap<String, ModelRecord>>,
    /// Where the snapshot goes.
    routes: &'a ArcSwap<Routes>,
}

impl Deref for TableWrite<'_> {
    type Target = BTreeMap<String, ModelRecord>;
    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

impl DerefMut for TableWrite<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.table
    }
}

impl Drop for TableWrite<'_> {
    fn drop(&mut self) {
        self.routes.store(Arc::new(Routes::of(&self.table)));
    }
}

/// Loads models and routes requests to their live versions.
pub struct ModelManager {
    /// Backend libraries.
    plugins: Arc<Plugins>,
    /// The repositories to serve (their local folders: an object store's is its mirror's),
    /// and the object-store mirrors, synced before scans.
    mirrors: crate::repository::Mirrors,
    /// Whether backends may complete configs from model files.
    auto_complete: bool,
    /// Bound of each version's queue where its config sets none.
    queue_limit: usize,
    /// The routing table; written through [`ModelManager::write_table`] only.
    models: RwLock<BTreeMap<String, ModelRecord>>,
    /// What requests route by, renewed after every write to the table.
    routes: ArcSwap<Routes>,
    /// Versions taken out of the table whose in-flight requests may still be running.
    draining: Mutex<Vec<(String, i64, Weak<LiveModel>)>>,
    /// Serializes loads, unloads and rescans; requests never wait on it.
    lifecycle: Mutex<()>,
    /// How deep the load of ensemble members is nested right now.
    member_depth: std::sync::atomic::AtomicUsize,
    /// Statistics of every model version.
    pub stats: Arc<crate::stats::StatsRegistry>,
    /// The version each open sequence runs on.
    pub sequences: Arc<SequenceOwners>,
}

impl ModelManager {
    /// A manager over these repositories, with nothing loaded yet.
    pub fn new(
        plugins: Arc<Plugins>,
        mirrors: crate::repository::Mirrors,
        auto_complete: bool,
        queue_limit: usize,
    ) -> Self {
        ModelManager {
            plugins,
            mirrors,
            auto_complete,
            queue_limit,
            models: RwLock::new(BTreeMap::new()),
            routes: ArcSwap::from_pointee(Routes::default()),
            draining: Mutex::new(Vec::new()),
            lifecycle: Mutex::new(()),
            member_depth: Default::default(),
            stats: Default::default(),
            sequences: Default::default(),
        }
    }

    /// The repositories as the local folders they are scanned from.
    fn repositories(&self) -> &[PathBuf] {
        self.mirrors.local_paths()
    }

    /// The routing table, held for writing.
    fn write_table(&self) -> TableWrite<'_> {
        TableWrite {
            table: self.models.write(),
            routes: &self.routes,
        }
    }

    /// The live model for a request: the given version, or the highest ready one.
    pub fn get(&self, name: &str, version: Option<i64>) -> Result<Arc<LiveModel>> {
        let routes = self.routes.load();
        if let Some(model) = routes.0.get(name) {
            let live = match version {
                None => model.latest.as_ref(),
                Some(v) => model.versions.get(&v),
            };
            if let Some(live) = live {
                if let Some(reason) = live.failure() {
                    return Err(Error::unavailable(format!(
                        "model '{name}' version {} is unavailable: {reason}",
                        live.version
                    )));
                }
                return Ok(Arc::clone(live));
            }
        }
        self.why_unroutable(name, version)
    }

    /// The error for a request the snapshot could not route, from the table itself (which
    /// may have changed since: a version that became ready meanwhile is returned).
    fn why_unroutable(&self, name: &str, version: Option<i64>) -> Result<Arc<LiveModel>> {
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
                let failure = v.live.as_ref().and_then(|l| l.failure());
                rows.push(IndexEntry {
                    name: name.clone(),
                    version: Some(*version),
                    state: if failure.is_some() {
                        ModelState::Unavailable
                    } else {
                        v.state
                    },
                    reason: failure.map_or_else(|| v.reason.clone(), str::to_string),
                });
            }
        }
        let listed: std::collections::HashSet<String> = models.keys().cloned().collect();
        drop(models);
        if let Ok(scan) = crate::repository::scan(self.repositories()) {
            for dir in scan
                .models
                .into_iter()
                .filter(|d| !listed.contains(&d.name))
            {
                rows.push(IndexEntry {
                    name: dir.name,
                    version: None,
                    state: ModelState::Unavailable,
                    reason: "not loaded".to_string(),
                });
            }
        }
        let mut draining = self.draining.lock();
        draining.retain(|(_, _, weak)| weak.strong_count() > 0);
        for (name, version, _) in draining.iter() {
            let listed = rows
                .iter()
                .any(|r| &r.name == name && r.version == Some(*version));
            if !listed {
                rows.push(IndexEntry {
                    name: name.clone(),
                    version: Some(*version),
                    state: ModelState::Unloading,
                    reason: "finishing in-flight requests".to_string(),
                });
            }
        }
        rows.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        rows
    }

    /// Unloads everything; in-flight requests finish first.
    pub fn unload_all(&self) {
        let _lifecycle = self.lifecycle.lock();
        let drained: Vec<ModelRecord> = {
            let mut models = self.write_table();
            std::mem::take(&mut *models).into_values().collect()
        };
        self.sequences.clear();
        drop(drained);
    }

    /// Takes versions out of service: they finish their in-flight requests, then unload.
    fn retire(&self, name: &str, versions: impl IntoIterator<Item = (i64, Arc<LiveModel>)>) {
        let mut draining = self.draining.lock();
        for (version, live) in versions {
            tracing::info!(
                model = name,
                version,
                "unloading (after in-flight requests finish)"
            );
            draining.push((name.to_string(), version, Arc::downgrade(&live)));
        }
    }
}
