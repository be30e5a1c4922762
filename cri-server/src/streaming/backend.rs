//! What the streaming server needs from the runtime, and what it hands over: the transports
//! (SPDY, WebSocket) negotiate a session and turn it into [`SessionIo`]; a [`Backend`] runs the
//! exec or attach against the container's shim, or dials a port inside the pod's network
//! namespace. Nothing here knows about wire protocols.

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::error::Error;

/// A terminal size sent on the resize stream (columns and rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// The client's end of an exec or attach session. A stream is `None` when the request did not
/// ask for it. With a TTY there is no stderr: the terminal carries both.
pub struct SessionIo {
    /// Bytes the client types; EOF when it half-closes stdin.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Where the command's stdout (or the terminal's output) goes.
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Where the command's stderr goes (never with a TTY).
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Terminal size changes (TTY sessions only); the first one may arrive before the command
    /// starts and should be applied as soon as the terminal exists.
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

/// Runs streaming sessions against real containers and pods. Implemented by the runtime; the
/// streaming server holds it as `Arc<dyn Backend>`. Each call returns a future that runs until
/// the session is over; dropping it (the client went away) must still clean up (delete the exec,
/// close the attach) without leaking.
pub trait Backend: Send + Sync + 'static {
    /// Runs `req.cmd` in container `req.container_id` (`req.tty`: in a new terminal) wired to
    /// `io`; resolves to the command's exit code once it exited and its output was delivered.
    fn exec(
        &self,
        req: k8s_cri::v1::ExecRequest,
        io: SessionIo,
    ) -> BoxFuture<'static, Result<i32, Error>>;

    /// Attaches `io` to the running container `req.container_id`'s stdio; resolves when the
    /// container's output ended (it exited) or the client's stdin ended and the container was
    /// created with `stdin_once`.
    fn attach(
        &self,
        req: k8s_cri::v1::AttachRequest,
        io: SessionIo,
    ) -> BoxFuture<'static, Result<(), Error>>;

    /// Opens a TCP connection to `127.0.0.1:port` (`localhost` of the pod) inside pod
    /// `pod_sandbox_id`'s network namespace.
    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
    ) -> BoxFuture<'static, Result<TcpStream, Error>>;
}
