//! Streaming attach (`crictl attach`, `kubectl attach`): a session wired to a running container's
//! own stdio through the shim's attach socket (`<bundle>/attach.sock`).
//!
//! The shim sends frames `[stream: u8 (1 stdout, 2 stderr)][len: u32 BE][len bytes]` of the output
//! produced after the client connected, and closes the connection once the container's output
//! ended (it exited); that ends the session. Bytes written to the socket go to the container's
//! stdin. When the client's stdin ends, the socket's write half is shut (which ends only this
//! client's input); if the container was created with `stdin_once`, its stdin is then closed for
//! good (shim CloseIO) — also when the session is dropped while the client's stdin was attached.

use std::future::pending;

use k8s_cri::v1::AttachRequest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use super::shim_client::ShimClient;
use super::socket_path::SocketPath;
use super::stream_exec::{check_streams, resizes};
use super::{connect, ContainerManager};
use crate::error::{Error, Result};
use crate::streaming::backend::SessionIo;

/// Read size of frame payloads.
const READ_BUF: usize = 32 * 1024;

/// The client's output writer.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Which output stream an attach frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The container's stdout (or its terminal).
    Stdout,
    /// The container's stderr.
    Stderr,
}

/// Decodes an attach frame header: the stream and the payload length.
pub fn parse_header(header: [u8; 5]) -> std::result::Result<(Channel, usize), String> {
    let [stream, a, b, c, d] = header;
    let channel = match stream {
        1 => Channel::Stdout,
        2 => Channel::Stderr,
        other => return Err(format!("unknown attach stream {other}")),
    };
    let len = usize::try_from(u32::from_be_bytes([a, b, c, d]))
        .map_err(|_| "attach frame too large".to_string())?;
    Ok((channel, len))
}

impl ContainerManager {
    /// Validates an Attach request before a streaming URL is handed out; returns the container's
    /// full id.
    pub fn check_attach(&self, req: &AttachRequest) -> Result<String> {
        let id = &req.container_id;
        check_streams("attach", id, req.tty, req.stdin, req.stdout, req.stderr)?;
        let rec = self.running_record(id, "attach")?;
        if req.stdin && !rec.stdin {
            return Err(Error::InvalidArgument(format!(
                "container {}: attach: stdin requested but the container was created without stdin",
                rec.id
            )));
        }
        Ok(rec.id)
    }

    /// Attaches `io` to the running container's stdio; resolves once the container's output
    /// ended (it exited).
    pub async fn attach_session(&self, req: AttachRequest, io: SessionIo) -> Result<()> {
        let rec = self.running_record(&req.container_id, "attach")?;
        let id = rec.id.clone();
        let socket = rec.attach_socket();
        let conn = match SocketPath::new(&socket) {
            Ok(short) => UnixStream::connect(short.path()).await,
            Err(e) => Err(e),
        };
        let conn = conn.map_err(|e| {
            Error::Unavailable(format!(
                "container {id}: attach: connecting to {}: {e}",
                socket.display()
            ))
        })?;
        let SessionIo {
            stdin,
            stdout,
            stderr,
            resize,
        } = io;
        let stdin = stdin.filter(|_| rec.stdin);
        let resize = resize.filter(|_| rec.tty);
        let shim = if resize.is_some() || (stdin.is_some() && rec.stdin_once) {
            Some(connect(&rec).await?)
        } else {
            None
        };
        tracing::debug!(container = %id, stdin = stdin.is_some(), tty = rec.tty, "attach");
        let (rd, wr) = conn.into_split();
        let close_on_drop =
            CloseStdinOnDrop::new(shim.clone().filter(|_| stdin.is_some() && rec.stdin_once));
        let input = async {
            if let Some(stdin) = stdin {
                feed(stdin, wr).await;
                if let Some(shim) = close_on_drop.take() {
                    close_stdin(&shim).await;
                }
            }
            pending::<Result<()>>().await
        };
        let resizes = async {
            if let (Some(rx), Some(shim)) = (resize, &shim) {
                resizes(shim, "", rx).await;
            }
            pending::<Result<()>>().await
        };
        let output = async {
            relay(rd, stdout, stderr)
                .await
                .map_err(|e| Error::io(format!("container {id}: attach: reading the shim"), e))
        };
        tokio::select! {
            res = output => res,
            res = input => res,
            res = resizes => res,
        }
    }
}

/// Closes the container's stdin (shim CloseIO) if still armed when dropped: the session ended
/// (or was dropped) while the client's stdin of a `stdin_once` container was attached.
struct CloseStdinOnDrop {
    shim: std::sync::Mutex<Option<ShimClient>>,
}

impl CloseStdinOnDrop {
    fn new(shim: Option<ShimClient>) -> Self {
        Self {
            shim: std::sync::Mutex::new(shim),
        }
    }

    /// Disarms; the caller closes stdin itself.
    fn take(&self) -> Option<ShimClient> {
        self.shim
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

impl Drop for CloseStdinOnDrop {
    fn drop(&mut self) {
        let Some(shim) = self.take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { close_stdin(&shim).await });
        }
    }
}

async fn close_stdin(shim: &ShimClient) {
    if let Err(e) = shim.close_stdin("").await {
        // The container may have exited (and taken its stdin with it) meanwhile.
        tracing::debug!(container = %shim.id(), %e, "closing stdin after attach");
    }
}

/// Copies the client's stdin to the socket; at its end shuts the write half (this client's EOF).
async fn feed(mut stdin: Box<dyn AsyncRead + Send + Unpin>, mut wr: impl AsyncWrite + Unpin) {
    if let Err(e) = tokio::io::copy(&mut stdin, &mut wr).await {
        tracing::debug!(%e, "attach stdin ended");
    }
    let _ = wr.shutdown().await;
}

/// Relays the shim's frames to the client's writers until the shim closes the connection. A
/// stream the client did not ask for, or whose writer failed, is read and dropped.
async fn relay(
    mut rd: impl AsyncRead + Unpin,
    mut stdout: Option<Writer>,
    mut stderr: Option<Writer>,
) -> std::io::Result<()> {
    let mut header = [0u8; 5];
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match rd.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let (channel, mut len) = parse_header(header)
            .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidData, m))?;
        let out = match channel {
            Channel::Stdout => &mut stdout,
            Channel::Stderr => &mut stderr,
        };
        while len > 0 {
            let want = len.min(buf.len());
            let n = match rd.read(&mut buf[..want]).await {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            len -= n;
            if let Some(w) = out.as_mut() {
                if let Err(e) = w.write_all(&buf[..n]).await {
                    tracing::debug!(%e, "attach client output gone; discarding");
                    *out = None;
                }
            }
        }
        if let Some(w) = out.as_mut() {
            if w.flush().await.is_err() {
                *out = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(parse_header([1, 0, 0, 1, 0]), Ok((Channel::Stdout, 256)));
        assert_eq!(parse_header([2, 0, 0, 0, 0]), Ok((Channel::Stderr, 0)));
        assert!(parse_header([3, 0, 0, 0, 1]).is_err());
    }

    #[tokio::test]
    async fn relay_splits_frames_and_drops_unrequested_streams() -> anyhow::Result<()> {
        let mut wire = Vec::new();
        for (stream, data) in [(1u8, &b"out1 "[..]), (2, b"err"), (1, b""), (1, b"out2")] {
            wire.push(stream);
            wire.extend_from_slice(&u32::try_from(data.len())?.to_be_bytes());
            wire.extend_from_slice(data);
        }
        // A frame cut short by the shim closing: what arrived is delivered, then the end.
        wire.extend_from_slice(&[1, 0, 0, 0, 9, b'x']);
        let (out_w, mut out_r) = tokio::io::duplex(1024);
        relay(&wire[..], Some(Box::new(out_w)), None).await?;
        let mut got = Vec::new();
        out_r.read_to_end(&mut got).await?;
        assert_eq!(got, b"out1 out2x");

        let bad = [7u8, 0, 0, 0, 0];
        assert!(relay(&bad[..], None, None).await.is_err());
        Ok(())
    }
}
