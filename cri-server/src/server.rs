//! Starts the gRPC server on the unix socket and wires the services to their managers; serves
//! Prometheus metrics on TCP next to it.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::Context;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::image::manager::ImageManager;
use crate::image::ImageHandlers;
use crate::metrics;
use crate::metrics::grpc::GrpcMetricsLayer;
use crate::metrics::state::StateSource;
use crate::runtime::RuntimeHandlers;

/// Runs berthd until SIGINT or SIGTERM. Containers keep running after berthd exits.
pub async fn run(config: Config) -> anyhow::Result<()> {
    for dir in [&config.root, &config.state] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(parent) = config.socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::remove_file(&config.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("removing stale socket {}", config.socket.display()))
        }
    }
    let images = Arc::new(
        ImageManager::open(&config)
            .await
            .context("opening image store")?,
    );
    // Bound before anything is recovered or served: a taken port stops berthd at once.
    let metrics_listener = if config.metrics.enabled {
        Some(metrics::http::bind(config.metrics.address).await?)
    } else {
        None
    };
    let runtime = Arc::new(
        RuntimeHandlers::new(&config, images.clone())
            .await
            .context("recovering runtime state")?,
    );
    // Dropped (aborting the endpoint and its connections) when this function returns.
    let _metrics_server = metrics_listener.map(|listener| {
        let source = Arc::new(StateSource::new(
            runtime.clone(),
            images.clone(),
            &config.state,
        ));
        let render: metrics::http::Render = Arc::new(move || {
            let source = source.clone();
            Box::pin(async move { source.render(metrics::global()).await })
        });
        tracing::info!(address = %config.metrics.address, "serving Prometheus metrics on /metrics");
        AbortOnDrop(tokio::spawn(metrics::http::serve(listener, render)))
    });

    let listener = UnixListener::bind(&config.socket)
        .with_context(|| format!("binding {}", config.socket.display()))?;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode of {}", config.socket.display()))?;
    tracing::info!(socket = %config.socket.display(), "berthd serving CRI v1");

    tonic::transport::Server::builder()
        .layer(GrpcMetricsLayer)
        .add_service(RuntimeServiceServer::from_arc(runtime))
        .add_service(ImageServiceServer::new(ImageHandlers::new(images)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal())
        .await
        .context("serving gRPC")?;
    tracing::info!("berthd stopped; containers keep running");
    Ok(())
}

/// Aborts a background task when berthd's serving scope ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop berthd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
