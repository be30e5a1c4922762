//! The streaming server's HTTP side: TCP (optionally TLS) listener, hyper 1 connections with
//! upgrades, routing of `/exec/TOKEN`, `/attach/TOKEN` and `/portforward/TOKEN`, and the upgrade
//! answer (101) before the session runs on the upgraded connection.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::backend::Backend;
use super::cache::{CachedRequest, TokenCache};
use super::idle::Activity;
use super::remote_command::Command;
use super::upgrade::{self, Transport, UpgradeError};
use super::{port_forward, spdy_transport, tunnel, websocket};
use crate::error::{Error, Result};

/// A slow client may take this long to send its request headers or finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection needs.
pub struct Shared {
    /// The URL tokens.
    pub cache: Arc<TokenCache>,
    /// Runs the sessions.
    pub backend: Arc<dyn Backend>,
    /// `[streaming] stream_idle_timeout_secs`.
    pub idle_timeout: Duration,
}

/// Loads a PEM certificate chain and key into a TLS acceptor (HTTP/1.1 only).
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|e| Error::io(format!("streaming: reading TLS file {}", path.display()), e))
    };
    let bad = |path: &Path, what: &str, e: rustls::pki_types::pem::Error| {
        Error::InvalidArgument(format!(
            "streaming: {} holds no usable PEM {what}: {e}",
            path.display()
        ))
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = read(cert_file)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert_file, "certificate", e))?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "streaming: {} holds no PEM certificate",
            cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?)
        .map_err(|e| bad(key_file, "private key", e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "streaming: TLS certificate {} / key {}: {e}",
                cert_file.display(),
                key_file.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections on `listener` until the returned future is dropped.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let tls = tls.clone();
                    connections.spawn(async move {
                        match tls {
                            None => serve_connection(stream, shared).await,
                            Some(tls) => {
                                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                                    Ok(Ok(stream)) => serve_connection(stream, shared).await,
                                    Ok(Err(err)) => tracing::debug!(%peer, %err, "streaming: TLS handshake"),
                                    Err(_) => tracing::debug!(%peer, "streaming: TLS handshake timed out"),
                                }
                            }
                        }
                    });
                }
                Err(err) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(%err, "streaming: accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection<I>(io: I, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |req| handle(req, shared.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(err) = conn.await {
        tracing::debug!(%err, "streaming: connection");
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl std::fmt::Display) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn refused(err: &UpgradeError, transport: Option<Transport>, server: &[&str]) -> Response<Body> {
    let mut resp = text(err.status(), err);
    if transport == Some(Transport::Spdy) && matches!(err, UpgradeError::NoCommonProtocol { .. }) {
        for p in server {
            if let Ok(v) = HeaderValue::from_str(p) {
                resp.headers_mut()
                    .append(upgrade::ACCEPTED_PROTOCOLS_HEADER, v);
            }
        }
    }
    resp
}

/// Which streaming endpoint a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Exec,
    Attach,
    PortForward,
}

fn route(path: &str) -> Option<(Endpoint, &str)> {
    let (kind, token) = path.strip_prefix('/')?.split_once('/')?;
    let endpoint = match kind {
        "exec" => Endpoint::Exec,
        "attach" => Endpoint::Attach,
        "portforward" => Endpoint::PortForward,
        _ => return None,
    };
    (!token.is_empty() && !token.contains('/')).then_some((endpoint, token))
}

/// The session a consumed token starts, once the connection is upgraded.
enum Session {
    Command(Command),
    PortForward(String),
}

async fn handle<B>(
    mut req: Request<B>,
    shared: Arc<Shared>,
) -> std::result::Result<Response<Body>, Infallible>
where
    B: Send + 'static,
{
    let Some((endpoint, token)) = route(req.uri().path()) else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "not found: streaming URLs are /exec/TOKEN, /attach/TOKEN and /portforward/TOKEN",
        ));
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, POST"));
        return Ok(resp);
    }
    let session = match (endpoint, shared.cache.consume(token)) {
        (Endpoint::Exec, Some(CachedRequest::Exec(r))) => Session::Command(Command::Exec(r)),
        (Endpoint::Attach, Some(CachedRequest::Attach(r))) => Session::Command(Command::Attach(r)),
        (Endpoint::PortForward, Some(CachedRequest::PortForward(r))) => {
            Session::PortForward(r.pod_sandbox_id)
        }
        _ => {
            return Ok(text(
                StatusCode::NOT_FOUND,
                "streaming token not found: it is unknown, already used, or expired \
                 (tokens are single use and valid for 60s); request a new URL",
            ))
        }
    };
    let transport = match upgrade::transport(req.headers()) {
        Ok(t) => t,
        Err(e) => return Ok(refused(&e, None, &[])),
    };
    let activity = Activity::new(shared.idle_timeout);
    let backend = shared.backend.clone();
    let resp = match (transport, session) {
        (Transport::Spdy, session) => {
            let server = match session {
                Session::Command(_) => upgrade::SPDY_REMOTE_COMMAND,
                Session::PortForward(_) => upgrade::SPDY_PORT_FORWARD,
            };
            let protocol = match upgrade::spdy_protocol(req.headers(), server) {
                Ok(p) => p,
                Err(e) => return Ok(refused(&e, Some(transport), server)),
            };
            spawn_session(&mut req, move |io| async move {
                match session {
                    Session::Command(cmd) => {
                        spdy_transport::remote_command(io, protocol, cmd, backend, activity).await
                    }
                    Session::PortForward(pod) => {
                        spdy_transport::port_forward(io, pod, backend, activity).await
                    }
                }
            });
            switching("SPDY/3.1", upgrade::STREAM_PROTOCOL_HEADER, protocol)
        }
        (Transport::WebSocket, session) => {
            let accept = match upgrade::websocket_accept(req.headers()) {
                Ok(a) => a,
                Err(e) => return Ok(refused(&e, Some(transport), &[])),
            };
            let server = match session {
                Session::Command(_) => upgrade::WS_REMOTE_COMMAND,
                Session::PortForward(_) => upgrade::WS_PORT_FORWARD,
            };
            let protocol = match upgrade::websocket_protocol(req.headers(), server) {
                Ok(p) => p,
                Err(e) => return Ok(refused(&e, Some(transport), server)),
            };
            match session {
                Session::Command(cmd) => spawn_session(&mut req, move |io| {
                    websocket::remote_command(io, protocol, cmd, backend, activity)
                }),
                Session::PortForward(pod) if protocol == tunnel::SPDY_PORT_FORWARD_TUNNEL => {
                    spawn_session(&mut req, move |io| async move {
                        let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                        spdy_transport::port_forward(
                            tunnel::WsBytes::new(ws),
                            pod,
                            backend,
                            activity,
                        )
                        .await
                    })
                }
                Session::PortForward(pod) => {
                    let ports = match port_forward::query_ports(req.uri().query()) {
                        Ok(p) => p,
                        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, e)),
                    };
                    spawn_session(&mut req, move |io| {
                        websocket::port_forward(io, protocol, pod, ports, backend, activity)
                    })
                }
            }
            let mut resp = switching("websocket", "sec-websocket-protocol", protocol);
            if let Ok(v) = HeaderValue::from_str(&accept) {
                resp.headers_mut().insert("sec-websocket-accept", v);
            }
            resp
        }
    };
    Ok(resp)
}

/// The 101 answer; `protocol_header` is left out when `protocol` is empty.
fn switching(
    upgrade_to: &'static str,
    protocol_header: &'static str,
    protocol: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    h.insert(http::header::UPGRADE, HeaderValue::from_static(upgrade_to));
    if !protocol.is_empty() {
        h.insert(protocol_header, HeaderValue::from_static(protocol));
    }
    resp
}

/// Runs `run` on the connection once hyper hands it over after the 101.
fn spawn_session<B, F, Fut>(req: &mut Request<B>, run: F)
where
    F: FnOnce(TokioIo<Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => run(TokioIo::new(upgraded)).await,
            Err(err) => tracing::debug!(%err, "streaming: upgrade failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/exec/abc"), Some((Endpoint::Exec, "abc")));
        assert_eq!(route("/attach/x-_1"), Some((Endpoint::Attach, "x-_1")));
        assert_eq!(route("/portforward/t"), Some((Endpoint::PortForward, "t")));
        assert_eq!(route("/exec/"), None);
        assert_eq!(route("/exec/a/b"), None);
        assert_eq!(route("/run/abc"), None);
        assert_eq!(route("/"), None);
    }
}
