//! Loading, reloading and unloading models. A new version is loaded beside the old one and
//! swapped into the routing table in one step; versions taken out finish their in-flight
//! requests before they unload. A load that fails never takes a serving version away.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::live::{self, LiveModel};
use super::{ModelManager, ModelRecord, ModelState, VersionRecord};
use crate::config::{self, ModelConfig};
use crate::error::{Error, Result};
use crate::plugins::LoadedBackend;
use crate::repository::{self, Fingerprint};

/// What the load API may give instead of the repository's files.
#[derive(Default, Debug)]
pub struct LoadOverride {
    /// A complete config (the `config` parameter, ModelConfig as JSON).
    pub config: Option<ModelConfig>,
    /// Model files (`file:<path>` parameters): path inside the model folder, and contents.
    pub files: Vec<(String, Vec<u8>)>,
}

impl LoadOverride {
    /// Takes one parameter of a load request: `config` (ModelConfig JSON) or `file:<path>`
    /// (the file's bytes, already decoded from the wire). Other keys are refused.
    pub fn add(&mut self, key: &str, value: LoadValue) -> Result<()> {
        match (key, value) {
            ("config", LoadValue::Text(json)) => {
                let config = config::parse_json(&json).map_err(|e| {
                    Error::invalid(format!(
                        "the 'config' parameter is not a valid model config: {}",
                        e.message
                    ))
                })?;
                // The model files it names stay inside the version folder.
                let named = std::iter::once(&config.default_model_filename)
                    .chain(config.cc_model_filenames.values())
                    .filter(|f| !f.is_empty());
                for file in named {
                    if safe_relative_path(file).is_err() {
                        return Err(Error::invalid(format!(
                            "the 'config' parameter names model file '{file}', which must be a \
                             relative path inside the version folder (no '..', no absolute path)"
                        )));
                    }
                }
                self.config = Some(config);
            }
            ("config", LoadValue::Bytes(_)) => {
                return Err(Error::invalid(
                    "the 'config' parameter must be a JSON string",
                ));
            }
            (key, value) if key.starts_with("file:") => {
                let path = &key["file:".len()..];
                safe_relative_path(path)?;
                let bytes = match value {
                    LoadValue::Bytes(b) => b,
                    LoadValue::Text(t) => t.into_bytes(),
                };
                self.files.push((path.to_string(), bytes));
            }
            (other, _) => {
                return Err(Error::invalid(format!(
                    "unknown model load parameter '{other}'"
                )));
            }
        }
        Ok(())
    }
}

/// A load parameter's value as it came off the wire.
pub enum LoadValue {
    /// A string.
    Text(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

/// A parameter of a repository load or unload request, decoded from its wire format.
#[derive(Clone, Debug, PartialEq)]
pub enum RepositoryParameter {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string.
    Text(String),
    /// Raw bytes (a `file:` parameter's contents, decoded from the wire).
    Bytes(Vec<u8>),
    /// A value of no other kind (for example a JSON list, object, null or fraction).
    Other,
}

impl LoadOverride {
    /// The override a load request's parameters describe: each must be a string or bytes,
    /// and is taken as [`LoadOverride::add`] says.
    pub fn from_parameters(
        parameters: impl IntoIterator<Item = (String, RepositoryParameter)>,
    ) -> Result<Self> {
        let mut over = LoadOverride::default();
        for (key, value) in parameters {
            let value = match value {
                RepositoryParameter::Text(text) => LoadValue::Text(text),
                RepositoryParameter::Bytes(bytes) => LoadValue::Bytes(bytes),
                _ => {
                    return Err(Error::invalid(format!(
                        "parameter '{key}' must be a string or bytes"
                    )));
                }
            };
            over.add(&key, value)?;
        }
        Ok(over)
    }
}

/// Checks an unload request's parameters: the only one known is `unload_dependents`, a
/// boolean (true: an ensemble's members go with it, see [`ModelManager::unload_with_members`]).
pub fn check_unload_parameters(parameters: &[(String, RepositoryParameter)]) -> Result<()> {
    match parameters.iter().find(|(key, value)| {
        key != "unload_dependents" || !matches!(value, RepositoryParameter::Bool(_))
    }) {
        Some((key, _)) => Err(Error::invalid(format!(
            "unknown or invalid unload parameter '{key}'"
        ))),
        None => Ok(()),
    }
}

/// A model ready to have its versions loaded.
struct Prepared {
    /// The completed, checked config.
    config: ModelConfig,
    /// The backend that serves it (none for an ensemble, which runs other models).
    backend: Option<Arc<LoadedBackend>>,
    /// The versions to load, with their folders.
    versions: Vec<(i64, PathBuf)>,
}

/// Checks a `file:` path: relative, inside the model folder, no `..`, no empty parts.
fn safe_relative_path(path: &str) -> Result<PathBuf> {
    let candidate = Path::new(path);
    let ok = !path.is_empty()
        && !path.contains('\0')
        && candidate
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(Error::invalid(format!(
            "file parameter 'file:{path}' must be a relative path inside the model folder (no '..', no absolute path)"
        )));
    }
    Ok(candidate.to_path_buf())
}

/// Checks a model name that becomes a folder name (the upload folder of a load with `file:`
/// parameters): one path component, so that the files stay inside the upload folder.
fn safe_model_name(name: &str) -> Result<&str> {
    let mut components = Path::new(name).components();
    let single =
        matches!(components.next(), Some(Component::Normal(_))) && components.next().is_none();
    if !single || name.contains(['/', '\\', '\0']) {
        return Err(Error::invalid(format!(
            "model name '{name}' cannot name a folder: it must be one path component (no '/', no '..')"
        )));
    }
    Ok(name)
}

impl ModelManager {
    /// Loads the models a control mode starts with: every model in the repositories, or in
    /// explicit mode the ones named (`*` for all). Blocking: run it off the async runtime.
    pub fn load_startup(&self, explicit: Option<&[String]>) -> Result<()> {
        self.mirrors.sync_startup(explicit)?;
        let scan = repository::scan(self.repositories())?;
        for (name, error) in &scan.conflicts {
            tracing::error!(model = %name, "{}", error.message);
            let record = ModelRecord {
                error: Some(error.message.clone()),
                ..Default::default()
            };
            self.write_table().insert(name.clone(), record);
        }
        let all = explicit.is_none_or(|names| names.iter().any(|n| n == "*"));
        if let Some(names) = explicit.filter(|_| !all) {
            for name in names {
                if !scan.models.iter().any(|m| &m.name == name) {
                    tracing::error!(model = %name, "--load-model names a model that is not in the repository");
                }
            }
        }
        for dir in scan.models {
            if all || explicit.is_some_and(|names| names.contains(&dir.name)) {
                let _lifecycle = self.lifecycle.lock();
                let _ = self.load_dir(&dir.name, &dir.path, None, None);
            }
        }
        Ok(())
    }

    /// Loads (or reloads) a model through the repository API. Blocking.
    pub fn load(&self, name: &str, over: LoadOverride) -> Result<()> {
        let _lifecycle = self.lifecycle.lock();
        if !over.files.is_empty() {
            let config = over.config.ok_or_else(|| {
                Error::invalid("file parameters need a 'config' parameter describing the model")
            })?;
            let folder = safe_model_name(name)?;
            let temp = tempfile::Builder::new()
                .prefix("ferrum-upload-")
                .tempdir()
                .map_err(|e| {
                    Error::internal(format!("cannot create a folder for uploaded files: {e}"))
                })?;
            let dir = temp.path().join(folder);
            for (path, contents) in &over.files {
                let target = dir.join(safe_relative_path(path)?);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        Error::internal(format!(
                        "failed to poll from model repository: cannot write uploaded file '{path}': {e}"
                    ))
                    })?;
                }
                std::fs::write(&target, contents).map_err(|e| {
                    Error::internal(format!(
                        "failed to poll from model repository: cannot write uploaded file '{path}': {e}"
                    ))
                })?;
            }
            return self.load_dir(name, &dir, Some(config), Some(Arc::new(temp)));
        }
        self.mirrors.fetch_model(name)?;
        let dir = self.find_in_repositories(name)?;
        self.load_dir(name, &dir, over.config, None)
    }

    /// Unloads a model: new requests are refused at once, in-flight ones finish. Blocking.
    pub fn unload(&self, name: &str) -> Result<()> {
        let _lifecycle = self.lifecycle.lock();
        let taken = {
            let mut models = self.write_table();
            let record = models
                .get_mut(name)
                .ok_or_else(|| Error::not_found(format!("model '{name}' is not loaded")))?;
            let versions = std::mem::take(&mut record.versions);
            *record = ModelRecord {
                error: Some("unloaded".to_string()),
                ..Default::default()
            };
            versions
        };
        // An unloaded model's open sequences end with it.
        self.sequences.forget_model(name);
        self.retire(
            name,
            taken
                .into_iter()
                .filter_map(|(v, r)| r.live.map(|l| (v, l))),
        );
        Ok(())
    }

    /// Unloads an ensemble and then each of its members that no other loaded ensemble
    /// calls (Triton's `unload_dependents`), nested ensembles' members included. Blocking.
    pub fn unload_with_members(&self, name: &str) -> Result<()> {
        let members = self
            .models
            .read()
            .get(name)
            .and_then(|r| r.config.as_ref())
            .map(super::members)
            .unwrap_or_default();
        self.unload(name)?;
        for member in members {
            let still_called = self.models.read().iter().any(|(other, r)| {
                other != &member
                    && r.versions.values().any(|v| v.live.is_some())
                    && r.config
                        .as_ref()
                        .is_some_and(|c| super::members(c).contains(&member))
            });
            if !still_called && self.get(&member, None).is_ok() {
                self.unload_with_members(&member)?;
            }
        }
        Ok(())
    }

    /// Brings the routing table in line with the repositories: loads new and changed models,
    /// unloads removed ones. Unchanged models are not touched. Blocking.
    pub fn poll(&self) -> Result<()> {
        let _lifecycle = self.lifecycle.lock();
        self.mirrors.refresh();
        let scan = repository::scan(self.repositories())?;
        for dir in &scan.models {
            let fingerprint = repository::fingerprint(&dir.path);
            let known = self
                .models
                .read()
                .get(&dir.name)
                .and_then(|r| r.fingerprint.clone());
            if known.as_ref() != Some(&fingerprint) {
                tracing::info!(model = %dir.name, "model folder changed; loading");
                let _ = self.load_dir(&dir.name, &dir.path, None, None);
            }
        }
        let removed: Vec<String> = self
            .models
            .read()
            .iter()
            .filter(|(name, r)| {
                r.uploaded.is_none() && !scan.models.iter().any(|m| &m.name == *name)
            })
            .filter(|(name, _)| !scan.conflicts.iter().any(|(n, _)| n == *name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in removed {
            tracing::info!(model = %name, "model folder removed; unloading");
            // Through write_table, so that the routing snapshot drops the model too.
            let taken = self
                .write_table()
                .remove(&name)
                .map(|r| r.versions)
                .unwrap_or_default();
            self.retire(
                &name,
                taken
                    .into_iter()
                    .filter_map(|(v, r)| r.live.map(|l| (v, l))),
            );
        }
        Ok(())
    }

    /// Loads the models an ensemble's steps call that are not serving yet (an ensemble's
    /// members load before it). Failures show in the members' own state and in the
    /// ensemble's load error.
    fn load_members(&self, ensemble: &str, config: &ModelConfig) {
        const DEEPEST: usize = 8;
        let depth = self
            .member_depth
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if depth >= DEEPEST {
            tracing::error!(
                model = ensemble,
                "ensembles nest deeper than {DEEPEST} levels (or call each other): its members are not loaded"
            );
        } else {
            for member in super::members(config) {
                if member == ensemble || self.get(&member, None).is_ok() {
                    continue;
                }
                if let Err(e) = self.mirrors.fetch_model(&member) {
                    tracing::error!(model = ensemble, "member '{member}': {}", e.message);
                }
                match self.find_in_repositories(&member) {
                    Ok(dir) => {
                        tracing::info!(model = %member, "loading as a member of ensemble '{ensemble}'");
                        let _ = self.load_dir(&member, &dir, None, None);
                    }
                    Err(e) => tracing::error!(model = ensemble, "member '{member}': {}", e.message),
                }
            }
        }
        self.member_depth
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn find_in_repositories(&self, name: &str) -> Result<PathBuf> {
        let scan = repository::scan(self.repositories())?;
        if let Some((_, e)) = scan.conflicts.into_iter().find(|(n, _)| n == name) {
            return Err(e);
        }
        scan.models
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.path)
            .ok_or_else(|| Error::not_found(format!("no model '{name}' in the model repository")))
    }

    /// Loads a model from a folder and swaps it into the routing table. On failure the
    /// versions that were serving keep serving and the reason is recorded.
    fn load_dir(
        &self,
        name: &str,
        dir: &Path,
        config_override: Option<ModelConfig>,
        uploaded: Option<Arc<tempfile::TempDir>>,
    ) -> Result<()> {
        let fingerprint = repository::fingerprint(dir);
        let (old_config, old_versions) = {
            let models = self.models.read();
            match models.get(name) {
                Some(r) => (r.config.clone(), r.versions.clone()),
                None => (None, BTreeMap::new()),
            }
        };
        self.mark_loading(name, &fingerprint, &old_versions);
        let prepared = self.prepare(name, dir, config_override.clone(), &fingerprint);
        let mut models = self.write_table();
        let record = models.entry(name.to_string()).or_default();
        record.fingerprint = Some(fingerprint.clone());
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(model = name, "failed to load: {}", e.message);
                record.error = Some(e.message.clone());
                record.versions = old_versions;
                return Err(e);
            }
        };
        drop(models);
        if prepared.backend.is_none() {
            self.load_members(name, &prepared.config);
        }

        let same_config = old_config.as_ref() == Some(&prepared.config);
        let mut versions = BTreeMap::new();
        let mut failures = Vec::new();
        for (version, path) in &prepared.versions {
            let version_fp = fingerprint
                .versions
                .get(version)
                .copied()
                .unwrap_or_default();
            let reusable = old_versions.get(version).filter(|old| {
                same_config
                    && old.fingerprint == version_fp
                    && old.live.as_ref().is_some_and(|l| {
                        // A version that stopped serving (its isolated instances kept
                        // crashing) is loaded afresh.
                        l.failure().is_none()
                            && match &prepared.backend {
                                Some(backend) => l.uses_backend(backend),
                                None => true,
                            }
                    })
            });
            if let Some(old) = reusable {
                versions.insert(*version, old.clone());
                continue;
            }
            let loaded = match &prepared.backend {
                Some(backend) => LiveModel::load(
                    &prepared.config,
                    Arc::clone(backend),
                    dir,
                    *version,
                    path,
                    super::live::Serving {
                        stats: self.stats.model(name, *version),
                        queue_limit: self.queue_limit,
                        owners: &self.sequences,
                        host: self.plugins.host(),
                    },
                ),
                None => LiveModel::ensemble(
                    &prepared.config,
                    *version,
                    self.stats.model(name, *version),
                    self.plugins.host().clone(),
                    |member| self.get(member, None).ok().map(|l| l.config.clone()),
                ),
            };
            // A new version warms up before it is READY and before it takes traffic.
            let loaded = loaded.and_then(|live| {
                super::warmup::run(&live, dir)?;
                Ok(live)
            });
            let record = match loaded {
                Ok(live) => {
                    tracing::info!(model = name, version, "loaded, ready");
                    VersionRecord {
                        state: ModelState::Ready,
                        reason: String::new(),
                        live: Some(Arc::new(live)),
                        fingerprint: version_fp,
                    }
                }
                Err(e) => {
                    tracing::error!(model = name, version, "failed to load: {}", e.message);
                    failures.push(e.message.clone());
                    VersionRecord {
                        state: ModelState::Unavailable,
                        reason: e.message,
                        live: None,
                        fingerprint: version_fp,
                    }
                }
            };
            versions.insert(*version, record);
        }

        // A failed version never takes a serving one away: old versions stay in service
        // (and say why) wherever the new one did not come up.
        if !failures.is_empty() {
            for (version, old) in &old_versions {
                let replaced_ok = versions.get(version).is_some_and(|v| v.live.is_some());
                if old.live.is_some() && !replaced_ok {
                    let mut kept = old.clone();
                    kept.reason = match versions.get(version) {
                        Some(failed) => format!(
                            "still serving the previous load; the reload failed: {}",
                            failed.reason
                        ),
                        None => format!(
                            "still serving because a newer version failed to load: {}",
                            failures.join("; ")
                        ),
                    };
                    if versions.get(version).is_none_or(|v| v.live.is_none()) {
                        versions.insert(*version, kept);
                    }
                }
            }
        }

        let retired: Vec<(i64, Arc<LiveModel>)> = old_versions
            .into_iter()
            .filter_map(|(v, old)| {
                let live = old.live?;
                let still_used = versions
                    .get(&v)
                    .and_then(|n| n.live.as_ref())
                    .is_some_and(|n| Arc::ptr_eq(n, &live));
                (!still_used).then_some((v, live))
            })
            .collect();
        {
            let mut models = self.write_table();
            let record = models.entry(name.to_string()).or_default();
            record.dir = dir.to_path_buf();
            record.config_override = config_override;
            if uploaded.is_some() {
                record.uploaded = uploaded;
            }
            record.config = Some(prepared.config);
            record.versions = versions;
            record.error = None;
        }
        self.retire(name, retired);
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::unavailable(format!(
                "model '{name}' failed to load: {}",
                failures.join("; ")
            )))
        }
    }

    /// Shows the versions about to be (re)loaded as LOADING, beside those still serving.
    fn mark_loading(
        &self,
        name: &str,
        fingerprint: &Fingerprint,
        old: &BTreeMap<i64, VersionRecord>,
    ) {
        let mut models = self.write_table();
        let record = models.entry(name.to_string()).or_default();
        for (version, fp) in &fingerprint.versions {
            let unchanged = old
                .get(version)
                .is_some_and(|o| o.fingerprint == *fp && o.live.is_some());
            if !unchanged && old.get(version).is_none_or(|o| o.live.is_none()) {
                record.versions.insert(
                    *version,
                    VersionRecord {
                        state: ModelState::Loading,
                        reason: String::new(),
                        live: None,
                        fingerprint: *fp,
                    },
                );
            }
        }
    }

    /// Reads and completes a model's config, loads its backend and picks its versions.
    fn prepare(
        &self,
        name: &str,
        dir: &Path,
        config_override: Option<ModelConfig>,
        fingerprint: &Fingerprint,
    ) -> Result<Prepared> {
        let folders = repository::version_folders(dir)?;
        let from_file = match config_override {
            // An override that names no backend or platform keeps the one the model's own
            // config names (as the model files would tell Triton which backend it is).
            Some(mut config) if config.backend.is_empty() && config.platform.is_empty() => {
                if let Ok(Some(own)) = repository::read_config(dir) {
                    config.backend = own.backend;
                    config.platform = own.platform;
                }
                Some(config)
            }
            Some(config) => Some(config),
            None => repository::read_config(dir)?,
        };
        let mut config = match from_file {
            Some(config) => config,
            None if self.auto_complete => ModelConfig::default(),
            None => {
                return Err(Error::invalid(format!(
                    "model folder '{}' has no {} and config auto-complete is off \
                     (--strict-model-config=true or --disable-auto-complete-config)",
                    dir.display(),
                    repository::CONFIG_FILE
                )));
            }
        };
        if super::is_ensemble(&config) {
            config::normalize(&mut config, name)?;
            let available: Vec<i64> = fingerprint.versions.keys().copied().collect();
            let selected = repository::select_versions(config.version_policy.as_ref(), &available);
            let versions = selected
                .into_iter()
                .filter_map(|v| folders.get(&v).map(|p| (v, p.clone())))
                .collect::<Vec<_>>();
            if versions.is_empty() {
                return Err(Error::invalid(format!(
                    "ensemble '{name}' has no version folder that its version policy selects (found {available:?})"
                )));
            }
            return Ok(Prepared {
                config,
                backend: None,
                versions,
            });
        }
        if config.backend.is_empty() && config.platform.is_empty() {
            match repository::guess_backend(&folders) {
                Some(backend) => config.backend = backend.to_string(),
                None => {
                    return Err(Error::invalid(format!(
                        "model '{name}' names no backend or platform, and no model file in its version \
                         folders identifies one"
                    )));
                }
            }
        }
        let backend = self.plugins.get(&config::backend_name(&config)?)?;
        if self.auto_complete {
            config = live::auto_complete(&backend, config, name, dir, &folders)?;
        }
        config::normalize(&mut config, name)?;
        for field in config::unimplemented_fields(&config) {
            tracing::warn!(
                model = name,
                "config field '{field}' is not implemented yet and has no effect"
            );
        }
        let available: Vec<i64> = fingerprint.versions.keys().copied().collect();
        let selected = repository::select_versions(config.version_policy.as_ref(), &available);
        if selected.is_empty() {
            return Err(Error::invalid(format!(
                "model '{name}' has no version folder that its version policy selects (found {available:?})"
            )));
        }
        let versions = selected
            .into_iter()
            .filter_map(|v| folders.get(&v).map(|p| (v, p.clone())))
            .collect();
        Ok(Prepared {
            config,
            backend: Some(backend),
            versions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{
        LoadOverride, RepositoryParameter, check_unload_parameters, safe_model_name,
        safe_relative_path,
    };

    #[test]
    fn a_config_override_names_model_files_inside_the_version_folder() {
        let config = |file: &str| {
            let json =
                format!(r#"{{"backend": "onnxruntime", "default_model_filename": "{file}"}}"#);
            LoadOverride::from_parameters([("config".to_string(), RepositoryParameter::Text(json))])
        };
        assert!(config("model.onnx").is_ok());
        assert!(config("").is_ok());
        for bad in ["../../etc/passwd", "/tmp/model.py"] {
            let e = config(bad).unwrap_err();
            assert!(
                e.message.contains("inside the version folder"),
                "{bad}: {}",
                e.message
            );
        }
        let json = r#"{"backend": "onnxruntime", "cc_model_filenames": {"7.5": "../x.plan"}}"#;
        let e = LoadOverride::from_parameters([(
            "config".to_string(),
            RepositoryParameter::Text(json.to_string()),
        )])
        .unwrap_err();
        assert!(e.message.contains("'../x.plan'"), "{}", e.message);
    }

    #[test]
    fn uploaded_models_stay_inside_their_upload_folder() {
        assert_eq!(safe_model_name("simple").unwrap(), "simple");
        assert!(safe_model_name("my.model-v2").is_ok());
        for bad in [
            "", ".", "..", "../x", "a/b", "/tmp/x", "a\\..\\b", "a\0b", "x/..",
        ] {
            let e = safe_model_name(bad).unwrap_err();
            assert!(
                e.message.contains("one path component"),
                "{bad}: {}",
                e.message
            );
        }
    }

    #[test]
    fn file_paths_stay_inside_the_model_folder() {
        assert!(safe_relative_path("1/model.onnx").is_ok());
        assert!(safe_relative_path("config.pbtxt").is_ok());
        for bad in [
            "../x",
            "1/../../x",
            "/etc/passwd",
            "",
            "./1/model",
            "1//../x",
            "a\0b",
        ] {
            assert!(safe_relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn load_parameters_are_strings_or_bytes() {
        let over = LoadOverride::from_parameters([
            (
                "file:1/model.bin".to_string(),
                RepositoryParameter::Bytes(vec![1, 2]),
            ),
            (
                "file:notes.txt".to_string(),
                RepositoryParameter::Text("hi".into()),
            ),
        ])
        .unwrap();
        assert_eq!(
            over.files,
            vec![
                ("1/model.bin".to_string(), vec![1, 2]),
                ("notes.txt".to_string(), b"hi".to_vec())
            ]
        );
        for bad in [
            RepositoryParameter::Bool(true),
            RepositoryParameter::Int(1),
            RepositoryParameter::Other,
        ] {
            let e = LoadOverride::from_parameters([("file:x".to_string(), bad)]).unwrap_err();
            assert!(
                e.message.contains("must be a string or bytes"),
                "{}",
                e.message
            );
        }
        let e = LoadOverride::from_parameters([(
            "other".to_string(),
            RepositoryParameter::Text(String::new()),
        )])
        .unwrap_err();
        assert!(
            e.message.contains("unknown model load parameter"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unload_takes_only_a_boolean_unload_dependents() {
        assert!(check_unload_parameters(&[]).is_ok());
        let flag = |v| vec![("unload_dependents".to_string(), v)];
        assert!(check_unload_parameters(&flag(RepositoryParameter::Bool(true))).is_ok());
        assert!(check_unload_parameters(&flag(RepositoryParameter::Text("true".into()))).is_err());
        let other = [("force".to_string(), RepositoryParameter::Bool(true))];
        let e = check_unload_parameters(&other).unwrap_err();
        assert_eq!(e.message, "unknown or invalid unload parameter 'force'");
    }
}
