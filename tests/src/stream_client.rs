//! Test clients for berthd's streaming server, speaking the kubelet's wire protocols the way
//! kubectl and crictl do (k8s.io/client-go/tools/remotecommand and tools/portforward):
//!
//! - remote command (exec, attach) over SPDY/3.1 — the HTTP upgrade is done here over a plain
//!   `TcpStream`, the framing by the `spdy` crate — and over WebSocket (tokio-tungstenite) with the
//!   binary (`v5`, `v4`, `channel.k8s.io`) and base64 channel protocols;
//! - port-forward over SPDY (pairs of error/data streams per request) and over WebSocket
//!   (channels `2i`/`2i+1` per `?port=`).
//!
//! Output is collected in the background; tests wait on it with deadlines, never hang.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

/// The remote-command protocols kubectl offers over SPDY, newest first.
pub const SPDY_REMOTE_COMMAND_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward protocol over SPDY (and one of the two over WebSocket).
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// WebSocket remote command, v5 (adds the close signal on channel 255).
pub const WS_V5: &str = "v5.channel.k8s.io";
/// WebSocket remote command, v4 (JSON status on the error channel).
pub const WS_V4: &str = "v4.channel.k8s.io";
/// WebSocket remote command, v4 with base64 text frames.
pub const WS_V4_BASE64: &str = "v4.base64.channel.k8s.io";
/// WebSocket remote command, the original binary protocol (plain-text errors).
pub const WS_V1: &str = "channel.k8s.io";
/// WebSocket remote command, the original base64 protocol.
pub const WS_V1_BASE64: &str = "base64.channel.k8s.io";

mod port_forward;
mod remote_command;

pub use port_forward::{ForwardedStream, SpdyPortForward, WsPortForward};
pub use remote_command::{Outcome, RemoteCommand};

/// Channel numbers of the remote-command protocols (SPDY streams are mapped onto them).
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: the close signal; its payload is the channel being closed.
const CLOSE: u8 = 255;

/// How long one write to the server may take before the session is declared stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server answered the upgrade request with something other than 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpStatus {
    /// The HTTP status code (e.g. 404 for a used or unknown token).
    pub status: u16,
    /// The response body (truncated).
    pub body: String,
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} instead of an upgrade: {}",
            self.status, self.body
        )
    }
}

impl std::error::Error for HttpStatus {}

/// The HTTP status of a failed upgrade, if that is what `err` is.
pub fn http_status(err: &anyhow::Error) -> Option<u16> {
    err.chain()
        .find_map(|e| e.downcast_ref::<HttpStatus>())
        .map(|s| s.status)
}

/// Which streams a remote-command session has: the flags of the CRI Exec/Attach request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streams {
    /// The client sends stdin.
    pub stdin: bool,
    /// The client reads stdout.
    pub stdout: bool,
    /// The client reads stderr (never with a TTY).
    pub stderr: bool,
    /// The session has a terminal (and a resize stream).
    pub tty: bool,
}

/// Host and path of a streaming URL.
struct Url {
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Url> {
    let rest = match url.strip_prefix("http://") {
        Some(r) => r,
        None if url.starts_with("https://") => {
            bail!("{url}: the test client speaks plain http only (berthd runs without TLS here)")
        }
        None => bail!("{url}: not an http:// URL"),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("{url}: no host");
    }
    Ok(Url {
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

/// Output collected by a session's background task, by channel number.
#[derive(Default)]
struct Buffers {
    channels: BTreeMap<u8, Vec<u8>>,
    /// The first protocol violation or transport error seen.
    failure: Option<String>,
}

#[derive(Default)]
struct Shared(Mutex<Buffers>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buffers> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, channel: u8, data: &[u8]) {
        self.lock()
            .channels
            .entry(channel)
            .or_default()
            .extend_from_slice(data);
    }

    fn fail(&self, why: String) {
        let mut b = self.lock();
        if b.failure.is_none() {
            b.failure = Some(why);
        }
    }

    fn channel(&self, channel: u8) -> Vec<u8> {
        self.lock()
            .channels
            .get(&channel)
            .cloned()
            .unwrap_or_default()
    }

    fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// Waits until `pred` holds for `channel`'s bytes; fails on a recorded failure, when the
    /// session ended without it, or after `timeout`.
    async fn wait(
        &self,
        task: &JoinHandle<()>,
        channel: u8,
        what: &str,
        timeout: Duration,
        pred: &dyn Fn(&[u8]) -> bool,
    ) -> anyhow::Result<Vec<u8>> {
        let start = std::time::Instant::now();
        loop {
            let data = self.channel(channel);
            if pred(&data) {
                return Ok(data);
            }
            if let Some(f) = self.failure() {
                bail!(
                    "waiting for {what}: session failed: {f}; channel {channel} so far: {:?}",
                    String::from_utf8_lossy(&data)
                );
            }
            if task.is_finished() {
                // One more look: the task may have pushed just before ending.
                let data = self.channel(channel);
                if pred(&data) {
                    return Ok(data);
                }
                bail!(
                    "waiting for {what}: session ended; channel {channel}: {:?}",
                    String::from_utf8_lossy(&data)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; channel {channel} so far: {:?}",
                    String::from_utf8_lossy(&data)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A response head read off the socket.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends an HTTP/1.1 upgrade request and reads the response head byte by byte (so that no byte
/// of the upgraded protocol is consumed). Non-101 answers become [`HttpStatus`] errors.
async fn http_upgrade(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(TcpStream, Head)> {
    let u = parse_url(url)?;
    let mut tcp = crate::wait::within(
        "connecting to the streaming server",
        Duration::from_secs(10),
        async {
            TcpStream::connect(&u.authority)
                .await
                .with_context(|| format!("connecting to {}", u.authority))
        },
    )
    .await?;
    let mut req = format!("{method} {} HTTP/1.1\r\nHost: {}\r\n", u.path, u.authority);
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .context("sending the upgrade request")?;
    let head = crate::wait::within(
        "the upgrade response",
        Duration::from_secs(30),
        read_head(&mut tcp),
    )
    .await?;
    if head.status != 101 {
        let body = read_body(&mut tcp, &head).await;
        return Err(HttpStatus {
            status: head.status,
            body,
        }
        .into());
    }
    Ok((tcp, head))
}

async fn read_head(tcp: &mut TcpStream) -> anyhow::Result<Head> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if raw.len() > 64 * 1024 {
            bail!("response head over 64 KiB");
        }
        let n = tcp.read(&mut byte).await.context("reading response head")?;
        if n == 0 {
            bail!(
                "connection closed inside the response head: {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        raw.push(byte[0]);
    }
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    resp.parse(&raw)
        .with_context(|| format!("parsing {:?}", String::from_utf8_lossy(&raw)))?;
    Ok(Head {
        status: resp.code.context("response without status")?,
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    })
}

/// The body of an error response (Content-Length bytes, else up to EOF), best effort, bounded.
async fn read_body(tcp: &mut TcpStream, head: &Head) -> String {
    let limit = head
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(4096)
        .min(4096);
    let mut body = vec![0u8; limit];
    let mut got = 0;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while got < limit {
            match tcp.read(&mut body[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    String::from_utf8_lossy(&body[..got]).into_owned()
}

/// Does the SPDY upgrade offering `protocols`; returns the connection and the chosen protocol.
async fn spdy_connect(url: &str, protocols: &[&str]) -> anyhow::Result<(spdy::Connection, String)> {
    let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    headers.extend(protocols.iter().map(|p| ("X-Stream-Protocol-Version", *p)));
    let (tcp, head) = http_upgrade(url, "POST", &headers).await?;
    if !head
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"))
    {
        bail!("101 without `Upgrade: SPDY/3.1`: {:?}", head.headers);
    }
    let chosen = head
        .header("x-stream-protocol-version")
        .context("101 without X-Stream-Protocol-Version")?
        .to_string();
    if !protocols.contains(&chosen.as_str()) {
        bail!("server chose {chosen:?}, not one of {protocols:?}");
    }
    Ok((spdy::Connection::new(tcp, false), chosen))
}

/// Opens a WebSocket to the streaming URL offering exactly `protocol`; checks it was chosen.
async fn ws_connect(
    url: &str,
    protocol: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<TcpStream>> {
    let u = parse_url(url)?;
    let ws_url = format!("ws://{}{}", u.authority, u.path);
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .with_context(|| format!("building a WebSocket request for {ws_url}"))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocol).context("protocol header value")?,
    );
    let tcp = TcpStream::connect(&u.authority)
        .await
        .with_context(|| format!("connecting to {}", u.authority))?;
    let r = crate::wait::within("the WebSocket handshake", Duration::from_secs(30), async {
        Ok(tokio_tungstenite::client_async(req, tcp).await)
    })
    .await?;
    let (ws, resp) = match r {
        Ok(v) => v,
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            return Err(HttpStatus {
                status: resp.status().as_u16(),
                body,
            }
            .into());
        }
        Err(e) => return Err(e).context("WebSocket handshake"),
    };
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if chosen != protocol {
        bail!("WebSocket server chose protocol {chosen:?}, offered {protocol:?}");
    }
    Ok(ws)
}

fn encode_ws(channel: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push(char::from(b'0' + channel));
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::Text(s.into())
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(channel);
        v.extend_from_slice(data);
        Message::Binary(v.into())
    }
}

/// A data message as (channel, payload); None for control frames and empty messages.
fn decode_ws(m: Message, base64: bool) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
    match m {
        Message::Binary(b) => {
            if base64 {
                bail!("binary frame on a base64 protocol");
            }
            match b.split_first() {
                None => Ok(None),
                Some((ch, rest)) => Ok(Some((*ch, rest.to_vec()))),
            }
        }
        Message::Text(t) => {
            if !base64 {
                bail!("text frame on a binary protocol: {:?}", t.as_str());
            }
            let bytes = t.as_bytes();
            let Some((ch, rest)) = bytes.split_first() else {
                return Ok(None);
            };
            if !ch.is_ascii_digit() {
                bail!("base64 frame without a channel digit: {:?}", t.as_str());
            }
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .with_context(|| format!("bad base64 payload: {:?}", t.as_str()))?;
            Ok(Some((ch - b'0', data)))
        }
        _ => Ok(None),
    }
}

/// A port-forward connection over SPDY: each [`SpdyPortForward::open`] is one forwarded
/// The body of a complete HTTP/1.x response in `buf` (by Content-Length), None while incomplete.
pub fn http_response_body(buf: &[u8]) -> Option<&[u8]> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let len: usize = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })?;
    let body = &buf[end..];
    (body.len() >= len).then(|| &body[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        let u = parse_url("http://127.0.0.1:4242/exec/abc").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:4242", "/exec/abc")
        );
        assert!(parse_url("https://127.0.0.1:1/x").is_err());
        assert!(parse_url("ftp://x/").is_err());
    }

    #[test]
    fn websocket_frames_round_trip() {
        for base64 in [false, true] {
            let m = encode_ws(STDOUT, b"hi\n", base64);
            assert_eq!(
                decode_ws(m, base64).unwrap(),
                Some((STDOUT, b"hi\n".to_vec()))
            );
        }
        let m = encode_ws(STDIN, b"ab", true);
        assert_eq!(m, Message::Text("0YWI=".into()));
        assert!(decode_ws(Message::Binary(vec![].into()), false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        let o = |protocol: &str, error: &str| Outcome {
            protocol: protocol.into(),
            stdout: vec![],
            stderr: vec![],
            error: error.as_bytes().to_vec(),
        };
        assert_eq!(o(WS_V4, r#"{"status":"Success"}"#).exit_code().unwrap(), 0);
        let failed = r#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(o(WS_V5, failed).exit_code().unwrap(), 3);
        assert!(o(WS_V4, "").exit_code().is_err());
        assert!(o(WS_V4, r#"{"status":"Failure","reason":"InternalError"}"#)
            .exit_code()
            .is_err());
        assert_eq!(o(WS_V1, "").exit_code().unwrap(), 0);
        assert!(o(WS_V1, "boom").exit_code().is_err());
    }

    #[test]
    fn http_bodies_complete_by_content_length() {
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nab";
        assert_eq!(http_response_body(r), None);
        let r = b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(http_response_body(r), Some(&b"abc"[..]));
    }
}
