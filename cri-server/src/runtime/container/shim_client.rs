//! Talking to berth-shim: starting one per container and calling its task API over async ttrpc.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use containerd_shim_protos::ttrpc::{self, context, Code};

use super::socket_path::SocketPath;
use crate::error::{Error, Result};

/// Per-request timeout for everything but `wait`.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to a shim socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// type_url of the OCI Process sent in ExecProcessRequest (what containerd uses).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// type_url of OCI LinuxResources sent in UpdateTaskRequest (what containerd uses).
pub const LINUX_RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// The shim binary: the configured path, else `berth-shim` next to berthd, else `berth-shim` from `$PATH`.
pub fn shim_binary(configured: &Path) -> PathBuf {
    if !configured.as_os_str().is_empty() {
        return configured.to_path_buf();
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let candidate = dir.join("berth-shim");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("berth-shim")
}

/// Runs `berth-shim start --id <id> --bundle <bundle>` (on a blocking thread: it forks) and returns the
/// socket path it prints.
pub async fn start_shim(binary: &Path, id: &str, bundle: &Path) -> Result<PathBuf> {
    let binary = binary.to_path_buf();
    let (id, bundle) = (id.to_string(), bundle.to_path_buf());
    let what = format!("container {id}: starting {}", binary.display());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&binary)
            .arg("start")
            .arg("--id")
            .arg(&id)
            .arg("--bundle")
            .arg(&bundle)
            .current_dir(&bundle)
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await
    .map_err(|e| Error::Internal(format!("{what}: {e}")))?
    .map_err(|e| Error::io(what.clone(), e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::Internal(format!(
            "{what}: {}: {}",
            output.status,
            stderr.trim()
        )));
    }
    let socket = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if socket.is_empty() {
        return Err(Error::Internal(format!(
            "{what}: the shim printed no socket path"
        )));
    }
    Ok(PathBuf::from(
        socket.strip_prefix("unix://").unwrap_or(&socket),
    ))
}

/// How a shim call failed, mapped onto berthd errors.
fn map_err(id: &str, call: &str, err: ttrpc::Error) -> Error {
    match err {
        ttrpc::Error::RpcStatus(status) => {
            let msg = format!("container {id}: shim {call}: {}", status.message());
            match status.code() {
                Code::INVALID_ARGUMENT => Error::InvalidArgument(msg),
                Code::NOT_FOUND => Error::NotFound(msg),
                Code::FAILED_PRECONDITION => Error::FailedPrecondition(msg),
                Code::ALREADY_EXISTS => Error::AlreadyExists(msg),
                Code::UNAVAILABLE | Code::DEADLINE_EXCEEDED => Error::Unavailable(msg),
                _ => Error::Internal(msg),
            }
        }
        other => Error::Unavailable(format!("container {id}: shim {call}: {other}")),
    }
}

fn ctx() -> context::Context {
    context::with_duration(CALL_TIMEOUT)
}

/// The stdio of an exec process as the shim takes it: paths of FIFOs berthd created (empty:
/// /dev/null), and whether it gets a pty (then stdout carries the terminal and stderr is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStdio {
    /// Give the process a pty.
    pub terminal: bool,
    /// FIFO berthd holds open for writing; empty for none.
    pub stdin: String,
    /// FIFO berthd holds open for reading.
    pub stdout: String,
    /// FIFO berthd holds open for reading; empty with a terminal.
    pub stderr: String,
}

/// Exit of a container's init process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128+signal when killed).
    pub status: u32,
    /// Nanoseconds since the epoch (0 when the shim gave none).
    pub at_nanos: i64,
}

fn timestamp_nanos(
    ts: &MessageField<containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp>,
) -> i64 {
    ts.as_ref()
        .map(|t| {
            t.seconds
                .saturating_mul(1_000_000_000)
                .saturating_add(i64::from(t.nanos))
        })
        .unwrap_or(0)
}

/// What the shim says about the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Created, not started.
    Created,
    /// Running with this pid.
    Running(u32),
    /// Exited.
    Stopped(Exit),
    /// Anything else the shim reports (paused, unknown).
    Other,
}

/// A connection to one container's shim.
#[derive(Clone)]
pub struct ShimClient {
    id: String,
    task: TaskClient,
}

impl ShimClient {
    /// Connects to the shim socket of container `id`.
    pub async fn connect(id: &str, socket: &Path) -> Result<Self> {
        let short = SocketPath::new(socket).map_err(|e| {
            Error::Unavailable(format!("container {id}: opening {}: {e}", socket.display()))
        })?;
        let address = format!("unix://{}", short.path().display());
        let client = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(&address))
            .await
            .map_err(|_| {
                Error::Unavailable(format!("container {id}: connecting to {address} timed out"))
            })?
            .map_err(|e| {
                Error::Unavailable(format!("container {id}: connecting to {address}: {e}"))
            })?;
        Ok(Self {
            id: id.to_string(),
            task: TaskClient::new(client),
        })
    }

    /// The container id this client talks about.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// CreateTask: mounts the rootfs, sets up the log, creates the container; returns the init pid.
    /// `stdin` non-empty (the attach socket's path) opens the container's stdin to attach clients;
    /// `terminal` gives the init a pty.
    pub async fn create(
        &self,
        bundle: &Path,
        rootfs: &[snapshotter::Mount],
        log_path: &str,
        stdin: &str,
        terminal: bool,
    ) -> Result<u32> {
        let req = api::CreateTaskRequest {
            id: self.id.clone(),
            bundle: bundle.display().to_string(),
            rootfs: rootfs
                .iter()
                .map(|m| api::Mount {
                    type_: m.kind.clone(),
                    source: m.source.clone(),
                    target: String::new(),
                    options: m.options.clone(),
                    ..Default::default()
                })
                .collect(),
            stdin: stdin.to_string(),
            stdout: log_path.to_string(),
            stderr: log_path.to_string(),
            terminal,
            ..Default::default()
        };
        // Creating can take a while (mounts, cgroups, namespaces): allow more than the usual timeout.
        let resp = self
            .task
            .create(context::with_duration(CALL_TIMEOUT * 2), &req)
            .await
            .map_err(|e| map_err(&self.id, "create", e))?;
        Ok(resp.pid)
    }

    /// Starts the init process; returns its pid.
    pub async fn start(&self) -> Result<u32> {
        self.start_process("").await
    }

    /// Sends `signal` to init (or every process of the container when `all`).
    pub async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        let req = api::KillRequest {
            id: self.id.clone(),
            signal,
            all,
            ..Default::default()
        };
        self.task
            .kill(ctx(), &req)
            .await
            .map_err(|e| map_err(&self.id, "kill", e))?;
        Ok(())
    }

    /// Blocks (no timeout) until init exited and its output is drained.
    pub async fn wait(&self) -> Result<Exit> {
        self.wait_process("").await
    }

    /// Creates exec process `exec_id` from `process_json` (an OCI Process) wired to `stdio`.
    pub async fn exec(
        &self,
        exec_id: &str,
        process_json: Vec<u8>,
        stdio: &ExecStdio,
    ) -> Result<()> {
        let req = api::ExecProcessRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            terminal: stdio.terminal,
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            spec: MessageField::some(Any {
                type_url: PROCESS_TYPE_URL.to_string(),
                value: process_json,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.task
            .exec(ctx(), &req)
            .await
            .map_err(|e| map_err(&self.id, "exec", e))?;
        Ok(())
    }

    /// Starts exec process `exec_id`; returns its pid.
    pub async fn start_exec(&self, exec_id: &str) -> Result<u32> {
        self.start_process(exec_id).await
    }

    /// Blocks (no timeout) until exec process `exec_id` exited.
    pub async fn wait_exec(&self, exec_id: &str) -> Result<Exit> {
        self.wait_process(exec_id).await
    }

    /// Sends `signal` to exec process `exec_id`.
    pub async fn kill_exec(&self, exec_id: &str, signal: u32) -> Result<()> {
        let req = api::KillRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            signal,
            ..Default::default()
        };
        self.task
            .kill(ctx(), &req)
            .await
            .map_err(|e| map_err(&self.id, "kill exec", e))?;
        Ok(())
    }

    /// Deletes exec process `exec_id` in the shim (killing it if it still runs); one already gone
    /// is not an error.
    pub async fn delete_exec(&self, exec_id: &str) -> Result<()> {
        let req = api::DeleteRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        match self.task.delete(ctx(), &req).await {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == Code::NOT_FOUND => Ok(()),
            Err(e) => Err(map_err(&self.id, "delete exec", e)),
        }
    }

    /// Resizes the pty of init (`exec_id` empty) or of an exec process (TIOCSWINSZ in the shim);
    /// FailedPrecondition when it has no terminal.
    pub async fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = api::ResizePtyRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            width,
            height,
            ..Default::default()
        };
        self.task
            .resize_pty(ctx(), &req)
            .await
            .map_err(|e| map_err(&self.id, "resize pty", e))?;
        Ok(())
    }

    /// Closes the stdin of init (`exec_id` empty) or of an exec process for good: it reads EOF.
    pub async fn close_stdin(&self, exec_id: &str) -> Result<()> {
        let req = api::CloseIORequest {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            stdin: true,
            ..Default::default()
        };
        self.task
            .close_io(ctx(), &req)
            .await
            .map_err(|e| map_err(&self.id, "close io", e))?;
        Ok(())
    }

    async fn start_process(&self, exec_id: &str) -> Result<u32> {
        let req = api::StartRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let resp = self
            .task
            .start(ctx(), &req)
            .await
            .map_err(|e| map_err(&self.id, "start", e))?;
        Ok(resp.pid)
    }

    async fn wait_process(&self, exec_id: &str) -> Result<Exit> {
        let req = api::WaitRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let resp = self
            .task
            .wait(context::with_timeout(0), &req)
            .await
            .map_err(|e| map_err(&self.id, "wait", e))?;
        Ok(Exit {
            status: resp.exit_status,
            at_nanos: timestamp_nanos(&resp.exited_at),
        })
    }

    /// The task's state.
    pub async fn state(&self) -> Result<TaskState> {
        let req = api::StateRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let resp = self
            .task
            .state(ctx(), &req)
            .await
            .map_err(|e| map_err(&self.id, "state", e))?;
        Ok(match resp.status.enum_value() {
            Ok(api::Status::CREATED) => TaskState::Created,
            Ok(api::Status::RUNNING) => TaskState::Running(resp.pid),
            Ok(api::Status::STOPPED) => TaskState::Stopped(Exit {
                status: resp.exit_status,
                at_nanos: timestamp_nanos(&resp.exited_at),
            }),
            _ => TaskState::Other,
        })
    }

    /// Applies new resources (OCI LinuxResources JSON).
    pub async fn update(&self, resources_json: Vec<u8>) -> Result<()> {
        let any = Any {
            type_url: LINUX_RESOURCES_TYPE_URL.to_string(),
            value: resources_json,
            ..Default::default()
        };
        let req = api::UpdateTaskRequest {
            id: self.id.clone(),
            resources: MessageField::some(any),
            ..Default::default()
        };
        self.task
            .update(ctx(), &req)
            .await
            .map_err(|e| map_err(&self.id, "update", e))?;
        Ok(())
    }

    /// Deletes the task: the container, its cgroup and the rootfs mount.
    pub async fn delete(&self) -> Result<()> {
        let req = api::DeleteRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        self.task
            .delete(ctx(), &req)
            .await
            .map_err(|e| map_err(&self.id, "delete", e))?;
        Ok(())
    }

    /// Asks the shim to exit. The connection dropping during the reply is expected and not an error.
    pub async fn shutdown(&self) -> Result<()> {
        let req = api::ShutdownRequest {
            id: self.id.clone(),
            now: true,
            ..Default::default()
        };
        match self
            .task
            .shutdown(context::with_duration(Duration::from_secs(5)), &req)
            .await
        {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::RpcStatus(status)) => Err(map_err(
                &self.id,
                "shutdown",
                ttrpc::Error::RpcStatus(status),
            )),
            Err(_) => Ok(()),
        }
    }
}
