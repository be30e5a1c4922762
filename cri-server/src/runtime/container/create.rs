//! CreateContainer: validation, OCI spec, bundle, writable snapshot, shim, record — and undoing all of it
//! when a step fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::CreateContainerRequest;

use super::lifecycle::{lock_release, remove_bundle};
use super::record::{now_nanos, ContainerRecord, MountRecord, ResourcesRecord, State};
use super::shim_client::{start_shim, ShimClient};
use super::spec::{self, SpecInput};
use super::{devices, filter, log_path, signal, ContainerManager, Entry, Shared};
use crate::error::{Error, Result};

/// Releases what a failed CreateContainer already set up.
struct CreateUndo {
    id: String,
    full_name: String,
    bundle: PathBuf,
    snapshotter: Arc<snapshotter::Snapshotter>,
    snapshot: bool,
    shim: Option<ShimClient>,
    task_created: bool,
}

impl CreateUndo {
    async fn run(self, shared: &Shared) {
        if let Some(shim) = &self.shim {
            if self.task_created {
                let _ = shim.kill(libc::SIGKILL as u32, true).await;
                let _ = shim.delete().await;
            }
            let _ = shim.shutdown().await;
        } else if let Ok(shim) = ShimClient::connect(&self.id, &self.bundle.join("shim.sock")).await
        {
            // The shim may have come up even though `start` reported a failure.
            let _ = shim.shutdown().await;
        }
        let rootfs = self.bundle.join("rootfs");
        let _ = tokio::task::spawn_blocking(move || snapshotter::unmount(&rootfs)).await;
        if self.snapshot {
            let (snap, id) = (self.snapshotter.clone(), self.id.clone());
            if let Ok(Err(err)) = tokio::task::spawn_blocking(move || snap.remove(&id)).await {
                tracing::warn!(container = %self.id, %err, "removing snapshot after failed create");
            }
        }
        // The shim's own log explains failures its error message only summarizes; it goes with the bundle.
        if let Ok(text) = std::fs::read_to_string(self.bundle.join("shim.log")) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            tracing::warn!(container = %self.id, shim_log = %tail, "berth-shim log of the failed create");
        }
        remove_bundle(&self.bundle);
        lock_release(shared, &self.full_name, &self.id);
    }
}

/// CreateContainer; returns the new id.
pub(super) async fn create(mgr: &ContainerManager, req: CreateContainerRequest) -> Result<String> {
    let config = req
        .config
        .ok_or_else(|| Error::InvalidArgument("container config is required".into()))?;
    let metadata = config.metadata.clone().unwrap_or_default();
    if metadata.name.is_empty() {
        return Err(Error::InvalidArgument(
            "container metadata.name is required".into(),
        ));
    }
    let name = metadata.name.clone();
    let image_ref = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image_ref.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "container {name}: image.image is required"
        )));
    }
    let sandbox_id = mgr.sandboxes.resolve_id(&req.pod_sandbox_id).await?;
    let sandbox = mgr.sandboxes.info(&sandbox_id).await?;
    if !sandbox.ready {
        return Err(Error::FailedPrecondition(format!(
            "container {name}: pod sandbox {sandbox_id} is not ready"
        )));
    }
    let image = match mgr.images.resolve(&image_ref) {
        Ok(image) => image,
        Err(Error::NotFound(_)) => {
            return Err(Error::NotFound(format!(
                "container {name}: image {image_ref} not found; pull it first"
            )))
        }
        Err(e) => return Err(e),
    };

    // Checks that need the host, before anything is created.
    for m in &config.mounts {
        if !m.host_path.is_empty() && !Path::new(&m.host_path).exists() {
            return Err(Error::InvalidArgument(format!(
                "container {name}: mount source {} does not exist",
                m.host_path
            )));
        }
    }
    let mut devices = config
        .devices
        .iter()
        .map(devices::resolve)
        .collect::<Result<Vec<_>>>()?;
    let privileged = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged {
        devices.extend(devices::host_devices());
    }
    let log = log_path::resolve(&sandbox.log_directory, &config.log_path)?;
    let hostname = std::fs::read_to_string(&sandbox.hostname_file)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let stop_signal = signal::parse_signal(&image.config.stop_signal).unwrap_or_else(|err| {
        tracing::warn!(container = %name, %err, "image stop signal ignored; using SIGTERM");
        libc::SIGTERM as u32
    });

    let id = crate::id::new_id()?;
    let target_pid_ns = target_pid_namespace(mgr, &config);
    let oci = spec::build_spec(&SpecInput {
        id: &id,
        config: &config,
        sandbox: &sandbox,
        image: &image.config,
        hostname: &hostname,
        devices: &devices,
        target_pid_ns,
        host_capabilities: &mgr.host_capabilities,
        cgroup_v2: mgr.shared.cgroup_v2,
    })?;
    let cgroup_path = oci
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| p.display().to_string())
        .unwrap_or_default();

    let pod = &sandbox.metadata;
    let full_name = filter::full_name(&name, &pod.name, &pod.namespace, &pod.uid, metadata.attempt);
    super::lock(&mgr.shared.index)
        .names
        .reserve(&full_name, &id)?;

    let bundle = mgr.bundles.join(&id);
    let mut undo = CreateUndo {
        id: id.clone(),
        full_name: full_name.clone(),
        bundle: bundle.clone(),
        snapshotter: mgr.images.snapshotter().clone(),
        snapshot: false,
        shim: None,
        task_created: false,
    };
    let result: Result<ContainerRecord> = async {
        std::fs::create_dir_all(bundle.join("rootfs")).map_err(|e| {
            Error::io(
                format!("container {id}: creating bundle {}", bundle.display()),
                e,
            )
        })?;
        let json = serde_json::to_vec_pretty(&oci)
            .map_err(|e| Error::Internal(format!("container {id}: encoding OCI spec: {e}")))?;
        std::fs::write(bundle.join("config.json"), json)
            .map_err(|e| Error::io(format!("container {id}: writing config.json"), e))?;
        if let Some(path) = &log {
            log_path::create_parent(path)?;
        }

        undo.snapshot = true;
        let rootfs = mgr
            .images
            .prepare_snapshot(id.clone(), image.top_chain_id().map(str::to_string))
            .await?;

        let socket = start_shim(&mgr.shim_binary, &id, &bundle).await?;
        let shim = ShimClient::connect(&id, &socket).await?;
        undo.shim = Some(shim.clone());
        let log_string = log
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // The shim only checks that stdin is non-empty; the attach socket is where it comes from.
        let stdin = if config.stdin {
            super::record::attach_socket(&bundle).display().to_string()
        } else {
            String::new()
        };
        let pid = shim
            .create(&bundle, &rootfs, &log_string, &stdin, config.tty)
            .await?;
        undo.task_created = true;
        let user = resolved_user(&bundle);

        let resources = config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map(ResourcesRecord::from);
        let rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox_id.clone(),
            name: name.clone(),
            attempt: metadata.attempt,
            full_name: full_name.clone(),
            image_ref: image_ref.clone(),
            image_id: image.id.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            log_path: log_string,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            state: State::Created,
            mounts: config
                .mounts
                .iter()
                .map(|m| MountRecord {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    propagation: m.propagation,
                })
                .collect(),
            bundle: bundle.clone(),
            pid,
            stop_signal,
            cgroup_path: cgroup_path.clone(),
            resources: resources.unwrap_or_default(),
            tty: config.tty,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            user,
        };
        mgr.shared.store.put(&id, &rec)?;
        Ok(rec)
    }
    .await;

    match result {
        Ok(rec) => {
            super::lock(&mgr.shared.index)
                .entries
                .insert(id.clone(), Entry::new(rec));
            tracing::info!(container = %id, sandbox = %sandbox_id, name = %name, "container created");
            mgr.shared
                .emit(
                    &id,
                    &sandbox_id,
                    k8s_cri::v1::ContainerEventType::ContainerCreatedEvent,
                    None,
                )
                .await;
            Ok(id)
        }
        Err(err) => {
            tracing::warn!(container = %id, %err, "create failed; undoing");
            undo.run(&mgr.shared).await;
            Err(err)
        }
    }
}

/// The process identity from the bundle's config.json, which the shim rewrote after resolving
/// `io.berth.user`.
fn resolved_user(bundle: &Path) -> Option<(u32, u32, Vec<u32>)> {
    let data = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: oci_spec::runtime::Spec = serde_json::from_slice(&data).ok()?;
    let user = spec.process().as_ref()?.user();
    Some((
        user.uid(),
        user.gid(),
        user.additional_gids().clone().unwrap_or_default(),
    ))
}

/// For NamespaceMode::TARGET: the target container's pid namespace, when it runs.
fn target_pid_namespace(
    mgr: &ContainerManager,
    config: &k8s_cri::v1::ContainerConfig,
) -> Option<PathBuf> {
    let target = config
        .linux
        .as_ref()?
        .security_context
        .as_ref()?
        .namespace_options
        .as_ref()
        .filter(|o| o.pid == k8s_cri::v1::NamespaceMode::Target as i32)?
        .target_id
        .clone();
    let (_, entry) = mgr.resolve(&target).ok()?;
    let rec = entry.snapshot();
    (rec.state == State::Running && rec.pid > 0)
        .then(|| PathBuf::from(format!("/proc/{}/ns/pid", rec.pid)))
}
