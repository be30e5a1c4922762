//! Streaming exec (`crictl exec`, `kubectl exec`): a command in a running container wired to a
//! streaming session's stdin, stdout, stderr and terminal size.
//!
//! Like ExecSync, the process is the container's OCI process with `args` replaced and its stdio
//! are FIFOs in `<bundle>/exec/` (see `exec_io`). The session runs in a task of its own that owns
//! the cleanup: whatever happens — the command exits, the shim fails, or the session future is
//! dropped because the client went away (then the command is killed, as containerd does) — the
//! exec is deleted in the shim and its FIFOs removed.

use k8s_cri::v1::ExecRequest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::exec::{check_cmd, delete_exec, read_exec_process, DRAIN_TIMEOUT};
use super::exec_io::ExecFifos;
use super::shim_client::ShimClient;
use super::{connect, ContainerManager, ContainerRecord};
use crate::error::{Error, Result};
use crate::streaming::backend::{SessionIo, TermSize};

/// Read size of the output pumps.
const READ_BUF: usize = 32 * 1024;

/// The client's output writer.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;
/// The client's input reader.
type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// Checks the stream flags of an Exec or Attach request: at least one stream, and no separate
/// stderr with a terminal (the terminal carries both).
pub fn check_streams(
    what: &str,
    id: &str,
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> Result<()> {
    if !stdin && !stdout && !stderr {
        return Err(Error::InvalidArgument(format!(
            "container {id}: {what}: one of stdin, stdout and stderr must be requested"
        )));
    }
    if tty && stderr {
        return Err(Error::InvalidArgument(format!(
            "container {id}: {what}: tty and stderr cannot both be requested (the terminal \
             carries stderr)"
        )));
    }
    Ok(())
}

impl ContainerManager {
    /// Validates an Exec request before a streaming URL is handed out; returns the container's
    /// full id.
    pub fn check_exec(&self, req: &ExecRequest) -> Result<String> {
        check_exec_request(req)?;
        Ok(self.running_record(&req.container_id, "exec")?.id)
    }

    /// Runs `req.cmd` in the running container wired to `io`; resolves to its exit code once it
    /// exited and its output was delivered. Dropping the future kills the command.
    pub async fn exec_session(&self, req: ExecRequest, io: SessionIo) -> Result<i32> {
        check_exec_request(&req)?;
        let rec = self.running_record(&req.container_id, "exec")?;
        let SessionIo {
            stdin,
            stdout,
            stderr,
            mut resize,
        } = io;
        // A size the client sent before the command starts becomes the terminal's initial size.
        let first = match (&mut resize, req.tty) {
            (Some(rx), true) => rx.try_recv().ok(),
            _ => None,
        };
        let console = first.map(|s| (s.width, s.height));
        let process = read_exec_process(&rec, &req.cmd, req.tty, console).await?;
        let exec_id = crate::id::new_id()?;
        let streams = Streams {
            stdin,
            stdout,
            stderr: stderr.filter(|_| !req.tty),
            resize: resize.filter(|_| req.tty),
            first,
        };
        // Dropped with this future: the task then kills the command and cleans up.
        let (_cancel, cancelled) = oneshot::channel::<()>();
        let task = tokio::spawn(session(rec, exec_id, process, req.tty, streams, cancelled));
        task.await
            .map_err(|e| Error::Internal(format!("exec session task failed: {e}")))?
    }
}

/// The request checks that need no container: a command, and valid stream flags.
fn check_exec_request(req: &ExecRequest) -> Result<()> {
    let id = &req.container_id;
    check_cmd(id, &req.cmd)?;
    check_streams("exec", id, req.tty, req.stdin, req.stdout, req.stderr)
}

/// The client's side of the session, as the exec uses it.
struct Streams {
    stdin: Option<Reader>,
    stdout: Option<Writer>,
    stderr: Option<Writer>,
    resize: Option<mpsc::Receiver<TermSize>>,
    first: Option<TermSize>,
}

/// Owns one exec from FIFO creation to cleanup.
async fn session(
    rec: ContainerRecord,
    exec_id: String,
    process: Vec<u8>,
    tty: bool,
    streams: Streams,
    cancelled: oneshot::Receiver<()>,
) -> Result<i32> {
    let mut fifos = ExecFifos::create(&rec.bundle, &exec_id, streams.stdin.is_some(), tty).await?;
    let shim = match connect(&rec).await {
        Ok(shim) => shim,
        Err(e) => {
            fifos.remove().await;
            return Err(e);
        }
    };
    tracing::debug!(container = %rec.id, exec = %exec_id, tty, "streaming exec");
    let res = run(&shim, &exec_id, process, &mut fifos, streams, cancelled).await;
    delete_exec(&shim, &exec_id).await;
    fifos.remove().await;
    res
}

async fn run(
    shim: &ShimClient,
    exec_id: &str,
    process: Vec<u8>,
    fifos: &mut ExecFifos,
    streams: Streams,
    mut cancelled: oneshot::Receiver<()>,
) -> Result<i32> {
    shim.exec(exec_id, process, fifos.stdio()).await?;
    shim.start_exec(exec_id).await?;
    // Aborted when dropped.
    let mut side = JoinSet::new();
    if let Some(size) = streams.first {
        resize(shim, exec_id, size).await;
    }
    if let Some(rx) = streams.resize {
        let (shim, exec_id) = (shim.clone(), exec_id.to_string());
        side.spawn(async move { resizes(&shim, &exec_id, rx).await });
    }
    if let (Some(tx), Some(rd)) = (fifos.stdin.take(), streams.stdin) {
        side.spawn(feed(rd, tx));
    }
    // Only now: a FIFO read before the shim opened its write end would report EOF at once.
    let mut pumps = JoinSet::new();
    if let Some(rx) = fifos.stdout.take() {
        pumps.spawn(pump(rx, streams.stdout));
    }
    if let Some(rx) = fifos.stderr.take() {
        pumps.spawn(pump(rx, streams.stderr));
    }
    let exit = tokio::select! {
        exit = shim.wait_exec(exec_id) => exit?,
        _ = &mut cancelled => {
            // Deleting the exec (the caller does, always) SIGKILLs it and waits for it.
            tracing::debug!(container = %shim.id(), exec = %exec_id, "client went away: killing the exec");
            return Err(Error::Unavailable(format!(
                "container {}: exec {exec_id}: the client went away",
                shim.id()
            )));
        }
    };
    // Stdin and resizes mean nothing any more; the output is delivered up to its EOF (or
    // DRAIN_TIMEOUT: processes the command left behind may hold the FIFOs open).
    drop(side);
    let drain = async { while pumps.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    drop(pumps);
    Ok(i32::try_from(exit.status).unwrap_or(i32::MAX))
}

async fn resize(shim: &ShimClient, exec_id: &str, size: TermSize) {
    if let Err(e) = shim
        .resize_pty(exec_id, u32::from(size.width), u32::from(size.height))
        .await
    {
        tracing::debug!(container = %shim.id(), exec = %exec_id, %e, "resizing exec terminal");
    }
}

/// Applies the client's terminal sizes to exec `exec_id` (empty: the container's own terminal)
/// until the client stops sending them.
pub(super) async fn resizes(shim: &ShimClient, exec_id: &str, mut rx: mpsc::Receiver<TermSize>) {
    while let Some(size) = rx.recv().await {
        resize(shim, exec_id, size).await;
    }
}

/// Copies the client's stdin into the stdin FIFO; its EOF (or error) closes the FIFO, which is
/// the process's EOF.
async fn feed(mut rd: Reader, mut tx: pipe::Sender) {
    if let Err(e) = tokio::io::copy(&mut rd, &mut tx).await {
        tracing::debug!(%e, "exec stdin ended");
    }
}

/// Copies an output FIFO to the client's writer until EOF. Without a writer, or once it fails
/// (the client went away), the output is read and dropped so the process never blocks.
async fn pump(mut rx: pipe::Receiver, mut out: Option<Writer>) {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(%e, "reading exec output");
                break;
            }
        };
        if let Some(w) = out.as_mut() {
            let written = async {
                w.write_all(&buf[..n]).await?;
                w.flush().await
            };
            if let Err(e) = written.await {
                tracing::debug!(%e, "exec output client gone; discarding");
                out = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_flags() {
        assert!(check_streams("exec", "c", false, false, true, true).is_ok());
        assert!(check_streams("exec", "c", true, true, true, false).is_ok());
        assert!(check_streams("exec", "c", false, true, false, false).is_ok());
        for (tty, i, o, e) in [(false, false, false, false), (true, false, false, false)] {
            let err = check_streams("exec", "c", tty, i, o, e);
            assert!(matches!(err, Err(Error::InvalidArgument(_))), "{err:?}");
        }
        let err = check_streams("attach", "c", true, false, true, true);
        assert!(matches!(err, Err(Error::InvalidArgument(m)) if m.contains("tty")));
    }

    #[tokio::test]
    async fn pump_delivers_then_discards_after_the_client_fails() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        let rx = pipe::OpenOptions::new().open_receiver(&path)?;
        let mut tx = pipe::OpenOptions::new().open_sender(&path)?;
        let (client, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(pump(rx, Some(Box::new(client))));
        tx.write_all(b"hello").await?;
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await?;
        assert_eq!(&got, b"hello");
        // The client goes away; the writer keeps going without blocking.
        drop(server);
        for _ in 0..64 {
            tx.write_all(&[0u8; 1024]).await?;
        }
        drop(tx);
        tokio::time::timeout(std::time::Duration::from_secs(5), task).await??;
        Ok(())
    }
}
