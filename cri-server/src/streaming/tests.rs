//! In-process protocol tests: the real server on 127.0.0.1:0 with an in-memory [`Backend`],
//! driven by a SPDY client (the `spdy` crate) and a WebSocket client (tokio-tungstenite).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::backend::{Backend, SessionIo};
use super::StreamingServer;
use crate::config::StreamingConfig;
use crate::error::Error;

/// Sets its flag when dropped: tells whether the backend future was dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Commands: `cat` (stdin to stdout), `out OUT ERR CODE`, `tty` (prints the first resize, then
/// cats), `fail` (backend error), `hang` (never ends; sets `dropped` when dropped).
struct TestBackend {
    /// Pod port -> where the test's TCP server listens.
    upstream: SocketAddr,
    dropped: Arc<AtomicBool>,
}

async fn cat(io: &mut SessionIo) {
    if let (Some(stdin), Some(stdout)) = (io.stdin.as_mut(), io.stdout.as_mut()) {
        let _ = tokio::io::copy(stdin, stdout).await;
    }
}

impl Backend for TestBackend {
    fn exec(
        &self,
        req: k8s_cri::v1::ExecRequest,
        mut io: SessionIo,
    ) -> BoxFuture<'static, Result<i32, Error>> {
        let flag = DropFlag(self.dropped.clone());
        Box::pin(async move {
            let _flag = flag;
            match req.cmd.first().map(String::as_str) {
                Some("cat") => {
                    cat(&mut io).await;
                    Ok(0)
                }
                Some("out") => {
                    if let Some(w) = io.stdout.as_mut() {
                        w.write_all(req.cmd[1].as_bytes()).await.unwrap();
                    }
                    if let Some(w) = io.stderr.as_mut() {
                        w.write_all(req.cmd[2].as_bytes()).await.unwrap();
                    }
                    Ok(req.cmd[3].parse().unwrap())
                }
                Some("tty") => {
                    let size = io.resize.as_mut().unwrap().recv().await.unwrap();
                    let line = format!("{}x{}\n", size.width, size.height);
                    io.stdout
                        .as_mut()
                        .unwrap()
                        .write_all(line.as_bytes())
                        .await
                        .unwrap();
                    cat(&mut io).await;
                    Ok(0)
                }
                Some("hang") => std::future::pending().await,
                _ => Err(Error::NotFound("container c1: no such process".into())),
            }
        })
    }

    fn attach(
        &self,
        _req: k8s_cri::v1::AttachRequest,
        mut io: SessionIo,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            cat(&mut io).await;
            Ok(())
        })
    }

    fn port_forward(&self, pod: String, port: u16) -> BoxFuture<'static, Result<TcpStream, Error>> {
        let upstream = self.upstream;
        Box::pin(async move {
            if pod != "pod1" || port != 80 {
                return Err(Error::Unavailable(format!(
                    "dial tcp 127.0.0.1:{port}: connection refused"
                )));
            }
            TcpStream::connect(upstream)
                .await
                .map_err(|e| Error::io("dialing", e))
        })
    }
}

/// A TCP server answering each connection's first read with `pong:` + the bytes, then closing.
async fn pong_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let mut reply = b"pong:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.write_all(&reply).await;
            });
        }
    });
    addr
}

struct Harness {
    server: Arc<StreamingServer>,
    dropped: Arc<AtomicBool>,
}

async fn harness_with(cfg: StreamingConfig) -> Harness {
    let dropped = Arc::new(AtomicBool::new(false));
    let backend = Arc::new(TestBackend {
        upstream: pong_server().await,
        dropped: dropped.clone(),
    });
    let server = StreamingServer::start(&cfg, backend).unwrap();
    Harness { server, dropped }
}

async fn harness() -> Harness {
    harness_with(StreamingConfig::default()).await
}

fn exec(
    cmd: &[&str],
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> k8s_cri::v1::ExecRequest {
    k8s_cri::v1::ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout,
        stderr,
    }
}

fn host_and_path(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    (host.to_string(), format!("/{path}"))
}

/// Sends an HTTP/1.1 request with `headers` and returns the response head and the connection.
async fn raw_request(url: &str, headers: &[(&str, &str)]) -> (String, TcpStream) {
    let (host, path) = host_and_path(url);
    let mut s = TcpStream::connect(&host).await.unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // Read the head byte by byte: what follows belongs to the upgraded protocol.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    (String::from_utf8(head).unwrap(), s)
}

async fn body_of(head: &str, s: &mut TcpStream) -> String {
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    String::from_utf8(body).unwrap()
}

async fn spdy_connect(url: &str, protocols: &[&str]) -> spdy::Connection {
    let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    for p in protocols {
        headers.push(("X-Stream-Protocol-Version", p));
    }
    let (head, s) = raw_request(url, &headers).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("x-stream-protocol-version: {}", protocols[0])),
        "{head}"
    );
    spdy::Connection::new(s, false)
}

async fn open(conn: &spdy::Connection, streamtype: &str) -> spdy::Stream {
    conn.open(vec![("streamtype".into(), streamtype.into())])
        .await
        .unwrap()
}

async fn read_all<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut out))
        .await
        .expect("read timed out")
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn spdy_exec_output_and_exit_code() {
    let h = harness().await;
    let url = h
        .server
        .exec_url(exec(
            &["out", "hello", "oops", "3"],
            false,
            true,
            true,
            false,
        ))
        .unwrap();
    let conn = spdy_connect(&url, &["v4.channel.k8s.io"]).await;
    let mut error = open(&conn, "error").await;
    let mut stdout = open(&conn, "stdout").await;
    let mut stderr = open(&conn, "stderr").await;
    assert_eq!(read_all(&mut stdout).await, "hello");
    assert_eq!(read_all(&mut stderr).await, "oops");
    let status: serde_json::Value = serde_json::from_str(&read_all(&mut error).await).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    conn.closed().await;
}

#[tokio::test]
async fn spdy_exec_stdin_to_stdout_success() {
    let h = harness().await;
    let url = h
        .server
        .exec_url(exec(&["cat"], true, true, false, false))
        .unwrap();
    // The client prefers v4 but offers older versions too: v4 is chosen.
    let conn = spdy_connect(
        &url,
        &["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"],
    )
    .await;
    let mut error = open(&conn, "error").await;
    let mut stdin = open(&conn, "stdin").await;
    let mut stdout = open(&conn, "stdout").await;
    stdin.write_all(b"ping over spdy").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stdout).await, "ping over spdy");
    assert_eq!(
        read_all(&mut error).await,
        r#"{"metadata":{},"status":"Success"}"#
    );
}

#[tokio::test]
async fn spdy_tty_resize_and_attach() {
    let h = harness().await;
    let url = h
        .server
        .exec_url(exec(&["tty"], true, true, false, true))
        .unwrap();
    let conn = spdy_connect(&url, &["v4.channel.k8s.io"]).await;
    let mut error = open(&conn, "error").await;
    let mut stdin = open(&conn, "stdin").await;
    let mut stdout = open(&conn, "stdout").await;
    let mut resize = open(&conn, "resize").await;
    resize
        .write_all(b"{\"Width\":120,\"Height\":40}\n")
        .await
        .unwrap();
    let mut line = [0u8; 7];
    stdout.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"120x40\n");
    stdin.write_all(b"typed").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stdout).await, "typed");
    assert_eq!(
        read_all(&mut error).await,
        r#"{"metadata":{},"status":"Success"}"#
    );

    // Attach over the v3 protocol: no JSON status on success, the error stream just ends.
    let url = h
        .server
        .attach_url(k8s_cri::v1::AttachRequest {
            container_id: "c1".into(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .unwrap();
    assert!(url.contains("/attach/"), "{url}");
    let conn = spdy_connect(&url, &["v3.channel.k8s.io"]).await;
    let mut error = open(&conn, "error").await;
    let mut stdin = open(&conn, "stdin").await;
    let mut stdout = open(&conn, "stdout").await;
    stdin.write_all(b"attached").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stdout).await, "attached");
    assert_eq!(read_all(&mut error).await, "");
}

#[tokio::test]
async fn spdy_backend_error_as_text_before_v4() {
    let h = harness().await;
    let url = h
        .server
        .exec_url(exec(&["fail"], false, true, false, false))
        .unwrap();
    let conn = spdy_connect(&url, &["v2.channel.k8s.io"]).await;
    let mut error = open(&conn, "error").await;
    let mut stdout = open(&conn, "stdout").await;
    assert_eq!(read_all(&mut stdout).await, "");
    assert_eq!(
        read_all(&mut error).await,
        "Internal error occurred: error executing command in container: container c1: no such process"
    );
}

#[tokio::test]
async fn spdy_port_forward_both_ways_and_dial_error() {
    let h = harness().await;
    let url = h
        .server
        .port_forward_url(k8s_cri::v1::PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            port: vec![],
        })
        .unwrap();
    let conn = spdy_connect(&url, &["portforward.k8s.io"]).await;
    let pair = |streamtype: &str, port: &str, id: &str| {
        vec![
            ("streamtype".to_string(), streamtype.to_string()),
            ("port".to_string(), port.to_string()),
            ("requestid".to_string(), id.to_string()),
        ]
    };
    for id in ["0", "1"] {
        let mut error = conn.open(pair("error", "80", id)).await.unwrap();
        let mut data = conn.open(pair("data", "80", id)).await.unwrap();
        data.write_all(format!("ping{id}").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_all(&mut data).await, format!("pong:ping{id}"));
        data.shutdown().await.unwrap();
        assert_eq!(read_all(&mut error).await, "");
    }
    let mut error = conn.open(pair("error", "81", "2")).await.unwrap();
    let mut data = conn.open(pair("data", "81", "2")).await.unwrap();
    assert_eq!(
        read_all(&mut error).await,
        "error forwarding port 81 to pod pod1, uid : dial tcp 127.0.0.1:81: connection refused"
    );
    assert_eq!(read_all(&mut data).await, "");
    // A stream without a port header is refused (reset); the connection goes on.
    let bad = conn
        .open(vec![("streamtype".into(), "data".into())])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(bad.is_reset());
    conn.close().await;
}

#[tokio::test]
async fn spdy_negotiation_errors_and_single_use_tokens() {
    let h = harness().await;
    let url = h
        .server
        .exec_url(exec(&["cat"], true, true, false, false))
        .unwrap();
    // No X-Stream-Protocol-Version: 400 (and the token is spent, like the kubelet's).
    let (head, mut s) =
        raw_request(&url, &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(body_of(&head, &mut s)
        .await
        .contains("X-Stream-Protocol-Version"));
    let (head, mut s) = raw_request(&url, &[]).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(body_of(&head, &mut s).await.contains("single use"));

    let url = h
        .server
        .exec_url(exec(&["cat"], true, true, false, false))
        .unwrap();
    let (head, _) = raw_request(
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
        ],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"),
        "{head}"
    );

    // A plain GET (no upgrade) on a fresh token: 400.
    let url = h
        .server
        .exec_url(exec(&["cat"], true, true, false, false))
        .unwrap();
    let (head, _) = raw_request(&url, &[]).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // Unknown paths: 404.
    let base = h.server.base_url().to_string();
    let (head, _) = raw_request(&format!("{base}/exec/nosuchtoken"), &[]).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = raw_request(&format!("{base}/other/x"), &[]).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // An attach token on the exec path is not found either.
    let url = h
        .server
        .attach_url(k8s_cri::v1::AttachRequest::default())
        .unwrap()
        .replace("/attach/", "/exec/");
    let (head, _) = raw_request(&url, &[]).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[tokio::test]
async fn client_going_away_drops_the_backend() {
    let h = harness().await;
    let url = h
        .server
        .exec_url(exec(&["hang"], false, true, false, false))
        .unwrap();
    let conn = spdy_connect(&url, &["v4.channel.k8s.io"]).await;
    let _error = open(&conn, "error").await;
    let _stdout = open(&conn, "stdout").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!h.dropped.load(Ordering::SeqCst));
    conn.close().await;
    wait_for(&h.dropped).await;
}

#[tokio::test]
async fn idle_sessions_are_closed() {
    let h = harness_with(StreamingConfig {
        stream_idle_timeout_secs: 1,
        ..StreamingConfig::default()
    })
    .await;
    let url = h
        .server
        .exec_url(exec(&["hang"], false, true, false, false))
        .unwrap();
    let conn = spdy_connect(&url, &["v4.channel.k8s.io"]).await;
    let _error = open(&conn, "error").await;
    let _stdout = open(&conn, "stdout").await;
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("idle session not closed");
    wait_for(&h.dropped).await;
}

async fn wait_for(flag: &AtomicBool) {
    for _ in 0..100 {
        if flag.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backend future was not dropped");
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(url: &str, protocol: &str) -> Ws {
    let (host, _) = host_and_path(url);
    let mut req = url
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let tcp = TcpStream::connect(host).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    ws
}

/// Next data message's bytes (text frames as their bytes); `None` at close.
async fn ws_next(ws: &mut Ws) -> Option<Vec<u8>> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("websocket read timed out")?;
        match msg.unwrap() {
            Message::Binary(b) => return Some(b.to_vec()),
            Message::Text(t) => return Some(t.as_bytes().to_vec()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

#[tokio::test]
async fn websocket_v5_exec_with_stdin_close() {
    let h = harness().await;
    let url = h
        .server
        .exec_url(exec(&["cat"], true, true, false, false))
        .unwrap();
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
    // The empty "connected" message on stdout.
    assert_eq!(ws_next(&mut ws).await, Some(vec![1]));
    ws.send(Message::binary(b"\x00hello ".to_vec()))
        .await
        .unwrap();
    ws.send(Message::binary(b"\x00ws".to_vec())).await.unwrap();
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let mut out = Vec::new();
    let status = loop {
        let msg = ws_next(&mut ws).await.expect("closed before the status");
        match msg[0] {
            1 => out.extend_from_slice(&msg[1..]),
            3 => break String::from_utf8(msg[1..].to_vec()).unwrap(),
            c => panic!("unexpected channel {c}"),
        }
    };
    assert_eq!(out, b"hello ws");
    assert_eq!(status, r#"{"metadata":{},"status":"Success"}"#);
    assert_eq!(ws_next(&mut ws).await, None);
}

#[tokio::test]
async fn websocket_base64_exit_code_and_tty_resize() {
    let h = harness().await;
    let url = h
        .server
        .exec_url(exec(&["out", "hi", "err", "7"], false, true, true, false))
        .unwrap();
    let mut ws = ws_connect(&url, "v4.base64.channel.k8s.io").await;
    assert_eq!(ws_next(&mut ws).await, Some(b"1".to_vec()));
    let mut got = Vec::new();
    let status = loop {
        let msg = String::from_utf8(ws_next(&mut ws).await.unwrap()).unwrap();
        if let Some(s) = msg.strip_prefix('3') {
            break s.to_string();
        }
        got.push(msg);
    };
    got.sort();
    assert_eq!(got, vec!["1aGk=".to_string(), "2ZXJy".to_string()]);
    use base64::Engine;
    let status = base64::engine::general_purpose::STANDARD
        .decode(status)
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "7");

    // TTY with resize on channel 4 (binary v4).
    let url = h
        .server
        .exec_url(exec(&["tty"], true, true, false, true))
        .unwrap();
    let mut ws = ws_connect(&url, "v4.channel.k8s.io").await;
    assert_eq!(ws_next(&mut ws).await, Some(vec![1]));
    ws.send(Message::binary(
        b"\x04{\"Width\":100,\"Height\":30}".to_vec(),
    ))
    .await
    .unwrap();
    assert_eq!(ws_next(&mut ws).await, Some(b"\x01100x30\n".to_vec()));
    ws.send(Message::binary(b"\x00abc".to_vec())).await.unwrap();
    assert_eq!(ws_next(&mut ws).await, Some(b"\x01abc".to_vec()));
    // Closing the socket ends the session (no v5 close signal in v4).
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_port_forward() {
    let h = harness().await;
    let url = h
        .server
        .port_forward_url(k8s_cri::v1::PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            port: vec![80],
        })
        .unwrap();
    let mut ws = ws_connect(&format!("{url}?port=80&port=81"), "v4.channel.k8s.io").await;
    let mut prefixes = Vec::new();
    for _ in 0..4 {
        prefixes.push(ws_next(&mut ws).await.unwrap());
    }
    assert_eq!(
        prefixes,
        vec![
            vec![0, 80, 0],
            vec![1, 80, 0],
            vec![2, 81, 0],
            vec![3, 81, 0]
        ]
    );
    ws.send(Message::binary(b"\x00ping".to_vec()))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(msg) = ws_next(&mut ws).await {
        seen.push(msg);
    }
    assert!(seen.contains(&b"\x00pong:ping".to_vec()), "{seen:?}");
    assert!(
        seen.contains(
            &b"\x03error forwarding port 81 to pod pod1, uid : dial tcp 127.0.0.1:81: connection refused"
                .to_vec()
        ),
        "{seen:?}"
    );

    // No ?port=: 400.
    let url = h
        .server
        .port_forward_url(k8s_cri::v1::PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            port: vec![],
        })
        .unwrap();
    let (host, _) = host_and_path(&url);
    let req = url
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    let err = tokio_tungstenite::client_async(req, TcpStream::connect(host).await.unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn base_url_and_bind_errors() {
    let h = harness_with(StreamingConfig {
        address: "0.0.0.0:0".parse().unwrap(),
        ..StreamingConfig::default()
    })
    .await;
    let port = h.server.local_addr().port();
    assert_eq!(h.server.base_url(), format!("http://127.0.0.1:{port}"));
    let backend = Arc::new(TestBackend {
        upstream: "127.0.0.1:1".parse().unwrap(),
        dropped: Arc::default(),
    });
    let taken = StreamingConfig {
        address: h.server.local_addr(),
        ..StreamingConfig::default()
    };
    let err = StreamingServer::start(&taken, backend.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("[streaming] address"), "{err}");
    let half_tls = StreamingConfig {
        tls_cert_file: "/x.pem".into(),
        ..StreamingConfig::default()
    };
    let err = StreamingServer::start(&half_tls, backend)
        .unwrap_err()
        .to_string();
    assert!(err.contains("both"), "{err}");
}

#[tokio::test]
async fn websocket_client_going_away_drops_the_backend() {
    let h = harness().await;
    let url = h
        .server
        .exec_url(exec(&["hang"], true, true, false, false))
        .unwrap();
    let mut ws = ws_connect(&url, "v4.channel.k8s.io").await;
    assert_eq!(ws_next(&mut ws).await, Some(vec![1]));
    assert!(!h.dropped.load(Ordering::SeqCst));
    drop(ws);
    wait_for(&h.dropped).await;
}

#[tokio::test]
async fn tls_serves_https() {
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=berth-streaming-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let h = harness_with(StreamingConfig {
        tls_cert_file: cert.clone(),
        tls_key_file: key.clone(),
        ..StreamingConfig::default()
    })
    .await;
    assert!(h.server.base_url().starts_with("https://127.0.0.1:"));

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(h.server.local_addr()).await.unwrap();
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /exec/unknown HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tls.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

    // A key file that is not PEM is refused at start.
    std::fs::write(&key, "not a key").unwrap();
    let backend = Arc::new(TestBackend {
        upstream: "127.0.0.1:1".parse().unwrap(),
        dropped: Arc::default(),
    });
    let bad = StreamingConfig {
        tls_cert_file: cert,
        tls_key_file: key,
        ..StreamingConfig::default()
    };
    let err = StreamingServer::start(&bad, backend)
        .unwrap_err()
        .to_string();
    assert!(err.contains("key.pem"), "{err}");
}

#[tokio::test]
async fn spdy_port_forward_tunnelled_through_websocket() {
    let h = harness().await;
    let url = h
        .server
        .port_forward_url(k8s_cri::v1::PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            port: vec![80],
        })
        .unwrap();
    // Like client-go's SPDY-over-WebSocket dialer: no ?port=, ports travel in SPDY headers.
    let ws = ws_connect(&url, super::tunnel::SPDY_PORT_FORWARD_TUNNEL).await;
    let conn = spdy::Connection::new(super::tunnel::WsBytes::new(ws), false);
    let pair = |streamtype: &str, port: &str| {
        vec![
            ("streamtype".to_string(), streamtype.to_string()),
            ("port".to_string(), port.to_string()),
            ("requestid".to_string(), "0".to_string()),
        ]
    };
    let mut error = conn.open(pair("error", "80")).await.unwrap();
    let mut data = conn.open(pair("data", "80")).await.unwrap();
    data.write_all(b"through the tunnel").await.unwrap();
    assert_eq!(read_all(&mut data).await, "pong:through the tunnel");
    data.shutdown().await.unwrap();
    assert_eq!(read_all(&mut error).await, "");
    conn.close().await;
}
