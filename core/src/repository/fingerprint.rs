//! Cheap change detection for model folders: a hash of every file's path, size, modification
//! time and inode, kept separately for the config part and for each version folder, so that a
//! change reloads only what it touches.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How deep a model folder is walked.
const MAX_DEPTH: usize = 12;
/// How many entries a model folder's walk looks at, at most.
const MAX_ENTRIES: usize = 100_000;

/// The state of a model folder on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// Everything outside the version folders (config.pbtxt, label files, ...).
    pub config: u64,
    /// Each numbered version folder's contents.
    pub versions: BTreeMap<i64, u64>,
}

/// Fingerprints a model folder. Unreadable entries count as changes, never as errors.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let mut config = DefaultHasher::new();
    let mut versions = BTreeMap::new();
    let mut budget = MAX_ENTRIES;
    let mut entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(e) => e.flatten().collect(),
        Err(e) => {
            e.kind().hash(&mut config);
            return Fingerprint {
                config: config.finish(),
                versions,
            };
        }
    };
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let path = entry.path();
        let version = name
            .to_str()
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|v| *v > 0);
        match version {
            Some(v) if path.is_dir() => {
                let mut h = DefaultHasher::new();
                walk(&path, &mut h, 0, &mut budget);
                versions.insert(v, h.finish());
            }
            _ => {
                name.hash(&mut config);
                stat(&path, &mut config);
                if path.is_dir() {
                    walk(&path, &mut config, 0, &mut budget);
                }
            }
        }
    }
    Fingerprint {
        config: config.finish(),
        versions,
    }
}

fn stat(path: &Path, h: &mut DefaultHasher) {
    match std::fs::metadata(path) {
        Ok(m) => (m.len(), m.mtime(), m.mtime_nsec(), m.ino(), m.is_dir()).hash(h),
        Err(e) => e.kind().hash(h),
    }
}

fn walk(dir: &Path, h: &mut DefaultHasher, depth: usize, budget: &mut usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let mut entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(e) => e.flatten().collect(),
        Err(e) => {
            e.kind().hash(h);
            return;
        }
    };
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let path = entry.path();
        entry.file_name().hash(h);
        stat(&path, h);
        if path.is_dir() {
            walk(&path, h, depth + 1, budget);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_config_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("1")).unwrap();
        std::fs::create_dir_all(dir.path().join("2")).unwrap();
        std::fs::write(dir.path().join("config.pbtxt"), "a").unwrap();
        let before = fingerprint(dir.path());
        assert_eq!(before.versions.len(), 2);

        std::fs::write(dir.path().join("2/model.bin"), "x").unwrap();
        let after = fingerprint(dir.path());
        assert_eq!(after.config, before.config);
        assert_eq!(after.versions[&1], before.versions[&1]);
        assert_ne!(after.versions[&2], before.versions[&2]);

        std::fs::write(dir.path().join("config.pbtxt"), "bb").unwrap();
        assert_ne!(fingerprint(dir.path()).config, after.config);
    }
}
