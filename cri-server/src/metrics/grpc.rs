//! The per-RPC tower layer around the CRI services: request count, error count by gRPC code and
//! latency, labelled with the CRI method name.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower_layer::Layer;
use tower_service::Service;

/// CRI v1 methods. Anything else (a typo'd or future method) is labelled `other`, so a client cannot
/// grow the label set without bound.
const METHODS: &[&str] = &[
    // RuntimeService
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
    // ImageService
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// The `method` label for a request path such as `/runtime.v1.RuntimeService/RunPodSandbox`.
pub fn method_label(path: &str) -> &'static str {
    let Some(rest) = path
        .strip_prefix("/runtime.v1.RuntimeService/")
        .or_else(|| path.strip_prefix("/runtime.v1.ImageService/"))
    else {
        return "other";
    };
    METHODS
        .iter()
        .copied()
        .find(|m| *m == rest)
        .unwrap_or("other")
}

/// The gRPC code name (`NotFound`, …) in a `grpc-status` header value; `None` for OK.
pub fn error_code(grpc_status: Option<&[u8]>) -> Option<String> {
    let code = match grpc_status {
        None => return None,
        Some(v) => tonic::Code::from_bytes(v),
    };
    (code != tonic::Code::Ok).then(|| format!("{code:?}"))
}

/// Layer adding [`GrpcMetrics`] around a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// Counts and times every call passing through to `inner`.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                // Unary errors carry the status in the headers (a trailers-only response); streams
                // and successes report theirs in trailers, counted as OK here.
                Ok(resp) => error_code(
                    resp.headers()
                        .get("grpc-status")
                        .map(http::HeaderValue::as_bytes),
                ),
                Err(_) => Some("Unknown".to_string()),
            };
            let m = super::global();
            m.grpc_requests.with_label_values(&[method]).inc();
            m.grpc_duration
                .with_label_values(&[method])
                .observe(started.elapsed().as_secs_f64());
            if let Some(code) = code {
                m.grpc_errors.with_label_values(&[method, &code]).inc();
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels() {
        assert_eq!(
            method_label("/runtime.v1.RuntimeService/RunPodSandbox"),
            "RunPodSandbox"
        );
        assert_eq!(
            method_label("/runtime.v1.ImageService/PullImage"),
            "PullImage"
        );
        assert_eq!(method_label("/runtime.v1.RuntimeService/Bogus"), "other");
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "other");
        assert_eq!(method_label("/"), "other");
    }

    #[test]
    fn error_codes() {
        assert_eq!(error_code(None), None);
        assert_eq!(error_code(Some(b"0")), None);
        assert_eq!(error_code(Some(b"5")).as_deref(), Some("NotFound"));
        assert_eq!(error_code(Some(b"12")).as_deref(), Some("Unimplemented"));
        assert_eq!(error_code(Some(b"junk")).as_deref(), Some("Unknown"));
    }

    #[tokio::test]
    async fn layer_counts_calls_and_errors() {
        let inner = tower_service_fn(|req: http::Request<()>| {
            let status = if req.uri().path().ends_with("ContainerStatus") {
                "5"
            } else {
                "0"
            };
            http::Response::builder()
                .header("grpc-status", status)
                .body(())
        });
        let mut svc = GrpcMetricsLayer.layer(inner);
        let m = super::super::global();
        let before = m
            .grpc_errors
            .with_label_values(&["ContainerStatus", "NotFound"])
            .get();
        let req = http::Request::builder()
            .uri("/runtime.v1.RuntimeService/ContainerStatus")
            .body(())
            .unwrap();
        svc.call(req).await.unwrap();
        assert_eq!(
            m.grpc_errors
                .with_label_values(&["ContainerStatus", "NotFound"])
                .get(),
            before + 1
        );
        assert!(
            m.grpc_requests
                .with_label_values(&["ContainerStatus"])
                .get()
                >= 1
        );
    }

    /// A minimal service from a closure (tower's `service_fn` is not a dependency of this crate).
    fn tower_service_fn<F>(f: F) -> FnService<F> {
        FnService(f)
    }

    #[derive(Clone)]
    struct FnService<F>(F);

    impl<F> Service<http::Request<()>> for FnService<F>
    where
        F: FnMut(http::Request<()>) -> http::Result<http::Response<()>>,
    {
        type Response = http::Response<()>;
        type Error = http::Error;
        type Future = std::future::Ready<http::Result<http::Response<()>>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            std::future::ready((self.0)(req))
        }
    }
}
