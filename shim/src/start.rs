//! `berth-shim start`: launches the daemon (`serve`) in a new session, detached from the
//! caller, waits until its socket accepts connections, prints the socket path.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start` waits for the daemon's socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Name of the socket in the bundle.
pub const SOCKET_NAME: &str = "shim.sock";
/// Name of the shim's own log in the bundle.
pub const LOG_NAME: &str = "shim.log";

/// Runs `start`: the caller gets the socket path on stdout once the daemon serves.
pub fn run(id: &str, bundle: &Path) -> Result<(), String> {
    let socket = bundle.join(SOCKET_NAME);
    // Connect by the name relative to the bundle (as the daemon binds it): the absolute path
    // may be longer than a unix socket address allows. `start` is single-threaded.
    std::env::set_current_dir(bundle)
        .map_err(|e| format!("enter bundle {}: {e}", bundle.display()))?;
    if UnixStream::connect(SOCKET_NAME).is_ok() {
        return Err(format!("a shim already serves {}", socket.display()));
    }
    let log_path = bundle.join(LOG_NAME);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("open {}: {e}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().map_err(|e| format!("locate own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--id")
        .arg(id)
        .arg("--bundle")
        .arg(bundle)
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: the closure only calls setsid(2), which is async-signal-safe; `start` is
    // single-threaded, so nothing else can hold a lock across the fork.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawn shim daemon: {e}"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if UnixStream::connect(SOCKET_NAME).is_ok() {
            println!("{}", socket.display());
            // The daemon outlives us and is reparented; we never wait for it.
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "shim daemon exited ({status}) before serving:\n{}",
                log_tail(&log_path, log_start)
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "shim daemon not serving {} after {READY_TIMEOUT:?}:\n{}",
                socket.display(),
                log_tail(&log_path, log_start)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last few KiB the daemon wrote to its log since `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(4096));
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim_end().to_string()
}
