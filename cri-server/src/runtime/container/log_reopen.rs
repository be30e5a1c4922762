//! ReopenContainerLog: the kubelet rotated (renamed) a running container's log file; its shim is told to
//! reopen the log path (SIGUSR1 to the shim process, whose pid the task API's `connect` returns) and berthd
//! waits until the new file exists.

use std::path::Path;
use std::time::{Duration, Instant};

use containerd_shim_protos::api::ConnectRequest;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use containerd_shim_protos::ttrpc::context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::record::{ContainerRecord, State};
use crate::error::{Error, Result};

/// How long the shim gets to create the new file.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Polling interval while waiting for it.
const POLL: Duration = Duration::from_millis(20);

/// Signals the shim of a running container to reopen its log and waits for the new file.
pub async fn reopen(rec: &ContainerRecord) -> Result<()> {
    if rec.state != State::Running {
        return Err(Error::FailedPrecondition(format!(
            "container {} is not running (it is {})",
            rec.id,
            rec.state.name()
        )));
    }
    if rec.log_path.is_empty() {
        // No log file: nothing to reopen.
        return Ok(());
    }
    let shim_pid = shim_pid(rec).await?;
    // A shim from before log reopening existed would be terminated by SIGUSR1: check it catches it.
    let status = tokio::fs::read_to_string(format!("/proc/{shim_pid}/status"))
        .await
        .map_err(|e| {
            Error::io(
                format!("container {}: reading shim {shim_pid} status", rec.id),
                e,
            )
        })?;
    if !catches(&status, Signal::SIGUSR1) {
        return Err(Error::FailedPrecondition(format!(
            "container {}: its shim (pid {shim_pid}) cannot reopen logs; restart the container",
            rec.id
        )));
    }
    kill(Pid::from_raw(shim_pid), Signal::SIGUSR1).map_err(|e| {
        Error::Unavailable(format!(
            "container {}: signalling shim {shim_pid} to reopen its log: {e}",
            rec.id
        ))
    })?;
    let deadline = Instant::now() + REOPEN_TIMEOUT;
    let path = Path::new(&rec.log_path);
    loop {
        if tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Internal(format!(
                "container {}: the shim did not reopen log file {} within {}s",
                rec.id,
                rec.log_path,
                REOPEN_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the `SigCgt` mask of a /proc/<pid>/status text has `signal` (a handler is installed).
fn catches(status: &str, signal: Signal) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (signal as i32 - 1)) != 0)
}

/// The shim's pid, from the task API's `connect`.
async fn shim_pid(rec: &ContainerRecord) -> Result<i32> {
    let address = format!("unix://{}", rec.shim_socket().display());
    let unavailable = |e: String| Error::Unavailable(format!("container {}: shim {e}", rec.id));
    let client = tokio::time::timeout(Duration::from_secs(5), Client::connect(&address))
        .await
        .map_err(|_| unavailable(format!("connecting to {address} timed out")))?
        .map_err(|e| unavailable(format!("connecting to {address}: {e}")))?;
    let req = ConnectRequest {
        id: rec.id.clone(),
        ..Default::default()
    };
    let resp = TaskClient::new(client)
        .connect(context::with_duration(Duration::from_secs(10)), &req)
        .await
        .map_err(|e| unavailable(format!("connect: {e}")))?;
    i32::try_from(resp.shim_pid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| unavailable(format!("connect returned shim pid {}", resp.shim_pid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_signal_mask() {
        // SIGUSR1 is 10: bit 9 (0x200).
        assert!(catches(
            "Name:\tx\nSigCgt:\t0000000000000200\n",
            Signal::SIGUSR1
        ));
        assert!(!catches("SigCgt:\t0000000000010000\n", Signal::SIGUSR1));
        assert!(!catches("no mask here\n", Signal::SIGUSR1));
    }
}
