//! Noticing that the repository changed: a timer in poll mode; in watch mode a file watcher
//! whose events are debounced, with a slow timer behind it as a safety net. Either way the
//! result is a signal "rescan now"; what changed is worked out from fingerprints.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::ControlMode;

/// Quiet time after the last file event before a rescan starts.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest a burst of events may postpone the rescan.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// Poll interval used in watch mode when the file watcher cannot be set up.
const WATCH_FALLBACK_POLL: Duration = Duration::from_secs(1);

/// Starts the change detector for a control mode; its receiver yields one item per rescan
/// wanted. `None` for modes that never rescan on their own.
pub fn spawn_detector(
    mode: ControlMode,
    repositories: Vec<PathBuf>,
    poll_every: Duration,
) -> Option<mpsc::Receiver<()>> {
    let poll_every = poll_every.max(Duration::from_millis(100));
    let (tx, rx) = mpsc::channel(1);
    match mode {
        ControlMode::None | ControlMode::Explicit => return None,
        ControlMode::Poll => {
            tracing::info!("polling the model repository every {poll_every:?}");
            tokio::spawn(tick(tx, poll_every));
        }
        // Object stores send no file events: in watch mode they are polled every
        // `poll_every`, by the safety-net rescan (or by a timer when nothing else is watched).
        ControlMode::Watch if repositories.iter().all(|r| super::is_s3(r)) => {
            tracing::info!("{}", object_store_note(poll_every));
            tokio::spawn(tick(tx, poll_every));
        }
        ControlMode::Watch => match start_watcher(&repositories) {
            Ok((watcher, events)) => {
                tracing::info!(
                    "watching the model repository for changes (safety-net rescan every {poll_every:?})"
                );
                if repositories.iter().any(|r| super::is_s3(r)) {
                    tracing::info!("{}", object_store_note(poll_every));
                }
                tokio::spawn(debounce(watcher, events, tx, poll_every));
            }
            Err(e) => {
                tracing::warn!(
                    "cannot watch the model repository ({e}); falling back to polling every {WATCH_FALLBACK_POLL:?}"
                );
                tokio::spawn(tick(tx, WATCH_FALLBACK_POLL));
            }
        },
    }
    Some(rx)
}

/// What watch mode does with object-store repositories, for the log.
fn object_store_note(poll_every: Duration) -> String {
    format!(
        "watch mode: object-store repositories send no file events; they are polled every \
         {poll_every:?} (--repository-poll-secs)"
    )
}

async fn tick(tx: mpsc::Sender<()>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        if tx.is_closed() {
            return;
        }
        let _ = tx.try_send(());
    }
}

type Events = mpsc::UnboundedReceiver<()>;

/// Set to a non-empty value to make watch mode poll instead of using file events (for file
/// systems, such as some network mounts, whose events cannot be trusted).
pub const FORCE_POLL_ENV: &str = "FERRUM_WATCH_POLL";

fn start_watcher(repositories: &[PathBuf]) -> notify::Result<(notify::RecommendedWatcher, Events)> {
    if std::env::var_os(FORCE_POLL_ENV).is_some_and(|v| !v.is_empty()) {
        return Err(notify::Error::generic(&format!("{FORCE_POLL_ENV} is set")));
    }
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if e.kind.is_access() => {}
            Ok(_) => {
                let _ = events_tx.send(());
            }
            Err(e) => {
                tracing::warn!("file watcher error: {e}; rescanning");
                let _ = events_tx.send(());
            }
        })?;
    for repo in repositories.iter().filter(|r| !super::is_s3(r)) {
        watcher.watch(repo, RecursiveMode::Recursive)?;
    }
    Ok((watcher, events_rx))
}

async fn debounce(
    _watcher: notify::RecommendedWatcher,
    mut events: Events,
    tx: mpsc::Sender<()>,
    backstop: Duration,
) {
    loop {
        tokio::select! {
            event = events.recv() => {
                if event.is_none() {
                    return;
                }
                let started = tokio::time::Instant::now();
                loop {
                    match tokio::time::timeout(DEBOUNCE, events.recv()).await {
                        Ok(Some(())) if started.elapsed() < MAX_DELAY => continue,
                        Ok(None) => return,
                        _ => break,
                    }
                }
            }
            _ = tokio::time::sleep(backstop) => {}
        }
        if tx.is_closed() {
            return;
        }
        let _ = tx.try_send(());
    }
}
