//! The streaming server behind Exec, Attach and PortForward: the RPC validates the request and
//! asks for a URL ([`StreamingServer::exec_url`] etc.); the kubelet or crictl then connects to
//! that URL and upgrades to SPDY/3.1 or WebSocket, and the session runs on a [`Backend`].
//! See docs/streaming.md for the protocols.

pub mod backend;
pub mod cache;
pub mod http;
pub mod idle;
pub mod port_forward;
pub mod remote_command;
pub mod spdy_transport;
pub mod tunnel;
pub mod upgrade;
pub mod websocket;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use self::backend::Backend;
use self::cache::{CachedRequest, TokenCache};
use crate::config::StreamingConfig;
use crate::error::{Error, Result};

/// The running streaming server: hands out single-use URLs and serves them until dropped.
pub struct StreamingServer {
    cache: Arc<TokenCache>,
    base_url: String,
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for StreamingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingServer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl StreamingServer {
    /// Binds `cfg.address` (TLS when both `tls_cert_file` and `tls_key_file` are set) and starts
    /// serving on the current tokio runtime. Fails when called outside a runtime, when the
    /// address cannot be bound, or when the TLS files are unusable or only one is set.
    pub fn start(cfg: &StreamingConfig, backend: Arc<dyn Backend>) -> Result<Arc<Self>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::Internal(format!("streaming: the server needs a tokio runtime: {e}"))
        })?;
        let tls =
            match (
                cfg.tls_cert_file.as_os_str().is_empty(),
                cfg.tls_key_file.as_os_str().is_empty(),
            ) {
                (true, true) => None,
                (false, false) => Some(http::tls_acceptor(&cfg.tls_cert_file, &cfg.tls_key_file)?),
                _ => return Err(Error::InvalidArgument(
                    "streaming: set both [streaming] tls_cert_file and tls_key_file, or neither"
                        .into(),
                )),
            };
        let bind_err = |e| {
            Error::io(
                format!(
                    "binding the streaming server to {} (set [streaming] address)",
                    cfg.address
                ),
                e,
            )
        };
        let listener = std::net::TcpListener::bind(cfg.address).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(bind_err)?
        };
        let base_url = base_url(local_addr, tls.is_some());
        let cache = Arc::new(TokenCache::new());
        let shared = Arc::new(http::Shared {
            cache: cache.clone(),
            backend,
            idle_timeout: Duration::from_secs(cfg.stream_idle_timeout_secs.max(1)),
        });
        let task = runtime.spawn(http::serve(listener, tls, shared));
        tracing::info!(url = %base_url, "streaming server listening");
        Ok(Arc::new(Self {
            cache,
            base_url,
            local_addr,
            task,
        }))
    }

    /// The address actually bound (the port is known here when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://HOST:PORT` or `https://HOST:PORT`, what every URL starts with.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A single-use URL (valid 60 s) that runs `req` when a client upgrades on it.
    pub fn exec_url(&self, req: k8s_cri::v1::ExecRequest) -> Result<String> {
        self.url("exec", CachedRequest::Exec(req))
    }

    /// A single-use URL (valid 60 s) that attaches to `req.container_id` when a client upgrades.
    pub fn attach_url(&self, req: k8s_cri::v1::AttachRequest) -> Result<String> {
        self.url("attach", CachedRequest::Attach(req))
    }

    /// A single-use URL (valid 60 s) that forwards ports of `req.pod_sandbox_id` (the ports come
    /// from the client: SPDY `port` headers or the WebSocket `?port=` query).
    pub fn port_forward_url(&self, req: k8s_cri::v1::PortForwardRequest) -> Result<String> {
        self.url("portforward", CachedRequest::PortForward(req))
    }

    fn url(&self, kind: &str, req: CachedRequest) -> Result<String> {
        let token = self.cache.insert(req)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The URL prefix for a bound address: an unspecified address is reached over loopback.
fn base_url(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests;
