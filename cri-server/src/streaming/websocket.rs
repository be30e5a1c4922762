//! Remote command and port-forward over WebSocket (k8s `wsstream`): every message starts with
//! its channel (binary protocols: a byte; `base64.` protocols: an ASCII digit, then the payload in
//! base64, in text frames). Remote command channels: 0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize; v5 adds message `[255, channel]` = the client closed that channel (stdin EOF).
//! Port-forward: channels 2i (data) and 2i+1 (error) for the i-th `?port=`, each opened by the
//! server with the port as 2 little-endian bytes.

use std::sync::Arc;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::backend::{Backend, SessionIo, TermSize};
use super::idle::Activity;
use super::port_forward;
use super::remote_command::{self, Command, Outcome, ResizeDecoder, StatusFormat, PIPE_SIZE};

/// Remote-command channel numbers.
pub const STDIN: u8 = 0;
/// stdout channel.
pub const STDOUT: u8 = 1;
/// stderr channel.
pub const STDERR: u8 = 2;
/// error (status) channel.
pub const ERROR: u8 = 3;
/// resize channel.
pub const RESIZE: u8 = 4;
/// v5: the message `[CLOSE, channel]` half-closes `channel`.
pub const CLOSE: u8 = 255;

/// How channel frames are encoded for the negotiated protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Binary messages `[channel][payload]`.
    Binary,
    /// Text messages `'0'+channel` followed by base64(payload).
    Base64,
}

impl Codec {
    /// The codec of a negotiated `Sec-WebSocket-Protocol`.
    pub fn for_protocol(protocol: &str) -> Self {
        if protocol.contains("base64.") {
            Codec::Base64
        } else {
            Codec::Binary
        }
    }

    /// One message carrying `data` on `channel`.
    pub fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Codec::Binary => {
                let mut frame = Vec::with_capacity(data.len() + 1);
                frame.push(channel);
                frame.extend_from_slice(data);
                Message::binary(frame)
            }
            Codec::Base64 => {
                let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
                text.push(char::from(b'0'.wrapping_add(channel)));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
                Message::text(text)
            }
        }
    }

    /// The channel and payload of a received message's bytes; `None` when malformed or empty.
    pub fn decode(self, frame: &[u8]) -> Option<(u8, Vec<u8>)> {
        let (&first, rest) = frame.split_first()?;
        match self {
            Codec::Binary => Some((first, rest.to_vec())),
            Codec::Base64 => {
                let channel = first.checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                Some((channel, data))
            }
        }
    }
}

/// What the reader saw in one client message.
#[derive(Debug, PartialEq, Eq)]
enum Incoming {
    /// Data on a channel.
    Data(u8, Vec<u8>),
    /// v5 close signal for a channel.
    Close(u8),
    /// Nothing to act on (ping, empty, malformed).
    Skip,
    /// The connection is over.
    End,
}

fn classify(
    msg: Option<Result<Message, impl std::fmt::Display>>,
    codec: Codec,
    v5: bool,
) -> Incoming {
    let bytes: Vec<u8> = match msg {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Incoming::End,
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
        Some(Ok(_)) => return Incoming::Skip,
    };
    if v5 && bytes.first() == Some(&CLOSE) {
        return match bytes.as_slice() {
            [_, channel] => Incoming::Close(*channel),
            _ => Incoming::Skip,
        };
    }
    match codec.decode(&bytes) {
        Some((channel, data)) => Incoming::Data(channel, data),
        None => Incoming::Skip,
    }
}

/// Copies `from` to `tx` as messages on `channel` until EOF.
async fn pump<R: AsyncRead + Unpin>(
    mut from: R,
    channel: u8,
    codec: Codec,
    tx: mpsc::Sender<Message>,
    activity: Activity,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        activity.touch();
        if tx.send(codec.encode(channel, &buf[..n])).await.is_err() {
            return;
        }
    }
}

/// Sends every message from `rx` to the socket, then a close.
async fn write_all<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Message>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = rx.recv().await {
        let closing = matches!(msg, Message::Close(_));
        if let Err(e) = sink.send(msg).await {
            tracing::debug!(error = %e, "streaming: websocket write");
            return;
        }
        if closing {
            break;
        }
    }
    let _ = sink.close().await;
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// Runs an exec or attach over the upgraded connection `io` (handshake already answered with
/// `protocol`), until the command ended and the client got its status.
pub async fn remote_command<S>(
    io: S,
    protocol: &'static str,
    cmd: Command,
    backend: Arc<dyn Backend>,
    activity: Activity,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (sink, mut source) = ws.split();
    let (tx, rx) = mpsc::channel::<Message>(64);
    let codec = Codec::for_protocol(protocol);
    let format = StatusFormat::for_protocol(protocol);
    let v5 = protocol.starts_with("v5.");
    let wants = cmd.wants();

    let (stdin_backend, mut stdin_w) = pipe_if(wants.stdin);
    let (stdout_backend, stdout_r) = pipe_if(wants.stdout);
    let (stderr_backend, stderr_r) = pipe_if(wants.stderr);
    let (resize_tx, resize_rx) = if wants.tty {
        let (t, r) = mpsc::channel::<TermSize>(16);
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let io = SessionIo {
        stdin: stdin_backend.map(|p| Box::new(p) as _),
        stdout: stdout_backend.map(|p| Box::new(p) as _),
        stderr: stderr_backend.map(|p| Box::new(p) as _),
        resize: resize_rx,
    };

    // Tell the client the session is up: an empty message on the lowest channel it reads.
    let first = if wants.stdout {
        STDOUT
    } else if wants.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(codec.encode(first, &[])).await;

    let reader_activity = activity.clone();
    let reader = async move {
        let mut decoder = ResizeDecoder::default();
        let mut resize_tx = resize_tx;
        loop {
            match classify(source.next().await, codec, v5) {
                Incoming::End => return,
                Incoming::Skip => {}
                Incoming::Close(STDIN) => stdin_w = None,
                Incoming::Close(_) => {}
                Incoming::Data(STDIN, data) => {
                    reader_activity.touch();
                    if let Some(w) = stdin_w.as_mut() {
                        if w.write_all(&data).await.is_err() {
                            stdin_w = None;
                        }
                    }
                }
                Incoming::Data(RESIZE, data) => {
                    reader_activity.touch();
                    let Some(tx) = resize_tx.as_ref() else {
                        continue;
                    };
                    match decoder.feed(&data) {
                        // Lossy on purpose: a backend not reading resizes must not stall stdin.
                        Ok(sizes) => sizes.into_iter().for_each(|s| {
                            let _ = tx.try_send(s);
                        }),
                        Err(e) => {
                            tracing::debug!(error = %e, "streaming: ignoring further resizes");
                            resize_tx = None;
                        }
                    }
                }
                Incoming::Data(..) => {}
            }
        }
    };

    let session_tx = tx.clone();
    let idle = activity.clone();
    let flow = async move {
        let pumps = async {
            tokio::join!(
                maybe_pump(
                    stdout_r,
                    STDOUT,
                    codec,
                    session_tx.clone(),
                    activity.clone()
                ),
                maybe_pump(
                    stderr_r,
                    STDERR,
                    codec,
                    session_tx.clone(),
                    activity.clone()
                ),
            );
        };
        let outcome = remote_command::run_with_pumps(cmd, backend, io, pumps).await;
        if let Outcome::Error(e) = &outcome {
            tracing::warn!(error = %e, "streaming: websocket session");
        }
        if let Some(status) = outcome.encode(format) {
            let _ = session_tx.send(codec.encode(ERROR, &status)).await;
        }
        let _ = session_tx.send(normal_close()).await;
    };
    let session = async move {
        tokio::select! {
            () = flow => {}
            () = reader => tracing::debug!("streaming: websocket client went away"),
            () = idle.idle() => {
                tracing::info!("streaming: closing an idle websocket session");
                let _ = tx.send(normal_close()).await;
            }
        }
        drop(tx);
    };
    tokio::join!(write_all(sink, rx), session);
}

/// A pipe between the backend (first) and the transport (second), when the stream is wanted.
fn pipe_if(wanted: bool) -> (Option<DuplexStream>, Option<DuplexStream>) {
    if wanted {
        let (a, b) = tokio::io::duplex(PIPE_SIZE);
        (Some(a), Some(b))
    } else {
        (None, None)
    }
}

async fn maybe_pump(
    from: Option<DuplexStream>,
    channel: u8,
    codec: Codec,
    tx: mpsc::Sender<Message>,
    activity: Activity,
) {
    if let Some(from) = from {
        pump(from, channel, codec, tx, activity).await;
    }
}

/// Runs a port-forward over the upgraded connection `io`: one connection to each of `ports` in
/// pod `pod`, until the pod closed them all (or the client went away).
pub async fn port_forward<S>(
    io: S,
    protocol: &'static str,
    pod: String,
    ports: Vec<u16>,
    backend: Arc<dyn Backend>,
    activity: Activity,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (sink, mut source) = ws.split();
    let (tx, rx) = mpsc::channel::<Message>(64);
    let codec = Codec::for_protocol(protocol);

    let mut to_pod = Vec::with_capacity(ports.len());
    let mut forwards = Vec::with_capacity(ports.len());
    for (i, &port) in ports.iter().enumerate() {
        // Channel numbers are one byte: query_ports allows at most 128 ports.
        let Ok(data_channel) = u8::try_from(2 * i) else {
            break;
        };
        let error_channel = data_channel + 1;
        let prefix = port.to_le_bytes();
        let _ = tx.send(codec.encode(data_channel, &prefix)).await;
        let _ = tx.send(codec.encode(error_channel, &prefix)).await;
        let (backend_side, transport_side) = tokio::io::duplex(PIPE_SIZE);
        let (from_pod, into_pod) = tokio::io::split(transport_side);
        to_pod.push(Some(into_pod));
        let (backend, pod, tx, activity) =
            (backend.clone(), pod.clone(), tx.clone(), activity.clone());
        forwards.push(async move {
            let dial_and_copy = async {
                let result = port_forward::forward(backend, pod, port, backend_side).await;
                if let Err(msg) = result {
                    tracing::info!(port, error = %msg, "streaming: websocket port-forward");
                    let _ = tx.send(codec.encode(error_channel, msg.as_bytes())).await;
                }
            };
            tokio::join!(
                dial_and_copy,
                pump(from_pod, data_channel, codec, tx.clone(), activity)
            );
        });
    }

    let reader_activity = activity.clone();
    let reader = async move {
        loop {
            match classify(source.next().await, codec, false) {
                Incoming::End => return,
                Incoming::Data(channel, data) if channel % 2 == 0 => {
                    reader_activity.touch();
                    if let Some(slot) = to_pod.get_mut(usize::from(channel / 2)) {
                        if let Some(w) = slot.as_mut() {
                            if w.write_all(&data).await.is_err() {
                                *slot = None;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    };
    let idle = activity.clone();
    let session = async move {
        tokio::select! {
            _ = futures::future::join_all(forwards) => {}
            () = reader => tracing::debug!("streaming: websocket port-forward client went away"),
            () = idle.idle() => tracing::info!("streaming: closing an idle websocket port-forward"),
        }
        let _ = tx.send(normal_close()).await;
        drop(tx);
    };
    tokio::join!(write_all(sink, rx), session);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_frames() {
        let m = Codec::Binary.encode(STDOUT, b"hi");
        assert_eq!(m, Message::binary(vec![1u8, b'h', b'i']));
        assert_eq!(
            Codec::Binary.decode(&[0, b'x', b'y']),
            Some((STDIN, b"xy".to_vec()))
        );
        assert_eq!(Codec::Binary.decode(&[4]), Some((RESIZE, vec![])));
        assert_eq!(Codec::Binary.decode(&[]), None);
    }

    #[test]
    fn base64_frames() {
        let m = Codec::Base64.encode(STDERR, b"hello");
        assert_eq!(m, Message::text("2aGVsbG8="));
        assert_eq!(Codec::Base64.encode(ERROR, b""), Message::text("3"));
        assert_eq!(
            Codec::Base64.decode(b"0aGVsbG8="),
            Some((STDIN, b"hello".to_vec()))
        );
        assert_eq!(Codec::Base64.decode(b"0!!"), None);
        assert_eq!(Codec::Base64.decode(b"\x01"), None);
        assert_eq!(
            Codec::for_protocol("v4.base64.channel.k8s.io"),
            Codec::Base64
        );
        assert_eq!(Codec::for_protocol("base64.channel.k8s.io"), Codec::Base64);
        assert_eq!(Codec::for_protocol("v5.channel.k8s.io"), Codec::Binary);
    }

    #[test]
    fn close_signal_only_in_v5() {
        type R = Option<Result<Message, String>>;
        let close: R = Some(Ok(Message::binary(vec![CLOSE, STDIN])));
        assert_eq!(
            classify(close.clone(), Codec::Binary, true),
            Incoming::Close(STDIN)
        );
        assert_eq!(
            classify(close, Codec::Binary, false),
            Incoming::Data(CLOSE, vec![STDIN])
        );
        let bad: R = Some(Ok(Message::binary(vec![CLOSE, 0, 1])));
        assert_eq!(classify(bad, Codec::Binary, true), Incoming::Skip);
        let text: R = Some(Ok(Message::text("0aGk=")));
        assert_eq!(
            classify(text, Codec::Base64, false),
            Incoming::Data(STDIN, b"hi".to_vec())
        );
        assert_eq!(
            classify(None::<Result<Message, String>>, Codec::Binary, true),
            Incoming::End
        );
        let ping: R = Some(Ok(Message::Ping(Default::default())));
        assert_eq!(classify(ping, Codec::Binary, true), Incoming::Skip);
    }
}
