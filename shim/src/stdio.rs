//! Container stdio: two pipes whose write ends become the container's stdout and stderr, and
//! one copier thread per pipe turning the bytes into CRI log records (see [`crate::cri_log`])
//! and passing them to attach clients (see [`crate::attach`]). With a tty there is one copier,
//! reading the pty master, whose output is `stdout`. Copiers append to the same file through
//! one mutex, each record in one write(2), so records never interleave. [`IoTracker`] tells
//! `wait` when every copier reached EOF (drained); then attach clients are told output ended.
//!
//! Stdin: `/dev/null`, or (container stdin open, no tty) a pipe whose write end attach clients
//! write to; with a tty, attach input goes to the pty master.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;

use crate::attach::Attach;
use crate::cri_log::{self, LineSplitter, Stream};
use crate::error::{Error, Result};

/// Stack size of a copier thread: it only holds a read buffer on the heap.
const COPIER_STACK: usize = 64 * 1024;
/// Read size of a copier.
const READ_BUF: usize = 32 * 1024;

/// Counts the copiers still running; `wait` blocks on it until the pipes are drained.
#[derive(Debug, Default)]
pub struct IoTracker {
    open: Mutex<usize>,
    cv: Condvar,
}

impl IoTracker {
    fn start(&self) {
        *lock(&self.open) += 1;
    }

    /// One copier finished; true when it was the last.
    fn done(&self) -> bool {
        let mut open = lock(&self.open);
        *open -= 1;
        self.cv.notify_all();
        *open == 0
    }

    /// Blocks until every copier hit EOF or `timeout` passed; true when drained.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut open = lock(&self.open);
        while *open > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            open = match self.cv.wait_timeout(open, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

/// The container's ends of the stdio pipes, handed to libcontainer.
#[derive(Debug)]
pub struct ContainerStdio {
    /// Container stdin (`/dev/null` or a pipe's read end).
    pub stdin: OwnedFd,
    /// Write end of the stdout pipe.
    pub stdout: OwnedFd,
    /// Write end of the stderr pipe.
    pub stderr: OwnedFd,
}

/// The log side of a container's output, shared by its copiers.
pub struct Output {
    id: String,
    sink: Arc<Mutex<Option<File>>>,
    tracker: Arc<IoTracker>,
    attach: Arc<Attach>,
}

impl Output {
    /// The tracker `wait` drains on.
    pub fn tracker(&self) -> Arc<IoTracker> {
        self.tracker.clone()
    }

    /// Starts the copier of a tty container's pty master (its output is `stdout`).
    pub fn start_console(&self, master: File) -> Result<()> {
        spawn_copier(self, Stream::Stdout, master)
    }
}

/// Opens the CRI log file at `log_path` (empty: output is discarded) and prepares the
/// container's stdio. Without `terminal`: creates the output pipes and starts their copiers;
/// with `stdin` the container's stdin is a pipe whose write end goes to `attach`. With
/// `terminal`: stdio is `/dev/null` (libcontainer puts the pty slave there); call
/// [`Output::start_console`] with the master.
pub fn setup(
    id: &str,
    log_path: &str,
    terminal: bool,
    stdin: bool,
    attach: &Arc<Attach>,
) -> Result<(ContainerStdio, Output)> {
    let sink = Arc::new(Mutex::new(open_log(id, log_path)?));
    // Installed even without a log: a stray SIGUSR1 must never terminate the shim.
    crate::log_reopen::install()
        .map_err(|e| Error::io(id, "log reopen on SIGUSR1", std::io::Error::other(e)))?;
    if !log_path.is_empty() {
        crate::log_reopen::register(Path::new(log_path), &sink);
    }
    let output = Output {
        id: id.to_string(),
        sink,
        tracker: Arc::new(IoTracker::default()),
        attach: attach.clone(),
    };
    let null = |what: &str| open_null(id, what);
    if terminal {
        let stdio = ContainerStdio {
            stdin: null("stdin")?,
            stdout: null("stdout")?,
            stderr: null("stderr")?,
        };
        return Ok((stdio, output));
    }
    let stdin = if stdin {
        let (r, w) = pipe(id)?;
        attach.set_stdin(Some(File::from(w)));
        r
    } else {
        null("stdin")?
    };
    let (out_r, out_w) = pipe(id)?;
    let (err_r, err_w) = pipe(id)?;
    spawn_copier(&output, Stream::Stdout, File::from(out_r))?;
    spawn_copier(&output, Stream::Stderr, File::from(err_r))?;
    Ok((
        ContainerStdio {
            stdin,
            stdout: out_w,
            stderr: err_w,
        },
        output,
    ))
}

/// Opens `/dev/null` read-write for container or exec `id`'s `what` (stdin, stdout, stderr).
pub fn open_null(id: &str, what: &str) -> Result<OwnedFd> {
    let f = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io(id, format!("open /dev/null for {what}"), e))?;
    Ok(f.into())
}

fn pipe(id: &str) -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| Error::io(id, "create stdio pipe", std::io::Error::from(e)))
}

fn open_log(id: &str, log_path: &str) -> Result<Option<File>> {
    if log_path.is_empty() {
        return Ok(None);
    }
    let path = Path::new(log_path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(id, format!("create log directory {}", dir.display()), e))?;
    }
    crate::log_reopen::open_append(path)
        .map(Some)
        .map_err(|e| Error::io(id, format!("open log file {log_path}"), e))
}

fn spawn_copier(out: &Output, stream: Stream, src: File) -> Result<()> {
    out.tracker.start();
    let tracker = out.tracker.clone();
    let attach = out.attach.clone();
    let sink = out.sink.clone();
    let id = out.id.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("io-{}", stream.as_str()))
        .stack_size(COPIER_STACK)
        .spawn(move || {
            copy(&id, stream, src, &sink, &attach);
            if tracker.done() {
                attach.output_ended();
            }
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => {
            out.tracker.done();
            Err(Error::io(&out.id, "spawn log copier thread", e))
        }
    }
}

/// Copies one pipe (or pty master) into the log and to attach clients until EOF (or EIO: a
/// pty whose slave side is closed).
fn copy(id: &str, stream: Stream, mut pipe: File, sink: &Mutex<Option<File>>, attach: &Attach) {
    let mut splitter = LineSplitter::new(cri_log::MAX_LINE);
    let mut buf = vec![0u8; READ_BUF];
    let mut failed = false;
    let frame_stream = match stream {
        Stream::Stdout => crate::attach::STDOUT,
        Stream::Stderr => crate::attach::STDERR,
    };
    let mut emit = |tag: cri_log::Tag, text: &[u8]| {
        let mut guard = lock(sink);
        let Some(file) = guard.as_mut() else { return };
        let rec = cri_log::record(&cri_log::timestamp(SystemTime::now()), stream, tag, text);
        if let Err(e) = file.write_all(&rec) {
            if !failed {
                crate::error!("container {id}: write {} log record: {e}", stream.as_str());
                failed = true;
            }
        }
    };
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                attach.output(frame_stream, &buf[..n]);
                splitter.feed(&buf[..n], &mut emit);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                crate::error!("container {id}: read {}: {e}", stream.as_str());
                break;
            }
        }
    }
    splitter.finish(&mut emit);
}

/// Locks a mutex, taking the data even if a panicking thread poisoned it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_both_streams_into_one_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("sub/c.log");
        let attach = Attach::new("t");
        let (stdio, out) = setup("t", &log.to_string_lossy(), false, false, &attach)?;
        let tracker = out.tracker();
        File::from(stdio.stdout).write_all(b"out line\npartial")?;
        File::from(stdio.stderr).write_all(b"err line\n")?;
        assert!(tracker.wait_drained(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&log)?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines.iter().any(|l| l.ends_with(" stdout F out line")));
        assert!(lines.iter().any(|l| l.ends_with(" stdout P partial")));
        assert!(lines.iter().any(|l| l.ends_with(" stderr F err line")));
        Ok(())
    }
}
