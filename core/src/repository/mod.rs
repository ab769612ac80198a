//! The model repository on disk: model folders, their config.pbtxt, numbered version folders,
//! and the version policy that picks which versions to serve.

mod fingerprint;
pub mod mirror;
pub mod s3;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{ModelConfig, ModelVersionPolicy};
use crate::error::{Error, Result};
use crate::proto::inference::model_version_policy::PolicyChoice;
pub use fingerprint::{Fingerprint, fingerprint};
pub use mirror::Mirrors;
pub use s3::is_s3;

/// How the server follows changes to the model repository.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ControlMode {
    /// Load every model at start-up; never change.
    #[default]
    None,
    /// Rescan the repository periodically and apply changes.
    Poll,
    /// Load and unload only through the repository API and the start-up model list.
    Explicit,
    /// Watch the repository's files and apply changes as they happen.
    Watch,
}

impl ControlMode {
    /// The mode's name, as the `--model-control-mode` flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlMode::None => "none",
            ControlMode::Poll => "poll",
            ControlMode::Explicit => "explicit",
            ControlMode::Watch => "watch",
        }
    }
}

/// The name of a model's configuration file.
pub const CONFIG_FILE: &str = "config.pbtxt";

/// A model folder found in a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDir {
    /// The model's name (the folder's name).
    pub name: String,
    /// The folder.
    pub path: PathBuf,
}

/// What a scan of the repositories found.
#[derive(Debug)]
pub struct Scan {
    /// Model folders, by name.
    pub models: Vec<ModelDir>,
    /// Names found in more than one repository, with the error to report for each.
    pub conflicts: Vec<(String, Error)>,
}

/// Lists the model folders of every repository. A name found in two repositories is an error
/// for that name only.
pub fn scan(repositories: &[PathBuf]) -> Result<Scan> {
    let mut found: BTreeMap<String, ModelDir> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for repo in repositories {
        let entries = std::fs::read_dir(repo).map_err(|e| {
            Error::invalid(format!(
                "cannot read model repository '{}': {e}",
                repo.display()
            ))
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            if let Some(first) = found.get(&name) {
                conflicts.push((
                    name.clone(),
                    Error::invalid(format!(
                        "model '{name}' appears in two repositories: '{}' and '{}'",
                        first.path.display(),
                        path.display()
                    )),
                ));
                continue;
            }
            found.insert(name.clone(), ModelDir { name, path });
        }
    }
    for (name, _) in &conflicts {
        found.remove(name);
    }
    Ok(Scan {
        models: found.into_values().collect(),
        conflicts,
    })
}

/// Reads a model folder's config.pbtxt, or `None` when the folder has none.
pub fn read_config(dir: &Path) -> Result<Option<ModelConfig>> {
    let path = dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => crate::config::parse_text(&text)
            .map(Some)
            .map_err(|e| Error::invalid(format!("{}: {}", path.display(), e.message))),
        // A config.pbtxt that is there but cannot be followed (a dangling symbolic link) is
        // an unreadable config, not a missing one: treating it as missing would auto-complete
        // a different config and replace the one serving.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && std::fs::symlink_metadata(&path).is_err() =>
        {
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::invalid(format!(
            "cannot read {}: it is a symbolic link to a file that does not exist",
            path.display()
        ))),
        Err(e) => Err(Error::invalid(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The numbered version folders of a model, ascending.
pub fn version_folders(dir: &Path) -> Result<BTreeMap<i64, PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::invalid(format!("cannot read model folder '{}': {e}", dir.display()))
    })?;
    let mut versions = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let parsed = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<i64>().ok());
        if let Some(v) = parsed.filter(|v| *v > 0) {
            versions.insert(v, path);
        }
    }
    Ok(versions)
}

/// Model file names that identify a backend when a model has no config saying which.
const BACKEND_FILES: &[(&str, &str)] = &[
    ("model.onnx", "onnxruntime"),
    ("model.pt", "pytorch"),
    ("model.plan", "tensorrt"),
    ("model.xml", "openvino"),
    ("model.py", "python"),
    ("model.savedmodel", "tensorflow"),
    ("model.graphdef", "tensorflow"),
];

/// The backend a model's files imply (looking in its highest version folder first).
pub fn guess_backend(folders: &BTreeMap<i64, PathBuf>) -> Option<&'static str> {
    folders.values().rev().find_map(|folder| {
        BACKEND_FILES
            .iter()
            .find(|(file, _)| folder.join(file).exists())
            .map(|(_, backend)| *backend)
    })
}

/// The versions a policy selects from those available.
pub fn select_versions(policy: Option<&ModelVersionPolicy>, available: &[i64]) -> Vec<i64> {
    let mut sorted = available.to_vec();
    sorted.sort_unstable();
    match policy.and_then(|p| p.policy_choice.as_ref()) {
        Some(PolicyChoice::All(_)) => sorted,
        Some(PolicyChoice::Specific(specific)) => sorted
            .into_iter()
            .filter(|v| specific.versions.contains(v))
            .collect(),
        Some(PolicyChoice::Latest(latest)) => {
            let n = usize::try_from(latest.num_versions.max(1)).unwrap_or(1);
            let skip = sorted.len().saturating_sub(n);
            sorted.into_iter().skip(skip).collect()
        }
        None => sorted.into_iter().last().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inference::model_version_policy::{All, Latest, Specific};

    fn policy(choice: PolicyChoice) -> ModelVersionPolicy {
        ModelVersionPolicy {
            policy_choice: Some(choice),
        }
    }

    #[test]
    fn version_policies() {
        let available = [3, 1, 2];
        assert_eq!(select_versions(None, &available), vec![3]);
        let latest2 = policy(PolicyChoice::Latest(Latest { num_versions: 2 }));
        assert_eq!(select_versions(Some(&latest2), &available), vec![2, 3]);
        let all = policy(PolicyChoice::All(All {}));
        assert_eq!(select_versions(Some(&all), &available), vec![1, 2, 3]);
        let specific = policy(PolicyChoice::Specific(Specific {
            versions: vec![1, 7],
        }));
        assert_eq!(select_versions(Some(&specific), &available), vec![1]);
    }

    #[test]
    fn scans_folders_and_versions() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("m/1")).unwrap();
        std::fs::create_dir_all(repo.path().join("m/10")).unwrap();
        std::fs::create_dir_all(repo.path().join("m/not_a_version")).unwrap();
        std::fs::write(repo.path().join("README"), "x").unwrap();
        let Scan { models, conflicts } = scan(&[repo.path().to_path_buf()]).unwrap();
        assert!(conflicts.is_empty());
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].name, "m");
        let versions = version_folders(&models[0].path).unwrap();
        assert_eq!(versions.keys().copied().collect::<Vec<_>>(), vec![1, 10]);
        assert!(read_config(&models[0].path).unwrap().is_none());
    }

    #[test]
    fn an_unreadable_config_is_an_error_not_a_missing_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(CONFIG_FILE);
        std::os::unix::fs::symlink(dir.path().join("gone.pbtxt"), &config).unwrap();
        let error = read_config(dir.path()).unwrap_err();
        assert!(error.message.contains("symbolic link"), "{}", error.message);
        std::fs::remove_file(&config).unwrap();
        std::fs::create_dir(&config).unwrap();
        assert!(read_config(dir.path()).is_err());
    }
}
