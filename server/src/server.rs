//! Assembles the server from its parts, serves the three ports, and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{Args, ControlMode};
use crate::core::Core;
use crate::models::ModelManager;
use crate::plugins::{Plugins, ServerHost};

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
pub async fn run(args: Args, logging: Arc<crate::logging::LogSettings>) -> anyhow::Result<()> {
    let backend_configs = args.backend_configs().map_err(anyhow::Error::msg)?;
    let backend_dir = args.backend_directory();
    tracing::info!(backend_directory = %backend_dir.display(), "starting ferrum {}", crate::core::SERVER_VERSION);
    let host = ServerHost::default();
    let plugins = Arc::new(
        Plugins::new(backend_dir, backend_configs, host.clone())
            .context("cannot create a folder for private copies of backend libraries")?,
    );
    let models = Arc::new(ModelManager::new(
        plugins,
        args.model_repository.clone(),
        args.auto_complete(),
    ));
    let tracer = Arc::new(crate::trace::Tracer::new(
        args.trace_settings().map_err(anyhow::Error::msg)?,
    ));
    let metrics = Arc::new(
        crate::metrics::ServerMetrics::new(
            Arc::clone(&models.stats),
            Duration::from_millis(args.metrics_interval_ms),
            args.metrics_option("histogram_latencies") == Some("true"),
        )
        .context("cannot set up metrics")?,
    );
    let core = Arc::new(Core::new(
        Arc::clone(&models),
        args.model_control_mode,
        tracer,
        logging,
        Arc::clone(&metrics),
    ));
    host.attach(&core, tokio::runtime::Handle::current());

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    if args.allow_http {
        let listener = bind(&args.http_address, args.http_port, "http").await?;
        tracing::info!("HTTP service listening on {}", listener.local_addr()?);
        let app = crate::frontend::http::router(Arc::clone(&core), args.max_request_size);
        let signal = stopped(stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            axum::serve(
                listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                app,
            )
            .with_graceful_shutdown(signal)
            .await
            .context("HTTP server failed")
        }));
    }
    if args.allow_grpc {
        let listener = bind(&args.grpc_address, args.grpc_port, "grpc").await?;
        tracing::info!("gRPC service listening on {}", listener.local_addr()?);
        let service = crate::frontend::grpc::service(Arc::clone(&core), args.max_request_size);
        let signal = stopped(stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(tower::util::MapResponseLayer::new(
                    crate::frontend::grpc::size_limit_status,
                ))
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    signal,
                )
                .await
                .context("gRPC server failed")
        }));
    }
    if args.allow_metrics {
        let listener = bind(&args.metrics_address, args.metrics_port, "metrics").await?;
        tracing::info!("metrics service listening on {}", listener.local_addr()?);
        let app = metrics_router(Arc::clone(&metrics));
        let signal = stopped(stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
                .context("metrics server failed")
        }));
    }

    let loader = Arc::clone(&models);
    let explicit =
        (args.model_control_mode == ControlMode::Explicit).then(|| args.load_model.clone());
    tokio::select! {
        loaded = tokio::task::spawn_blocking(move || loader.load_startup(explicit.as_deref())) => {
            loaded.context("model loading panicked")??;
            core.set_ready();
            tracing::info!("ready: {} model version(s) serving", core.repository_index(true).len());
            let detector = crate::repository::watch::spawn_detector(
                args.model_control_mode,
                args.model_repository.clone(),
                Duration::from_secs(args.repository_poll_secs),
            );
            tokio::select! {
                _ = follow_repository(detector, Arc::clone(&models)) => {}
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
    tokio::task::spawn_blocking(move || models.unload_all())
        .await
        .context("unloading panicked")?;
    tracing::info!("stopped");
    Ok(())
}

/// Rescans the repository each time the change detector asks; forever when there is one.
async fn follow_repository(
    detector: Option<tokio::sync::mpsc::Receiver<()>>,
    models: Arc<ModelManager>,
) {
    let Some(mut detector) = detector else {
        return std::future::pending().await;
    };
    while detector.recv().await.is_some() {
        let models = Arc::clone(&models);
        match tokio::task::spawn_blocking(move || models.poll()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("repository rescan failed: {}", e.message),
            Err(e) => tracing::error!("repository rescan panicked: {e}"),
        }
    }
}

fn metrics_router(metrics: Arc<crate::metrics::ServerMetrics>) -> axum::Router {
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
