//! Remote command (exec, attach) sessions over SPDY and WebSocket.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::{self, Message};

use super::{
    decode_ws, encode_ws, spdy_connect, ws_connect, Shared, Streams, CLOSE, ERROR, RESIZE,
    SPDY_REMOTE_COMMAND_PROTOCOLS, STDERR, STDIN, STDOUT, WRITE_TIMEOUT,
};

/// What the test asks a session's background task to do.
enum Input {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize(u16, u16),
    /// Close the connection now (a client detaching).
    Close,
}

/// The end of a remote-command session.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The negotiated protocol.
    pub protocol: String,
    /// Everything received on stdout (the terminal's output with a TTY).
    pub stdout: Vec<u8>,
    /// Everything received on stderr.
    pub stderr: Vec<u8>,
    /// Everything received on the error stream (JSON Status for v4/v5, text before).
    pub error: Vec<u8>,
}

impl Outcome {
    /// stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The command's exit code from the error stream: v4/v5 need a metav1.Status (Success → 0,
    /// Failure/NonZeroExitCode → its ExitCode cause); older protocols: nothing → 0, text → error.
    pub fn exit_code(&self) -> anyhow::Result<i32> {
        let text = String::from_utf8_lossy(&self.error).into_owned();
        let structured = self.protocol.starts_with("v4.") || self.protocol.starts_with("v5.");
        if !structured {
            if text.is_empty() {
                return Ok(0);
            }
            bail!("error stream ({}): {text}", self.protocol);
        }
        let status: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("error stream is not a JSON Status: {text:?}"))?;
        match status["status"].as_str() {
            Some("Success") => Ok(0),
            Some("Failure") if status["reason"] == "NonZeroExitCode" => status["details"]["causes"]
                .as_array()
                .and_then(|causes| {
                    causes
                        .iter()
                        .find(|c| c["reason"] == "ExitCode")
                        .and_then(|c| c["message"].as_str())
                        .and_then(|m| m.parse().ok())
                })
                .with_context(|| format!("NonZeroExitCode without an ExitCode cause: {text}")),
            _ => bail!("failure status: {text}"),
        }
    }
}

/// One exec or attach session, over SPDY or WebSocket.
pub struct RemoteCommand {
    protocol: String,
    input: mpsc::UnboundedSender<Input>,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Drop for RemoteCommand {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl RemoteCommand {
    /// Connects over SPDY offering every remote-command version (as kubectl does) and opens the
    /// streams `s` asks for: error, stdin, stdout, stderr (no TTY), resize (TTY, v3+).
    pub async fn spdy(url: &str, s: Streams) -> anyhow::Result<Self> {
        Self::spdy_with_protocols(url, s, SPDY_REMOTE_COMMAND_PROTOCOLS).await
    }

    /// [`RemoteCommand::spdy`] offering only `protocols`.
    pub async fn spdy_with_protocols(
        url: &str,
        s: Streams,
        protocols: &[&str],
    ) -> anyhow::Result<Self> {
        let (conn, protocol) = spdy_connect(url, protocols).await?;
        match Self::spdy_streams(conn.clone(), &protocol, s).await {
            Ok(this) => Ok(this),
            Err(e) => {
                conn.close().await;
                Err(e)
            }
        }
    }

    async fn spdy_streams(
        conn: spdy::Connection,
        protocol: &str,
        s: Streams,
    ) -> anyhow::Result<Self> {
        let open = |kind: &'static str| {
            let conn = conn.clone();
            async move {
                crate::wait::within(
                    &format!("the server to accept the {kind} stream"),
                    Duration::from_secs(30),
                    async {
                        conn.open(vec![("streamtype".to_string(), kind.to_string())])
                            .await
                            .with_context(|| format!("opening the {kind} stream"))
                    },
                )
                .await
            }
        };
        // The order kubectl uses.
        let error = open("error").await?;
        let stdin = if s.stdin {
            Some(open("stdin").await?)
        } else {
            None
        };
        let stdout = if s.stdout {
            Some(open("stdout").await?)
        } else {
            None
        };
        let stderr = if s.stderr && !s.tty {
            Some(open("stderr").await?)
        } else {
            None
        };
        let with_resize = protocol.starts_with("v3.") || protocol.starts_with("v4.");
        let resize = if s.tty && with_resize {
            Some(open("resize").await?)
        } else {
            None
        };

        let shared = Arc::new(Shared::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            let mut readers = JoinSet::new();
            readers.spawn(copy_into(error, ERROR, sh.clone()));
            if let Some(st) = stdout {
                readers.spawn(copy_into(st, STDOUT, sh.clone()));
            }
            if let Some(st) = stderr {
                readers.spawn(copy_into(st, STDERR, sh.clone()));
            }
            let (mut stdin, mut resize) = (stdin, resize);
            let mut input_open = true;
            loop {
                tokio::select! {
                    done = readers.join_next() => match done {
                        None => break,
                        Some(Ok(Ok(()))) => {}
                        Some(Ok(Err(e))) => sh.fail(format!("{e:#}")),
                        Some(Err(e)) => sh.fail(format!("reader task: {e}")),
                    },
                    msg = rx.recv(), if input_open => {
                        let r = match msg {
                            None => { input_open = false; Ok(()) }
                            Some(Input::Close) => break,
                            Some(Input::Stdin(d)) => match stdin.as_mut() {
                                Some(w) => timed_write(w, &d).await,
                                None => Err(anyhow::anyhow!("stdin was not requested")),
                            },
                            Some(Input::CloseStdin) => match stdin.as_mut() {
                                Some(w) => tokio::time::timeout(WRITE_TIMEOUT, w.shutdown())
                                    .await
                                    .context("closing stdin timed out")
                                    .and_then(|r| r.context("closing stdin")),
                                None => Err(anyhow::anyhow!("stdin was not requested")),
                            },
                            Some(Input::Resize(w, h)) => match resize.as_mut() {
                                Some(r) => timed_write(r, &resize_json(w, h)).await,
                                None => Err(anyhow::anyhow!("no resize stream")),
                            },
                        };
                        if let Err(e) = r {
                            sh.fail(format!("{e:#}"));
                        }
                    }
                }
            }
            conn.close().await;
        });
        Ok(Self {
            protocol: protocol.to_string(),
            input: tx,
            shared,
            task: Some(task),
        })
    }

    /// Connects over WebSocket offering exactly `protocol` (e.g. [`super::WS_V5`],
    /// [`super::WS_V4_BASE64`]).
    pub async fn websocket(url: &str, protocol: &str) -> anyhow::Result<Self> {
        let ws = ws_connect(url, protocol).await?;
        let base64 = protocol.contains("base64");
        let v5 = protocol.starts_with("v5.");
        let (mut sink, mut stream) = ws.split();
        let shared = Arc::new(Shared::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            let reader_shared = sh.clone();
            let mut reader = tokio::spawn(async move {
                while let Some(msg) = stream.next().await {
                    match msg {
                        Ok(m) => match decode_ws(m, base64) {
                            Ok(Some((ch, data))) => reader_shared.push(ch, &data),
                            Ok(None) => {}
                            Err(e) => reader_shared.fail(format!("{e:#}")),
                        },
                        Err(tungstenite::Error::ConnectionClosed)
                        | Err(tungstenite::Error::AlreadyClosed) => break,
                        Err(e) => {
                            reader_shared.fail(format!("reading the WebSocket: {e}"));
                            break;
                        }
                    }
                }
            });
            let mut input_open = true;
            loop {
                tokio::select! {
                    _ = &mut reader => break,
                    msg = rx.recv(), if input_open => {
                        let frame = match msg {
                            None => { input_open = false; continue; }
                            Some(Input::Close) => { reader.abort(); break; }
                            Some(Input::Stdin(d)) => encode_ws(STDIN, &d, base64),
                            Some(Input::CloseStdin) if v5 => {
                                Message::Binary(vec![CLOSE, STDIN].into())
                            }
                            Some(Input::CloseStdin) => {
                                sh.fail("only v5 can half-close stdin over WebSocket".into());
                                continue;
                            }
                            Some(Input::Resize(w, h)) => {
                                encode_ws(RESIZE, &resize_json(w, h), base64)
                            }
                        };
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
            protocol: protocol.to_string(),
            input: tx,
            shared,
            task: Some(task),
        })
    }

    /// The negotiated protocol.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    fn send(&self, i: Input) -> anyhow::Result<()> {
        self.input
            .send(i)
            .map_err(|_| anyhow::anyhow!("the session is over"))
    }

    /// Queues `data` for the command's stdin.
    pub fn send_stdin(&self, data: &[u8]) -> anyhow::Result<()> {
        self.send(Input::Stdin(data.to_vec()))
    }

    /// Half-closes stdin (SPDY: FIN on the stdin stream; WebSocket v5: close signal).
    pub fn close_stdin(&self) -> anyhow::Result<()> {
        self.send(Input::CloseStdin)
    }

    /// Sends a terminal size (`{"Width":..,"Height":..}` on the resize stream / channel 4).
    pub fn resize(&self, width: u16, height: u16) -> anyhow::Result<()> {
        self.send(Input::Resize(width, height))
    }

    /// Waits until stdout (as lossy text) satisfies `pred`; returns it.
    pub async fn wait_stdout(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let task = self.task.as_ref().context("session already finished")?;
        let data = self
            .shared
            .wait(task, STDOUT, what, timeout, &|b| {
                pred(&String::from_utf8_lossy(b))
            })
            .await?;
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    /// Waits (up to `timeout`) until the server ended the session; returns what was received.
    /// Fails on any protocol or transport error seen on the way.
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<Outcome> {
        let task = self.task.take().context("session already finished")?;
        let abort = task.abort_handle();
        match tokio::time::timeout(timeout, task).await {
            Ok(r) => r.context("session task")?,
            Err(_) => {
                abort.abort();
                bail!(
                    "the session did not end within {timeout:?}; stdout so far: {:?}, stderr: {:?}, \
                     error stream: {:?}",
                    String::from_utf8_lossy(&self.shared.channel(STDOUT)),
                    String::from_utf8_lossy(&self.shared.channel(STDERR)),
                    String::from_utf8_lossy(&self.shared.channel(ERROR)),
                );
            }
        }
        if let Some(f) = self.shared.failure() {
            bail!("session failed: {f}");
        }
        Ok(Outcome {
            protocol: self.protocol.clone(),
            stdout: self.shared.channel(STDOUT),
            stderr: self.shared.channel(STDERR),
            error: self.shared.channel(ERROR),
        })
    }

    /// Closes the connection from the client side (a client detaching) and waits for the task.
    pub async fn detach(mut self) -> anyhow::Result<()> {
        self.send(Input::Close)?;
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                abort.abort();
                bail!("closing the session took over 10 s");
            }
        }
        Ok(())
    }
}

fn resize_json(width: u16, height: u16) -> Vec<u8> {
    // client-go's json.Encoder output: the struct's field names, then a newline.
    format!("{{\"Width\":{width},\"Height\":{height}}}\n").into_bytes()
}

async fn timed_write(w: &mut spdy::Stream, data: &[u8]) -> anyhow::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, async {
        w.write_all(data).await?;
        w.flush().await
    })
    .await
    .context("write timed out (server not reading)")?
    .context("writing to a stream")
}

/// Copies `r` into channel `channel` of `shared` until EOF.
async fn copy_into(
    mut r: impl AsyncRead + Unpin,
    channel: u8,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r
            .read(&mut buf)
            .await
            .with_context(|| format!("reading channel {channel}"))?;
        if n == 0 {
            return Ok(());
        }
        shared.push(channel, &buf[..n]);
    }
}
