//! Container lifecycle after creation: start, exit monitoring, stop, remove, resource updates, and
//! reconnecting to shims after a berthd restart.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{ContainerEventType, LinuxContainerResources};

use super::record::{now_nanos, ResourcesRecord, State};
use super::shim_client::{Exit, ShimClient, TaskState};
use super::spec;
use super::{cgroup, connect, ContainerManager, Entry, Shared};
use crate::error::{Error, Result};

/// How long StopContainer/RemoveContainer wait for an exit after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);

pub(super) fn lock_release(shared: &Shared, name: &str, id: &str) {
    super::lock(&shared.index).names.release(name, id);
}

/// Removes a bundle directory unless its rootfs is still a mount point (then removing would reach into
/// the container's filesystem).
pub(super) fn remove_bundle(bundle: &Path) -> bool {
    let rootfs = bundle.join("rootfs");
    if let (Ok(a), Ok(b)) = (std::fs::metadata(bundle), std::fs::metadata(&rootfs)) {
        if a.dev() != b.dev() {
            tracing::error!(bundle = %bundle.display(), "rootfs still mounted; leaving the bundle in place");
            return false;
        }
    }
    match std::fs::remove_dir_all(bundle) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(err) => {
            tracing::warn!(bundle = %bundle.display(), %err, "removing bundle");
            false
        }
    }
}

/// StartContainer.
pub(super) async fn start(shared: &Arc<Shared>, entry: &Arc<Entry>) -> Result<()> {
    let _op = entry.op.lock().await;
    let rec = entry.snapshot();
    if rec.state != State::Created {
        return Err(Error::FailedPrecondition(format!(
            "container {} is {}, not created",
            rec.id,
            rec.state.name()
        )));
    }
    // Taken before the call: a quick process can exit before Start returns, and finished_at must not
    // precede started_at.
    let begin = now_nanos();
    let started = async {
        let shim = connect(&rec).await?;
        let pid = shim.start().await?;
        Ok::<_, Error>((shim, pid))
    }
    .await;
    match started {
        Ok((shim, pid)) => {
            shared.update(entry, |r| {
                r.state = State::Running;
                r.started_at = begin;
                r.pid = pid;
            })?;
            // Before the monitor exists, so that STARTED always precedes STOPPED.
            shared
                .emit(
                    &rec.id,
                    &rec.sandbox_id,
                    ContainerEventType::ContainerStartedEvent,
                    None,
                )
                .await;
            spawn_monitor(shared.clone(), entry.clone(), Some(shim));
            tracing::info!(container = %rec.id, pid, "container started");
            Ok(())
        }
        Err(err) => {
            let message = err.to_string();
            shared.update(entry, |r| {
                let now = now_nanos();
                r.started_at = now;
                r.set_exited(128, now, "StartError", &message);
            })?;
            shared
                .emit(
                    &rec.id,
                    &rec.sandbox_id,
                    ContainerEventType::ContainerStoppedEvent,
                    None,
                )
                .await;
            entry.exited.send_replace(true);
            Err(err)
        }
    }
}

/// Records an exit: reason from the exit code and the memory cgroup's OOM counter.
async fn record_exit(shared: &Shared, entry: &Entry, exit: Exit) {
    let rec = entry.snapshot();
    let oom = shared
        .cgroups
        .as_deref()
        .is_some_and(|layout| cgroup::oom_kills(layout, &rec.cgroup_path) > 0);
    let code = i32::try_from(exit.status).unwrap_or(255);
    if oom {
        crate::metrics::global().container_oom_kills.inc();
    }
    let reason = if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let at = if exit.at_nanos > 0 {
        exit.at_nanos
    } else {
        now_nanos()
    };
    let at = at.max(rec.started_at);
    if let Err(err) = shared.update(entry, |r| r.set_exited(code, at, reason, "")) {
        tracing::error!(container = %rec.id, %err, "persisting exit");
    }
    tracing::info!(container = %rec.id, exit_code = code, reason, "container exited");
    // Before the exit is signalled, so that STOPPED always precedes the DELETED of a RemoveContainer.
    shared
        .emit(
            &rec.id,
            &rec.sandbox_id,
            ContainerEventType::ContainerStoppedEvent,
            None,
        )
        .await;
    entry.exited.send_replace(true);
}

async fn record_gone(shared: &Shared, entry: &Entry) {
    let (id, sandbox_id) = {
        let rec = entry.record();
        (rec.id.clone(), rec.sandbox_id.clone())
    };
    if let Err(err) = shared.update(entry, |r| {
        r.set_exited(
            255,
            now_nanos(),
            "Unknown",
            "berth-shim for the container is gone",
        )
    }) {
        tracing::error!(container = %id, %err, "persisting exit");
    }
    tracing::warn!(container = %id, "berth-shim is gone; container marked exited");
    shared
        .emit(
            &id,
            &sandbox_id,
            ContainerEventType::ContainerStoppedEvent,
            None,
        )
        .await;
    entry.exited.send_replace(true);
}

/// Watches one started container until it exits.
fn spawn_monitor(shared: Arc<Shared>, entry: Arc<Entry>, shim: Option<ShimClient>) {
    tokio::spawn(async move {
        let rec = entry.snapshot();
        let shim = match shim {
            Some(s) => Ok(s),
            None => connect(&rec).await,
        };
        let waited = match shim {
            Ok(shim) => shim.wait().await,
            Err(e) => Err(e),
        };
        if !shared.is_current(&rec.id, &entry) || *entry.exited.borrow() {
            return;
        }
        match waited {
            Ok(exit) => record_exit(&shared, &entry, exit).await,
            Err(err) => {
                // The wait connection broke: ask again on a fresh one before declaring the shim gone.
                tracing::debug!(container = %rec.id, %err, "shim wait failed");
                match connect(&rec).await {
                    Ok(shim) => match shim.state().await {
                        Ok(TaskState::Stopped(exit)) => {
                            let exit = drained_exit(&shim, exit).await;
                            record_exit(&shared, &entry, exit).await
                        }
                        Ok(_) => {
                            // Still running: wait again, without spinning if waits keep failing.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            spawn_monitor(shared.clone(), entry.clone(), Some(shim))
                        }
                        Err(_) => record_gone(&shared, &entry).await,
                    },
                    Err(_) => record_gone(&shared, &entry).await,
                }
            }
        }
    });
}

/// Waits until the exit is recorded, at most `timeout`; true when it was.
async fn wait_exited(entry: &Entry, timeout: Duration) -> bool {
    let mut rx = entry.exited.subscribe();
    let result = tokio::time::timeout(timeout, rx.wait_for(|e| *e)).await;
    matches!(result, Ok(Ok(_)))
}

/// Sends the stop signal, waits, then SIGKILLs. Called with the op lock held.
async fn stop_locked(entry: &Entry, timeout_secs: i64) -> Result<()> {
    let rec = entry.snapshot();
    if rec.state != State::Running {
        if rec.state == State::Exited {
            // The exit is recorded before its STOPPED event is sent and `exited` flips: wait for that, so
            // a RemoveContainer right after the exit cannot send DELETED before STOPPED.
            wait_exited(entry, KILL_WAIT).await;
        }
        return Ok(());
    }
    let shim = match connect(&rec).await {
        Ok(shim) => shim,
        // The monitor notices a vanished shim by itself.
        Err(_) => {
            return if wait_exited(entry, Duration::from_secs(10)).await {
                Ok(())
            } else {
                Err(Error::Unavailable(format!(
                    "container {}: shim unreachable",
                    rec.id
                )))
            }
        }
    };
    if timeout_secs > 0 {
        shim.kill(rec.stop_signal, false).await?;
        let secs = u64::try_from(timeout_secs).unwrap_or(0);
        if wait_exited(entry, Duration::from_secs(secs)).await {
            return Ok(());
        }
        tracing::info!(container = %rec.id, timeout_secs, "stop timeout elapsed; sending SIGKILL");
    }
    shim.kill(libc::SIGKILL as u32, true).await?;
    if wait_exited(entry, KILL_WAIT).await {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "container {} did not exit after SIGKILL",
            rec.id
        )))
    }
}

/// StopContainer.
pub(super) async fn stop(
    _shared: &Arc<Shared>,
    entry: &Arc<Entry>,
    timeout_secs: i64,
) -> Result<()> {
    let _op = entry.op.lock().await;
    stop_locked(entry, timeout_secs).await
}

/// RemoveContainer.
pub(super) async fn remove(mgr: &ContainerManager, entry: &Arc<Entry>) -> Result<()> {
    let _op = entry.op.lock().await;
    let rec = entry.snapshot();
    if !mgr.shared.is_current(&rec.id, entry) {
        return Ok(());
    }
    stop_locked(entry, 0).await?;
    match connect(&rec).await {
        Ok(shim) => {
            if let Err(err) = shim.delete().await {
                if !matches!(err, Error::NotFound(_)) {
                    tracing::warn!(container = %rec.id, %err, "shim delete failed");
                }
            }
            let _ = shim.shutdown().await;
        }
        Err(_) => {
            // The shim died: nobody else will kill what is left in the container's cgroup or remove it.
            if let Some(layout) = mgr.shared.cgroups.clone() {
                let path = rec.cgroup_path.clone();
                let _ =
                    tokio::task::spawn_blocking(move || cgroup::kill_and_remove(&layout, &path))
                        .await;
            }
        }
    }
    let rootfs = rec.bundle.join("rootfs");
    match tokio::task::spawn_blocking(move || snapshotter::unmount(&rootfs)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(container = %rec.id, %err, "unmounting rootfs"),
        Err(err) => tracing::warn!(container = %rec.id, %err, "unmount task"),
    }
    let (snap, key) = (mgr.images.snapshotter().clone(), rec.id.clone());
    tokio::task::spawn_blocking(move || snap.remove(&key))
        .await
        .map_err(|e| Error::Internal(format!("container {}: snapshot task: {e}", rec.id)))??;
    if !remove_bundle(&rec.bundle) {
        return Err(Error::Internal(format!(
            "container {}: bundle {} could not be removed",
            rec.id,
            rec.bundle.display()
        )));
    }
    mgr.shared.store.delete(&rec.id)?;
    {
        let mut index = super::lock(&mgr.shared.index);
        index.entries.remove(&rec.id);
        index.names.release(&rec.full_name, &rec.id);
    }
    tracing::info!(container = %rec.id, "container removed");
    mgr.shared
        .emit(
            &rec.id,
            &rec.sandbox_id,
            ContainerEventType::ContainerDeletedEvent,
            None,
        )
        .await;
    Ok(())
}

/// UpdateContainerResources.
pub(super) async fn update_resources(
    shared: &Arc<Shared>,
    entry: &Arc<Entry>,
    resources: &LinuxContainerResources,
) -> Result<()> {
    let _op = entry.op.lock().await;
    let rec = entry.snapshot();
    if rec.state == State::Exited {
        return Err(Error::FailedPrecondition(format!(
            "container {} is exited",
            rec.id
        )));
    }
    let mut oci = spec::linux_resources(resources, false, &[]);
    oci.set_devices(None);
    let json = serde_json::to_vec(&oci)
        .map_err(|e| Error::Internal(format!("container {}: encoding resources: {e}", rec.id)))?;
    connect(&rec).await?.update(json).await?;
    shared.update(entry, |r| r.resources = ResourcesRecord::from(resources))?;
    Ok(())
}

/// The exit of a task the shim reports as stopped, once its output is in the log: `state` says STOPPED at
/// the reap, `wait` answers only after the shim drained the stdio pipes into the log file. Falls back to the
/// reported exit if the wait fails.
async fn drained_exit(shim: &ShimClient, reported: Exit) -> Exit {
    shim.wait().await.unwrap_or(reported)
}

/// After a berthd restart: reconnect to the shim of a created or running container.
pub(super) async fn recover(shared: &Arc<Shared>, entry: &Arc<Entry>) {
    let rec = entry.snapshot();
    let state = match connect(&rec).await {
        Ok(shim) => shim.state().await.map(|s| (shim, s)),
        Err(e) => Err(e),
    };
    match state {
        Ok((shim, TaskState::Running(_))) => {
            if rec.state == State::Created {
                let _ = shared.update(entry, |r| {
                    r.state = State::Running;
                    if r.started_at == 0 {
                        r.started_at = now_nanos();
                    }
                });
                shared
                    .emit(
                        &rec.id,
                        &rec.sandbox_id,
                        ContainerEventType::ContainerStartedEvent,
                        None,
                    )
                    .await;
            }
            spawn_monitor(shared.clone(), entry.clone(), Some(shim));
        }
        Ok((shim, TaskState::Stopped(exit))) => {
            let exit = drained_exit(&shim, exit).await;
            record_exit(shared, entry, exit).await
        }
        Ok((_, TaskState::Created)) | Ok((_, TaskState::Other)) => {}
        Err(err) => {
            tracing::debug!(container = %rec.id, %err, "shim unreachable during recovery");
            record_gone(shared, entry).await;
            let rootfs = rec.bundle.join("rootfs");
            if let Ok(Err(err)) =
                tokio::task::spawn_blocking(move || snapshotter::unmount(&rootfs)).await
            {
                tracing::warn!(container = %rec.id, %err, "unmounting rootfs of a container whose shim is gone");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_removal_refuses_mounted_rootfs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path().join("b");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(bundle.join("config.json"), b"{}").unwrap();
        assert!(remove_bundle(&bundle));
        assert!(!bundle.exists());
        assert!(remove_bundle(&bundle));
    }
}
