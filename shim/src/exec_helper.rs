//! Exec processes are built in a short-lived helper process (`berth-shim exec-helper`), like
//! containers (see `helper.rs`): libcontainer forks, and its tenant builder joins the running
//! container's namespaces and cgroup. The exec process (a grandchild of the helper) is
//! reparented to the daemon, the child subreaper.
//!
//! The helper gets the OCI `Process` to run as a JSON file named by `BERTH_EXEC_PROCESS`; fds
//! 0/1/2 are the exec's stdio, fd 3 the result pipe (`ok <pid>` / `error exec <message>`).
//! With a tty, `BERTH_CONSOLE_SOCKET` names the daemon's console socket (see `console.rs`).
//!
//! Seccomp: libcontainer's tenant builder does not carry the container's seccomp profile over
//! to the exec process, so [`ExecExecutor`] installs it itself right before `execve`. Without
//! `CAP_SYS_ADMIN`, installing a filter requires no_new_privs; when the container's process
//! did not set it, the exec process gets it set (stricter than the init, never weaker).

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use oci_spec::runtime::{LinuxSeccomp, Spec};

use crate::console::CONSOLE_ENV;
use crate::executor::BerthExecutor;
use crate::helper::RESULT_FD;

/// Name prefixes of the notify sockets and console-socket links libcontainer's tenant builder
/// creates in the container's state dir.
const TENANT_PREFIXES: [&str; 2] = ["tenant-notify-", "tenant-tty-"];
/// Environment variable naming the exec's process JSON file.
pub const PROCESS_ENV: &str = "BERTH_EXEC_PROCESS";

/// Helper side (`berth-shim exec-helper`): starts the exec process, reports on fd 3.
/// Returns false on failure. Prints nothing: stdout/stderr are the exec's.
pub fn run(id: &str, bundle: &Path) -> bool {
    // SAFETY: the daemon set up fd 3 as this process's result pipe; nothing else owns it.
    let mut result = unsafe { File::from_raw_fd(RESULT_FD) };
    // Not for the exec process: closed when it executes its program.
    let _ = fcntl(RESULT_FD, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    let outcome = match std::env::var_os(PROCESS_ENV) {
        Some(path) => build(id, bundle, &PathBuf::from(path)),
        None => Err(format!("{PROCESS_ENV} is not set")),
    };
    let line = match &outcome {
        Ok(pid) => format!("ok {pid}\n"),
        Err(msg) => format!("error exec {}\n", msg.replace('\n', " ")),
    };
    let _ = result.write_all(line.as_bytes());
    outcome.is_ok()
}

fn build(id: &str, bundle: &Path, process: &Path) -> Result<i32, String> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| format!("load {}: {e}", path.display()))?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let root = bundle.join("runtime");
    let res = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .validate_id()
        .and_then(|b| b.with_root_path(&root))
        .map_err(|e| e.to_string())?
        .with_executor(ExecExecutor {
            inner: BerthExecutor::default(),
            seccomp,
        })
        .with_console_socket(std::env::var_os(CONSOLE_ENV).map(PathBuf::from))
        .as_tenant()
        .with_process(Some(process))
        .with_detach(true)
        .build()
        .map_err(|e| e.to_string());
    remove_notify_sockets(&root.join(id));
    Ok(res?.as_raw())
}

/// libcontainer leaves the tenant's notify socket (`tenant-notify-<random>.sock`) and, with a
/// tty, its console-socket link (`tenant-tty-<random>`) in the container's state dir; one per
/// exec would pile up. Helpers run one at a time (under the
/// daemon's fork lock) and the socket is done with once `build` returned, so every such file
/// can go.
fn remove_notify_sockets(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if TENANT_PREFIXES.iter().any(|p| name.starts_with(p)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// [`BerthExecutor`] that first installs the container's seccomp profile.
#[derive(Clone)]
pub struct ExecExecutor {
    inner: BerthExecutor,
    seccomp: Option<LinuxSeccomp>,
}

impl Executor for ExecExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(seccomp) = &self.seccomp {
            install_seccomp(seccomp)?;
        }
        self.inner.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        self.inner.validate(spec)
    }

    fn setup_envs(
        &self,
        envs: std::collections::HashMap<String, String>,
    ) -> Result<(), ExecutorSetEnvsError> {
        self.inner.setup_envs(envs)
    }
}

/// Installs `seccomp` in the calling process; sets no_new_privs first when the filter cannot be
/// installed without it. Fails closed.
fn install_seccomp(seccomp: &LinuxSeccomp) -> Result<(), ExecutorError> {
    let first = match libcontainer::seccomp::initialize_seccomp(seccomp) {
        Ok(None) => return Ok(()),
        Ok(Some(_)) => return Err(notify_unsupported()),
        Err(e) => e,
    };
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) only sets a flag on the calling process.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(ExecutorError::Other(format!(
            "install seccomp profile: {first}; set no_new_privs: {}",
            std::io::Error::last_os_error()
        )));
    }
    match libcontainer::seccomp::initialize_seccomp(seccomp) {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(notify_unsupported()),
        Err(e) => Err(ExecutorError::Other(format!(
            "install seccomp profile: {e}"
        ))),
    }
}

fn notify_unsupported() -> ExecutorError {
    ExecutorError::Other("seccomp notify profiles are not supported for exec".to_string())
}
