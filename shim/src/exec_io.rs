//! Stdio of one exec process (see docs/shim.md, "Exec stdio").
//!
//! - `stdout`/`stderr`: paths (berthd passes FIFOs it already reads) opened for writing; empty:
//!   `/dev/null`. Without a tty the process writes to them directly.
//! - `stdin`: a FIFO berthd already holds open for writing, opened here for reading; a pump
//!   copies it into a pipe (no tty) or into the pty master (tty), so that CloseIO can end it.
//!   Empty: `/dev/null`.
//! - tty: the process gets a pty through a console socket (see [`crate::console`]); a pump
//!   copies the master to the stdout path and closes it when the master reports EOF/EIO.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::console::{self, ConsoleSocket};
use crate::error::{Error, Result};
use crate::pump::{self, Stop};
use crate::stdio::{self, ContainerStdio};

/// The live stdio of a started exec.
#[derive(Default)]
pub struct ExecIo {
    master: Option<File>,
    stdin: Option<Arc<Stop>>,
    output: Option<Arc<Stop>>,
}

impl ExecIo {
    /// Resizes the exec's pty; `None` when it has no tty.
    pub fn resize(&self, width: u32, height: u32) -> Option<std::io::Result<()>> {
        self.master
            .as_ref()
            .map(|m| console::resize(m, width, height))
    }

    /// Stops copying stdin (CloseIO): without a tty the process reads EOF.
    pub fn close_stdin(&self) {
        if let Some(s) = &self.stdin {
            s.stop();
        }
    }

    /// Stops every pump (the exec is deleted).
    pub fn stop(&self) {
        self.close_stdin();
        if let Some(s) = &self.output {
            s.stop();
        }
    }
}

/// Stdio opened before the helper runs; [`Prepared::finish`] wires it up once the process
/// exists.
pub struct Prepared {
    /// The process's 0/1/2, handed to the helper.
    pub stdio: Option<ContainerStdio>,
    console: Option<ConsoleSocket>,
    stdin_fifo: Option<File>,
    stdin_pipe: Option<File>,
    tty_out: Option<File>,
}

/// Opens the exec's stdio as described in the module doc.
pub fn prepare(
    id: &str,
    bundle: &Path,
    terminal: bool,
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> Result<Prepared> {
    let stdin_fifo = if stdin.is_empty() {
        None
    } else {
        Some(
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(stdin)
                .map_err(|e| Error::io(id, format!("open exec stdin {stdin}"), e))?,
        )
    };
    let null = |what: &str| stdio::open_null(id, what);
    if terminal {
        let console = ConsoleSocket::bind(bundle)
            .map_err(|e| Error::io(id, "listen on a console socket", e))?;
        return Ok(Prepared {
            stdio: Some(ContainerStdio {
                stdin: null("stdin")?,
                stdout: null("stdout")?,
                stderr: null("stderr")?,
            }),
            console: Some(console),
            stdin_fifo,
            stdin_pipe: None,
            tty_out: Some(File::from(open_output(id, stdout)?)),
        });
    }
    let (stdin_fd, stdin_pipe) = if stdin_fifo.is_some() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::io(id, "create exec stdin pipe", e.into()))?;
        (r, Some(File::from(w)))
    } else {
        (null("stdin")?, None)
    };
    Ok(Prepared {
        stdio: Some(ContainerStdio {
            stdin: stdin_fd,
            stdout: open_output(id, stdout)?,
            stderr: open_output(id, stderr)?,
        }),
        console: None,
        stdin_fifo,
        stdin_pipe,
        tty_out: None,
    })
}

impl Prepared {
    /// The console socket path for the helper, with a tty.
    pub fn console_path(&self) -> Option<&Path> {
        self.console.as_ref().map(ConsoleSocket::path)
    }

    /// The process exists (the helper has exited): receives the pty master and starts the
    /// pumps.
    pub fn finish(mut self, id: &str, exec_id: &str) -> Result<ExecIo> {
        let mut io = ExecIo::default();
        let err =
            |what: &str, e: std::io::Error| Error::io(id, format!("exec {exec_id}: {what}"), e);
        if let Some(console) = self.console.take() {
            let master = console
                .receive_master()
                .map_err(|e| err("receive pty master", e))?;
            if let Some(fifo) = self.stdin_fifo.take() {
                let dst = master.try_clone().map_err(|e| err("dup pty master", e))?;
                io.stdin = Some(
                    pump::spawn("exec-stdin", fifo, dst, || {})
                        .map_err(|e| err("start stdin pump", e))?,
                );
            }
            if let Some(out) = self.tty_out.take() {
                let src = master.try_clone().map_err(|e| err("dup pty master", e))?;
                let stdin = io.stdin.clone();
                io.output = Some(
                    pump::spawn("exec-out", src, out, move || {
                        // The process is gone: nothing reads stdin any more.
                        if let Some(s) = stdin {
                            s.stop();
                        }
                    })
                    .map_err(|e| err("start output pump", e))?,
                );
            }
            io.master = Some(master);
        } else if let (Some(fifo), Some(pipe)) = (self.stdin_fifo.take(), self.stdin_pipe.take()) {
            io.stdin = Some(
                pump::spawn("exec-stdin", fifo, pipe, || {})
                    .map_err(|e| err("start stdin pump", e))?,
            );
        }
        Ok(io)
    }
}

/// Opens an output path for writing; a FIFO without a reader is an error, not a hang.
fn open_output(id: &str, path: &str) -> Result<OwnedFd> {
    let target = if path.is_empty() { "/dev/null" } else { path };
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK)
        .open(target)
        .map_err(|e| Error::io(id, format!("open exec output {target}"), e))?;
    // The exec process must see a blocking descriptor.
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_APPEND))
        .map_err(|e| Error::io(id, format!("set flags of {target}"), e.into()))?;
    Ok(file.into())
}
