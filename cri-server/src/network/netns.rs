//! Work inside a pod's network namespace. `setns` changes only the calling thread, and pool
//! threads are reused, so the work never runs on a tokio worker or `spawn_blocking` thread: a
//! short-lived dedicated thread joins the namespace, runs it and ends, and the namespace change
//! dies with it. Sockets created there belong to that namespace for their whole life.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Runs `f` on a new thread named `thread_name` inside the network namespace pinned at
/// `netns`. The receiver gets `f`'s result, or the failure to join the namespace; await it, or
/// `blocking_recv` it from a blocking context.
pub fn spawn_in<T, F>(
    netns: &Path,
    thread_name: &str,
    f: F,
) -> Result<oneshot::Receiver<std::io::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let what = format!("network namespace {}", netns.display());
    let ns = File::open(netns).map_err(|e| Error::io(format!("opening {what}"), e))?;
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            let res = setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| std::io::Error::other(format!("setns: {e}")))
                .and_then(|()| f());
            let _ = tx.send(res);
        })
        .map_err(|e| Error::io(format!("spawning a thread for {what}"), e))?;
    Ok(rx)
}

/// The error for a thread of [`spawn_in`] that ended without an answer (it panicked).
pub fn thread_died(netns: &Path) -> Error {
    Error::Internal(format!(
        "network namespace {}: the thread working in it died",
        netns.display()
    ))
}
