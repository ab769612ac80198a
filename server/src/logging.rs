//! The process's logger: `tracing` events written human-readable (default, ISO8601
//! timestamps) or as JSON lines, to stderr or `--log-file`, filtered by the core's log
//! switches ([`ferrum_core::logging::LogSettings`]), whose format and file changes swap the
//! output layer here.

use std::sync::Arc;

use ferrum_core::error::{Error, Result};
use ferrum_core::logging::{LogOutput, LogSettings};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry, filter, fmt, reload};

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Swaps the output layer when the logging extension changes the format or file.
struct ReloadOutput(reload::Handle<BoxedLayer, Registry>);

impl LogOutput for ReloadOutput {
    fn switch(&self, format: &str, file: &str) -> Result<()> {
        let layer = output_layer(format, file)?;
        self.0
            .reload(layer)
            .map_err(|e| Error::internal(format!("cannot switch the log output: {e}")))
    }
}

/// The layer that formats and writes events.
fn output_layer(format: &str, file: &str) -> Result<BoxedLayer> {
    let writer = if file.is_empty() {
        fmt::writer::BoxMakeWriter::new(std::io::stderr)
    } else {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map_err(|e| Error::invalid(format!("cannot open log file '{file}': {e}")))?;
        fmt::writer::BoxMakeWriter::new(Arc::new(f))
    };
    let ansi = file.is_empty() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    Ok(match format {
        "json" => fmt::layer().json().with_writer(writer).boxed(),
        _ => fmt::layer().with_ansi(ansi).with_writer(writer).boxed(),
    })
}

/// Sets up the global logger; returns the switches the logging extension changes.
pub fn init(
    info: bool,
    warning: bool,
    error: bool,
    verbose: u32,
    format: &str,
    file: &str,
) -> Result<Arc<LogSettings>> {
    let settings = Arc::new(LogSettings::new(
        info, warning, error, verbose, format, file,
    ));
    let (layer, handle) = reload::Layer::new(output_layer(format, file)?);
    let reader = Arc::clone(&settings);
    let filtered = layer.with_filter(filter::filter_fn(move |meta| reader.enabled(meta)));
    let env = std::env::var("FERRUM_LOG")
        .ok()
        .map(tracing_subscriber::EnvFilter::new);
    tracing_subscriber::registry()
        .with(filtered)
        .with(env)
        .try_init()
        .map_err(|e| Error::internal(format!("cannot set up logging: {e}")))?;
    settings.set_output(Box::new(ReloadOutput(handle)));
    Ok(settings)
}
