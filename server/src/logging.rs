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
    // Callsites the switches can ever turn on stay "sometimes" (asked on each use, so a
    // change through the logging extension takes effect at once); the rest, such as the
    // DEBUG/TRACE spans h2, tonic and hyper open per request, are "never", so the registry
    // does not build them.
    let filter = filter::dynamic_filter_fn(move |meta, _| reader.enabled(meta))
        .with_callsite_filter(|meta| {
            if LogSettings::could_enable(meta) {
                tracing::subscriber::Interest::sometimes()
            } else {
                tracing::subscriber::Interest::never()
            }
        });
    let filtered = layer.with_filter(filter);
    let registry = tracing_subscriber::registry().with(filtered);
    // Only with FERRUM_LOG set is an EnvFilter layered on: an absent (`None`) layer would
    // declare interest in every callsite, undoing the "never" above.
    let installed = match std::env::var("FERRUM_LOG") {
        Ok(directives) => registry
            .with(tracing_subscriber::EnvFilter::new(directives))
            .try_init(),
        Err(_) => registry.try_init(),
    };
    installed.map_err(|e| Error::internal(format!("cannot set up logging: {e}")))?;
    settings.set_output(Box::new(ReloadOutput(handle)));
    Ok(settings)
}
