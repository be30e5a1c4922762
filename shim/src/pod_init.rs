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
