//! The ttrpc edge: containerd's shim v2 `Task` service. Validates requests, logs each one,
//! converts between protobuf and [`ContainerTask`], maps errors to ttrpc status codes.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, Status, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::ttrpc::{self, TtrpcContext};
use containerd_shim_protos::Task;

use crate::container::{self, ContainerTask, CreateOptions};
use crate::error::{Error, Result};
use crate::exec::{ExecOptions, Execs};

/// The `Task` service of one shim.
pub struct TaskService {
    task: Arc<ContainerTask>,
    execs: Execs,
    shutdown: Sender<()>,
}

impl TaskService {
    /// Serves `task`; a `shutdown` that may exit sends on `shutdown`.
    pub fn new(task: Arc<ContainerTask>, shutdown: Sender<()>) -> Self {
        let execs = Execs::new(
            task.id().to_string(),
            task.bundle().to_path_buf(),
            task.reaper(),
        );
        TaskService {
            task,
            execs,
            shutdown,
        }
    }

    /// Checks the request targets this shim's container.
    fn check(&self, id: &str) -> Result<()> {
        if !id.is_empty() && id != self.task.id() {
            return Err(Error::NotFound {
                id: id.to_string(),
                what: format!("task (this shim serves {})", self.task.id()),
            });
        }
        Ok(())
    }
}

impl TaskService {
    /// The `state` answer for the task (`exec_id` empty) or one of its execs.
    fn state_response(&self, exec_id: &str, st: container::TaskState) -> StateResponse {
        let mut resp = StateResponse::new();
        resp.id = self.task.id().to_string();
        resp.exec_id = exec_id.to_string();
        resp.bundle = self.task.bundle().display().to_string();
        resp.pid = st.pid;
        resp.status = status(st.status).into();
        resp.stdin = st.stdin;
        resp.stdout = st.stdout;
        resp.stderr = st.stderr;
        if let Some(exit) = st.exit {
            resp.exit_status = exit.status;
            resp.exited_at = timestamp(exit.at);
        }
        resp
    }
}

fn status(s: container::Status) -> Status {
    match s {
        container::Status::Created => Status::CREATED,
        container::Status::Running => Status::RUNNING,
        container::Status::Stopped => Status::STOPPED,
    }
}

/// Logs the outcome of a request and converts the error for ttrpc.
fn finish<T>(method: &str, res: Result<T>) -> ttrpc::Result<T> {
    match res {
        Ok(v) => Ok(v),
        Err(e) => {
            crate::error!("{method}: {e}");
            Err(e.into())
        }
    }
}

fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    MessageField::some(ts)
}

impl Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        crate::info!(
            "create id={} bundle={} rootfs={} stdout={} stdin={} terminal={}",
            req.id,
            req.bundle,
            req.rootfs.len(),
            req.stdout,
            req.stdin,
            req.terminal
        );
        let res = self.check(&req.id).and_then(|()| {
            if !req.bundle.is_empty() && std::path::Path::new(&req.bundle) != self.task.bundle() {
                crate::info!(
                    "create: bundle {} differs from the shim's; using the shim's",
                    req.bundle
                );
            }
            let opts = CreateOptions {
                rootfs: req
                    .rootfs
                    .iter()
                    .map(|m| snapshotter::Mount {
                        kind: m.type_.clone(),
                        source: m.source.clone(),
                        options: m.options.clone(),
                    })
                    .collect(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                stdin: req.stdin.clone(),
                terminal: req.terminal,
            };
            self.task.create(opts)
        });
        let pid = finish("create", res)?;
        crate::info!(
            "create: container {} created, init pid {pid}",
            self.task.id()
        );
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        crate::info!("start id={} exec_id={}", req.id, req.exec_id);
        let res = self.check(&req.id).and_then(|()| {
            if req.exec_id.is_empty() {
                self.task.start()
            } else {
                let status = self.task.state()?.status;
                self.execs.start(&req.exec_id, status)
            }
        });
        let pid = finish("start", res)?;
        let mut resp = StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    // Not logged unless it fails: berthd polls state, the log would grow without bound.
    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let st = finish(
            "state",
            self.check(&req.id).and_then(|()| {
                if req.exec_id.is_empty() {
                    self.task.state()
                } else {
                    self.execs.state(&req.exec_id)
                }
            }),
        )?;
        Ok(self.state_response(&req.exec_id, st))
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        crate::info!("wait id={} exec_id={}", req.id, req.exec_id);
        let exit = finish(
            "wait",
            self.check(&req.id).and_then(|()| {
                if req.exec_id.is_empty() {
                    self.task.wait()
                } else {
                    self.execs.wait(&req.exec_id)
                }
            }),
        )?;
        let mut resp = WaitResponse::new();
        resp.exit_status = exit.status;
        resp.exited_at = timestamp(exit.at);
        Ok(resp)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        crate::info!(
            "kill id={} exec_id={} signal={} all={}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        finish(
            "kill",
            self.check(&req.id).and_then(|()| {
                if req.exec_id.is_empty() {
                    self.task.kill(req.signal, req.all)
                } else {
                    self.execs.kill(&req.exec_id, req.signal)
                }
            }),
        )?;
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        crate::info!("delete id={} exec_id={}", req.id, req.exec_id);
        let d = finish(
            "delete",
            self.check(&req.id).and_then(|()| {
                if req.exec_id.is_empty() {
                    self.task.delete()
                } else {
                    self.execs.delete(&req.exec_id)
                }
            }),
        )?;
        let mut resp = DeleteResponse::new();
        resp.pid = d.pid;
        if let Some(exit) = d.exit {
            resp.exit_status = exit.status;
            resp.exited_at = timestamp(exit.at);
        }
        Ok(resp)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        crate::info!("pids id={}", req.id);
        let pids = finish("pids", self.check(&req.id).and_then(|()| self.task.pids()))?;
        let mut resp = PidsResponse::new();
        resp.processes = pids
            .into_iter()
            .map(|pid| {
                let mut p = ProcessInfo::new();
                p.pid = pid;
                p
            })
            .collect();
        Ok(resp)
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        crate::info!("update id={}", req.id);
        let res = self
            .check(&req.id)
            .and_then(|()| match req.resources.as_ref() {
                Some(any) => self.task.update(&any.value),
                None => Err(Error::InvalidArgument {
                    id: self.task.id().to_string(),
                    msg: "update without resources".into(),
                }),
            });
        finish("update", res)?;
        Ok(Empty::new())
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        crate::info!("connect id={}", req.id);
        finish("connect", self.check(&req.id))?;
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = self.task.pid();
        Ok(resp)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        crate::info!("shutdown id={} now={}", req.id, req.now);
        finish("shutdown", self.check(&req.id))?;
        if self.task.is_live() && !req.now {
            // Like containerd's shims: a shim with a live container stays up.
            crate::info!(
                "shutdown: container {} still exists, staying up",
                self.task.id()
            );
            return Ok(Empty::new());
        }
        // The receiver exits the process shortly after this reply is sent. A closed channel
        // means shutdown is already under way.
        let _ = self.shutdown.send(());
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, _req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        finish("stats", Err(Error::Unimplemented("stats")))
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        crate::info!(
            "exec id={} exec_id={} terminal={} stdin={} stdout={} stderr={}",
            req.id,
            req.exec_id,
            req.terminal,
            req.stdin,
            req.stdout,
            req.stderr
        );
        let res = self.check(&req.id).and_then(|()| {
            let Some(spec) = req.spec.as_ref() else {
                return Err(Error::InvalidArgument {
                    id: self.task.id().to_string(),
                    msg: format!("exec {} without a process spec", req.exec_id),
                });
            };
            self.execs.add(ExecOptions {
                exec_id: req.exec_id.clone(),
                terminal: req.terminal,
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                process_json: spec.value.clone(),
            })
        });
        finish("exec", res)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        crate::info!(
            "resize_pty id={} exec_id={} width={} height={}",
            req.id,
            req.exec_id,
            req.width,
            req.height
        );
        finish(
            "resize_pty",
            self.check(&req.id).and_then(|()| {
                if req.exec_id.is_empty() {
                    self.task.resize_pty(req.width, req.height)
                } else {
                    self.execs.resize(&req.exec_id, req.width, req.height)
                }
            }),
        )?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        crate::info!(
            "close_io id={} exec_id={} stdin={}",
            req.id,
            req.exec_id,
            req.stdin
        );
        finish(
            "close_io",
            self.check(&req.id).and_then(|()| {
                if !req.stdin {
                    Ok(())
                } else if req.exec_id.is_empty() {
                    self.task.close_stdin()
                } else {
                    self.execs.close_stdin(&req.exec_id)
                }
            }),
        )?;
        Ok(Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: PauseRequest) -> ttrpc::Result<Empty> {
        finish("pause", Err(Error::Unimplemented("pause")))
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: ResumeRequest) -> ttrpc::Result<Empty> {
        finish("resume", Err(Error::Unimplemented("resume")))
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        finish("checkpoint", Err(Error::Unimplemented("checkpoint")))
    }
}
