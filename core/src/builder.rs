//! Builds a [`Core`] from its settings: the library's entry point for serving models in a
//! process, used by the `ferrum` server and usable without any network frontend.
//!
//! The settings an embedding program usually sets: the model repositories
//! ([`CoreBuilder::new`]), the [`ControlMode`] ([`CoreBuilder::control_mode`]), the backend
//! directory ([`CoreBuilder::backend_directory`]), start-up models in explicit mode
//! ([`CoreBuilder::startup_models`]) and limits ([`CoreBuilder::queue_limit`]). Every other
//! setting has the `ferrum` server's default. See the crate docs for a complete example.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::logging::LogSettings;
use crate::models::ModelManager;
use crate::plugins::{Plugins, ServerHost};
use crate::repository::ControlMode;
use crate::server::{Core, CoreParts};
use crate::trace::{SpanExporter, TraceSettings, Tracer};

/// The settings of a [`Core`], with the server's defaults; [`CoreBuilder::build`] makes it.
pub struct CoreBuilder {
    /// Model repository folders.
    repositories: Vec<PathBuf>,
    /// How the repositories are followed.
    control_mode: ControlMode,
    /// Folder of backend libraries; none: [`crate::plugins::default_backend_directory`].
    backend_directory: Option<PathBuf>,
    /// Settings per backend, each a JSON object.
    backend_configs: HashMap<String, serde_json::Value>,
    /// Whether backends may complete model configs from model files.
    auto_complete: bool,
    /// Models loaded at start-up in explicit mode (`*`: all).
    startup_models: Vec<String>,
    /// Time between rescans in poll mode (and the safety-net rescan in watch mode).
    poll_interval: Duration,
    /// Start-up trace settings.
    trace_settings: TraceSettings,
    /// What posts OpenTelemetry spans.
    span_exporter: Option<Arc<dyn SpanExporter>>,
    /// Log switches; none: the defaults, attached to no logger.
    logging: Option<Arc<LogSettings>>,
    /// How often CPU and GPU metrics are sampled.
    metrics_interval: Duration,
    /// Whether request latency histograms are kept.
    latency_histograms: bool,
    /// Most requests waiting per model version (per priority level) where its config sets none.
    queue_limit: usize,
}

/// The default bound of a model version's queue where its config sets no `max_queue_size`.
pub const DEFAULT_QUEUE_LIMIT: usize = 16384;

impl CoreBuilder {
    /// Settings for serving these model repositories, every other setting at its default.
    pub fn new<P: Into<PathBuf>>(repositories: impl IntoIterator<Item = P>) -> Self {
        CoreBuilder {
            repositories: repositories.into_iter().map(Into::into).collect(),
            control_mode: ControlMode::None,
            backend_directory: None,
            backend_configs: HashMap::new(),
            auto_complete: true,
            startup_models: Vec::new(),
            poll_interval: Duration::from_secs(15),
            trace_settings: TraceSettings::default(),
            span_exporter: None,
            logging: None,
            metrics_interval: Duration::from_millis(2000),
            latency_histograms: false,
            queue_limit: DEFAULT_QUEUE_LIMIT,
        }
    }

    /// How the repositories are followed (default: none, load everything once).
    pub fn control_mode(mut self, mode: ControlMode) -> Self {
        self.control_mode = mode;
        self
    }

    /// Folder holding backend libraries as `<dir>/<name>/libferrum_<name>.so`.
    pub fn backend_directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.backend_directory = Some(dir.into());
        self
    }

    /// Settings per backend name, each a JSON object handed to the backend.
    pub fn backend_configs(mut self, configs: HashMap<String, serde_json::Value>) -> Self {
        self.backend_configs = configs;
        self
    }

    /// Whether backends may complete model configs from model files (default: true).
    pub fn auto_complete(mut self, on: bool) -> Self {
        self.auto_complete = on;
        self
    }

    /// Models to load at start-up in explicit mode (`*` loads every model).
    pub fn startup_models(mut self, names: Vec<String>) -> Self {
        self.startup_models = names;
        self
    }

    /// Time between rescans in poll mode, and of the safety-net rescan in watch mode.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// The trace settings to start with (default: tracing off).
    pub fn trace_settings(mut self, settings: TraceSettings) -> Self {
        self.trace_settings = settings;
        self
    }

    /// What posts OpenTelemetry spans to a collector (default: none, spans are dropped).
    pub fn span_exporter(mut self, exporter: Arc<dyn SpanExporter>) -> Self {
        self.span_exporter = Some(exporter);
        self
    }

    /// The log switches the logging extension reads and changes.
    pub fn logging(mut self, settings: Arc<LogSettings>) -> Self {
        self.logging = Some(settings);
        self
    }

    /// How often CPU and GPU metrics are sampled (default: 2 s).
    pub fn metrics_interval(mut self, every: Duration) -> Self {
        self.metrics_interval = every;
        self
    }

    /// Whether request latency histograms are kept (default: false).
    pub fn latency_histograms(mut self, on: bool) -> Self {
        self.latency_histograms = on;
        self
    }

    /// Most requests a model version holds waiting (per priority level) where its config sets
    /// no `max_queue_size` (default: [`DEFAULT_QUEUE_LIMIT`]); more are refused with "queue
    /// full".
    pub fn queue_limit(mut self, requests: usize) -> Self {
        self.queue_limit = requests.max(1);
        self
    }

    /// Assembles the core on the current tokio runtime: backends are found on demand and
    /// metrics sampling starts, but no model is loaded yet and the core is not ready; call
    /// [`Core::load_startup_models`] next (or use [`CoreBuilder::start`]).
    pub fn build(self) -> Result<Arc<Core>> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("the core must be built inside a tokio runtime"))?;
        let backend_dir = self
            .backend_directory
            .unwrap_or_else(crate::plugins::default_backend_directory);
        let host = ServerHost::default();
        let plugins = Arc::new(
            Plugins::new(backend_dir, self.backend_configs, host.clone()).map_err(|e| {
                Error::internal(format!(
                    "cannot create a folder for private copies of backend libraries: {e}"
                ))
            })?,
        );
        // Object-store repositories are served from local mirrors.
        let mirrors = crate::repository::Mirrors::open(&self.repositories, self.control_mode)?;
        let models = Arc::new(ModelManager::new(
            plugins,
            mirrors,
            self.auto_complete,
            self.queue_limit,
        ));
        let tracer = Arc::new(Tracer::with_exporter(
            self.trace_settings,
            self.span_exporter,
        ));
        let metrics = Arc::new(
            crate::metrics::ServerMetrics::new(
                Arc::clone(&models.stats),
                self.metrics_interval,
                self.latency_histograms,
            )
            .map_err(|e| Error::internal(format!("cannot set up metrics: {e}")))?,
        );
        let core = Arc::new(Core::new(CoreParts {
            models,
            tracer,
            logging: self.logging.unwrap_or_default(),
            metrics,
            control_mode: self.control_mode,
            repositories: self.repositories,
            startup_models: self.startup_models,
            poll_interval: self.poll_interval,
        }));
        host.attach(&core, runtime);
        Ok(core)
    }

    /// Builds the core and loads its start-up models; returns it ready to serve. Poll and
    /// watch modes also need [`Core::follow_repository`] to run.
    pub async fn start(self) -> Result<Arc<Core>> {
        let core = self.build()?;
        core.load_startup_models().await?;
        Ok(core)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::error::ErrorKind;
    use crate::models::RepositoryParameter;

    #[test]
    fn building_needs_a_tokio_runtime() {
        let error = CoreBuilder::new(Vec::<PathBuf>::new()).build().err();
        assert_eq!(error.map(|e| e.kind), Some(ErrorKind::Internal));
    }

    #[tokio::test]
    async fn starts_ready_over_an_empty_repository() {
        let repo = tempfile::tempdir().unwrap();
        let core = CoreBuilder::new([repo.path()])
            .backend_directory(repo.path().join("no-backends"))
            .start()
            .await
            .unwrap();
        assert!(core.is_ready());
        assert!(core.repository_index(false).is_empty());
        assert!(core.statistics(None, None).unwrap().is_empty());
        assert_eq!(core.trace_settings(None).unwrap(), TraceSettings::default());
        let missing = core.update_trace_settings(Some("missing"), &BTreeMap::new());
        assert_eq!(missing.unwrap_err().kind, ErrorKind::NotFound);
        // Loading and unloading need explicit mode; bad parameters are refused first.
        let unload = core.unload_model("m".into(), &[]).await.unwrap_err();
        assert_eq!(unload.kind, ErrorKind::Unsupported);
        let bad = [("force".to_string(), RepositoryParameter::Bool(true))];
        let unload = core.unload_model("m".into(), &bad).await.unwrap_err();
        assert_eq!(unload.kind, ErrorKind::InvalidArgument);
        let cuda = core.register_cuda_shared_memory().unwrap_err();
        assert_eq!(cuda.kind, ErrorKind::Unsupported);
        core.begin_shutdown();
        assert!(!core.is_ready());
        core.unload_all().await.unwrap();
    }

    #[tokio::test]
    async fn explicit_mode_loads_through_the_api() {
        let repo = tempfile::tempdir().unwrap();
        let core = CoreBuilder::new([repo.path()])
            .control_mode(ControlMode::Explicit)
            .backend_directory(repo.path().join("no-backends"))
            .start()
            .await
            .unwrap();
        let load = core.load_model("missing".into(), Vec::new()).await;
        assert_ne!(load.map_err(|e| e.kind), Err(ErrorKind::Unsupported));
        let mut changes = BTreeMap::new();
        changes.insert("trace_rate".to_string(), Some(vec!["7".to_string()]));
        assert_eq!(core.update_trace_settings(None, &changes).unwrap().rate, 7);
        assert_eq!(core.trace_settings(None).unwrap().rate, 7);
    }
}
