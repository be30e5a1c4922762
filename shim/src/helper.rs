//! Container creation in a short-lived helper process (`berth-shim create-helper`).
//!
//! libcontainer's create path is large: running it inside the long-lived daemon would leave a
//! few MiB of its code and data resident for the whole life of the container. The daemon
//! instead re-executes itself as a helper that resolves the user, builds the container and
//! exits. The container init (a grandchild of the helper) is reparented to the daemon, which
//! is the child subreaper. libcontainer's own `waitpid` of its intermediate process happens in
//! the helper, so it can never race with the daemon's reaper; the daemon waits for the helper
//! itself with the fork lock held (see `reaper.rs`).
//!
//! Right after libcontainer's `build()` the helper applies the mounts' propagation options in
//! the container's mount namespace (libcontainer parses and drops them, see `propagation.rs`).
//!
//! Helper file descriptors: 0/1/2 are the container's stdin/stdout/stderr (the init inherits
//! them), fd 3 the result pipe. The helper writes one line there, `ok <pid>` or
//! `error <kind> <message>` (kind `bundle` or `create`). The daemon reads it once the helper
//! has exited, without waiting for EOF: the init keeps a copy of fd 3 until it executes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use oci_spec::runtime::Spec;

use crate::console::CONSOLE_ENV;
use crate::error::{Error, Result};
use crate::executor::BerthExecutor;
use crate::propagation;
use crate::stdio::ContainerStdio;
use crate::user;

/// Annotation carrying an image/CRI user given by name, resolved against the image.
pub const USER_ANNOTATION: &str = "io.berth.user";
/// The helper's result pipe.
pub const RESULT_FD: i32 = 3;

/// Daemon side: creates the container through a helper process; returns the init pid. With
/// `console` (a tty) the init sends its pty master to that socket.
/// Call with the reaper's fork lock held; register the pid before releasing it.
pub fn create(
    id: &str,
    bundle: &Path,
    stdio: ContainerStdio,
    console: Option<&Path>,
) -> Result<i32> {
    let env: Vec<(&str, &std::ffi::OsStr)> = console
        .iter()
        .map(|p| (CONSOLE_ENV, p.as_os_str()))
        .collect();
    spawn(id, bundle, "create-helper", &env, stdio)
}

/// Daemon side of any helper (`create-helper`, `exec-helper`): runs `berth-shim <subcommand>`
/// with `env` added and `stdio` as its 0/1/2, waits for it and returns the pid it reported.
/// Call with the reaper's fork lock held; register the pid before releasing it.
pub fn spawn(
    id: &str,
    bundle: &Path,
    subcommand: &str,
    env: &[(&str, &std::ffi::OsStr)],
    stdio: ContainerStdio,
) -> Result<i32> {
    let (result_r, result_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| Error::io(id, "create result pipe", e.into()))?;
    let exe = std::env::current_exe().map_err(|e| Error::io(id, "locate own executable", e))?;
    let w = result_w.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg(subcommand)
        .envs(env.iter().copied())
        .arg("--id")
        .arg(id)
        .arg("--bundle")
        .arg(bundle)
        .current_dir(bundle)
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr));
    // SAFETY: the closure only calls dup2(2)/fcntl(2), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if w == RESULT_FD {
                fcntl(w, FcntlArg::F_SETFD(FdFlag::empty()))?;
            } else {
                nix::unistd::dup2(w, RESULT_FD)?;
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // Drop our copies of the container's pipe ends (held by `cmd`) and of the result pipe.
    drop(cmd);
    drop(result_w);
    let mut child = spawned.map_err(|e| Error::io(id, format!("spawn {subcommand}"), e))?;
    let status = child
        .wait()
        .map_err(|e| Error::io(id, format!("wait for {subcommand}"), e))?;
    let line = read_available(result_r);
    match parse_result(&line) {
        Some(Ok(pid)) if status.success() => Ok(pid),
        Some(Err((kind, msg))) => Err(match kind {
            "bundle" => Error::Bundle {
                id: id.to_string(),
                msg: msg.to_string(),
            },
            _ => Error::Create {
                id: id.to_string(),
                msg: msg.to_string(),
            },
        }),
        _ => Err(Error::Create {
            id: id.to_string(),
            msg: format!("{subcommand} failed ({status}) with result {line:?}"),
        }),
    }
}

/// Reads what is in the pipe now (the writer has exited; others may still hold it open).
fn read_available(fd: OwnedFd) -> String {
    let mut file = File::from(fd);
    if fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
        if buf.contains(&b'\n') || buf.len() > 64 * 1024 {
            break;
        }
    }
    String::from_utf8_lossy(&buf).trim_end().to_string()
}

/// Parses `ok <pid>` / `error <kind> <message>`.
fn parse_result(line: &str) -> Option<std::result::Result<i32, (&str, &str)>> {
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid.trim().parse().ok().map(Ok);
    }
    let rest = line.strip_prefix("error ")?;
    let (kind, msg) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Err((kind, msg)))
}

/// Helper side (`berth-shim create-helper`): resolves the user, builds the container, reports
/// on fd 3. Returns false on failure. Prints nothing: stdout/stderr are the container's.
pub fn run(id: &str, bundle: &Path) -> bool {
    // SAFETY: the daemon set up fd 3 as this process's result pipe; nothing else owns it.
    let mut result = unsafe { File::from_raw_fd(RESULT_FD) };
    // Not for the container: closed when the init executes its program.
    let _ = fcntl(RESULT_FD, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    let console = std::env::var_os(CONSOLE_ENV).map(PathBuf::from);
    let outcome = prepare_spec(bundle, console.is_some())
        .map_err(|msg| ("bundle", msg))
        .and_then(|()| build(id, bundle, console).map_err(|msg| ("create", msg)));
    let line = match &outcome {
        Ok(pid) => format!("ok {pid}\n"),
        Err((kind, msg)) => format!("error {kind} {}\n", msg.replace('\n', " ")),
    };
    let _ = result.write_all(line.as_bytes());
    outcome.is_ok()
}

fn build(id: &str, bundle: &Path, console: Option<PathBuf>) -> std::result::Result<i32, String> {
    let root = bundle.join("runtime");
    std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .validate_id()
        .and_then(|b| b.with_root_path(&root))
        .map_err(|e| e.to_string())?
        .with_executor(BerthExecutor::default())
        .with_console_socket(console)
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| e.to_string())?;
    let pid = container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| "container has no init pid".to_string())?;
    // libcontainer drops the mounts' propagation options; apply them before the init starts.
    // On failure the daemon deletes the created container (see `ContainerTask::create`).
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| format!("load {}: {e}", path.display()))?;
    propagation::apply(pid, &propagation::plan(&spec))?;
    Ok(pid)
}

/// Makes `process.terminal` in config.json match `terminal` (libcontainer wants a console
/// socket exactly when it is set), resolves `io.berth.user` against the image and rewrites
/// config.json when anything changed.
fn prepare_spec(bundle: &Path, terminal: bool) -> std::result::Result<(), String> {
    let path = bundle.join("config.json");
    let mut spec = Spec::load(&path).map_err(|e| format!("load {}: {e}", path.display()))?;
    let mut changed = false;
    if let Some(process) = spec.process_mut().as_mut() {
        if process.terminal().unwrap_or(false) != terminal {
            process.set_terminal(Some(terminal));
            changed = true;
        }
    }
    if apply_user_annotation(bundle, &mut spec)? {
        changed = true;
    }
    if changed {
        spec.save(&path)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Resolves `io.berth.user` against the image into `spec`; false when there is none.
fn apply_user_annotation(bundle: &Path, spec: &mut Spec) -> std::result::Result<bool, String> {
    let Some(name) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(USER_ANNOTATION))
        .cloned()
    else {
        return Ok(false);
    };
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "rootfs".into());
    let rootfs = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    let resolved = user::resolve(&rootfs, &name)?;
    let Some(process) = spec.process_mut().as_mut() else {
        return Err("config.json has no process".to_string());
    };
    let u = process.user_mut();
    u.set_uid(resolved.uid);
    u.set_gid(resolved.gid);
    let mut gids = resolved.additional_gids;
    for g in u.additional_gids().iter().flatten() {
        if !gids.contains(g) {
            gids.push(*g);
        }
    }
    u.set_additional_gids(Some(gids));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_results() {
        assert_eq!(parse_result("ok 42"), Some(Ok(42)));
        assert_eq!(
            parse_result("error bundle user x not found"),
            Some(Err(("bundle", "user x not found")))
        );
        assert_eq!(parse_result("error create"), Some(Err(("create", ""))));
        assert_eq!(parse_result(""), None);
        assert_eq!(parse_result("ok x"), None);
    }
}
