//! Port-forward connections over SPDY and WebSocket.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;

use super::{
    decode_ws, encode_ws, spdy_connect, ws_connect, Shared, PORT_FORWARD_PROTOCOL, WRITE_TIMEOUT,
};

/// connection (an error stream and a data stream sharing a request id).
pub struct SpdyPortForward {
    conn: spdy::Connection,
    next_request: u32,
}

/// One forwarded connection over SPDY.
pub struct ForwardedStream {
    /// Bytes to and from the pod's port.
    pub data: spdy::Stream,
    /// Error text from the server (EOF without text: no error).
    pub error: spdy::Stream,
}

impl ForwardedStream {
    /// Reads the error stream to its end (bounded by `timeout`).
    pub async fn error_text(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let mut out = Vec::new();
        crate::wait::within("the port-forward error stream to end", timeout, async {
            self.error
                .read_to_end(&mut out)
                .await
                .context("reading the error stream")?;
            Ok(())
        })
        .await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

impl SpdyPortForward {
    /// Upgrades to SPDY with `X-Stream-Protocol-Version: portforward.k8s.io`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (conn, _) = spdy_connect(url, &[PORT_FORWARD_PROTOCOL]).await?;
        Ok(Self {
            conn,
            next_request: 0,
        })
    }

    /// Opens a forwarded connection to `port` like kubectl: error stream first (its write side
    /// closed at once), then the data stream, same `port` and `requestid`.
    pub async fn open(&mut self, port: u16) -> anyhow::Result<ForwardedStream> {
        let id = self.next_request;
        self.next_request += 1;
        let headers = |kind: &str| {
            vec![
                ("streamtype".to_string(), kind.to_string()),
                ("port".to_string(), port.to_string()),
                ("requestid".to_string(), id.to_string()),
            ]
        };
        let mut error = crate::wait::within(
            "the server to accept the error stream",
            Duration::from_secs(30),
            async {
                self.conn
                    .open(headers("error"))
                    .await
                    .context("opening the error stream")
            },
        )
        .await?;
        error
            .shutdown()
            .await
            .context("half-closing the error stream")?;
        let data = crate::wait::within(
            "the server to accept the data stream",
            Duration::from_secs(30),
            async {
                self.conn
                    .open(headers("data"))
                    .await
                    .context("opening the data stream")
            },
        )
        .await?;
        Ok(ForwardedStream { data, error })
    }

    /// Closes the connection (GOAWAY).
    pub async fn close(self) {
        self.conn.close().await;
    }
}

/// A port-forward connection over WebSocket: port `ports[i]` uses channels `2i` (data) and
/// `2i+1` (error); the server's first message on each carries the port (2 bytes, little-endian),
/// which is checked and stripped here.
pub struct WsPortForward {
    ports: Vec<u16>,
    input: mpsc::UnboundedSender<(u8, Vec<u8>)>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for WsPortForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsPortForward {
    /// Connects to `url?port=P&port=Q...` offering `protocol`
    /// ([`super::PORT_FORWARD_PROTOCOL`] or [`super::WS_V4`]).
    pub async fn connect(url: &str, ports: &[u16], protocol: &str) -> anyhow::Result<Self> {
        let query: Vec<String> = ports.iter().map(|p| format!("port={p}")).collect();
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}{}", query.join("&"));
        let ws = ws_connect(&url, protocol).await?;
        let (mut sink, mut stream) = ws.split();
        let shared = Arc::new(Shared::default());
        let (tx, mut rx) = mpsc::unbounded_channel::<(u8, Vec<u8>)>();
        let sh = shared.clone();
        let expected = ports.to_vec();
        let task = tokio::spawn(async move {
            let reader_shared = sh.clone();
            let mut reader = tokio::spawn(async move {
                let mut seen = std::collections::BTreeSet::new();
                while let Some(msg) = stream.next().await {
                    let (ch, data) = match msg {
                        Ok(m) => match decode_ws(m, false) {
                            Ok(Some(v)) => v,
                            Ok(None) => continue,
                            Err(e) => {
                                reader_shared.fail(format!("{e:#}"));
                                continue;
                            }
                        },
                        Err(tungstenite::Error::ConnectionClosed)
                        | Err(tungstenite::Error::AlreadyClosed) => break,
                        Err(e) => {
                            reader_shared.fail(format!("reading the WebSocket: {e}"));
                            break;
                        }
                    };
                    if seen.insert(ch) {
                        let want = expected.get(usize::from(ch / 2)).copied();
                        let got = <[u8; 2]>::try_from(&data[..data.len().min(2)])
                            .ok()
                            .map(u16::from_le_bytes);
                        if want.is_none() || got != want || data.len() != 2 {
                            reader_shared.fail(format!(
                                "first message on channel {ch} should be port {want:?} (2 bytes LE), \
                                 got {data:?}"
                            ));
                        }
                        continue;
                    }
                    reader_shared.push(ch, &data);
                }
            });
            loop {
                tokio::select! {
                    _ = &mut reader => break,
                    msg = rx.recv() => {
                        let Some((ch, data)) = msg else { reader.abort(); break; };
                        let frame = encode_ws(ch, &data, false);
                        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(frame)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => sh.fail(format!("writing to the WebSocket: {e}")),
                            Err(_) => sh.fail("writing to the WebSocket timed out".into()),
                        }
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        });
        Ok(Self {
            ports: ports.to_vec(),
            input: tx,
            shared,
            task,
        })
    }

    fn index(&self, port: u16) -> anyhow::Result<u8> {
        let i = self
            .ports
            .iter()
            .position(|p| *p == port)
            .with_context(|| format!("port {port} was not requested"))?;
        u8::try_from(i * 2).context("too many ports")
    }

    /// Sends `data` to `port` (its data channel).
    pub fn send(&self, port: u16, data: &[u8]) -> anyhow::Result<()> {
        let ch = self.index(port)?;
        self.input
            .send((ch, data.to_vec()))
            .map_err(|_| anyhow::anyhow!("the port-forward connection is over"))
    }

    /// Waits until the bytes received from `port` satisfy `pred`; returns them.
    pub async fn wait_data(
        &self,
        port: u16,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[u8]) -> bool,
    ) -> anyhow::Result<Vec<u8>> {
        let ch = self.index(port)?;
        self.shared.wait(&self.task, ch, what, timeout, &pred).await
    }

    /// Waits until the error channel of `port` has text; returns it.
    pub async fn wait_error(&self, port: u16, timeout: Duration) -> anyhow::Result<String> {
        let ch = self.index(port)? + 1;
        let data = self
            .shared
            .wait(
                &self.task,
                ch,
                &format!("an error for port {port}"),
                timeout,
                &|b: &[u8]| !b.is_empty(),
            )
            .await?;
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    /// A protocol violation seen so far, if any.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }
}
