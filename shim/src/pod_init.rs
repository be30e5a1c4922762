//! `berth-shim pod-init --id <SANDBOX> --bundle <SANDBOX DIR>`: the init of a pod's shared PID
//! namespace (CRI `NamespaceMode::POD`, Kubernetes `shareProcessNamespace`).
//!
//! A PID namespace lives only as long as its pid 1, so unlike the pod's net/ipc/uts namespaces it
//! cannot be kept by a bind mount alone. This command unshares a new PID namespace and forks: the
//! child is pid 1 there and stays; the parent prints the child's host pid on stdout and exits, so
//! the child is reparented away from berthd and survives its restarts.
//!
//! The child behaves like Kubernetes' `pause`: its own session, stdio on /dev/null, exits on
//! SIGTERM/SIGINT, and reaps every zombie (orphans of all the pod's containers end up with it).
//! berthd removes it with SIGKILL, which also kills whatever still runs in the namespace. The
//! sandbox dir is on its command line so that leaked holders are easy to find.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setsid, ForkResult, Pid};

/// Runs `pod-init`: returns once the namespace's init is running (its host pid is on stdout).
pub fn run() -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare a PID namespace: {e}"))?;
    // SAFETY: `pod-init` is single-threaded (nothing but main has run), so the child may do
    // anything the parent could; it never returns into the caller's code (see `init_main`).
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            println!("{child}");
            Ok(())
        }
        Ok(ForkResult::Child) => {
            let code = init_main();
            std::process::exit(code)
        }
        Err(e) => Err(format!("fork the PID namespace init: {e}")),
    }
}

/// The signals the init waits for.
fn waited_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        set.add(sig);
    }
    set
}

extern "C" fn ignore(_: libc::c_int) {}

/// pid 1 of the pod: detaches, then reaps until told to stop. Returns the exit code.
fn init_main() -> i32 {
    let _ = setsid();
    let _ = std::env::set_current_dir("/");
    detach_stdio();
    // pid 1 of a namespace gets no signal whose handler is SIG_DFL (except SIGKILL/SIGSTOP from
    // an ancestor namespace), so each waited signal gets a handler; they stay blocked and are
    // taken with sigwait, so the handler never actually runs.
    let set = waited_signals();
    let action = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in set.iter() {
        // SAFETY: `ignore` does nothing, so it is async-signal-safe.
        if unsafe { sigaction(sig, &action) }.is_err() {
            return 1;
        }
    }
    if nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        return 1;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap_all(),
            Ok(Signal::SIGTERM | Signal::SIGINT) => return 0,
            Ok(_) | Err(_) => {}
        }
    }
}

/// Reaps every exited child without blocking.
fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Points stdin/stdout/stderr at /dev/null: stdout is berthd's pipe, which must see EOF once the
/// parent has printed the pid.
fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        // Without /dev/null, closing is the next best thing: berthd still sees EOF.
        for fd in 0..=2 {
            let _ = nix::unistd::close(fd);
        }
        return;
    };
    for fd in 0..=2 {
        let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly by design.
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn stat_of(pid: i32) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
    }

    fn gone(pid: i32) -> bool {
        stat_of(pid).is_none_or(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z') || r.starts_with('X'))
        })
    }

    fn wait_gone(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if gone(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Runs `cmd` and returns its stdout. The exit status is not looked at: the reaper test's
    /// thread (same test process) may reap any child first.
    fn stdout_of(mut cmd: Command) -> String {
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        let _ = child.wait();
        out
    }

    struct KillOnDrop(i32);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if !gone(self.0) {
                let _ = nix::sys::signal::kill(Pid::from_raw(self.0), Signal::SIGKILL);
            }
        }
    }

    #[test]
    fn init_is_pid_one_reaps_and_exits_on_sigterm() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // The berth-shim binary built next to this test's deps dir (unit tests get no
        // CARGO_BIN_EXE_*); `cargo test` of the bin builds it only with `cargo build` first.
        let exe = std::env::current_exe().unwrap();
        let Some(shim) = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("berth-shim"))
            .filter(|p| p.is_file())
        else {
            eprintln!("skipping: no berth-shim binary next to {}", exe.display());
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(shim);
        cmd.args(["pod-init", "--id", "p1", "--bundle"])
            .arg(dir.path());
        let pid: i32 = stdout_of(cmd).trim().parse().unwrap();
        let _guard = KillOnDrop(pid);
        let host_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
        assert_ne!(ns, host_ns, "the init has a PID namespace of its own");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(String::from_utf8_lossy(&cmdline).contains("pod-init"));

        // An orphan in the namespace is reaped by the init, not left a zombie.
        let mut orphan = Command::new("nsenter");
        orphan.arg(format!("--pid=/proc/{pid}/ns/pid")).args([
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "sleep 0.2 & echo $!",
        ]);
        assert!(!stdout_of(orphan).trim().is_empty());
        std::thread::sleep(Duration::from_millis(600));
        let zombies: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|p| stat_of(p).map(|s| (p, s)))
            .filter(|(_, s)| {
                s.rsplit_once(") ").is_some_and(|(_, r)| {
                    r.starts_with('Z') && r.split(' ').nth(1) == Some(&pid.to_string())
                })
            })
            .map(|(_, s)| s)
            .collect();
        assert!(zombies.is_empty(), "unreaped children: {zombies:?}");

        nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
        assert!(wait_gone(pid), "pod-init survived SIGTERM");
    }
}
