//! Which live version holds each open sequence, so that a sequence stays on the version it
//! started on when the model is reloaded: its later requests go there until it ends or idles
//! out, while new sequences start on the new version.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::LiveModel;
use crate::scheduler::SequenceId;

/// model → sequence id → (the version's serial, the version).
type OpenSequences = HashMap<String, HashMap<SequenceId, (u64, Arc<LiveModel>)>>;

/// Open sequences by model name and correlation id, each with the version it runs on.
#[derive(Default)]
pub struct SequenceOwners {
    /// The open sequences.
    open: Mutex<OpenSequences>,
}

impl SequenceOwners {
    /// Records that sequence `id` of `model` starts on `live`.
    pub fn claim(&self, model: &str, id: SequenceId, live: &Arc<LiveModel>) {
        let replaced = self
            .open
            .lock()
            .entry(model.to_string())
            .or_default()
            .insert(id, (live.serial, Arc::clone(live)));
        if let Some((_, old)) = replaced {
            reap(old);
        }
    }

    /// The version sequence `id` of `model` runs on, if it is open.
    pub fn owner(&self, model: &str, id: &SequenceId) -> Option<Arc<LiveModel>> {
        let open = self.open.lock();
        open.get(model)?.get(id).map(|(_, live)| Arc::clone(live))
    }

    /// Forgets sequence `id` of `model` if the version with `serial` still holds it.
    pub fn release(&self, model: &str, id: &SequenceId, serial: u64) {
        let removed = {
            let mut open = self.open.lock();
            let Some(sequences) = open.get_mut(model) else {
                return;
            };
            let ours = sequences.get(id).is_some_and(|(s, _)| *s == serial);
            let removed = if ours { sequences.remove(id) } else { None };
            if sequences.is_empty() {
                open.remove(model);
            }
            removed
        };
        if let Some((_, live)) = removed {
            reap(live);
        }
    }

    /// Forgets every open sequence of `model` (it is unloaded).
    pub fn forget_model(&self, model: &str) {
        let removed = self.open.lock().remove(model);
        for (_, (_, live)) in removed.into_iter().flatten() {
            reap(live);
        }
    }

    /// Forgets every open sequence.
    pub fn clear(&self) {
        let removed = std::mem::take(&mut *self.open.lock());
        for (_, (_, live)) in removed.into_values().flatten() {
            reap(live);
        }
    }
}

/// A number no other loaded version has, to tell versions apart.
pub fn next_serial() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Drops a version reference on a thread of its own: the last reference of a version stops
/// its instance threads, and the caller may be one of them.
fn reap(live: Arc<LiveModel>) {
    static REAPER: OnceLock<Mutex<Option<std::sync::mpsc::Sender<Arc<LiveModel>>>>> =
        OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<LiveModel>>();
        let started = std::thread::Builder::new()
            .name("ferrum-reaper".to_string())
            .spawn(move || while rx.recv().is_ok() {});
        Mutex::new(started.ok().map(|_| tx))
    });
    let unsent = match &*reaper.lock() {
        Some(tx) => tx.send(live).err().map(|e| e.0),
        None => Some(live),
    };
    if let Some(live) = unsent {
        // No reaper thread: drop on a short-lived thread instead.
        let _ = std::thread::Builder::new().spawn(move || drop(live));
    }
}
