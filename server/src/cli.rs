//! Command line flags, spelled and meant as tritonserver's where they overlap.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use ferrum_core::ControlMode;
use ferrum_core::trace::TraceSettings;

/// The `--model-control-mode` values; each maps onto [`ControlMode`].
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlModeArg {
    /// Load every model at start-up; never change.
    None,
    /// Rescan the repository periodically and apply changes.
    Poll,
    /// Load and unload only through the repository API and --load-model.
    Explicit,
    /// Watch the repository's files and apply changes as they happen.
    Watch,
}

impl From<ControlModeArg> for ControlMode {
    fn from(arg: ControlModeArg) -> Self {
        match arg {
            ControlModeArg::None => ControlMode::None,
            ControlModeArg::Poll => ControlMode::Poll,
            ControlModeArg::Explicit => ControlMode::Explicit,
            ControlModeArg::Watch => ControlMode::Watch,
        }
    }
}

/// The `--rate-limit` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitArg {
    /// Instances execute whenever they have work.
    Off,
    /// Executions wait for their instance's rate limiter resources.
    #[value(name = "execution_count")]
    ExecutionCount,
}

/// Ferrum: an inference server that speaks Triton's HTTP/gRPC protocol and loads backends as plugins.
#[derive(Parser, Debug, Clone)]
#[command(name = "ferrum", version, about)]
pub struct Args {
    /// Model repository: a folder, or an object store as s3://bucket/path,
    /// s3://host:port/bucket/path or s3://https://host:port/bucket/path (mirrored into a local
    /// cache; see docs/model-management.md). Repeat for several repositories.
    #[arg(
        long = "model-repository",
        alias = "model-store",
        required = true,
        value_name = "DIR|S3_URL"
    )]
    pub model_repository: Vec<PathBuf>,

    /// How the model repository is managed: none (load everything once), poll (rescan every
    /// --repository-poll-secs), explicit (load/unload API and --load-model only), or watch
    /// (Ferrum's instant mode: a file watcher applies changes within a second).
    #[arg(long, value_enum, default_value_t = ControlModeArg::None, value_name = "MODE")]
    pub model_control_mode: ControlModeArg,

    /// Seconds between repository scans in poll mode (and the safety-net rescan in watch mode).
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub repository_poll_secs: u64,

    /// Model to load at start-up in explicit mode; repeatable; `*` loads every model.
    #[arg(long = "load-model", value_name = "NAME")]
    pub load_model: Vec<String>,

    /// Folder holding backend libraries as <DIR>/<name>/libferrum_<name>.so.
    /// Default: ../backends next to the ferrum executable's folder.
    #[arg(long, value_name = "DIR")]
    pub backend_directory: Option<PathBuf>,

    /// The response cache, as Triton writes it: local,size=<bytes> or
    /// redis,host=<host>,port=<port>[,password=..,db=..,ttl=<seconds>]; repeatable (one
    /// setting per option, as tritonserver). Models opt in with `response_cache { enable: true }`.
    #[arg(long = "cache-config", value_name = "CACHE,KEY=VALUE")]
    pub cache_config: Vec<String>,

    /// The rate limiter, as tritonserver: `off` (default) or `execution_count` (an instance
    /// executes only when the resources its instance_group's rate_limiter lists are free).
    #[arg(long = "rate-limit", value_enum, default_value_t = RateLimitArg::Off, value_name = "MODE")]
    pub rate_limit: RateLimitArg,

    /// Copies of a rate limiter resource: <name>:<count>[:<device>]; repeatable. Without it a
    /// resource has as many copies as the most any one instance asks for.
    #[arg(long = "rate-limit-resource", value_name = "NAME:COUNT[:DEVICE]")]
    pub rate_limit_resource: Vec<String>,

    /// Setting for a backend: <backend>,<key>=<value>. Repeatable.
    #[arg(long = "backend-config", value_name = "BACKEND,KEY=VALUE")]
    pub backend_config: Vec<String>,

    /// Serve the HTTP/REST protocol.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub allow_http: bool,

    /// Address the HTTP server binds to.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub http_address: String,

    /// Port of the HTTP server.
    #[arg(long, default_value_t = 8000, value_name = "PORT")]
    pub http_port: u16,

    /// Serve the gRPC protocol.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub allow_grpc: bool,

    /// Address the gRPC server binds to.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub grpc_address: String,

    /// Port of the gRPC server.
    #[arg(long, default_value_t = 8001, value_name = "PORT")]
    pub grpc_port: u16,

    /// Serve Prometheus metrics.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub allow_metrics: bool,

    /// Address the metrics server binds to.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub metrics_address: String,

    /// Port of the metrics server.
    #[arg(long, default_value_t = 8002, value_name = "PORT")]
    pub metrics_port: u16,

    /// Write informational log messages.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub log_info: bool,

    /// Write warning log messages.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub log_warning: bool,

    /// Write error log messages.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub log_error: bool,

    /// Log line format: default, ISO8601 (both human-readable) or json (one JSON object per line).
    #[arg(long, default_value = "default", value_parser = ["default", "ISO8601", "json"], value_name = "FORMAT")]
    pub log_format: String,

    /// Write the log to this file instead of stderr.
    #[arg(long, default_value = "", value_name = "PATH")]
    pub log_file: String,

    /// How often CPU and GPU metrics are sampled, in milliseconds.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub metrics_interval_ms: u64,

    /// Metrics option KEY=VALUE: histogram_latencies=true adds request latency histograms.
    #[arg(long = "metrics-config", value_name = "KEY=VALUE")]
    pub metrics_config: Vec<String>,

    /// Write request traces (Triton's trace JSON) to this file.
    #[arg(long, value_name = "PATH")]
    pub trace_file: Option<String>,

    /// Trace level: OFF or TIMESTAMPS (repeatable).
    #[arg(long, value_name = "LEVEL")]
    pub trace_level: Vec<String>,

    /// Trace one request in this many.
    #[arg(long, value_name = "N")]
    pub trace_rate: Option<u64>,

    /// Stop tracing after this many traces (-1: never).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub trace_count: Option<i64>,

    /// Trace setting as tritonserver's --trace-config: [MODE,]KEY=VALUE, e.g. `level=TIMESTAMPS`,
    /// `triton,file=/tmp/trace.json`, `mode=opentelemetry`, `opentelemetry,url=http://host:4318/v1/traces`.
    #[arg(long = "trace-config", value_name = "[MODE,]KEY=VALUE")]
    pub trace_config: Vec<String>,

    /// Verbose logging level; 0 is off, 1 and more add detail.
    #[arg(long, default_value_t = 0, value_name = "LEVEL")]
    pub log_verbose: u32,

    /// true: every model needs a complete config.pbtxt (no auto-complete from the model file).
    #[arg(long, default_value_t = false, action = ArgAction::Set, value_name = "BOOL")]
    pub strict_model_config: bool,

    /// Turn off completing model configs from model files.
    #[arg(long, default_value_t = false)]
    pub disable_auto_complete_config: bool,

    /// On shutdown, how long to wait for open requests and streams before exiting anyway.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub exit_timeout_secs: u64,

    /// Largest request body or gRPC message accepted, in bytes (tritonserver: --http-max-input-size).
    #[arg(long, alias = "http-max-input-size", default_value_t = 64 << 20, value_name = "BYTES")]
    pub max_request_size: usize,

    /// Most requests a model version holds waiting (per priority level) where its config sets
    /// no max_queue_size; more are refused with "queue full" (Ferrum only).
    #[arg(long, default_value_t = ferrum_core::DEFAULT_QUEUE_LIMIT, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u32).range(1..), |v| v as usize), value_name = "REQUESTS")]
    pub max_queue_size: usize,

    /// Most HTTP connections served at once; over it, new connections wait to be accepted
    /// until one closes. 0: no limit (Ferrum only).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub http_max_connections: usize,

    /// Most gRPC connections served at once; over it, new connections wait to be accepted
    /// until one closes. 0: no limit (Ferrum only).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub grpc_max_connections: usize,

    /// Seconds an HTTP/1 client may take to send a request's headers (also how long an idle
    /// keep-alive connection stays open); the connection is closed after. 0: no limit.
    #[arg(long, default_value = "30", value_parser = parse_seconds, value_name = "SECONDS")]
    pub http_header_timeout_secs: Duration,

    /// Seconds a request body may take to arrive once its headers are in; after it the
    /// request is answered 408 and the connection closed. 0: no limit.
    #[arg(long, default_value = "60", value_parser = parse_seconds, value_name = "SECONDS")]
    pub http_body_timeout_secs: Duration,

    /// Milliseconds between HTTP/2 keepalive pings the gRPC server sends on a connection.
    #[arg(long, default_value_t = 7_200_000, value_parser = clap::value_parser!(u64).range(1..), value_name = "MS")]
    pub grpc_keepalive_time: u64,

    /// Milliseconds the gRPC server waits for a keepalive ping's acknowledgement before it
    /// closes the connection.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..), value_name = "MS")]
    pub grpc_keepalive_timeout: u64,

    /// Serve gRPC over TLS (tritonserver's flag); needs --grpc-server-cert and --grpc-server-key.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_name = "BOOL")]
    pub grpc_use_ssl: bool,

    /// Serve gRPC over mutual TLS: a client must present a certificate signed by
    /// --grpc-root-cert or its handshake is refused. Implies --grpc-use-ssl.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_name = "BOOL")]
    pub grpc_use_ssl_mutual: bool,

    /// PEM certificate chain the gRPC port presents; reloaded when the file changes.
    #[arg(long, value_name = "PATH")]
    pub grpc_server_cert: Option<PathBuf>,

    /// PEM private key of --grpc-server-cert; reloaded when the file changes.
    #[arg(long, value_name = "PATH")]
    pub grpc_server_key: Option<PathBuf>,

    /// PEM CA certificates that sign gRPC clients' certificates (used with --grpc-use-ssl-mutual).
    #[arg(long, value_name = "PATH")]
    pub grpc_root_cert: Option<PathBuf>,

    /// Serve HTTP over TLS (HTTPS); needs --http-server-cert and --http-server-key (Ferrum only,
    /// spelled as the gRPC flags). The metrics port stays plain HTTP.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_name = "BOOL")]
    pub http_use_ssl: bool,

    /// Serve HTTP over mutual TLS: a client must present a certificate signed by
    /// --http-root-cert or its handshake is refused. Implies --http-use-ssl.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_name = "BOOL")]
    pub http_use_ssl_mutual: bool,

    /// PEM certificate chain the HTTP port presents; reloaded when the file changes.
    #[arg(long, value_name = "PATH")]
    pub http_server_cert: Option<PathBuf>,

    /// PEM private key of --http-server-cert; reloaded when the file changes.
    #[arg(long, value_name = "PATH")]
    pub http_server_key: Option<PathBuf>,

    /// PEM CA certificates that sign HTTP clients' certificates (used with --http-use-ssl-mutual).
    #[arg(long, value_name = "PATH")]
    pub http_root_cert: Option<PathBuf>,

    /// Restrict HTTP API groups to requests with header KEY: VALUE (tritonserver's flag);
    /// others get 403. Groups: health, metadata, inference, shared-memory, model-config,
    /// model-repository, statistics, trace, logging. Repeatable, a group in one flag only.
    #[arg(long = "http-restricted-api", value_name = "API[,API...]:KEY=VALUE")]
    pub http_restricted_api: Vec<String>,

    /// Restrict gRPC API groups to calls with metadata triton-grpc-protocol-KEY: VALUE
    /// (tritonserver's flag); others get UNAVAILABLE. Groups as --http-restricted-api.
    #[arg(
        long = "grpc-restricted-protocol",
        value_name = "PROTOCOL[,PROTOCOL...]:KEY=VALUE"
    )]
    pub grpc_restricted_protocol: Vec<String>,
}

/// The default of `--http-max-connections` and `--grpc-max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Reads a number of seconds (fractions allowed, e.g. `0.5`).
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("'{text}' is not a usable number of seconds (0 or more)"))
}

/// A timeout flag's value: none where the flag says 0.
pub fn timeout(flag: Duration) -> Option<Duration> {
    (!flag.is_zero()).then_some(flag)
}

impl Args {
    /// The repository control mode.
    pub fn control_mode(&self) -> ControlMode {
        self.model_control_mode.into()
    }

    /// Whether backends may complete model configs.
    pub fn auto_complete(&self) -> bool {
        !self.strict_model_config && !self.disable_auto_complete_config
    }

    /// The backend directory: the flag, or `../backends` from the executable's folder.
    pub fn backend_directory(&self) -> PathBuf {
        self.backend_directory
            .clone()
            .unwrap_or_else(ferrum_core::plugins::default_backend_directory)
    }

    /// `--backend-config` settings grouped per backend as JSON objects.
    pub fn backend_configs(
        &self,
    ) -> Result<std::collections::HashMap<String, serde_json::Value>, String> {
        let mut configs: std::collections::HashMap<String, serde_json::Value> = Default::default();
        for setting in &self.backend_config {
            let (backend, kv) = setting.split_once(',').ok_or_else(|| {
                format!("--backend-config '{setting}' is not <backend>,<key>=<value>")
            })?;
            let (key, value) = kv.split_once('=').ok_or_else(|| {
                format!("--backend-config '{setting}' is not <backend>,<key>=<value>")
            })?;
            let entry = configs
                .entry(backend.to_string())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let serde_json::Value::Object(map) = entry {
                map.insert(
                    key.to_string(),
                    serde_json::Value::String(value.to_string()),
                );
            }
        }
        Ok(configs)
    }
}

impl Args {
    /// The `--metrics-config` setting for a key.
    pub fn metrics_option(&self, key: &str) -> Option<&str> {
        self.metrics_config
            .iter()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// The start-up trace settings from the --trace-* flags.
    pub fn trace_settings(&self) -> Result<TraceSettings, String> {
        let mut settings = TraceSettings::default();
        let defaults = settings.clone();
        let set = |settings: &mut TraceSettings, key: &str, value: Vec<String>| {
            settings
                .apply(key, Some(&value), &defaults)
                .map_err(|e| e.message)
        };
        if let Some(file) = &self.trace_file {
            set(&mut settings, "trace_file", vec![file.clone()])?;
        }
        if !self.trace_level.is_empty() {
            set(&mut settings, "trace_level", self.trace_level.clone())?;
        }
        if let Some(rate) = self.trace_rate {
            set(&mut settings, "trace_rate", vec![rate.to_string()])?;
        }
        if let Some(count) = self.trace_count {
            set(&mut settings, "trace_count", vec![count.to_string()])?;
        }
        for entry in &self.trace_config {
            let (mode, kv) = match entry.split_once(',') {
                Some((mode, kv)) => (Some(mode), kv),
                None => (None, entry.as_str()),
            };
            let (key, value) = kv
                .split_once('=')
                .ok_or_else(|| format!("--trace-config '{entry}' is not [MODE,]KEY=VALUE"))?;
            match (mode, key) {
                (Some("opentelemetry"), "url") => settings.otel_url = value.to_string(),
                (Some("opentelemetry"), _) => {}
                (_, "level") => set(&mut settings, "trace_level", vec![value.to_string()])?,
                (_, "rate") => set(&mut settings, "trace_rate", vec![value.to_string()])?,
                (_, "count") => set(&mut settings, "trace_count", vec![value.to_string()])?,
                (_, "log-frequency") | (_, "log_frequency") => {
                    set(&mut settings, "log_frequency", vec![value.to_string()])?
                }
                (_, "file") => set(&mut settings, "trace_file", vec![value.to_string()])?,
                (_, "mode") => set(&mut settings, "trace_mode", vec![value.to_string()])?,
                _ => return Err(format!("--trace-config '{entry}': unknown setting '{key}'")),
            }
        }
        Ok(settings)
    }
}

impl Args {
    /// The HTTP port's TLS files (`--http-use-ssl*`, `--http-server-*`, `--http-root-cert`).
    pub fn http_tls(&self) -> Result<Option<crate::tls::TlsFiles>, String> {
        crate::tls::TlsFiles::from_flags(
            "http",
            self.http_use_ssl,
            self.http_use_ssl_mutual,
            self.http_server_cert.as_deref(),
            self.http_server_key.as_deref(),
            self.http_root_cert.as_deref(),
        )
    }

    /// The gRPC port's TLS files (`--grpc-use-ssl*`, `--grpc-server-*`, `--grpc-root-cert`).
    pub fn grpc_tls(&self) -> Result<Option<crate::tls::TlsFiles>, String> {
        crate::tls::TlsFiles::from_flags(
            "grpc",
            self.grpc_use_ssl,
            self.grpc_use_ssl_mutual,
            self.grpc_server_cert.as_deref(),
            self.grpc_server_key.as_deref(),
            self.grpc_root_cert.as_deref(),
        )
    }

    /// The HTTP restrictions of `--http-restricted-api`.
    pub fn http_restrictions(&self) -> Result<crate::restricted::Restrictions, String> {
        crate::restricted::Restrictions::parse(
            "--http-restricted-api",
            "",
            &self.http_restricted_api,
        )
    }

    /// The gRPC restrictions of `--grpc-restricted-protocol`.
    pub fn grpc_restrictions(&self) -> Result<crate::restricted::Restrictions, String> {
        crate::restricted::Restrictions::parse(
            "--grpc-restricted-protocol",
            crate::restricted::GRPC_KEY_PREFIX,
            &self.grpc_restricted_protocol,
        )
    }
}

#[cfg(test)]
mod security_flag_tests {
    use super::*;
    use crate::restricted::ApiGroup;
    use std::path::Path;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["ferrum", "--model-repository", "/models"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn tls_is_off_by_default() {
        let a = args(&[]);
        assert_eq!(a.http_tls(), Ok(None));
        assert_eq!(a.grpc_tls(), Ok(None));
        assert!(a.http_restrictions().unwrap().is_empty());
        assert!(a.grpc_restrictions().unwrap().is_empty());
    }

    #[test]
    fn ssl_switches_take_a_value_or_stand_alone() {
        let tls = ["--grpc-server-cert", "c.pem", "--grpc-server-key", "k.pem"];
        for switch in [
            &["--grpc-use-ssl"][..],
            &["--grpc-use-ssl", "true"],
            &["--grpc-use-ssl=true"],
        ] {
            let mut flags = switch.to_vec();
            flags.extend_from_slice(&tls);
            let files = args(&flags).grpc_tls().unwrap().unwrap();
            assert_eq!(files.cert, Path::new("c.pem"), "{switch:?}");
            assert_eq!(files.key, Path::new("k.pem"));
            assert_eq!(files.client_ca, None);
        }
        let mut flags = vec!["--grpc-use-ssl", "false"];
        flags.extend_from_slice(&tls);
        assert_eq!(args(&flags).grpc_tls(), Ok(None));
        assert!(
            Args::try_parse_from([
                "ferrum",
                "--model-repository",
                "m",
                "--http-use-ssl",
                "maybe"
            ])
            .is_err()
        );
    }

    #[test]
    fn mutual_tls_flags_need_the_root_certificate() {
        let a = args(&[
            "--http-use-ssl-mutual",
            "--http-server-cert",
            "c.pem",
            "--http-server-key",
            "k.pem",
        ]);
        let e = a.http_tls().unwrap_err();
        assert!(
            e.contains("--http-use-ssl-mutual needs --http-root-cert"),
            "{e}"
        );
        assert_eq!(a.grpc_tls(), Ok(None), "HTTP flags leave gRPC alone");
        let a = args(&[
            "--http-use-ssl-mutual=true",
            "--http-server-cert",
            "c.pem",
            "--http-server-key",
            "k.pem",
            "--http-root-cert",
            "ca.pem",
        ]);
        let files = a.http_tls().unwrap().unwrap();
        assert_eq!(files.client_ca.as_deref(), Some(Path::new("ca.pem")));
    }

    #[test]
    fn restriction_flags_repeat_and_prefix_grpc_keys() {
        let a = args(&[
            "--http-restricted-api",
            "model-repository,shared-memory:admin-key=admin-value",
            "--http-restricted-api=inference:infer-key=infer-value",
            "--grpc-restricted-protocol",
            "inference:infer-key=infer-value",
        ]);
        let http = a.http_restrictions().unwrap();
        assert_eq!(
            http.get(ApiGroup::SharedMemory).unwrap().header,
            "admin-key"
        );
        assert_eq!(http.get(ApiGroup::Inference).unwrap().value, "infer-value");
        assert_eq!(http.get(ApiGroup::Health), None);
        let grpc = a.grpc_restrictions().unwrap();
        assert_eq!(
            grpc.get(ApiGroup::Inference).unwrap().header,
            "triton-grpc-protocol-infer-key"
        );
        assert_eq!(grpc.get(ApiGroup::ModelRepository), None);
        let bad = args(&[
            "--grpc-restricted-protocol",
            "inference:k=v",
            "--grpc-restricted-protocol",
            "inference:j=w",
        ]);
        assert!(bad.grpc_restrictions().is_err());
    }
}
