//! Object-store repositories served from local mirrors. Each `s3://` repository is copied
//! into a folder of the cache; the scans, fingerprints and loads of a local repository then
//! run on that folder unchanged. The mirror is brought up to date before each scan: at
//! start-up, before each poll (poll and watch modes), and before an explicit load of a model.
//!
//! The completeness rule: a model's objects (keys, sizes, ETags) are taken only once two
//! listings at least the settle time apart (`FERRUM_S3_SETTLE_SECS`, default 1 s) show them
//! unchanged; in poll mode consecutive polls are those listings, at start-up and on an
//! explicit load the server lists, waits the settle time and lists again. A model that is
//! taken is downloaded into a staging folder first (each object checked against its listed
//! ETag and size) and moved into the mirror only once every changed file is there, so a
//! scan never sees a half-downloaded model. Objects already in the cache (same ETag and
//! size) are linked, not downloaded again; the cache outlives the server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ControlMode;
use super::s3::client::{Client, ObjectInfo, S3ErrorKind};
use super::s3::credentials::{self, Env, Settings};
use super::s3::location::valid_segment;
use super::s3::location::{S3Location, is_s3};
use super::s3::sigv4::hex;
use crate::error::{Error, Result};

/// Seconds a model's listing must stay unchanged before it is taken (a fraction is fine).
pub const SETTLE_ENV: &str = "FERRUM_S3_SETTLE_SECS";
/// The settle time when [`SETTLE_ENV`] is not set.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);
/// A file name that, when set, marks a version folder as completely uploaded: version
/// folders without it are left out of the mirror.
pub const MARKER_ENV: &str = "FERRUM_S3_COMPLETE_MARKER";
/// How many objects are downloaded at once.
const PARALLEL_DOWNLOADS: usize = 4;
/// How many times a start-up or explicit sync lists again while models are still changing.
const WAIT_ROUNDS: usize = 5;
/// The mirror's record of what it holds, in its cache folder.
const MANIFEST: &str = "manifest.json";
/// The folder the scanner reads, in a mirror's cache folder.
const REPO_DIR: &str = "repo";
/// Where downloads are assembled before they move into the mirror.
const STAGING_DIR: &str = "staging";
/// Where replaced files go before they are deleted.
const TRASH_DIR: &str = "trash";

/// One object of a model as listed: its size and ETag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// Size in bytes.
    size: u64,
    /// ETag without quotes.
    etag: String,
}

/// A model's objects, by path inside the model folder (folder markers end with `/`).
type Listing = BTreeMap<String, Entry>;

/// What a mirror holds, saved beside it so that a restart downloads nothing unchanged.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    /// The repository it mirrors.
    location: String,
    /// Each model's objects.
    models: BTreeMap<String, Listing>,
}

/// A model seen changed in the bucket, waiting to settle.
struct Pending {
    /// Its listing when first seen so.
    listing: Listing,
    /// When it was first seen so.
    since: Instant,
}

/// A mirror's bookkeeping.
#[derive(Default)]
struct State {
    /// Each model's objects as mirrored.
    committed: BTreeMap<String, Listing>,
    /// Models whose listing differs from the mirror, waiting to settle.
    pending: BTreeMap<String, Pending>,
    /// Keys already reported as unusable.
    warned: BTreeSet<String>,
    /// Names the next staging and trash folders.
    counter: u64,
}

/// What one comparison of a listing with the mirror left: the models still waiting to
/// settle (with when they were last seen to change), and the models that could not be taken.
struct Round {
    /// Models waiting to settle.
    waiting: Vec<(String, Instant)>,
    /// Models that failed, with why.
    failures: Vec<(String, Error)>,
}

/// What keeps a mirror's cache folder ours: a lock on it, or a temporary folder.
enum Hold {
    /// An exclusive lock on the cache folder's `.lock` file.
    Lock(#[allow(dead_code)] std::fs::File),
    /// A temporary folder, deleted with the mirror.
    Temp(#[allow(dead_code)] tempfile::TempDir),
}

/// Why taking a model into the mirror failed.
enum ApplyError {
    /// An object changed while it was downloaded: the model waits to settle again.
    Changed(String),
    /// Anything else.
    Failed(Error),
}

/// One object-store repository and its local mirror.
pub struct Mirror {
    /// The S3 client.
    client: Client,
    /// The repository's location, as messages name it.
    name: String,
    /// The cache folder of this repository.
    root: PathBuf,
    /// The mirror the scanner reads (`<root>/repo`).
    repo: PathBuf,
    /// How long a listing must stay unchanged.
    settle: Duration,
    /// The completion marker of version folders, when one is asked for.
    marker: Option<String>,
    /// Bookkeeping; also serializes syncs.
    state: Mutex<State>,
    /// Keeps the cache folder ours.
    _hold: Hold,
}

/// The object-store repositories among the configured ones, and the local folders every
/// repository is scanned from.
#[derive(Default)]
pub struct Mirrors {
    /// The mirrors.
    mirrors: Vec<Mirror>,
    /// Every repository as a local folder (a mirror's folder for an object store).
    local: Vec<PathBuf>,
    /// Explicit mode: models are fetched when they are loaded.
    on_demand: bool,
}

impl Mirrors {
    /// Sets up a mirror for each `s3://` repository; other repositories are used as they are.
    pub fn open(repositories: &[PathBuf], mode: ControlMode) -> Result<Mirrors> {
        Self::open_with(repositories, mode, &credentials::process_env)
    }

    fn open_with(repositories: &[PathBuf], mode: ControlMode, env: Env) -> Result<Mirrors> {
        let mut mirrors = Mirrors {
            on_demand: mode == ControlMode::Explicit,
            ..Default::default()
        };
        for path in repositories {
            if is_s3(path) {
                let mirror = Mirror::open(&path.to_string_lossy(), env)?;
                mirrors.local.push(mirror.repo.clone());
                mirrors.mirrors.push(mirror);
                continue;
            }
            if let Some(scheme) = path.to_str().and_then(|p| p.split_once("://")).map(|s| s.0) {
                return Err(Error::unsupported(format!(
                    "model repository '{}': {scheme}:// repositories are not supported \
                     (folders and s3:// are)",
                    path.display()
                )));
            }
            mirrors.local.push(path.clone());
        }
        Ok(mirrors)
    }

    /// Every repository as the local folder it is scanned from.
    pub fn local_paths(&self) -> &[PathBuf] {
        &self.local
    }

    /// Whether any repository is an object store.
    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty()
    }

    /// Brings the mirrors up to date before the start-up scan: every model, or in explicit
    /// mode the models named (`*`: all). Waits for models still being uploaded (a few settle
    /// times at most). A repository that cannot be listed, or a model that cannot be
    /// downloaded, is an error: the server does not start.
    pub fn sync_startup(&self, explicit: Option<&[String]>) -> Result<()> {
        let all = explicit.is_none_or(|names| names.iter().any(|n| n == "*"));
        for mirror in &self.mirrors {
            match explicit.filter(|_| !all) {
                None => mirror.sync(None, true)?,
                // All the names in one sync: they settle together, in one wait.
                Some(names) => {
                    let names: Vec<&str> = names
                        .iter()
                        .map(String::as_str)
                        .filter(|n| model_name(n))
                        .collect();
                    mirror.sync(Some(&names), true)?;
                }
            }
        }
        Ok(())
    }

    /// Brings the mirrors up to date before a poll. Failures are logged: what is loaded keeps
    /// serving, and the mirror keeps its last good state.
    pub fn refresh(&self) {
        for mirror in &self.mirrors {
            if let Err(e) = mirror.sync(None, false) {
                tracing::error!(
                    "cannot update model repository {} ({}); models loaded from it keep serving",
                    mirror.name,
                    e.message
                );
            }
        }
    }

    /// Fetches one model's current objects before an explicit load (explicit mode only; in
    /// the other modes the start-up and poll syncs keep the mirrors current).
    pub fn fetch_model(&self, name: &str) -> Result<()> {
        if !self.on_demand || !model_name(name) {
            return Ok(());
        }
        for mirror in &self.mirrors {
            mirror.sync(Some(&[name]), true)?;
        }
        Ok(())
    }
}

/// Whether a name can be a model folder of the repository (one path part, not hidden).
fn model_name(name: &str) -> bool {
    valid_segment(name) && !name.contains('/') && !name.starts_with('.')
}

/// The top-level entry of a path inside a model folder (`1` for `1/model.onnx`).
fn top(rel: &str) -> &str {
    rel.split('/').next().unwrap_or(rel)
}

/// The size of a regular file, if it is one.
fn file_size(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// Moves a file or folder aside, if it exists.
fn move_aside(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(from) {
        Ok(_) => std::fs::rename(from, to),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a file or folder, whichever it is; a missing one is fine.
fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Removes a staging or trash folder when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_any(&self.0);
    }
}

/// Locks a cache folder for this process; `None` when another process holds it.
fn lock_folder(root: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(root)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(".lock"))?;
    // SAFETY: flock on a descriptor this function owns; it touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(file));
    }
    let error = std::io::Error::last_os_error();
    if error.kind() == std::io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(error)
    }
}

/// The folder holding the cache folders of object-store repositories.
fn cache_base(env: Env) -> Option<PathBuf> {
    env("TRITON_AWS_MOUNT_DIRECTORY")
        .map(PathBuf::from)
        .or_else(|| env("FERRUM_CACHE_DIR").map(|d| PathBuf::from(d).join("s3")))
        .or_else(|| env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("ferrum/s3")))
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/ferrum/s3")))
}

/// The settle time: [`SETTLE_ENV`] or [`DEFAULT_SETTLE`].
fn settle_time(env: Env) -> Result<Duration> {
    match env(SETTLE_ENV) {
        None => Ok(DEFAULT_SETTLE),
        Some(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{SETTLE_ENV}='{text}' is not a number of seconds (0 or more)"
                ))
            }),
    }
}

impl Mirror {
    /// Sets up the mirror of an `s3://` repository in its cache folder, keeping what an
    /// earlier run downloaded. Nothing is listed yet.
    fn open(url: &str, env: Env) -> Result<Mirror> {
        let location = S3Location::parse(url)?;
        let settle = settle_time(env)?;
        let marker = env(MARKER_ENV);
        if let Some(marker) = marker
            .as_deref()
            .filter(|m| !valid_segment(m) || m.contains('/'))
        {
            return Err(Error::invalid(format!(
                "{MARKER_ENV}='{marker}' is not a file name"
            )));
        }
        let client = Client::new(location.clone(), env)?;
        let name = location.to_string();
        let identity = format!(
            "{}\n{}\n{}",
            client.endpoint_name(),
            location.bucket,
            location.prefix
        );
        let hash = hex(&Sha256::digest(identity.as_bytes()));
        let hash = hash.get(..24).unwrap_or(&hash).to_string();
        let mut held = None;
        if let Some(base) = cache_base(env) {
            let root = base.join(&hash);
            match lock_folder(&root) {
                Ok(Some(lock)) => held = Some((root, Hold::Lock(lock))),
                Ok(None) => tracing::warn!(
                    "the cache folder {} of model repository {name} is in use by another \
                     process; mirroring into a temporary folder instead",
                    root.display()
                ),
                Err(e) => tracing::warn!(
                    "cannot use the cache folder {} of model repository {name} ({e}); \
                     mirroring into a temporary folder instead",
                    root.display()
                ),
            }
        }
        let (root, hold) = match held {
            Some(held) => held,
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("ferrum-s3-")
                    .tempdir()
                    .map_err(|e| {
                        Error::internal(format!(
                            "cannot create a folder to mirror model repository {name} into: {e}"
                        ))
                    })?;
                (temp.path().to_path_buf(), Hold::Temp(temp))
            }
        };
        let mirror = Mirror {
            client,
            repo: root.join(REPO_DIR),
            root,
            name,
            settle,
            marker,
            state: Mutex::new(State::default()),
            _hold: hold,
        };
        mirror.restore()?;
        tracing::info!(
            "model repository {} is mirrored into {} (a model is taken once its objects are \
             unchanged for {:?}{})",
            mirror.name,
            mirror.repo.display(),
            mirror.settle,
            match &mirror.marker {
                Some(marker) => format!(", a version folder once it holds '{marker}'"),
                None => String::new(),
            }
        );
        Ok(mirror)
    }

    /// Takes over what an earlier run left in the cache folder: models whose files still
    /// match the manifest are kept, anything else is removed.
    fn restore(&self) -> Result<()> {
        let io = |what: &str, path: &Path, e: std::io::Error| {
            Error::internal(format!(
                "model repository {}: cannot {what} '{}': {e}",
                self.name,
                path.display()
            ))
        };
        for scratch in [STAGING_DIR, TRASH_DIR] {
            remove_any(&self.root.join(scratch));
        }
        std::fs::create_dir_all(&self.repo).map_err(|e| io("create", &self.repo, e))?;
        let manifest: Manifest = std::fs::read(self.root.join(MANIFEST))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(|m: &Manifest| m.location == self.name)
            .unwrap_or_default();
        let mut state = self.state.lock();
        for (model, listing) in manifest.models {
            if valid_segment(&model) && matches_disk(&self.repo.join(&model), &listing) {
                state.committed.insert(model, listing);
            }
        }
        let entries = std::fs::read_dir(&self.repo).map_err(|e| io("read", &self.repo, e))?;
        for entry in entries.flatten() {
            let keep = entry
                .file_name()
                .to_str()
                .is_some_and(|n| state.committed.contains_key(n));
            if !keep {
                remove_any(&entry.path());
            }
        }
        if !state.committed.is_empty() {
            tracing::info!(
                "model repository {}: {} model(s) in the cache from an earlier run",
                self.name,
                state.committed.len()
            );
        }
        self.save(&state)
    }

    /// Writes the manifest (atomically).
    fn save(&self, state: &State) -> Result<()> {
        let manifest = Manifest {
            location: self.name.clone(),
            models: state.committed.clone(),
        };
        let path = self.root.join(MANIFEST);
        let temp = self.root.join(format!("{MANIFEST}.tmp"));
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| Error::internal(format!("cannot encode the mirror manifest: {e}")))?;
        std::fs::write(&temp, bytes)
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| {
                Error::internal(format!(
                    "model repository {}: cannot write '{}': {e}",
                    self.name,
                    path.display()
                ))
            })
    }

    /// Lists the repository (or one model of it) and groups the objects by model.
    fn list(
        &self,
        settings: &Settings,
        model: Option<&str>,
        state: &mut State,
    ) -> Result<BTreeMap<String, Listing>> {
        let base = self.client.location().key_prefix();
        let prefix = match model {
            Some(model) => format!("{base}{model}/"),
            None => base.clone(),
        };
        let objects = self.client.list(settings, &prefix).map_err(|e| {
            let mut error = Error::from(e);
            error.message = format!("model repository {}: {}", self.name, error.message);
            error
        })?;
        let mut models: BTreeMap<String, Listing> = BTreeMap::new();
        for object in objects {
            let Some(rel) = object.key.strip_prefix(&base) else {
                continue;
            };
            // Objects beside the model folders are not part of any model.
            let Some((model, rest)) = rel.split_once('/') else {
                continue;
            };
            if rest.is_empty() || model.starts_with('.') {
                continue;
            }
            let is_folder = rest.ends_with('/');
            let parts = rest.strip_suffix('/').unwrap_or(rest);
            let usable = valid_segment(model)
                && parts.split('/').all(valid_segment)
                && (!is_folder || object.size == 0);
            if !usable {
                if state.warned.insert(object.key.clone()) {
                    tracing::warn!(
                        "model repository {}: object '{}' is left out: its key is not a usable \
                         path (empty, '.' or '..' parts, or a folder marker with contents)",
                        self.name,
                        object.key
                    );
                }
                continue;
            }
            models.entry(model.to_string()).or_default().insert(
                rest.to_string(),
                Entry {
                    size: object.size,
                    etag: object.etag,
                },
            );
        }
        // A key that is also the folder of other keys cannot be both on disk: the folder wins.
        for (model, listing) in &mut models {
            let clashes: Vec<String> = listing
                .keys()
                .filter(|rel| !rel.ends_with('/'))
                .filter(|rel| {
                    let folder = format!("{rel}/");
                    listing
                        .range(folder.clone()..)
                        .next()
                        .is_some_and(|(k, _)| k.starts_with(&folder))
                })
                .cloned()
                .collect();
            for rel in clashes {
                listing.remove(&rel);
                let key = format!("{base}{model}/{rel}");
                if state.warned.insert(key.clone()) {
                    tracing::warn!(
                        "model repository {}: object '{key}' is left out: other objects use it \
                         as a folder",
                        self.name
                    );
                }
            }
        }
        if let Some(marker) = &self.marker {
            for listing in models.values_mut() {
                keep_marked_versions(listing, marker);
            }
            models.retain(|_, listing| !listing.is_empty());
        }
        Ok(models)
    }

    /// Brings the mirror up to date (the whole repository, or the models named). With `wait`, lists
    /// again (a few times at most) until the models that changed have settled, and failures
    /// are errors; without, models still settling are taken by a later call and failures are
    /// logged.
    fn sync(&self, models: Option<&[&str]>, wait: bool) -> Result<()> {
        let settings = Settings::resolve(&credentials::process_env).map_err(|e| {
            Error::invalid(format!("model repository {}: {}", self.name, e.message))
        })?;
        let mut state = self.state.lock();
        let mut rounds = 0;
        loop {
            let listed = match models {
                None => self.list(&settings, None, &mut state)?,
                Some(names) => {
                    let mut listed = BTreeMap::new();
                    for name in names {
                        listed.extend(self.list(&settings, Some(name), &mut state)?);
                    }
                    listed
                }
            };
            let Round { waiting, failures } = self.round(&settings, &mut state, models, listed);
            if !wait {
                for (name, error) in failures {
                    tracing::error!(
                        model = %name,
                        "cannot take the model from {}: {}; what is loaded keeps serving",
                        self.name,
                        error.message
                    );
                }
                return Ok(());
            }
            if let Some((name, error)) = failures.into_iter().next() {
                return Err(Error {
                    kind: error.kind,
                    message: format!("model '{name}': {}", error.message),
                });
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if rounds == WAIT_ROUNDS {
                let names: Vec<&str> = waiting.iter().map(|(n, _)| n.as_str()).collect();
                if models.is_some() {
                    return Err(Error::unavailable(format!(
                        "model '{}' is still changing in {} (its objects changed between \
                         listings); load it again once its upload is complete",
                        names.join("', '"),
                        self.name
                    )));
                }
                tracing::warn!(
                    "model repository {}: {} still changing; left out until their objects \
                     stop changing",
                    self.name,
                    names.join(", ")
                );
                return Ok(());
            }
            rounds += 1;
            let now = Instant::now();
            let ready_at = waiting
                .iter()
                .map(|(_, since)| *since + self.settle)
                .max()
                .unwrap_or(now);
            let pause = ready_at.saturating_duration_since(now).clamp(
                Duration::from_millis(10),
                self.settle.max(Duration::from_millis(10)),
            );
            drop(state);
            std::thread::sleep(pause);
            state = self.state.lock();
        }
    }

    /// Compares one listing with the mirror: models unchanged are left alone, models changed
    /// wait to settle, models settled are taken. Returns the models still waiting (with when
    /// they were last seen to change) and the models that could not be taken.
    fn round(
        &self,
        settings: &Settings,
        state: &mut State,
        models: Option<&[&str]>,
        mut listed: BTreeMap<String, Listing>,
    ) -> Round {
        let names: BTreeSet<String> = match models {
            Some(models) => models.iter().map(|m| m.to_string()).collect(),
            None => state
                .committed
                .keys()
                .chain(listed.keys())
                .cloned()
                .collect(),
        };
        let mut waiting = Vec::new();
        let mut ready = Vec::new();
        for name in names {
            let seen = listed.remove(&name).unwrap_or_default();
            if state.committed.get(&name).unwrap_or(&Listing::new()) == &seen {
                state.pending.remove(&name);
                continue;
            }
            match state.pending.get(&name) {
                Some(p) if p.listing == seen && p.since.elapsed() >= self.settle => {
                    ready.push((name, seen));
                }
                Some(p) if p.listing == seen => waiting.push((name, p.since)),
                _ => {
                    tracing::info!(
                        model = %name,
                        "changed in {}; taking it once its objects are unchanged for {:?}",
                        self.name,
                        self.settle
                    );
                    let now = Instant::now();
                    state.pending.insert(
                        name.clone(),
                        Pending {
                            listing: seen,
                            since: now,
                        },
                    );
                    waiting.push((name, now));
                }
            }
        }
        let mut failures = Vec::new();
        let mut taken = Vec::new();
        for (name, listing) in ready {
            state.pending.remove(&name);
            match self.apply(settings, state, &name, &listing) {
                Ok(downloaded) => {
                    let objects = listing.len();
                    if listing.is_empty() {
                        state.committed.remove(&name);
                        tracing::info!(model = %name, "removed from {}", self.name);
                    } else {
                        state.committed.insert(name.clone(), listing);
                        tracing::info!(
                            model = %name,
                            "mirrored from {} ({objects} object(s), {downloaded} downloaded)",
                            self.name
                        );
                    }
                    taken.push(name);
                }
                Err(ApplyError::Changed(why)) => {
                    tracing::info!(model = %name, "{why}; waiting for it to settle again");
                    waiting.push((name, Instant::now()));
                }
                Err(ApplyError::Failed(error)) => failures.push((name, error)),
            }
        }
        // One manifest write for the round; if it fails, every model it took is reported.
        if !taken.is_empty()
            && let Err(e) = self.save(state)
        {
            failures.extend(taken.into_iter().map(|name| (name, e.clone())));
        }
        Round { waiting, failures }
    }

    /// Makes the mirror's copy of a model match a listing: changed top-level files and
    /// folders are assembled in a staging folder (unchanged objects linked from the cache,
    /// the others downloaded and checked), then moved into place. Returns how many objects
    /// were downloaded.
    fn apply(
        &self,
        settings: &Settings,
        state: &mut State,
        name: &str,
        listing: &Listing,
    ) -> std::result::Result<usize, ApplyError> {
        state.counter += 1;
        let staging = Scratch(self.root.join(STAGING_DIR).join(format!(
            "{}-{}",
            std::process::id(),
            state.counter
        )));
        let trash = Scratch(self.root.join(TRASH_DIR).join(format!(
            "{}-{}",
            std::process::id(),
            state.counter
        )));
        let failed = |what: &str, path: &Path, e: std::io::Error| {
            ApplyError::Failed(Error::internal(format!(
                "cannot {what} '{}': {e}",
                path.display()
            )))
        };
        let current = state.committed.get(name).cloned().unwrap_or_default();
        let model_dir = self.repo.join(name);
        // Objects the cache already holds, by ETag and size.
        let mut cached: HashMap<(&str, u64), PathBuf> = HashMap::new();
        for (model, objects) in &state.committed {
            for (rel, entry) in objects {
                if !rel.ends_with('/') && !entry.etag.is_empty() {
                    cached.insert(
                        (entry.etag.as_str(), entry.size),
                        self.repo.join(model).join(rel),
                    );
                }
            }
        }
        let of = |listing: &Listing, t: &str| -> Vec<(String, Entry)> {
            listing
                .iter()
                .filter(|(rel, _)| top(rel) == t)
                .map(|(rel, entry)| (rel.clone(), entry.clone()))
                .collect()
        };
        let tops: BTreeSet<String> = current
            .keys()
            .chain(listing.keys())
            .map(|rel| top(rel).to_string())
            .collect();
        let mut changed = Vec::new();
        let mut downloads: Vec<(ObjectInfo, PathBuf)> = Vec::new();
        for t in tops {
            let new = of(listing, &t);
            if of(&current, &t) == new {
                continue;
            }
            for (rel, entry) in &new {
                let dest = staging.0.join(rel);
                if rel.ends_with('/') {
                    std::fs::create_dir_all(&dest).map_err(|e| failed("create", &dest, e))?;
                    continue;
                }
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| failed("create", parent, e))?;
                }
                let here = model_dir.join(rel);
                let reuse = (current.get(rel) == Some(entry)
                    && file_size(&here) == Some(entry.size))
                .then_some(here)
                .or_else(|| {
                    cached
                        .get(&(entry.etag.as_str(), entry.size))
                        .filter(|p| file_size(p) == Some(entry.size))
                        .cloned()
                });
                let linked = reuse.is_some_and(|source| {
                    std::fs::hard_link(&source, &dest).is_ok()
                        || std::fs::copy(&source, &dest).is_ok()
                });
                if !linked {
                    let object = ObjectInfo {
                        key: format!("{}{name}/{rel}", self.client.location().key_prefix()),
                        size: entry.size,
                        etag: entry.etag.clone(),
                    };
                    downloads.push((object, dest));
                }
            }
            changed.push((t, new.is_empty()));
        }
        let downloaded = downloads.len();
        self.download_all(settings, &downloads)?;

        // Everything is here: move it into place. The mirror is scanned only after this
        // returns (syncs and scans run under the model lifecycle lock).
        std::fs::create_dir_all(&trash.0).map_err(|e| failed("create", &trash.0, e))?;
        let commit = || -> std::io::Result<()> {
            if listing.is_empty() {
                return move_aside(&model_dir, &trash.0.join(name));
            }
            std::fs::create_dir_all(&model_dir)?;
            for (t, removed) in &changed {
                move_aside(&model_dir.join(t), &trash.0.join(t))?;
                if !removed {
                    std::fs::rename(staging.0.join(t), model_dir.join(t))?;
                }
            }
            Ok(())
        };
        if let Err(e) = commit() {
            // What the folder holds now is unknown: the next sync rebuilds it whole.
            state.committed.remove(name);
            return Err(failed("update", &model_dir, e));
        }
        Ok(downloaded)
    }
}

impl Mirror {
    /// Downloads objects into their staging paths, a few at a time; the first failure stops
    /// the rest.
    fn download_all(
        &self,
        settings: &Settings,
        downloads: &[(ObjectInfo, PathBuf)],
    ) -> std::result::Result<(), ApplyError> {
        let next = AtomicUsize::new(0);
        let failure: Mutex<Option<ApplyError>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..PARALLEL_DOWNLOADS.min(downloads.len()) {
                scope.spawn(|| {
                    while failure.lock().is_none() {
                        let Some((object, dest)) =
                            downloads.get(next.fetch_add(1, Ordering::SeqCst))
                        else {
                            return;
                        };
                        if let Err(e) = self.client.download(settings, object, dest) {
                            let error = match e.kind {
                                S3ErrorKind::Changed => ApplyError::Changed(e.message),
                                _ => ApplyError::Failed(e.into()),
                            };
                            failure.lock().get_or_insert(error);
                        }
                    }
                });
            }
        });
        match failure.into_inner() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Keeps only the version folders that hold the completion marker (and leaves the marker
/// itself out of the mirror; a version folder holding nothing else stays as an empty folder).
fn keep_marked_versions(listing: &mut Listing, marker: &str) {
    let version_of = |rel: &str| {
        rel.split_once('/')
            .filter(|(top, _)| top.parse::<i64>().is_ok_and(|v| v > 0))
            .map(|(top, rest)| (top.to_string(), rest.to_string()))
    };
    let complete: BTreeSet<String> = listing
        .keys()
        .filter_map(|rel| version_of(rel))
        .filter(|(_, rest)| rest == marker)
        .map(|(top, _)| top)
        .collect();
    listing.retain(|rel, _| match version_of(rel) {
        Some((top, rest)) => complete.contains(&top) && rest != marker,
        None => true,
    });
    for top in complete {
        listing.entry(format!("{top}/")).or_default();
    }
}

/// Whether a model folder holds exactly the files of a listing, with their sizes.
fn matches_disk(dir: &Path, listing: &Listing) -> bool {
    let mut files = BTreeMap::new();
    if !walk(dir, "", &mut files, 0) {
        return false;
    }
    let expected: BTreeMap<String, u64> = listing
        .iter()
        .filter(|(rel, _)| !rel.ends_with('/'))
        .map(|(rel, entry)| (rel.clone(), entry.size))
        .collect();
    files == expected
        && listing
            .keys()
            .filter(|rel| rel.ends_with('/'))
            .all(|rel| dir.join(rel).is_dir())
}

/// Collects the regular files under a folder with their sizes; false on anything else
/// (symbolic links, unreadable entries, too deep).
fn walk(dir: &Path, rel: &str, files: &mut BTreeMap<String, u64>, depth: usize) -> bool {
    if depth > 32 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return false;
        };
        let path = entry.path();
        let child = format!("{rel}{name}");
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                if !walk(&path, &format!("{child}/"), files, depth + 1) {
                    return false;
                }
            }
            Ok(m) if m.is_file() => {
                files.insert(child, m.len());
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(entries: &[(&str, u64, &str)]) -> Listing {
        entries
            .iter()
            .map(|(rel, size, etag)| {
                (
                    rel.to_string(),
                    Entry {
                        size: *size,
                        etag: etag.to_string(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_manifest_is_trusted_only_while_the_files_match_it() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir_all(model.join("1")).unwrap();
        std::fs::create_dir_all(model.join("2")).unwrap();
        std::fs::write(model.join("config.pbtxt"), "abc").unwrap();
        std::fs::write(model.join("1/model.bin"), "12345").unwrap();
        let expected = listing(&[
            ("config.pbtxt", 3, "e1"),
            ("1/model.bin", 5, "e2"),
            ("2/", 0, "e3"),
        ]);
        assert!(matches_disk(&model, &expected));
        std::fs::write(model.join("1/model.bin"), "1234").unwrap();
        assert!(!matches_disk(&model, &expected));
        std::fs::write(model.join("1/model.bin"), "12345").unwrap();
        std::fs::write(model.join("1/extra"), "").unwrap();
        assert!(!matches_disk(&model, &expected));
        std::fs::remove_file(model.join("1/extra")).unwrap();
        std::fs::remove_dir(model.join("2")).unwrap();
        assert!(!matches_disk(&model, &expected));
        assert!(!matches_disk(&dir.path().join("missing"), &expected));
    }

    #[test]
    fn the_completion_marker_hides_unfinished_versions() {
        let mut models = listing(&[
            ("config.pbtxt", 3, "c"),
            ("labels/_DONE", 1, "l"),
            ("1/model.onnx", 10, "a"),
            ("1/_DONE", 0, "m"),
            ("2/model.onnx", 7, "b"),
            ("3/_DONE", 0, "m"),
        ]);
        keep_marked_versions(&mut models, "_DONE");
        assert_eq!(
            models.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["1/", "1/model.onnx", "3/", "config.pbtxt", "labels/_DONE"]
        );
    }

    #[test]
    fn open_sorts_repositories_and_refuses_other_stores() {
        let cache = tempfile::tempdir().unwrap();
        let cache_dir = cache.path().to_str().unwrap().to_string();
        let env = move |name: &str| (name == "FERRUM_CACHE_DIR").then(|| cache_dir.clone());
        let repos = vec![
            PathBuf::from("/models"),
            PathBuf::from("s3://127.0.0.1:9/bucket/repo"),
        ];
        let mirrors = Mirrors::open_with(&repos, ControlMode::Poll, &env).unwrap();
        assert!(!mirrors.is_empty());
        let local = mirrors.local_paths();
        assert_eq!(local[0], PathBuf::from("/models"));
        assert!(local[1].starts_with(cache.path().join("s3")), "{local:?}");
        assert!(local[1].ends_with(REPO_DIR));
        assert!(local[1].is_dir());

        // A second server on the same cache folder mirrors into a temporary folder.
        let second = Mirrors::open_with(&repos, ControlMode::Poll, &env).unwrap();
        assert_ne!(second.local_paths()[1], local[1]);
        drop(second);

        let gcs = Mirrors::open_with(&[PathBuf::from("gs://b/r")], ControlMode::None, &env);
        let error = gcs.err().unwrap();
        assert!(error.message.contains("gs://"), "{}", error.message);
        let bad = Mirrors::open_with(&[PathBuf::from("s3://")], ControlMode::None, &env);
        assert!(bad.is_err());
        let settle = |name: &str| (name == SETTLE_ENV).then(|| "soon".to_string());
        let error = Mirrors::open_with(&repos, ControlMode::None, &settle)
            .err()
            .unwrap();
        assert!(error.message.contains(SETTLE_ENV), "{}", error.message);
    }

    #[test]
    fn restore_keeps_only_what_matches_the_manifest() {
        let cache = tempfile::tempdir().unwrap();
        let cache_dir = cache.path().to_str().unwrap().to_string();
        let env = move |name: &str| (name == "FERRUM_CACHE_DIR").then(|| cache_dir.clone());
        let url = "s3://127.0.0.1:9/bucket/repo";
        let mirror = Mirror::open(url, &env).unwrap();
        let (root, repo) = (mirror.root.clone(), mirror.repo.clone());
        std::fs::create_dir_all(repo.join("good/1")).unwrap();
        std::fs::write(repo.join("good/1/m.bin"), "xy").unwrap();
        std::fs::create_dir_all(repo.join("stale/1")).unwrap();
        std::fs::create_dir_all(repo.join("stray")).unwrap();
        {
            let mut state = mirror.state.lock();
            state
                .committed
                .insert("good".into(), listing(&[("1/m.bin", 2, "a")]));
            state
                .committed
                .insert("stale".into(), listing(&[("1/m.bin", 2, "b")]));
            mirror.save(&state).unwrap();
        }
        drop(mirror);
        let again = Mirror::open(url, &env).unwrap();
        assert_eq!(again.root, root);
        let state = again.state.lock();
        assert_eq!(state.committed.keys().collect::<Vec<_>>(), vec!["good"]);
        assert!(repo.join("good/1/m.bin").is_file());
        assert!(!repo.join("stale").exists());
        assert!(!repo.join("stray").exists());
    }
}
