//! The one container this shim owns: its lifecycle (create, start, kill, delete), its exit and
//! its cgroup. Knows nothing about protobuf; `service.rs` is the ttrpc edge.
//!
//! Locking: `inner` (this container's state) may be taken before the reaper's fork lock, never
//! after it; the reaper takes only the fork lock and its own state, so waits for the exit never
//! need `inner`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::container::Container;
use oci_spec::runtime::LinuxResources;

use crate::attach::Attach;
use crate::console::{self, ConsoleSocket};
use crate::error::{Error, Result};
use crate::helper;
use crate::reaper::{Exit, Reaper};
use crate::stdio::{self, IoTracker};

/// How long `wait` waits for the log pipes to drain once the init exited. Processes that escaped
/// the init (no pid namespace) may keep a pipe open forever; then their later output still goes
/// to the log, but `wait` returns.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `delete` waits for a killed init to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// What `create` needs from the request.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Mounts making up the rootfs, mounted on `<bundle>/rootfs`; empty: already there.
    pub rootfs: Vec<snapshotter::Mount>,
    /// CRI log file path (empty: output discarded).
    pub stdout: String,
    /// Reported back in `state`; the CRI log receives both streams through `stdout`.
    pub stderr: String,
    /// Non-empty: the container's stdin is open, fed by attach clients (berthd passes the
    /// attach socket path; only emptiness matters).
    pub stdin: String,
    /// TTY requested: the init gets a pty; its output is the log's `stdout`.
    pub terminal: bool,
}

/// Lifecycle state as the task API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, waiting for start.
    Created,
    /// Started and not exited.
    Running,
    /// Init exited.
    Stopped,
}

/// A snapshot of the task, or of one of its exec processes, for `state`.
#[derive(Debug, Clone)]
pub struct TaskState {
    /// Pid in the host namespace (0 before an exec started).
    pub pid: u32,
    /// Lifecycle state.
    pub status: Status,
    /// Exit, once stopped.
    pub exit: Option<Exit>,
    /// Stdout path given at create (the CRI log) or exec.
    pub stdout: String,
    /// Stderr path given at create or exec.
    pub stderr: String,
    /// Stdin path given at create or exec.
    pub stdin: String,
}

/// What `delete` of the task or of an exec reports.
#[derive(Debug, Clone, Copy)]
pub struct Deleted {
    /// Pid (0 when never created or started).
    pub pid: u32,
    /// Exit, when the process was reaped.
    pub exit: Option<Exit>,
}

#[derive(Default)]
struct Inner {
    container: Option<Container>,
    pid: u32,
    started: bool,
    deleted: Option<Deleted>,
    io: Option<Arc<IoTracker>>,
    opts: CreateOptions,
    attach: Option<Arc<Attach>>,
    /// The init's pty master, with a tty.
    console: Option<File>,
}

/// What a successful `create_container` hands back.
struct Created {
    container: Container,
    io: Arc<IoTracker>,
    attach: Arc<Attach>,
    console: Option<File>,
}

/// The container managed by this shim.
pub struct ContainerTask {
    id: String,
    bundle: PathBuf,
    reaper: Arc<Reaper>,
    inner: Mutex<Inner>,
}

impl ContainerTask {
    /// The task for container `id` in `bundle` (absolute), reaped by `reaper`.
    pub fn new(id: String, bundle: PathBuf, reaper: Arc<Reaper>) -> Self {
        ContainerTask {
            id,
            bundle,
            reaper,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bundle directory.
    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// The reaper of this shim (shared with the exec processes, see `exec.rs`).
    pub fn reaper(&self) -> Arc<Reaper> {
        self.reaper.clone()
    }

    /// Mounts the rootfs, resolves the user, sets up stdio and creates the container (init
    /// waiting for start). Returns the init pid. On failure everything done is undone.
    pub fn create(&self, opts: CreateOptions) -> Result<u32> {
        let mut inner = self.lock();
        if inner.container.is_some() || inner.deleted.is_some() {
            return Err(self.precondition("create", "the task was already created"));
        }
        let rootfs = self.bundle.join("rootfs");
        if !opts.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| Error::io(&self.id, format!("create {}", rootfs.display()), e))?;
            snapshotter::mount_all(&opts.rootfs, &rootfs).map_err(|source| Error::Rootfs {
                id: self.id.clone(),
                op: "mount",
                path: rootfs.display().to_string(),
                source,
            })?;
        }
        match self.create_container(&opts) {
            Ok(c) => {
                let pid = c.container.pid().map(|p| p.as_raw() as u32).unwrap_or(0);
                inner.container = Some(c.container);
                inner.pid = pid;
                inner.io = Some(c.io);
                inner.opts = opts;
                inner.attach = Some(c.attach);
                inner.console = c.console;
                Ok(pid)
            }
            Err(e) => {
                self.cleanup_failed_create(!opts.rootfs.is_empty());
                Err(e)
            }
        }
    }

    fn create_container(&self, opts: &CreateOptions) -> Result<Created> {
        let attach = Attach::new(&self.id);
        let (stdio, output) = stdio::setup(
            &self.id,
            &opts.stdout,
            opts.terminal,
            !opts.stdin.is_empty(),
            &attach,
        )?;
        let socket = if opts.terminal {
            Some(
                ConsoleSocket::bind(&self.bundle)
                    .map_err(|e| Error::io(&self.id, "listen on the console socket", e))?,
            )
        } else {
            None
        };
        {
            let _fork = self.reaper.fork_lock();
            let pid = helper::create(
                &self.id,
                &self.bundle,
                stdio,
                socket.as_ref().map(ConsoleSocket::path),
            )?;
            self.reaper.watch(pid);
        }
        // The helper and libcontainer are gone: only the container holds the pipes' write ends
        // now, so the copiers see EOF when the container's processes are gone.
        let state_dir = self.runtime_root().join(&self.id);
        let container =
            Container::load(state_dir).map_err(|e| Error::container(&self.id, "load state", e))?;
        let console = match socket {
            Some(socket) => {
                let master = socket
                    .receive_master()
                    .map_err(|e| Error::io(&self.id, "receive the pty master", e))?;
                let dup = |m: &File| {
                    m.try_clone()
                        .map_err(|e| Error::io(&self.id, "dup the pty master", e))
                };
                output.start_console(dup(&master)?)?;
                if !opts.stdin.is_empty() {
                    attach.set_stdin(Some(dup(&master)?));
                }
                Some(master)
            }
            None => None,
        };
        attach
            .listen(&self.bundle)
            .map_err(|e| Error::io(&self.id, "listen on the attach socket", e))?;
        Ok(Created {
            container,
            io: output.tracker(),
            attach,
            console,
        })
    }

    fn cleanup_failed_create(&self, unmount: bool) {
        let state_dir = self.runtime_root().join(&self.id);
        if state_dir.exists() {
            let _fork = self.reaper.fork_lock();
            match Container::load(state_dir.clone()) {
                Ok(mut c) => {
                    if let Err(e) = c.delete(true) {
                        crate::error!("container {}: cleanup after failed create: {e}", self.id);
                    }
                }
                Err(_) => {
                    let _ = std::fs::remove_dir_all(&state_dir);
                }
            }
        }
        if unmount {
            if let Err(e) = snapshotter::unmount(&self.bundle.join("rootfs")) {
                crate::error!(
                    "container {}: unmount rootfs after failed create: {e}",
                    self.id
                );
            }
        }
    }

    /// Starts the created container; returns the init pid.
    pub fn start(&self) -> Result<u32> {
        let mut inner = self.lock();
        let pid = inner.pid;
        if inner.started {
            return Err(self.precondition("start", "the task was already started"));
        }
        if self.reaper.exit().is_some() {
            return Err(self.precondition("start", "the init process already exited"));
        }
        let container = self.container_mut(&mut inner)?;
        {
            let _fork = self.reaper.fork_lock();
            container
                .start()
                .map_err(|e| Error::container(&self.id, "start", e))?;
        }
        inner.started = true;
        Ok(pid)
    }

    /// The task's current state.
    pub fn state(&self) -> Result<TaskState> {
        let inner = self.lock();
        if inner.container.is_none() {
            return Err(self.not_found("task"));
        }
        let exit = self.reaper.exit();
        let status = match (exit, inner.started) {
            (Some(_), _) => Status::Stopped,
            (None, true) => Status::Running,
            (None, false) => Status::Created,
        };
        Ok(TaskState {
            pid: inner.pid,
            status,
            exit,
            stdout: inner.opts.stdout.clone(),
            stderr: inner.opts.stderr.clone(),
            stdin: inner.opts.stdin.clone(),
        })
    }

    /// Blocks until the init exited and its output is in the log.
    pub fn wait(&self) -> Result<Exit> {
        let io = {
            let inner = self.lock();
            if let Some(d) = inner.deleted {
                if let Some(exit) = d.exit {
                    return Ok(exit);
                }
            }
            if inner.container.is_none() {
                return Err(self.not_found("task"));
            }
            inner.io.clone()
        };
        let Some(exit) = self.reaper.wait_exit(None) else {
            return Err(self.not_found("exit status"));
        };
        if let Some(io) = io {
            if !io.wait_drained(DRAIN_TIMEOUT) {
                crate::error!(
                    "container {}: output pipes still open {DRAIN_TIMEOUT:?} after exit",
                    self.id
                );
            }
        }
        Ok(exit)
    }

    /// Sends `signal` to the init, or to every process of the container when `all`.
    /// Signalling an exited container succeeds.
    pub fn kill(&self, signal: u32, all: bool) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| libcontainer::signal::Signal::try_from(s).ok())
            .ok_or_else(|| self.invalid(&format!("invalid signal {signal}")))?;
        let mut inner = self.lock();
        if inner.deleted.is_some() {
            return Err(self.not_found("task"));
        }
        if self.reaper.exit().is_some() && !all {
            return Ok(());
        }
        let container = self.container_mut(&mut inner)?;
        match container.kill(sig, all) {
            Ok(()) => Ok(()),
            Err(_) if self.reaper.exit().is_some() => Ok(()),
            Err(libcontainer::error::LibcontainerError::IncorrectStatus(_)) => Ok(()),
            Err(e) => Err(Error::container(&self.id, "kill", e)),
        }
    }

    /// Kills what is left, deletes the container (state, cgroup), unmounts the rootfs.
    /// Idempotent: a second delete reports the same result.
    pub fn delete(&self) -> Result<Deleted> {
        let mut inner = self.lock();
        if let Some(d) = inner.deleted {
            return Ok(d);
        }
        let pid = inner.pid;
        if let Some(mut container) = inner.container.take() {
            if self.reaper.exit().is_none() {
                if let Err(e) = container.kill(
                    libcontainer::signal::Signal::from(nix::sys::signal::Signal::SIGKILL),
                    true,
                ) {
                    crate::error!("container {}: kill before delete: {e}", self.id);
                }
                if self.reaper.wait_exit(Some(KILL_TIMEOUT)).is_none() {
                    crate::error!(
                        "container {}: init not reaped {KILL_TIMEOUT:?} after SIGKILL",
                        self.id
                    );
                }
            }
            let res = {
                let _fork = self.reaper.fork_lock();
                container.delete(true)
            };
            if let Err(e) = res {
                inner.container = Some(container);
                return Err(Error::container(&self.id, "delete", e));
            }
        }
        let rootfs = self.bundle.join("rootfs");
        if rootfs.exists() {
            snapshotter::unmount(&rootfs).map_err(|source| Error::Rootfs {
                id: self.id.clone(),
                op: "unmount",
                path: rootfs.display().to_string(),
                source,
            })?;
        }
        if let Some(attach) = inner.attach.take() {
            attach.stop();
        }
        inner.console = None;
        let d = Deleted {
            pid,
            exit: self.reaper.exit(),
        };
        inner.deleted = Some(d);
        Ok(d)
    }

    /// Sets the window size of the init's pty (ResizePty); FailedPrecondition without a tty.
    pub fn resize_pty(&self, width: u32, height: u32) -> Result<()> {
        let inner = self.lock();
        if inner.container.is_none() {
            return Err(self.not_found("task"));
        }
        let Some(master) = inner.console.as_ref() else {
            return Err(self.precondition("resize pty", "the container has no tty"));
        };
        console::resize(master, width, height).map_err(|e| Error::io(&self.id, "resize the pty", e))
    }

    /// Closes the container's stdin for good (CloseIO); a no-op with a tty.
    pub fn close_stdin(&self) -> Result<()> {
        let inner = self.lock();
        if inner.container.is_none() {
            return Err(self.not_found("task"));
        }
        if !inner.opts.terminal {
            if let Some(attach) = &inner.attach {
                attach.close_stdin();
            }
        }
        Ok(())
    }

    /// True while a container exists that was not deleted.
    pub fn is_live(&self) -> bool {
        let inner = self.lock();
        inner.container.is_some() && inner.deleted.is_none()
    }

    /// The init pid (0 before create).
    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    /// Pids of every process in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let manager = self.cgroup_manager("list pids")?;
        let pids = manager.get_all_pids().map_err(|e| Error::Cgroup {
            id: self.id.clone(),
            op: "list pids",
            msg: e.to_string(),
        })?;
        Ok(pids.into_iter().map(|p| p.as_raw() as u32).collect())
    }

    /// Applies OCI `LinuxResources` given as JSON to the container's cgroup.
    pub fn update(&self, resources_json: &[u8]) -> Result<()> {
        let resources: LinuxResources = serde_json::from_slice(resources_json).map_err(|e| {
            self.invalid(&format!("resources are not OCI LinuxResources JSON: {e}"))
        })?;
        let manager = self.cgroup_manager("update")?;
        let opts = ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        manager.apply(&opts).map_err(|e| Error::Cgroup {
            id: self.id.clone(),
            op: "update",
            msg: e.to_string(),
        })
    }

    fn cgroup_manager(&self, op: &'static str) -> Result<libcgroups::common::AnyCgroupManager> {
        let cgroup_path = {
            let inner = self.lock();
            let Some(container) = inner.container.as_ref() else {
                return Err(self.not_found("task"));
            };
            container
                .spec()
                .map_err(|e| Error::container(&self.id, op, e))?
                .cgroup_path
        };
        libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path,
            systemd_cgroup: false,
            container_name: self.id.clone(),
        })
        .map_err(|e| Error::Cgroup {
            id: self.id.clone(),
            op,
            msg: e.to_string(),
        })
    }

    fn runtime_root(&self) -> PathBuf {
        self.bundle.join("runtime")
    }

    fn container_mut<'a>(&self, inner: &'a mut Inner) -> Result<&'a mut Container> {
        inner
            .container
            .as_mut()
            .ok_or_else(|| self.not_found("task"))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn invalid(&self, msg: &str) -> Error {
        Error::InvalidArgument {
            id: self.id.clone(),
            msg: msg.to_string(),
        }
    }

    fn not_found(&self, what: &str) -> Error {
        Error::NotFound {
            id: self.id.clone(),
            what: what.to_string(),
        }
    }

    fn precondition(&self, op: &'static str, why: &str) -> Error {
        Error::FailedPrecondition {
            id: self.id.clone(),
            op,
            why: why.to_string(),
        }
    }
}
