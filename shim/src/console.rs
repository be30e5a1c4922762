//! Terminals: the console socket on which libcontainer hands over a pty master, and the
//! window-size ioctl.
//!
//! With a console socket, libcontainer's init (or exec) process opens a pty inside the
//! container, connects to the socket (the connection is made by the helper during `build()`,
//! inherited by the process), sends the master with `SCM_RIGHTS` and makes the slave its
//! controlling terminal and stdio. The daemon listens on a fresh socket under
//! `<bundle>/runtime` per process, runs the helper, then accepts the one connection and
//! receives the master (both were queued in the kernel while the helper ran).

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Environment variable naming the console socket for a helper (absent: no tty).
pub const CONSOLE_ENV: &str = "BERTH_CONSOLE_SOCKET";
/// How long the daemon waits for the pty master once the helper has exited.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A listening console socket; the file is removed on drop.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on a new `<bundle>/runtime/console-<n>.sock` (mode 0600).
    pub fn bind(bundle: &Path) -> std::io::Result<Self> {
        let runtime = bundle.join("runtime");
        std::fs::create_dir_all(&runtime)?;
        let name = format!(
            "runtime/console-{}.sock",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = bundle.join(&name);
        let _ = std::fs::remove_file(&path);
        let listener = bind_in_bundle(bundle, &name)?;
        Ok(ConsoleSocket { listener, path })
    }

    /// The socket's absolute path, for the helper.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the process's connection and receives the pty master (close-on-exec).
    pub fn receive_master(&self) -> std::io::Result<File> {
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        self.listener.set_nonblocking(true)?;
        wait_readable(self.listener.as_raw_fd(), deadline)?;
        let (stream, _) = self.listener.accept()?;
        stream.set_nonblocking(true)?;
        loop {
            wait_readable(stream.as_raw_fd(), deadline)?;
            let mut buf = [0u8; 64];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([RawFd; 1]);
            let msg = match recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(received) = c {
                    fds.extend(received);
                }
            }
            let bytes = msg.bytes;
            let mut owned: Vec<OwnedFd> = fds
                .into_iter()
                // SAFETY: SCM_RIGHTS just installed these descriptors in this process; nothing
                // else owns them.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if let Some(master) = owned.pop() {
                return Ok(File::from(master));
            }
            if bytes == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "console socket closed without a pty master",
                ));
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a unix socket at `<bundle>/<rel>`, by the relative name when the process runs in the
/// bundle (the daemon does), so long bundle paths do not hit the 108-byte `sun_path` limit.
/// Mode 0600.
pub fn bind_in_bundle(bundle: &Path, rel: &str) -> std::io::Result<UnixListener> {
    let abs = bundle.join(rel);
    let in_bundle = std::env::current_dir().ok().as_deref() == Some(bundle);
    let listener = UnixListener::bind(if in_bundle { Path::new(rel) } else { &abs })?;
    std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Waits until `fd` is readable (or hung up), or fails with `TimedOut` at `deadline`.
fn wait_readable(fd: RawFd, deadline: Instant) -> std::io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no pty master on the console socket",
            ));
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return Ok(());
        }
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Sets the window size of the pty whose master is `master`.
pub fn resize(master: &impl AsRawFd, width: u32, height: u32) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: u16::try_from(height).unwrap_or(u16::MAX),
        ws_col: u16::try_from(width).unwrap_or(u16::MAX),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the valid pointer; the fd is borrowed.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn receives_a_passed_fd_and_resizes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let sock = ConsoleSocket::bind(dir.path())?;
        let path = sock.path().to_path_buf();
        assert!(path.starts_with(dir.path().join("runtime")));
        let pty = nix::pty::openpty(None, None)?;
        let client = UnixStream::connect(&path)?;
        let fds = [pty.master.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            client.as_raw_fd(),
            &[std::io::IoSlice::new(b"/dev/ptmx")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )?;
        let master = sock.receive_master()?;
        resize(&master, 120, 40)?;
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` to the valid pointer.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (120, 40));
        drop(sock);
        assert!(!path.exists());
        Ok(())
    }
}
