//! Command-line flags (perf_analyzer's names where they exist) and their parsing.

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// Wire protocol used to talk to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// KServe v2 HTTP/REST.
    Http,
    /// KServe v2 gRPC.
    Grpc,
    /// No network: the inference core runs inside ferrum-perf (like perf_analyzer's
    /// triton_c_api service kind); needs --model-repository (and --backend-directory).
    #[value(name = "in-process")]
    InProcess,
}

/// How input tensor contents are generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataMode {
    /// Random values (short random strings for BYTES).
    Random,
    /// All zeros (empty strings for BYTES).
    Zero,
}

/// Arrival process for request-rate mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Evenly spaced requests.
    Constant,
    /// Exponentially distributed gaps (Poisson arrivals).
    Poisson,
}

/// When a measurement window ends (perf_analyzer's --measurement-mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MeasurementMode {
    /// After --measurement-interval milliseconds.
    #[value(name = "time_windows")]
    TimeWindows,
    /// Once --measurement-request-count requests have completed.
    #[value(name = "count_windows")]
    CountWindows,
}

/// How HTTP tensors are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TensorFormat {
    /// Raw bytes after the JSON header (binary tensor extension).
    Binary,
    /// JSON arrays in the request or response body.
    Json,
}

/// Where tensors travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SharedMemory {
    /// Tensors travel in the request and response bodies.
    None,
    /// Tensors travel through registered POSIX shared memory regions.
    System,
}

/// ferrum-perf: measure throughput and latency of a KServe v2 (Triton-compatible) server.
#[derive(Parser, Debug, Clone)]
#[command(name = "ferrum-perf", version, about)]
pub struct Args {
    /// Model to load-test (not needed with --health).
    #[arg(short = 'm', long = "model-name", value_name = "MODEL")]
    pub model: Option<String>,

    /// Model version (empty: the server's choice).
    #[arg(
        short = 'x',
        long = "model-version",
        default_value = "",
        value_name = "VERSION"
    )]
    pub model_version: String,

    /// Server address, host:port or http://host:port (default localhost:8000 for HTTP, localhost:8001 for gRPC).
    #[arg(short = 'u', long = "url", value_name = "URL")]
    pub url: Option<String>,

    /// Protocol / service kind: http, grpc, or in-process (the inference core runs inside
    /// ferrum-perf and requests call it directly, with no sockets; needs --model-repository).
    #[arg(
        short = 'i',
        long = "protocol",
        visible_alias = "service-kind",
        value_enum,
        default_value_t = Protocol::Http
    )]
    pub protocol: Protocol,

    /// Model repository the in-process core serves (-i in-process only).
    #[arg(long = "model-repository", value_name = "DIR")]
    pub model_repository: Option<PathBuf>,

    /// Folder of backend libraries (<DIR>/<name>/libferrum_<name>.so) for the in-process
    /// core (-i in-process only; default: the core's default backend folder).
    #[arg(long = "backend-directory", value_name = "DIR")]
    pub backend_directory: Option<PathBuf>,

    /// Batch size of each request (models with max_batch_size > 0).
    #[arg(
        short = 'b',
        long = "batch-size",
        default_value_t = 1,
        value_name = "N"
    )]
    pub batch_size: u32,

    /// Concurrency sweep start:end:step (N workers, each with one request outstanding).
    #[arg(
        long = "concurrency-range",
        value_name = "START:END:STEP",
        conflicts_with = "request_rate_range"
    )]
    pub concurrency_range: Option<String>,

    /// Request-rate sweep start:end:step in requests/s.
    #[arg(long = "request-rate-range", value_name = "START:END:STEP")]
    pub request_rate_range: Option<String>,

    /// Arrival process in request-rate mode: constant or poisson.
    #[arg(long = "request-distribution", value_enum, default_value_t = Distribution::Constant)]
    pub request_distribution: Distribution,

    /// Most requests in flight at once in request-rate mode (one connection each).
    #[arg(long = "max-threads", default_value_t = 16, value_name = "N")]
    pub max_threads: usize,

    /// Length of one measurement window in milliseconds (time_windows mode).
    #[arg(
        short = 'p',
        long = "measurement-interval",
        default_value_t = 5000,
        value_name = "MS"
    )]
    pub measurement_interval: u64,

    /// When a window ends: time_windows (after --measurement-interval ms) or count_windows
    /// (once --measurement-request-count requests have completed).
    #[arg(long = "measurement-mode", value_enum, default_value_t = MeasurementMode::TimeWindows)]
    pub measurement_mode: MeasurementMode,

    /// Requests (successful or failed) that complete a window in count_windows mode.
    #[arg(
        long = "measurement-request-count",
        default_value_t = 50,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub measurement_request_count: u64,

    /// Stable when the last 3 windows' throughput and latency are within this percent of their average.
    #[arg(
        short = 's',
        long = "stability-percentage",
        default_value_t = 10.0,
        value_name = "PCT"
    )]
    pub stability_percentage: f64,

    /// Most measurement windows per sweep point before reporting an unstable result.
    #[arg(
        short = 'r',
        long = "max-trials",
        default_value_t = 10,
        value_name = "N"
    )]
    pub max_trials: usize,

    /// Latency percentile used for stability checks (default: p50).
    #[arg(long = "percentile", value_name = "P", value_parser = clap::value_parser!(u8).range(1..=99))]
    pub percentile: Option<u8>,

    /// Shape of an input with variable dims, without the batch dim: NAME:d1,d2 (repeatable).
    #[arg(long = "shape", value_name = "NAME:DIMS")]
    pub shape: Vec<String>,

    /// Input data: random, zero, or a perf_analyzer JSON file ({"data":[{"INPUT0":[...]}]}).
    #[arg(
        long = "input-data",
        default_value = "random",
        value_name = "random|zero|FILE"
    )]
    pub input_data: String,

    /// HTTP input tensor format: binary (tensor extension) or json.
    #[arg(long = "input-tensor-format", value_enum, default_value_t = TensorFormat::Binary)]
    pub input_tensor_format: TensorFormat,

    /// HTTP output tensor format: binary (tensor extension) or json.
    #[arg(long = "output-tensor-format", value_enum, default_value_t = TensorFormat::Binary)]
    pub output_tensor_format: TensorFormat,

    /// Where tensors travel: none or system (POSIX shared memory).
    #[arg(long = "shared-memory", value_enum, default_value_t = SharedMemory::None)]
    pub shared_memory: SharedMemory,

    /// Bytes of each output region when an output's size is not known from its shape.
    #[arg(
        long = "output-shared-memory-size",
        default_value_t = 102_400,
        value_name = "BYTES"
    )]
    pub output_shared_memory_size: usize,

    /// Use gRPC bidirectional streaming (ModelStreamInfer); implies -i grpc.
    #[arg(long = "streaming", default_value_t = false)]
    pub streaming: bool,

    /// Measure GET /v2/health/ready (gRPC ServerReady, in-process Core::is_ready) instead of
    /// inference: the client's floor.
    #[arg(long = "health", default_value_t = false)]
    pub health: bool,

    /// Write perf_analyzer-like CSV results to this file.
    #[arg(short = 'f', long = "latency-report-file", value_name = "FILE")]
    pub csv: Option<PathBuf>,

    /// Write JSON results to this file.
    #[arg(long = "json", value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write an SVG plot of p50/p99 latency against throughput to this file.
    #[arg(long = "plot", value_name = "FILE")]
    pub plot: Option<PathBuf>,

    /// Worker threads of the async runtime (default: number of CPUs).
    #[arg(long = "runtime-threads", value_name = "N")]
    pub runtime_threads: Option<usize>,
}

/// The sweep to run: concurrency levels or request rates.
#[derive(Clone, Debug, PartialEq)]
pub enum Sweep {
    /// Concurrency levels.
    Concurrency(Vec<usize>),
    /// Request rates in requests per second.
    RequestRate(Vec<f64>),
}

impl Args {
    /// The protocol actually used (--streaming implies gRPC).
    pub fn effective_protocol(&self) -> Protocol {
        if self.streaming {
            Protocol::Grpc
        } else {
            self.protocol
        }
    }

    /// The server address as host:port.
    pub fn authority(&self) -> String {
        let default = match self.effective_protocol() {
            Protocol::Http => "localhost:8000",
            Protocol::Grpc => "localhost:8001",
            Protocol::InProcess => return "in-process".to_string(),
        };
        let url = self.url.as_deref().unwrap_or(default);
        let url = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("grpc://"))
            .unwrap_or(url);
        url.trim_end_matches('/').to_string()
    }

    /// Checks the flags that go with the service kind: --model-repository and
    /// --backend-directory only (and the first always) in-process; no shared memory or
    /// streaming in-process.
    pub fn check_service_kind(&self) -> Result<()> {
        if self.protocol == Protocol::InProcess {
            if self.streaming {
                bail!(
                    "--streaming is not supported with -i in-process (requests call Core::infer)"
                );
            }
            if self.shared_memory != SharedMemory::None {
                bail!(
                    "--shared-memory is not supported with -i in-process: tensors are handed \
                     to the core in memory already"
                );
            }
            if self.model_repository.is_none() {
                bail!("-i in-process needs --model-repository DIR");
            }
            if self.url.is_some() {
                eprintln!("warning: -u is ignored with -i in-process");
            }
        } else if self.model_repository.is_some() || self.backend_directory.is_some() {
            bail!("--model-repository and --backend-directory need -i in-process");
        }
        Ok(())
    }

    /// The sweep points asked for (concurrency 1 when neither range is given).
    pub fn sweep(&self) -> Result<Sweep> {
        if let Some(range) = &self.request_rate_range {
            let (start, end, step) = parse_range(range).context("--request-rate-range")?;
            if start <= 0.0 {
                bail!("--request-rate-range: rates must be positive");
            }
            return Ok(Sweep::RequestRate(points(start, end, step)));
        }
        let range = self.concurrency_range.as_deref().unwrap_or("1");
        let (start, end, step) = parse_range(range).context("--concurrency-range")?;
        if start < 1.0 || start.fract() != 0.0 || end.fract() != 0.0 || step.fract() != 0.0 {
            bail!("--concurrency-range: values must be positive integers");
        }
        Ok(Sweep::Concurrency(
            points(start, end, step)
                .into_iter()
                .map(|v| v as usize)
                .collect(),
        ))
    }

    /// The --shape overrides as (input name, dims).
    pub fn shapes(&self) -> Result<Vec<(String, Vec<i64>)>> {
        self.shape
            .iter()
            .map(|s| {
                let (name, dims) = s
                    .rsplit_once(':')
                    .with_context(|| format!("--shape '{s}' is not NAME:d1,d2"))?;
                let dims = dims
                    .split(',')
                    .map(|d| d.trim().parse::<i64>().ok().filter(|d| *d >= 0))
                    .collect::<Option<Vec<_>>>()
                    .with_context(|| {
                        format!("--shape '{s}': dims must be non-negative integers")
                    })?;
                Ok((name.to_string(), dims))
            })
            .collect()
    }
}

/// Parses start[:end[:step]]; end defaults to start and step to 1.
pub fn parse_range(s: &str) -> Result<(f64, f64, f64)> {
    let parts = s
        .split(':')
        .map(|p| p.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
        .collect::<Option<Vec<_>>>()
        .with_context(|| format!("'{s}' is not start:end:step"))?;
    let (start, end, step) = match parts.as_slice() {
        [a] => (*a, *a, 1.0),
        [a, b] => (*a, *b, 1.0),
        [a, b, c] => (*a, *b, *c),
        _ => bail!("'{s}' is not start:end:step"),
    };
    if end < start || step <= 0.0 {
        bail!("'{s}': end must be >= start and step > 0");
    }
    Ok((start, end, step))
}

/// The values start, start+step, ... up to end.
fn points(start: f64, end: f64, step: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut i = 0.0;
    loop {
        let v = start + i * step;
        if v > end + 1e-9 {
            break;
        }
        out.push(v);
        i += 1.0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("1:4:2").unwrap(), (1.0, 4.0, 2.0));
        assert_eq!(parse_range("3").unwrap(), (3.0, 3.0, 1.0));
        assert!(parse_range("4:1").is_err());
        assert!(parse_range("a:b").is_err());
        assert_eq!(points(1.0, 4.0, 2.0), vec![1.0, 3.0]);
    }

    #[test]
    fn shapes_and_sweep() {
        let args = Args::parse_from([
            "ferrum-perf",
            "-m",
            "x",
            "--shape",
            "IN:3,4",
            "--concurrency-range",
            "1:3",
        ]);
        assert_eq!(args.shapes().unwrap(), vec![("IN".to_string(), vec![3, 4])]);
        assert_eq!(args.sweep().unwrap(), Sweep::Concurrency(vec![1, 2, 3]));
        assert_eq!(args.authority(), "localhost:8000");
        assert!(args.check_service_kind().is_ok());
    }

    #[test]
    fn measurement_modes() {
        let args = Args::parse_from(["ferrum-perf", "-m", "x"]);
        assert_eq!(args.measurement_mode, MeasurementMode::TimeWindows);
        assert_eq!(args.measurement_request_count, 50);
        let args = Args::parse_from([
            "ferrum-perf",
            "-m",
            "x",
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            "7",
        ]);
        assert_eq!(args.measurement_mode, MeasurementMode::CountWindows);
        assert_eq!(args.measurement_request_count, 7);
        let bad = |extra: &[&str]| {
            let mut v = vec!["ferrum-perf", "-m", "x"];
            v.extend(extra);
            Args::try_parse_from(v).is_err()
        };
        assert!(bad(&["--measurement-request-count", "0"]));
        assert!(bad(&["--measurement-mode", "counts"]));
    }

    #[test]
    fn in_process_flags() {
        let parse = |extra: &[&str]| {
            let mut v = vec!["ferrum-perf", "-m", "x"];
            v.extend(extra);
            Args::parse_from(v)
        };
        let args = parse(&["-i", "in-process", "--model-repository", "/r"]);
        assert_eq!(args.effective_protocol(), Protocol::InProcess);
        assert!(args.check_service_kind().is_ok());
        let args = parse(&["--service-kind", "in-process", "--model-repository", "/r"]);
        assert_eq!(args.protocol, Protocol::InProcess);
        assert!(parse(&["-i", "in-process"]).check_service_kind().is_err());
        assert!(
            parse(&[
                "-i",
                "in-process",
                "--model-repository",
                "/r",
                "--streaming"
            ])
            .check_service_kind()
            .is_err()
        );
        assert!(
            parse(&[
                "-i",
                "in-process",
                "--model-repository",
                "/r",
                "--shared-memory",
                "system"
            ])
            .check_service_kind()
            .is_err()
        );
        assert!(
            parse(&["--model-repository", "/r"])
                .check_service_kind()
                .is_err()
        );
    }
}
