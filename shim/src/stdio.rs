//! Container stdio: two pipes whose write ends become the container's stdout and stderr, and
//! one copier thread per pipe turning the bytes into CRI log records (see [`crate::cri_log`]).
//! Both copiers append to the same file through one mutex, each record in one write(2), so
//! records never interleave. [`IoTracker`] tells `wait` when both pipes reached EOF (drained).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;

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

    fn done(&self) {
        *lock(&self.open) -= 1;
        self.cv.notify_all();
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
    /// Container stdin (`/dev/null`).
    pub stdin: OwnedFd,
    /// Write end of the stdout pipe.
    pub stdout: OwnedFd,
    /// Write end of the stderr pipe.
    pub stderr: OwnedFd,
}

/// Creates the pipes, opens the CRI log file at `log_path` (empty: output is discarded) and
/// starts the copiers. Returns the container's ends and the tracker for `wait`.
pub fn setup(id: &str, log_path: &str) -> Result<(ContainerStdio, Arc<IoTracker>)> {
    let sink = Arc::new(Mutex::new(open_log(id, log_path)?));
    // Installed even without a log: a stray SIGUSR1 must never terminate the shim.
    crate::log_reopen::install()
        .map_err(|e| Error::io(id, "log reopen on SIGUSR1", std::io::Error::other(e)))?;
    if !log_path.is_empty() {
        crate::log_reopen::register(Path::new(log_path), &sink);
    }
    let stdin = File::open("/dev/null").map_err(|e| Error::io(id, "open /dev/null", e))?;
    let (out_r, out_w) = pipe(id)?;
    let (err_r, err_w) = pipe(id)?;
    let tracker = Arc::new(IoTracker::default());
    spawn_copier(id, Stream::Stdout, out_r, sink.clone(), tracker.clone())?;
    spawn_copier(id, Stream::Stderr, err_r, sink, tracker.clone())?;
    Ok((
        ContainerStdio {
            stdin: stdin.into(),
            stdout: out_w,
            stderr: err_w,
        },
        tracker,
    ))
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

fn spawn_copier(
    id: &str,
    stream: Stream,
    pipe: OwnedFd,
    sink: Arc<Mutex<Option<File>>>,
    tracker: Arc<IoTracker>,
) -> Result<()> {
    tracker.start();
    let tracker2 = tracker.clone();
    let id2 = id.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("io-{}", stream.as_str()))
        .stack_size(COPIER_STACK)
        .spawn(move || {
            copy(&id2, stream, File::from(pipe), &sink);
            tracker2.done();
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => {
            tracker.done();
            Err(Error::io(id, "spawn log copier thread", e))
        }
    }
}

/// Copies one pipe into the log until EOF.
fn copy(id: &str, stream: Stream, mut pipe: File, sink: &Mutex<Option<File>>) {
    let mut splitter = LineSplitter::new(cri_log::MAX_LINE);
    let mut buf = vec![0u8; READ_BUF];
    let mut failed = false;
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
            Ok(n) => splitter.feed(&buf[..n], &mut emit),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
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
        let (stdio, tracker) = setup("t", &log.to_string_lossy())?;
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
