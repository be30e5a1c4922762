//! Exec processes of the container: the task API calls that carry an `exec_id`. Each exec is an
//! OCI `Process` run in the running container through the exec helper (see `exec_helper.rs`),
//! reaped by the shim's reaper, which keeps its exit status until the exec is deleted.
//!
//! Stdio (see `exec_io.rs`): `stdout`/`stderr` are paths (files or FIFOs) opened for writing
//! when the exec starts; a FIFO must already have a reader (berthd opens it first). `stdin` is
//! a FIFO berthd already holds open for writing. Empty paths mean `/dev/null`. With `terminal`
//! the process gets a pty, resizable with [`Execs::resize`].
//!
//! Locking: `procs` is never held across a helper run or a wait; the reaper's fork lock is taken
//! after it, never before (same order as `container.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use oci_spec::runtime::Process;

use crate::console::CONSOLE_ENV;
use crate::container::{Deleted, Status, TaskState};
use crate::error::{Error, Result};
use crate::exec_helper;
use crate::exec_io::{self, ExecIo};
use crate::helper;
use crate::reaper::{Exit, Reaper};

/// How long `delete` waits for a still-running exec process to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most exec processes one shim keeps at a time.
const MAX_EXECS: usize = 1024;
/// Longest exec id.
const MAX_EXEC_ID: usize = 128;

/// What an `exec` request carries.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The exec id, unique within the container.
    pub exec_id: String,
    /// TTY requested: the process gets a pty (`process.terminal` is made to match).
    pub terminal: bool,
    /// Stdin FIFO path (berthd holds it open for writing); empty: `/dev/null`.
    pub stdin: String,
    /// Stdout path (file or FIFO); empty: `/dev/null`.
    pub stdout: String,
    /// Stderr path (file or FIFO); empty: `/dev/null`.
    pub stderr: String,
    /// The OCI `Process` as JSON.
    pub process_json: Vec<u8>,
}

struct ExecProc {
    opts: ExecOptions,
    pid: Option<i32>,
    /// A `start` is running its helper.
    starting: bool,
    /// Pty and stdin pumps once started.
    io: Option<ExecIo>,
}

/// The exec processes of one container.
pub struct Execs {
    id: String,
    bundle: PathBuf,
    reaper: Arc<Reaper>,
    procs: Mutex<HashMap<String, ExecProc>>,
}

impl Execs {
    /// No execs yet for container `id` in `bundle`, reaped by `reaper`.
    pub fn new(id: String, bundle: PathBuf, reaper: Arc<Reaper>) -> Self {
        Execs {
            id,
            bundle,
            reaper,
            procs: Mutex::new(HashMap::new()),
        }
    }

    /// Registers an exec (not started yet).
    pub fn add(&self, mut opts: ExecOptions) -> Result<()> {
        validate_exec_id(&opts.exec_id).map_err(|m| self.invalid(&m))?;
        for path in [&opts.stdin, &opts.stdout, &opts.stderr] {
            if !path.is_empty() && !Path::new(path).is_absolute() {
                return Err(self.invalid(&format!("exec stdio path {path:?} is not absolute")));
            }
        }
        let process: Process = serde_json::from_slice(&opts.process_json)
            .map_err(|e| self.invalid(&format!("exec spec is not an OCI Process: {e}")))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(self.invalid("exec process has no args"));
        }
        if process.terminal().unwrap_or(false) != opts.terminal {
            // libcontainer wants a console socket exactly when `process.terminal` is set.
            let mut v: serde_json::Value = serde_json::from_slice(&opts.process_json)
                .map_err(|e| self.invalid(&format!("exec spec is not JSON: {e}")))?;
            v["terminal"] = serde_json::Value::Bool(opts.terminal);
            opts.process_json =
                serde_json::to_vec(&v).map_err(|e| self.invalid(&format!("exec spec: {e}")))?;
        }
        let mut procs = self.lock();
        if procs.contains_key(&opts.exec_id) {
            return Err(self.invalid(&format!("exec process {} already exists", opts.exec_id)));
        }
        if procs.len() >= MAX_EXECS {
            return Err(self.precondition("exec", "too many exec processes"));
        }
        procs.insert(
            opts.exec_id.clone(),
            ExecProc {
                opts,
                pid: None,
                starting: false,
                io: None,
            },
        );
        Ok(())
    }

    /// Starts exec `exec_id` in the container, whose current status is `container`.
    /// Returns its pid.
    pub fn start(&self, exec_id: &str, container: Status) -> Result<u32> {
        if container != Status::Running {
            return Err(self.precondition("start exec", "the container is not running"));
        }
        let opts = {
            let mut procs = self.lock();
            let p = procs
                .get_mut(exec_id)
                .ok_or_else(|| self.not_found(exec_id))?;
            if p.pid.is_some() || p.starting {
                return Err(self.precondition("start exec", "it was already started"));
            }
            p.starting = true;
            p.opts.clone()
        };
        let process_file = self.process_file(exec_id);
        let res = std::fs::write(&process_file, &opts.process_json)
            .map_err(|e| Error::io(&self.id, format!("write {}", process_file.display()), e))
            .and_then(|()| self.spawn(&opts, &process_file));
        let _ = std::fs::remove_file(&process_file);
        let mut procs = self.lock();
        let (pid, io) = match res {
            Ok(v) => v,
            Err(e) => {
                if let Some(p) = procs.get_mut(exec_id) {
                    p.starting = false;
                }
                return Err(e);
            }
        };
        match procs.get_mut(exec_id) {
            Some(p) => {
                p.pid = Some(pid);
                p.starting = false;
                p.io = Some(io);
            }
            // Deleted meanwhile: do not leave it running untracked.
            None => {
                io.stop();
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
                self.reaper.forget_exec(pid);
                return Err(self.not_found(exec_id));
            }
        }
        Ok(pid as u32)
    }

    fn spawn(&self, opts: &ExecOptions, process_file: &Path) -> Result<(i32, ExecIo)> {
        let mut prepared = exec_io::prepare(
            &self.id,
            &self.bundle,
            opts.terminal,
            &opts.stdin,
            &opts.stdout,
            &opts.stderr,
        )?;
        let pid =
            {
                let _fork = self.reaper.fork_lock();
                let stdio = prepared.stdio.take().ok_or_else(|| {
                    Error::io(
                        &self.id,
                        "exec stdio",
                        std::io::Error::other("already used"),
                    )
                })?;
                let mut env = vec![(exec_helper::PROCESS_ENV, process_file.as_os_str())];
                if let Some(console) = prepared.console_path() {
                    env.push((CONSOLE_ENV, console.as_os_str()));
                }
                let pid = helper::spawn(&self.id, &self.bundle, "exec-helper", &env, stdio)
                    .map_err(|e| match e {
                        Error::Create { id, msg } => Error::Exec {
                            id,
                            exec_id: opts.exec_id.clone(),
                            msg,
                        },
                        other => other,
                    })?;
                self.reaper.watch_exec(pid);
                pid
            };
        match prepared.finish(&self.id, &opts.exec_id) {
            Ok(io) => Ok((pid, io)),
            Err(e) => {
                // Never leave a process without its terminal running untracked. With the fork
                // lock held the pid cannot be reaped (and reused) between check and kill.
                {
                    let _fork = self.reaper.fork_lock();
                    if self.reaper.exec_exit(pid).is_none() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::SIGKILL,
                        );
                    }
                }
                self.reaper.forget_exec(pid);
                Err(e)
            }
        }
    }

    /// Resizes the pty of exec `exec_id`.
    pub fn resize(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let procs = self.lock();
        let p = procs.get(exec_id).ok_or_else(|| self.not_found(exec_id))?;
        match p.io.as_ref().and_then(|io| io.resize(width, height)) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Error::io(&self.id, format!("resize exec {exec_id} pty"), e)),
            None if p.pid.is_none() => Err(self.precondition("resize pty", "exec not started")),
            None => Err(self.precondition("resize pty", "the exec has no tty")),
        }
    }

    /// Stops feeding stdin to exec `exec_id` (CloseIO).
    pub fn close_stdin(&self, exec_id: &str) -> Result<()> {
        let procs = self.lock();
        let p = procs.get(exec_id).ok_or_else(|| self.not_found(exec_id))?;
        if let Some(io) = &p.io {
            io.close_stdin();
        }
        Ok(())
    }

    /// Blocks until exec `exec_id` exited; returns its exit.
    pub fn wait(&self, exec_id: &str) -> Result<Exit> {
        let pid = self.started_pid(exec_id, "wait for exec")?;
        self.reaper
            .wait_exec_exit(pid, None)
            .ok_or_else(|| self.not_found(exec_id))
    }

    /// Sends `signal` to exec `exec_id`; signalling an exited exec succeeds.
    pub fn kill(&self, exec_id: &str, signal: u32) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
            .ok_or_else(|| self.invalid(&format!("invalid signal {signal}")))?;
        let pid = self.started_pid(exec_id, "kill exec")?;
        // With the fork lock held the reaper cannot reap (and the kernel cannot reuse) the pid
        // between the check and the kill.
        let _fork = self.reaper.fork_lock();
        if self.reaper.exec_exit(pid).is_some() {
            return Ok(());
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(|e| Error::io(&self.id, format!("kill exec {exec_id}"), e.into()))
    }

    /// Forgets exec `exec_id`, SIGKILLing it first if it still runs. Returns its pid and exit.
    pub fn delete(&self, exec_id: &str) -> Result<Deleted> {
        let pid = {
            let procs = self.lock();
            procs
                .get(exec_id)
                .ok_or_else(|| self.not_found(exec_id))?
                .pid
        };
        let mut exit = None;
        if let Some(pid) = pid {
            exit = self.reaper.exec_exit(pid);
            if exit.is_none() {
                if let Err(e) = self.kill(exec_id, nix::sys::signal::SIGKILL as u32) {
                    crate::error!("container {}: kill exec {exec_id}: {e}", self.id);
                }
                exit = self.reaper.wait_exec_exit(pid, Some(KILL_TIMEOUT));
                if exit.is_none() {
                    crate::error!(
                        "container {}: exec {exec_id} not reaped {KILL_TIMEOUT:?} after SIGKILL",
                        self.id
                    );
                }
            }
            self.reaper.forget_exec(pid);
        }
        if let Some(p) = self.lock().remove(exec_id) {
            if let Some(io) = p.io {
                io.stop();
            }
        }
        Ok(Deleted {
            pid: pid.unwrap_or(0) as u32,
            exit,
        })
    }

    /// The state of exec `exec_id`.
    pub fn state(&self, exec_id: &str) -> Result<TaskState> {
        let procs = self.lock();
        let p = procs.get(exec_id).ok_or_else(|| self.not_found(exec_id))?;
        let exit = p.pid.and_then(|pid| self.reaper.exec_exit(pid));
        let status = match (p.pid, exit) {
            (None, _) => Status::Created,
            (Some(_), None) => Status::Running,
            (Some(_), Some(_)) => Status::Stopped,
        };
        Ok(TaskState {
            pid: p.pid.unwrap_or(0) as u32,
            status,
            exit,
            stdin: p.opts.stdin.clone(),
            stdout: p.opts.stdout.clone(),
            stderr: p.opts.stderr.clone(),
        })
    }

    fn started_pid(&self, exec_id: &str, op: &'static str) -> Result<i32> {
        let procs = self.lock();
        procs
            .get(exec_id)
            .ok_or_else(|| self.not_found(exec_id))?
            .pid
            .ok_or_else(|| self.precondition(op, "it was not started"))
    }

    fn process_file(&self, exec_id: &str) -> PathBuf {
        self.bundle
            .join("runtime")
            .join(format!("exec-{exec_id}.json"))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ExecProc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn invalid(&self, msg: &str) -> Error {
        Error::InvalidArgument {
            id: self.id.clone(),
            msg: msg.to_string(),
        }
    }

    fn not_found(&self, exec_id: &str) -> Error {
        Error::NotFound {
            id: self.id.clone(),
            what: format!("exec process {exec_id}"),
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

/// Exec ids name files: 1 to 128 of `[A-Za-z0-9_.-]`, not starting with `.`.
fn validate_exec_id(exec_id: &str) -> std::result::Result<(), String> {
    let ok = !exec_id.is_empty()
        && exec_id.len() <= MAX_EXEC_ID
        && !exec_id.starts_with('.')
        && exec_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid exec id {exec_id:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execs() -> anyhow::Result<Execs> {
        Ok(Execs::new(
            "c1".into(),
            PathBuf::from("/nonexistent"),
            // No reaper thread: these tests start no process, and a second thread reaping with
            // waitpid(-1) would steal the children of the reaper's own tests.
            Arc::new(Reaper::default()),
        ))
    }

    fn opts(exec_id: &str, json: &str) -> ExecOptions {
        ExecOptions {
            exec_id: exec_id.into(),
            process_json: json.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    const PROC: &str = r#"{"args":["echo","hi"],"cwd":"/","user":{"uid":0,"gid":0}}"#;

    #[test]
    fn validates_exec_ids() {
        assert!(validate_exec_id("abc-1_2.x").is_ok());
        for bad in ["", ".x", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(validate_exec_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn add_validates_and_tracks() -> anyhow::Result<()> {
        let e = execs()?;
        e.add(opts("e1", PROC))?;
        assert!(matches!(
            e.add(opts("e1", PROC)),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            e.add(opts("e2", "{}")),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            e.add(opts(
                "e3",
                r#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#
            )),
            Err(Error::InvalidArgument { .. })
        ));
        let mut tty = opts("e4", PROC);
        tty.terminal = true;
        e.add(tty)?;
        let json = e.lock().get("e4").map(|p| p.opts.process_json.clone());
        let v: serde_json::Value = serde_json::from_slice(&json.unwrap_or_default())?;
        assert_eq!(v["terminal"], serde_json::Value::Bool(true));
        assert!(matches!(
            e.resize("e4", 80, 24),
            Err(Error::FailedPrecondition { .. })
        ));
        let mut rel = opts("e5", PROC);
        rel.stdin = "relative/fifo".into();
        assert!(matches!(e.add(rel), Err(Error::InvalidArgument { .. })));
        let st = e.state("e1")?;
        assert_eq!((st.status, st.pid), (Status::Created, 0));
        assert!(matches!(
            e.wait("e1"),
            Err(Error::FailedPrecondition { .. })
        ));
        assert!(matches!(
            e.start("e1", Status::Stopped),
            Err(Error::FailedPrecondition { .. })
        ));
        assert!(matches!(e.state("nope"), Err(Error::NotFound { .. })));
        assert_eq!(e.delete("e1")?.pid, 0);
        assert!(matches!(e.state("e1"), Err(Error::NotFound { .. })));
        Ok(())
    }
}
