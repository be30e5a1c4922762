//! ExecSync: runs a command in a running container through its shim's exec API and returns its
//! output and exit code.
//!
//! The exec process is the container's OCI process (env, user, cwd, capabilities, no_new_privs,
//! rlimits, apparmor) with `args` replaced, like containerd does. Its stdout and stderr are two
//! FIFOs in `<bundle>/exec/` (see `exec_io`, shared with streaming exec); berthd keeps at most
//! [`OUTPUT_CAP`] bytes of each: the rest is read and dropped so the process never blocks on a
//! full pipe. With a timeout, the exec is SIGKILLed when it expires and the call fails with
//! DeadlineExceeded. The exec is deleted in the shim and its FIFOs removed in every case.

use std::time::Duration;

use k8s_cri::v1::ExecSyncResponse;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::exec_io::{exec_process, ExecFifos};
use super::shim_client::ShimClient;
use super::{connect, ContainerManager, ContainerRecord, State};
use crate::error::Error;

/// Most bytes of stdout (and, separately, of stderr) kept; like containerd's cap.
pub const OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// How long the output is still read after the exec process exited: processes it left behind
/// may hold the FIFOs open forever.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Read size of the output readers.
const READ_BUF: usize = 64 * 1024;

/// How ExecSync failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecSyncError {
    /// The command did not finish within the timeout; it was killed.
    #[error("container {id}: command {cmd:?} timed out after {secs}s")]
    Timeout {
        /// Container id.
        id: String,
        /// The command.
        cmd: Vec<String>,
        /// The timeout in seconds.
        secs: i64,
    },
    /// Any other failure (not found, not running, shim errors).
    #[error(transparent)]
    Runtime(#[from] Error),
}

impl From<ExecSyncError> for tonic::Status {
    fn from(e: ExecSyncError) -> Self {
        match e {
            ExecSyncError::Timeout { .. } => tonic::Status::deadline_exceeded(e.to_string()),
            ExecSyncError::Runtime(e) => e.into(),
        }
    }
}

type Result<T> = std::result::Result<T, ExecSyncError>;

impl ContainerManager {
    /// ExecSync: runs `cmd` in the running container `id`; `timeout_secs` 0 (or less) means
    /// no timeout.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_secs: i64,
    ) -> Result<ExecSyncResponse> {
        check_cmd(id, &cmd)?;
        let rec = self.running_record(id, "exec")?;
        let process = read_exec_process(&rec, &cmd, false, None).await?;
        let exec_id = crate::id::new_id()?;
        let bundle = rec.bundle.clone();
        // In its own task: when the caller goes away (the handler future is dropped), the exec
        // still runs to its end (or timeout) and is cleaned up.
        let task = tokio::spawn(async move {
            let mut fifos = ExecFifos::create(&bundle, &exec_id, false, false).await?;
            let shim = match connect(&rec).await {
                Ok(s) => s,
                Err(e) => {
                    fifos.remove().await;
                    return Err(e.into());
                }
            };
            let res = run(&shim, &exec_id, process, &mut fifos, &cmd, timeout_secs).await;
            delete_exec(&shim, &exec_id).await;
            fifos.remove().await;
            res
        });
        task.await
            .map_err(|e| Error::Internal(format!("exec task failed: {e}")))?
    }

    /// The record of container `id` (id or unique prefix) when it is running; `what` names the
    /// request in the FailedPrecondition message otherwise.
    pub fn running_record(
        &self,
        id: &str,
        what: &str,
    ) -> std::result::Result<ContainerRecord, Error> {
        let (id, entry) = self.resolve(id)?;
        let rec = entry.snapshot();
        if rec.state != State::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id}: cannot {what}: container is {}, not running",
                rec.state.name()
            )));
        }
        Ok(rec)
    }
}

/// An exec needs a command.
pub(super) fn check_cmd(id: &str, cmd: &[String]) -> std::result::Result<(), Error> {
    if cmd.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "container {id}: exec: cmd must not be empty"
        )));
    }
    Ok(())
}

/// The exec's `Process` JSON from the container's bundle (see [`exec_process`]).
pub async fn read_exec_process(
    rec: &ContainerRecord,
    cmd: &[String],
    terminal: bool,
    console: Option<(u16, u16)>,
) -> std::result::Result<Vec<u8>, Error> {
    let config = rec.bundle.join("config.json");
    let spec = tokio::fs::read(&config).await.map_err(|e| {
        Error::io(
            format!("container {}: reading {}", rec.id, config.display()),
            e,
        )
    })?;
    exec_process(&spec, cmd, terminal, console)
        .map_err(|m| Error::Internal(format!("container {}: {}: {m}", rec.id, config.display())))
}

/// Deletes exec `exec_id` in the shim; a failure is logged (the shim deletes it with the task).
pub async fn delete_exec(shim: &ShimClient, exec_id: &str) {
    if let Err(e) = shim.delete_exec(exec_id).await {
        tracing::warn!(exec = %exec_id, %e, "deleting exec");
    }
}

/// Reads `rx` to EOF, keeping the first [`OUTPUT_CAP`] bytes.
async fn read_capped(mut rx: pipe::Receiver) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(%e, "reading exec output");
                break;
            }
        }
    }
    kept
}

/// Waits for a reader at most `limit`; what it read so far is lost when it times out.
async fn collect(handle: JoinHandle<Vec<u8>>, limit: Duration) -> Vec<u8> {
    let abort = handle.abort_handle();
    match tokio::time::timeout(limit, handle).await {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => Vec::new(),
        Err(_) => {
            abort.abort();
            Vec::new()
        }
    }
}

/// Creates, starts and waits for the ExecSync process.
async fn run(
    shim: &ShimClient,
    exec_id: &str,
    process: Vec<u8>,
    fifos: &mut ExecFifos,
    cmd: &[String],
    timeout_secs: i64,
) -> Result<ExecSyncResponse> {
    shim.exec(exec_id, process, fifos.stdio()).await?;
    shim.start_exec(exec_id).await?;
    // Only now: a FIFO read before any writer opened it would report EOF at once.
    let (Some(out), Some(err)) = (fifos.stdout.take(), fifos.stderr.take()) else {
        return Err(Error::Internal(format!("exec {exec_id}: FIFOs already read")).into());
    };
    let out = tokio::spawn(read_capped(out));
    let err = tokio::spawn(read_capped(err));
    let wait = shim.wait_exec(exec_id);
    let waited = if timeout_secs > 0 {
        let limit = Duration::from_secs(timeout_secs.unsigned_abs());
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => r,
            Err(_) => {
                // Deleting the exec (the caller does, always) SIGKILLs it.
                out.abort();
                err.abort();
                return Err(ExecSyncError::Timeout {
                    id: shim.id().to_string(),
                    cmd: cmd.to_vec(),
                    secs: timeout_secs,
                });
            }
        }
    } else {
        wait.await
    };
    let exit = match waited {
        Ok(exit) => exit.status,
        Err(e) => {
            out.abort();
            err.abort();
            return Err(e.into());
        }
    };
    let stdout = collect(out, DRAIN_TIMEOUT).await;
    let stderr = collect(err, DRAIN_TIMEOUT).await;
    Ok(ExecSyncResponse {
        stdout,
        stderr,
        exit_code: i32::try_from(exit).unwrap_or(i32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_maps_to_deadline_exceeded() {
        let e = ExecSyncError::Timeout {
            id: "c1".into(),
            cmd: vec!["sleep".into(), "10".into()],
            secs: 1,
        };
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert!(s.message().contains("timed out"), "{}", s.message());
    }
}
