//! ExecSync: runs a command in a running container through its shim's exec API and returns its
//! output and exit code.
//!
//! The exec process is the container's OCI process (env, user, cwd, capabilities, no_new_privs,
//! rlimits, apparmor) with `args` replaced, like containerd does. Its stdout and stderr are two
//! FIFOs in `<bundle>/exec/`; berthd opens their read ends (non-blocking, read by tokio) before
//! the shim opens the write ends, and keeps at most [`OUTPUT_CAP`] bytes of each: the rest is
//! read and dropped so the process never blocks on a full pipe. With a timeout, the exec is
//! SIGKILLed when it expires and the call fails with DeadlineExceeded. The exec is deleted in the
//! shim and its FIFOs removed in every case.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use containerd_shim_protos::ttrpc::{self, context, Code};
use k8s_cri::v1::ExecSyncResponse;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::{ContainerManager, State};
use crate::error::Error;

/// Most bytes of stdout (and, separately, of stderr) kept; like containerd's cap.
pub const OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// type_url of the OCI Process sent in ExecProcessRequest (what containerd uses).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Timeout of the shim calls other than `wait`.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the shim may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the output is still read after the exec process exited: processes it left behind
/// may hold the FIFOs open forever.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
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
        if cmd.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "container {id}: exec: cmd must not be empty"
            ))
            .into());
        }
        let (id, entry) = self.resolve(id)?;
        let rec = entry.snapshot();
        if rec.state != State::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id}: cannot exec: container is {}, not running",
                rec.state.name()
            ))
            .into());
        }
        let config = rec.bundle.join("config.json");
        let spec = tokio::fs::read(&config)
            .await
            .map_err(|e| Error::io(format!("container {id}: reading {}", config.display()), e))?;
        let process = exec_process(&spec, &cmd)
            .map_err(|m| Error::Internal(format!("container {id}: {}: {m}", config.display())))?;
        let exec_id = crate::id::new_id()?;
        let (bundle, socket) = (rec.bundle.clone(), rec.shim_socket());
        // In its own task: when the caller goes away (the handler future is dropped), the exec
        // still runs to its end (or timeout) and is cleaned up.
        let task = tokio::spawn(async move {
            let mut files = ExecFiles::create(&bundle, &exec_id).await?;
            let task = match connect(&id, &socket).await {
                Ok(t) => t,
                Err(e) => {
                    files.remove().await;
                    return Err(e.into());
                }
            };
            let exec = Exec { id, exec_id, task };
            let res = exec.run(process, &mut files, &cmd, timeout_secs).await;
            exec.delete().await;
            files.remove().await;
            res
        });
        task.await
            .map_err(|e| Error::Internal(format!("exec task failed: {e}")))?
    }
}

/// The exec's `Process` JSON: the container's process with `args` replaced, no terminal.
fn exec_process(spec: &[u8], cmd: &[String]) -> std::result::Result<Vec<u8>, String> {
    let spec: serde_json::Value =
        serde_json::from_slice(spec).map_err(|e| format!("not JSON: {e}"))?;
    let mut process = spec
        .get("process")
        .filter(|p| p.is_object())
        .cloned()
        .ok_or_else(|| "no process in the spec".to_string())?;
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::Value::Bool(false);
    if let Some(p) = process.as_object_mut() {
        // Only for the init; an exec has no console.
        p.remove("consoleSize");
        p.remove("commandLine");
    }
    serde_json::to_vec(&process).map_err(|e| format!("encoding the exec process: {e}"))
}

/// The exec's output FIFOs, with their read ends open.
struct ExecFiles {
    stdout: PathBuf,
    stderr: PathBuf,
    out: Option<pipe::Receiver>,
    err: Option<pipe::Receiver>,
}

impl ExecFiles {
    async fn create(bundle: &Path, exec_id: &str) -> std::result::Result<Self, Error> {
        let dir = bundle.join("exec");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let stdout = dir.join(format!("{exec_id}.out"));
        let stderr = dir.join(format!("{exec_id}.err"));
        let mut made = Vec::new();
        let res = async {
            let mut ends = Vec::new();
            for path in [&stdout, &stderr] {
                nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|e| Error::io(format!("mkfifo {}", path.display()), e.into()))?;
                made.push(path.clone());
                ends.push(
                    pipe::OpenOptions::new()
                        .open_receiver(path)
                        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?,
                );
            }
            Ok::<_, Error>(ends)
        }
        .await;
        match res {
            Ok(mut ends) => {
                let (Some(err), Some(out)) = (ends.pop(), ends.pop()) else {
                    return Err(Error::Internal("exec FIFOs missing".into()));
                };
                Ok(Self {
                    stdout,
                    stderr,
                    out: Some(out),
                    err: Some(err),
                })
            }
            Err(e) => {
                for path in made {
                    let _ = tokio::fs::remove_file(path).await;
                }
                Err(e)
            }
        }
    }

    async fn remove(self) {
        for path in [&self.stdout, &self.stderr] {
            if let Err(e) = tokio::fs::remove_file(path).await {
                tracing::warn!(path = %path.display(), %e, "removing exec FIFO");
            }
        }
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

async fn connect(id: &str, socket: &Path) -> std::result::Result<TaskClient, Error> {
    let address = format!("unix://{}", socket.display());
    let client = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(&address))
        .await
        .map_err(|_| {
            Error::Unavailable(format!("container {id}: connecting to {address} timed out"))
        })?
        .map_err(|e| Error::Unavailable(format!("container {id}: connecting to {address}: {e}")))?;
    Ok(TaskClient::new(client))
}

/// One exec in the shim.
struct Exec {
    id: String,
    exec_id: String,
    task: TaskClient,
}

impl Exec {
    async fn run(
        &self,
        process: Vec<u8>,
        files: &mut ExecFiles,
        cmd: &[String],
        timeout_secs: i64,
    ) -> Result<ExecSyncResponse> {
        let req = api::ExecProcessRequest {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            terminal: false,
            stdout: files.stdout.display().to_string(),
            stderr: files.stderr.display().to_string(),
            spec: MessageField::some(Any {
                type_url: PROCESS_TYPE_URL.to_string(),
                value: process,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.task
            .exec(ctx(), &req)
            .await
            .map_err(|e| self.map_err("exec", e))?;
        let req = api::StartRequest {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            ..Default::default()
        };
        self.task
            .start(ctx(), &req)
            .await
            .map_err(|e| self.map_err("start exec", e))?;
        // Only now: a FIFO read before any writer opened it would report EOF at once.
        let (Some(out), Some(err)) = (files.out.take(), files.err.take()) else {
            return Err(
                Error::Internal(format!("container {}: exec FIFOs already read", self.id)).into(),
            );
        };
        let out = tokio::spawn(read_capped(out));
        let err = tokio::spawn(read_capped(err));
        let req = api::WaitRequest {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            ..Default::default()
        };
        let wait = self.task.wait(context::with_timeout(0), &req);
        let waited = if timeout_secs > 0 {
            let limit = Duration::from_secs(timeout_secs.unsigned_abs());
            match tokio::time::timeout(limit, wait).await {
                Ok(r) => r,
                Err(_) => {
                    out.abort();
                    err.abort();
                    self.kill().await;
                    return Err(ExecSyncError::Timeout {
                        id: self.id.clone(),
                        cmd: cmd.to_vec(),
                        secs: timeout_secs,
                    });
                }
            }
        } else {
            wait.await
        };
        let exit = match waited {
            Ok(resp) => resp.exit_status,
            Err(e) => {
                out.abort();
                err.abort();
                return Err(self.map_err("wait for exec", e).into());
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

    async fn kill(&self) {
        let req = api::KillRequest {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            signal: libc::SIGKILL as u32,
            ..Default::default()
        };
        if let Err(e) = self.task.kill(ctx(), &req).await {
            tracing::warn!(container = %self.id, exec = %self.exec_id, %e, "killing timed-out exec");
        }
    }

    /// Deletes the exec in the shim (which kills it if it still runs). Failures are logged.
    async fn delete(&self) {
        let req = api::DeleteRequest {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            ..Default::default()
        };
        match self.task.delete(ctx(), &req).await {
            Ok(_) => {}
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == Code::NOT_FOUND => {}
            Err(e) => {
                tracing::warn!(container = %self.id, exec = %self.exec_id, %e, "deleting exec")
            }
        }
    }

    fn map_err(&self, call: &str, err: ttrpc::Error) -> Error {
        match err {
            ttrpc::Error::RpcStatus(status) => {
                let msg = format!("container {}: shim {call}: {}", self.id, status.message());
                match status.code() {
                    Code::INVALID_ARGUMENT => Error::InvalidArgument(msg),
                    Code::NOT_FOUND => Error::NotFound(msg),
                    Code::FAILED_PRECONDITION => Error::FailedPrecondition(msg),
                    Code::UNAVAILABLE | Code::DEADLINE_EXCEEDED => Error::Unavailable(msg),
                    _ => Error::Internal(msg),
                }
            }
            other => Error::Unavailable(format!("container {}: shim {call}: {other}", self.id)),
        }
    }
}

fn ctx() -> context::Context {
    context::with_duration(CALL_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_process_replaces_args_only() -> anyhow::Result<()> {
        let spec = br#"{"ociVersion":"1.0.2","process":{"terminal":true,"args":["sleep","1d"],
            "env":["A=1"],"cwd":"/w","user":{"uid":1000,"gid":1000},"consoleSize":{"height":1,"width":2}}}"#;
        let out = exec_process(spec, &["id".to_string(), "-u".to_string()])
            .map_err(anyhow::Error::msg)?;
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        assert_eq!(v["args"], serde_json::json!(["id", "-u"]));
        assert_eq!(v["env"], serde_json::json!(["A=1"]));
        assert_eq!(v["cwd"], "/w");
        assert_eq!(v["user"]["uid"], 1000);
        assert_eq!(v["terminal"], false);
        assert!(v.get("consoleSize").is_none());
        assert!(exec_process(b"{}", &["x".to_string()]).is_err());
        assert!(exec_process(b"nope", &["x".to_string()]).is_err());
        Ok(())
    }

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
