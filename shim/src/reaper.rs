//! Child reaping and exit tracking.
//!
//! The shim is a child subreaper (`PR_SET_CHILD_SUBREAPER`): the container init is a
//! great-grandchild (daemon → create helper → libcontainer's intermediate process → init, see
//! `helper.rs`); when the helper and the intermediate exit, the init is reparented to the
//! shim, and so is every orphan from inside the container. Someone must `waitpid` them all.
//!
//! The pitfall: code in the daemon waits for specific children of its own (the create helper;
//! libcontainer hooks run by start and delete). A reaper doing `waitpid(-1)` at the same moment
//! could steal that status. (libcontainer's `waitpid` of its intermediate process happens in
//! the helper, so it is out of reach anyway.) The design that rules this out:
//!
//! - One reaper thread. It first *waits without reaping*: `waitid(P_ALL, WEXITED | WNOWAIT)`
//!   blocks until some child is a zombie but leaves it in place.
//! - Only then it takes the **fork lock** and reaps with `waitpid(-1, WNOHANG)` until nothing is
//!   left. Every piece of code that spawns and waits for a child (create helper, start, delete)
//!   runs with the fork lock held, so the reaper never reaps while someone else waits; by the
//!   time it gets the lock, that child has been reaped by its owner.
//! - `create` registers the init pid ([`Reaper::watch`]) before it releases the fork lock, so the
//!   reaper always knows the init pid when it reaps it. Exec processes are registered the same
//!   way ([`Reaper::watch_exec`]) and their exits kept until the exec is deleted. Exits of other
//!   pids (orphans) are discarded.
//! - With no children at all `waitid` fails with ECHILD; the reaper then sleeps on a condvar
//!   until the next `watch` instead of spinning.
//!
//! Exit status: the exit code, or 128 + signal number when the init was killed by a signal.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How the container init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub status: u32,
    /// When the shim reaped it.
    pub at: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    init_pid: Option<i32>,
    exit: Option<Exit>,
    /// Exec processes (see `exec.rs`) by pid, with their exit once reaped.
    execs: HashMap<i32, Option<Exit>>,
    /// Bumped by every `watch`: wakes a reaper that found no children.
    generation: u64,
}

/// Reaps children and records the init's exit. Shared by the task service and its thread.
#[derive(Debug, Default)]
pub struct Reaper {
    state: Mutex<State>,
    cv: Condvar,
    fork_lock: Mutex<()>,
}

impl Reaper {
    /// A reaper whose thread is already running.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let reaper = Arc::new(Reaper::default());
        let r = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || r.run())?;
        Ok(reaper)
    }

    /// Held around every libcontainer call that forks or waits for a child.
    pub fn fork_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.fork_lock)
    }

    /// Registers the container init pid. Call with the fork lock held, right after `build()`.
    pub fn watch(&self, pid: i32) {
        let mut st = lock(&self.state);
        st.init_pid = Some(pid);
        st.exit = None;
        st.generation += 1;
        self.cv.notify_all();
    }

    /// Registers an exec process pid. Call with the fork lock held, before the pid can be reaped.
    pub fn watch_exec(&self, pid: i32) {
        let mut st = lock(&self.state);
        st.execs.insert(pid, None);
        st.generation += 1;
        self.cv.notify_all();
    }

    /// The exit of exec process `pid`, if it has exited.
    pub fn exec_exit(&self, pid: i32) -> Option<Exit> {
        lock(&self.state).execs.get(&pid).copied().flatten()
    }

    /// Blocks until exec process `pid` exited (or `timeout`, when given, passed). None also for
    /// a pid that is not watched.
    pub fn wait_exec_exit(&self, pid: i32, timeout: Option<Duration>) -> Option<Exit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = lock(&self.state);
        loop {
            match st.execs.get(&pid) {
                None => return None,
                Some(Some(exit)) => return Some(*exit),
                Some(None) => {}
            }
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    match self.cv.wait_timeout(st, d - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    }
                }
            };
        }
    }

    /// Stops tracking exec process `pid` (its exec was deleted).
    pub fn forget_exec(&self, pid: i32) {
        lock(&self.state).execs.remove(&pid);
        self.cv.notify_all();
    }

    /// The init's exit, if it has exited.
    pub fn exit(&self) -> Option<Exit> {
        lock(&self.state).exit
    }

    /// Blocks until the init has exited (or `timeout`, when given, passed).
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<Exit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = lock(&self.state);
        loop {
            if st.exit.is_some() {
                return st.exit;
            }
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    match self.cv.wait_timeout(st, d - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    }
                }
            };
        }
    }

    fn run(&self) {
        loop {
            let generation = lock(&self.state).generation;
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(_) => self.reap_all(),
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    let mut st = lock(&self.state);
                    while st.generation == generation {
                        st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                }
                Err(e) => {
                    crate::error!("reaper: waitid: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn reap_all(&self) {
        let _fork = self.fork_lock();
        loop {
            let (pid, status) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code as u32),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as u32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    crate::error!("reaper: waitpid: {e}");
                    return;
                }
            };
            let mut st = lock(&self.state);
            if st.init_pid == Some(pid.as_raw()) && st.exit.is_none() {
                crate::info!("container init {pid} exited with status {status}");
                st.exit = Some(Exit {
                    status,
                    at: SystemTime::now(),
                });
                self.cv.notify_all();
            } else if let Some(slot @ None) = st.execs.get_mut(&pid.as_raw()) {
                crate::info!("exec process {pid} exited with status {status}");
                *slot = Some(Exit {
                    status,
                    at: SystemTime::now(),
                });
                self.cv.notify_all();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn records_exit_code_and_signal() -> anyhow::Result<()> {
        let reaper = Reaper::start()?;
        {
            let _g = reaper.fork_lock();
            let child = Command::new("/bin/sh").args(["-c", "exit 7"]).spawn()?;
            reaper.watch(child.id() as i32);
        }
        let exit = reaper.wait_exit(Some(Duration::from_secs(10)));
        assert_eq!(exit.map(|e| e.status), Some(7));

        let child = {
            let _g = reaper.fork_lock();
            let child = Command::new("/bin/sleep").arg("100").spawn()?;
            reaper.watch(child.id() as i32);
            child
        };
        assert!(reaper.exit().is_none());
        nix::sys::signal::kill(Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM)?;
        let exit = reaper.wait_exit(Some(Duration::from_secs(10)));
        assert_eq!(exit.map(|e| e.status), Some(143));
        Ok(())
    }
}
