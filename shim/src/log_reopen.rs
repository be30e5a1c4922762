//! Log rotation: on SIGUSR1 the shim reopens its CRI log file at the same path (the kubelet renamed
//! the old one and asked berthd for ReopenContainerLog; berthd signals the shim and waits for the new
//! file).
//!
//! The signal handler only writes one byte to a self-pipe (async-signal-safe); a dedicated thread
//! reads the pipe and swaps each registered log sink's `File` under the sink's mutex, so a record is
//! written entirely to the old file or entirely to the new one.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use nix::fcntl::OFlag;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// A log file shared by the copier threads (`None`: output discarded).
pub type Sink = Arc<Mutex<Option<File>>>;

/// A registered sink, held weakly.
type WeakSink = Weak<Mutex<Option<File>>>;

/// Write end of the self-pipe (-1 until [`install`] ran).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The sinks to reopen, by path. Weak: a sink whose copiers ended is simply skipped.
static SINKS: Mutex<Vec<(PathBuf, WeakSink)>> = Mutex::new(Vec::new());
/// Result of the one-time installation.
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Installs the SIGUSR1 handler and starts the reopen thread (once per process; later calls return
/// the first result).
pub fn install() -> Result<(), String> {
    INSTALLED.get_or_init(install_once).clone()
}

/// Registers `sink` to be reopened at `path` on SIGUSR1.
pub fn register(path: &Path, sink: &Sink) {
    let mut sinks = lock(&SINKS);
    sinks.retain(|(_, w)| w.strong_count() > 0);
    sinks.push((path.to_path_buf(), Arc::downgrade(sink)));
}

/// Opens (creating) a CRI log file for appending.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Reopens every registered sink now (what the signal triggers). Returns how many were reopened.
pub fn reopen_all() -> usize {
    let sinks: Vec<(PathBuf, Sink)> = {
        let mut sinks = lock(&SINKS);
        sinks.retain(|(_, w)| w.strong_count() > 0);
        sinks
            .iter()
            .filter_map(|(p, w)| Some((p.clone(), w.upgrade()?)))
            .collect()
    };
    let mut done = 0;
    for (path, sink) in sinks {
        // Open before taking the lock: the copiers are not held up by the open.
        match open_append(&path) {
            Ok(file) => {
                let mut guard = lock(&sink);
                if guard.is_some() {
                    // The old File is closed here; the renamed file keeps what was written.
                    *guard = Some(file);
                    done += 1;
                }
            }
            Err(e) => crate::error!("reopen log file {}: {e}", path.display()),
        }
    }
    done
}

fn install_once() -> Result<(), String> {
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| format!("create log reopen pipe: {e}"))?;
    // The reader blocks; only the handler's end must never block.
    let read_end = set_blocking(read_end)?;
    WAKE_FD.store(write_end.into_raw_fd(), Ordering::SeqCst);
    std::thread::Builder::new()
        .name("log-reopen".into())
        .stack_size(64 * 1024)
        .spawn(move || wait_loop(File::from(read_end)))
        .map_err(|e| format!("spawn log reopen thread: {e}"))?;
    let action = SigAction::new(
        SigHandler::Handler(on_sigusr1),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only loads an atomic and calls write(2), both async-signal-safe; the
    // previous disposition (default: terminate) is not needed.
    unsafe { sigaction(Signal::SIGUSR1, &action) }
        .map_err(|e| format!("install SIGUSR1 handler: {e}"))?;
    Ok(())
}

fn set_blocking(fd: OwnedFd) -> Result<OwnedFd, String> {
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| format!("log reopen pipe flags: {e}"))?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| format!("log reopen pipe flags: {e}"))?;
    Ok(fd)
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) on a pipe fd this process owns for its whole life, from a valid one-byte
        // buffer; a full pipe (EAGAIN) just means a reopen is already pending.
        unsafe {
            libc::write(fd, std::ptr::addr_of!(byte).cast(), 1);
        }
    }
}

fn wait_loop(mut pipe: File) {
    let mut buf = [0u8; 64];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                reopen_all();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                crate::error!("log reopen pipe: {e}");
                return;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    #[test]
    fn sigusr1_reopens_a_renamed_log() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.log");
        let sink: Sink = Arc::new(Mutex::new(Some(open_append(&path)?)));
        register(&path, &sink);
        install().map_err(anyhow::Error::msg)?;
        lock(&sink)
            .as_mut()
            .map(|f| f.write_all(b"one\n"))
            .transpose()?;
        let rotated = dir.path().join("c.log.1");
        std::fs::rename(&path, &rotated)?;
        nix::sys::signal::raise(Signal::SIGUSR1)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() {
            anyhow::ensure!(Instant::now() < deadline, "log not reopened");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The swap happens right after the create: wait until the sink writes there.
        loop {
            lock(&sink)
                .as_mut()
                .map(|f| f.write_all(b"two\n"))
                .transpose()?;
            if std::fs::read_to_string(&path)?.contains("two") {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "writes still go to the old file");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(std::fs::read_to_string(&rotated)?.starts_with("one\n"));
        Ok(())
    }

    #[test]
    fn dropped_sinks_are_skipped() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gone.log");
        let sink: Sink = Arc::new(Mutex::new(Some(open_append(&path)?)));
        register(&path, &sink);
        drop(sink);
        std::fs::remove_file(&path)?;
        reopen_all();
        assert!(!path.exists(), "a dropped sink must not create a file");
        Ok(())
    }
}
