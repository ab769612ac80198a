//! Assembles the server from its parts, serves the three ports, and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use ferrum_core::CoreBuilder;
use ferrum_core::logging::LogSettings;

use crate::cli::Args;
use crate::connections::{ConnectionLimit, HttpSettings, LimitedIncoming};
use crate::otlp::OtlpHttpExporter;

async fn bind(address: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = format!("{address}:{port}")
        .parse()
        .or_else(|_| format!("[{address}]:{port}").parse())
        .with_context(|| format!("--{what}-address '{address}' is not an IP address"))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Resolves when the process gets SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the server until SIGINT/SIGTERM, then lets in-flight requests finish and returns.
pub async fn run(args: Args, logging: Arc<LogSettings>) -> anyhow::Result<()> {
    let backend_configs = args.backend_configs().map_err(anyhow::Error::msg)?;
    if !args.cache_config.is_empty() {
        let cache = ferrum_core::cache::ResponseCache::from_configs(&args.cache_config)
            .map_err(|e| anyhow::Error::msg(e.message))?;
        tracing::info!("response cache: {}", cache.describe());
        if let ferrum_core::cache::ResponseCache::Redis(redis) = &cache
            && let Err(reason) = redis.ping().await
        {
            tracing::warn!(
                "response cache: Redis does not answer yet ({reason}); requests run without \
                 the cache until it does"
            );
        }
        ferrum_core::cache::configure(cache).map_err(|e| anyhow::Error::msg(e.message))?;
    }
    if args.rate_limit == crate::cli::RateLimitArg::ExecutionCount {
        let limiter =
            ferrum_core::scheduler::rate_limiter::RateLimiter::new(&args.rate_limit_resource)
                .map_err(|e| anyhow::Error::msg(e.message))?;
        ferrum_core::scheduler::rate_limiter::configure(limiter)
            .map_err(|e| anyhow::Error::msg(e.message))?;
        tracing::info!("rate limiter: execution_count");
    } else if !args.rate_limit_resource.is_empty() {
        tracing::warn!("--rate-limit-resource has no effect without --rate-limit execution_count");
    }
    let backend_dir = args.backend_directory();
    tracing::info!(backend_directory = %backend_dir.display(), "starting ferrum {}", ferrum_core::server::SERVER_VERSION);
    let core = CoreBuilder::new(args.model_repository.clone())
        .control_mode(args.control_mode())
        .backend_directory(backend_dir)
        .backend_configs(backend_configs)
        .auto_complete(args.auto_complete())
        .startup_models(args.load_model.clone())
        .poll_interval(Duration::from_secs(args.repository_poll_secs))
        .trace_settings(args.trace_settings().map_err(anyhow::Error::msg)?)
        .span_exporter(Arc::new(OtlpHttpExporter::default()))
        .logging(logging)
        .metrics_interval(Duration::from_millis(args.metrics_interval_ms))
        .latency_histograms(args.metrics_option("histogram_latencies") == Some("true"))
        .queue_limit(args.max_queue_size)
        .build()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    if args.allow_http {
        let tls = server_tls(args.http_tls())?;
        let restrictions = args.http_restrictions().map_err(anyhow::Error::msg)?;
        let listener = bind(&args.http_address, args.http_port, "http").await?;
        let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
        tracing::info!("{scheme} service listening on {}", listener.local_addr()?);
        let mut app = crate::frontend::http::router(Arc::clone(&core), args.max_request_size);
        if let Some(limit) = crate::cli::timeout(args.http_body_timeout_secs) {
            app = app.layer(axum::Extension(crate::frontend::http::BodyTimeout(limit)));
        }
        if !restrictions.is_empty() {
            app = app.layer(axum::middleware::from_fn_with_state(
                Arc::new(restrictions),
                crate::restricted::http_guard,
            ));
        }
        let settings = HttpSettings {
            limit: ConnectionLimit::new(args.http_max_connections),
            header_timeout: crate::cli::timeout(args.http_header_timeout_secs),
            tls,
        };
        let signal = stopped(stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            crate::connections::serve_http(listener, app, settings, signal).await;
            anyhow::Ok(())
        }));
    }
    if args.allow_grpc {
        let tls = server_tls(args.grpc_tls())?;
        let restrictions = args.grpc_restrictions().map_err(anyhow::Error::msg)?;
        let listener = bind(&args.grpc_address, args.grpc_port, "grpc").await?;
        let over = if tls.is_some() { " (TLS)" } else { "" };
        tracing::info!("gRPC service{over} listening on {}", listener.local_addr()?);
        let service = crate::frontend::grpc::service(Arc::clone(&core), args.max_request_size);
        let signal = stopped(stop_rx.clone());
        let incoming = LimitedIncoming::new(
            listener,
            ConnectionLimit::new(args.grpc_max_connections),
            tls,
        );
        let keepalive = Duration::from_millis(args.grpc_keepalive_time);
        let keepalive_timeout = Duration::from_millis(args.grpc_keepalive_timeout);
        tasks.push(tokio::spawn(async move {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(keepalive))
                .http2_keepalive_timeout(Some(keepalive_timeout))
                .layer(tower::util::MapResponseLayer::new(
                    crate::frontend::grpc::size_limit_status,
                ))
                // Without restrictions no guard looks at the calls.
                .layer(tower::util::option_layer(
                    (!restrictions.is_empty())
                        .then(|| crate::restricted::GrpcGuardLayer::new(restrictions)),
                ))
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
                .context("gRPC server failed")
        }));
    }
    if args.allow_metrics {
        let listener = bind(&args.metrics_address, args.metrics_port, "metrics").await?;
        tracing::info!("metrics service listening on {}", listener.local_addr()?);
        let app = metrics_router(Arc::clone(&core.metrics));
        let signal = stopped(stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
                .context("metrics server failed")
        }));
    }

    tokio::select! {
        loaded = core.load_startup_models() => {
            loaded?;
            tokio::select! {
                _ = core.follow_repository() => {}
                _ = shutdown_signal() => {}
            }
        }
        _ = shutdown_signal() => {}
    }

    tracing::info!("shutting down: finishing in-flight requests");
    core.begin_shutdown();
    let _ = stop_tx.send(true);
    let drain = async {
        for task in tasks {
            task.await.context("server task panicked")??;
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(args.exit_timeout_secs), drain).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!(
            "connections still open after --exit-timeout-secs={}; stopping anyway",
            args.exit_timeout_secs
        ),
    }
    core.unload_all().await?;
    tracing::info!("stopped");
    Ok(())
}

/// A port's TLS from its flags, loaded now so that a missing, unreadable or mismatched
/// certificate or key stops the start with a message naming the flag and file.
fn server_tls(
    files: Result<Option<crate::tls::TlsFiles>, String>,
) -> anyhow::Result<Option<Arc<crate::tls::ServerTls>>> {
    match files.map_err(anyhow::Error::msg)? {
        None => Ok(None),
        Some(files) => crate::tls::ServerTls::load(files)
            .map(|tls| Some(Arc::new(tls)))
            .map_err(anyhow::Error::msg),
    }
}

fn metrics_router(metrics: Arc<ferrum_core::metrics::ServerMetrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    )
}
