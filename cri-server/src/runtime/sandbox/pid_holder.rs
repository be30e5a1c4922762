//! The init of a pod's shared PID namespace (NamespaceMode::POD): a `berth-shim pod-init` process.
//!
//! A PID namespace needs a living pid 1, so it cannot be kept by a bind mount alone like the pod's
//! other namespaces. The holder is recorded by pid and start time (field 22 of `/proc/<pid>/stat`),
//! so a reused pid is never mistaken for it, and its namespace is bind-mounted at
//! `<sandbox dir>/ns/pid`: containers join that pin, which always names the pod's namespace (once
//! the holder is gone, joining fails instead of landing in some other process's namespace).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How long Remove waits for a killed holder to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running holder, as recorded in the sandbox record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Host pid.
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// Starts `<shim> pod-init` for sandbox `id` (its dir on the command line) and returns the holder.
/// Blocking (forks): call from a blocking thread.
pub fn spawn(shim: &Path, id: &str, dir: &Path) -> Result<Holder> {
    let out = Command::new(shim)
        .arg("pod-init")
        .arg("--id")
        .arg(id)
        .arg("--bundle")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {} pod-init", shim.display()), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = match stdout.trim().parse::<i32>() {
        Ok(pid) if out.status.success() && pid > 0 => pid,
        _ => {
            return Err(Error::Internal(format!(
                "pod sandbox {id}: {} pod-init failed ({}): {}",
                shim.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    match read_stat(pid) {
        Some(stat) if !stat.exited => Ok(Holder {
            pid,
            start_time: stat.start_time,
        }),
        _ => Err(Error::Internal(format!(
            "pod sandbox {id}: the PID namespace init (pid {pid}) exited right after it started"
        ))),
    }
}

/// What berth needs from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    start_time: u64,
    /// Zombie or dead: the process is gone, only not reaped yet.
    exited: bool,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state); start time is field 22.
    let state = fields.next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat {
        start_time,
        exited: matches!(state, "Z" | "X" | "x"),
    })
}

fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

impl Holder {
    /// Whether the recorded holder still runs (same pid, same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        read_stat(self.pid).is_some_and(|s| !s.exited && s.start_time == self.start_time)
    }

    /// `/proc/<pid>/ns/pid` of the holder.
    fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/pid", self.pid))
    }

    /// Bind-mounts the holder's PID namespace at `target` (after checking it is still the holder).
    pub fn pin(&self, target: &Path) -> Result<()> {
        let fd = self.pidfd()?.ok_or_else(|| {
            Error::Internal(format!("the PID namespace init (pid {}) is gone", self.pid))
        })?;
        super::namespaces::pin_file(&self.ns_path(), target)?;
        // The pid might have been reused between the check and the mount: the pidfd tells.
        if !self.is_alive() || poll_exited(&fd, Duration::ZERO) {
            let _ = super::namespaces::unpin(target);
            return Err(Error::Internal(format!(
                "the PID namespace init (pid {}) exited while being pinned",
                self.pid
            )));
        }
        Ok(())
    }

    /// SIGKILLs the holder if it is still the recorded process, and waits until it has exited. Its
    /// namespace's other processes die with it. Idempotent. Blocking.
    pub fn kill(&self) -> Result<()> {
        let Some(fd) = self.pidfd()? else {
            return Ok(());
        };
        // SAFETY: pidfd_send_signal(2) with a pidfd we own, a valid signal and no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(Error::io(
                    format!("killing the PID namespace init (pid {})", self.pid),
                    err,
                ));
            }
        }
        if poll_exited(&fd, EXIT_TIMEOUT) {
            Ok(())
        } else {
            Err(Error::Internal(format!(
                "the PID namespace init (pid {}) did not exit {EXIT_TIMEOUT:?} after SIGKILL",
                self.pid
            )))
        }
    }

    /// A pidfd for the holder, `None` when it is gone (or the pid now belongs to another process).
    /// Checking the start time after opening the pidfd makes the pidfd certainly the holder's.
    fn pidfd(&self) -> Result<Option<OwnedFd>> {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ESRCH) => Ok(None),
                _ => Err(Error::io(
                    format!("pidfd_open of the PID namespace init (pid {})", self.pid),
                    err,
                )),
            };
        }
        let Ok(raw) = i32::try_from(rc) else {
            return Err(Error::Internal(format!("pidfd_open returned {rc}")));
        };
        // SAFETY: `raw` is a fresh descriptor returned by pidfd_open that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(read_stat(self.pid)
            .is_some_and(|s| s.start_time == self.start_time)
            .then_some(fd))
    }
}

/// Waits up to `timeout` for the process behind `pidfd` to exit; true once it has.
fn poll_exited(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one pollfd we own, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return rc > 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_and_state() {
        let line = "4242 (berth-shim) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                start_time: 987654,
                exited: false
            })
        );
        let odd = "7 (a) b) c) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(
            parse_stat(odd),
            Some(Stat {
                start_time: 55,
                exited: true
            })
        );
        assert_eq!(parse_stat("7 (short) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = std::process::id() as i32;
        let me = read_stat(pid).unwrap();
        assert!(!me.exited);
        let holder = Holder {
            pid,
            start_time: me.start_time,
        };
        assert!(holder.is_alive());
        let reused = Holder {
            pid,
            start_time: me.start_time + 1,
        };
        assert!(!reused.is_alive());
        // A mismatching start time is never signalled.
        reused.kill().unwrap();
        assert!(holder.is_alive());
    }

    #[test]
    fn spawn_pin_and_kill_a_real_holder() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // berth-shim from the same target dir (built by `cargo build --bins`).
        let exe = std::env::current_exe().unwrap();
        let Some(shim) = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("berth-shim"))
            .filter(|p| p.is_file())
        else {
            eprintln!("skipping: no berth-shim next to {}", exe.display());
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let holder = spawn(&shim, "unit-pod", dir.path()).unwrap();
        assert!(holder.is_alive());
        let pin = dir.path().join("pid");
        let pinned = holder.pin(&pin);
        let same_ns = std::fs::metadata(&pin).map(|m| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(holder.ns_path()).map(|n| n.ino()).ok() == Some(m.ino())
        });
        holder.kill().unwrap();
        assert!(!holder.is_alive());
        holder.kill().unwrap();
        super::super::namespaces::unpin(&pin).unwrap();
        pinned.unwrap();
        assert!(same_ns.unwrap(), "the pin is the holder's PID namespace");
        assert!(!pin.exists());
    }
}
