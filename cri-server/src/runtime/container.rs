//! The container manager: OCI spec, rootfs snapshot, one shim per container, exit monitoring, records.
//!
//! Locking: every container has an `op` async mutex that serializes its lifecycle operations (held across
//! shim calls, only for that container) and a `record` std mutex for quick reads and writes (never held
//! across an await). The map of containers is a std mutex held only to look up or insert entries.
//! Exits are observed by one monitor task per started container (a timeout-free shim `wait`), which records
//! the exit and flips the entry's `exited` watch so StopContainer can wait for it.

mod cgroup;
mod create;
mod devices;
pub mod exec;
pub mod exec_io;
mod filter;
mod lifecycle;
pub mod log_path;
mod log_reopen;
mod record;
pub mod shim_client;
pub mod signal;
pub mod socket_path;
pub mod spec;
pub mod stream_attach;
pub mod stream_exec;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_cri::v1::*;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::image::manager::ImageManager;
use crate::runtime::cgroup::CgroupLayout;
use crate::runtime::events::{self, EventBus};
use crate::runtime::sandbox::SandboxManager;
use crate::store::RecordStore;
use filter::NameIndex;
pub use record::{ContainerRecord, State};
use shim_client::ShimClient;

/// One container's in-memory entry.
struct Entry {
    /// Serializes lifecycle operations on this container.
    op: tokio::sync::Mutex<()>,
    /// The current record (also on disk).
    record: Mutex<ContainerRecord>,
    /// Becomes true once the exit is recorded.
    exited: tokio::sync::watch::Sender<bool>,
}

impl Entry {
    fn new(record: ContainerRecord) -> Arc<Self> {
        let (exited, _) = tokio::sync::watch::channel(record.state == State::Exited);
        Arc::new(Self {
            op: tokio::sync::Mutex::new(()),
            record: Mutex::new(record),
            exited,
        })
    }

    fn record(&self) -> MutexGuard<'_, ContainerRecord> {
        lock(&self.record)
    }

    fn snapshot(&self) -> ContainerRecord {
        self.record().clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Arc<Entry>>,
    names: NameIndex,
}

/// State shared with monitor tasks.
struct Shared {
    store: RecordStore<ContainerRecord>,
    index: Mutex<Index>,
    /// The node's cgroup hierarchies (the sandbox manager's detection); `None` when none was found.
    cgroups: Option<Arc<CgroupLayout>>,
    /// The host runs the unified hierarchy alone (containers get a private cgroup namespace).
    cgroup_v2: bool,
    /// Where lifecycle events go (GetContainerEvents).
    events: Arc<EventBus>,
    /// For the pod status attached to events.
    sandboxes: Arc<SandboxManager>,
}

impl Shared {
    fn is_current(&self, id: &str, entry: &Arc<Entry>) -> bool {
        lock(&self.index)
            .entries
            .get(id)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
    }

    /// Applies `change` to the record and persists it.
    fn update(
        &self,
        entry: &Entry,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Result<ContainerRecord> {
        let mut rec = entry.record();
        change(&mut rec);
        self.store.put(&rec.id, &rec)?;
        Ok(rec.clone())
    }

    /// Statuses of the containers of a sandbox, oldest first.
    fn statuses_in_sandbox(&self, sandbox_id: &str) -> Vec<ContainerStatus> {
        let entries: Vec<Arc<Entry>> = lock(&self.index).entries.values().cloned().collect();
        let mut records: Vec<ContainerRecord> = entries
            .iter()
            .map(|e| e.snapshot())
            .filter(|r| r.sandbox_id == sandbox_id)
            .collect();
        records.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        records.iter().map(ContainerRecord::to_status).collect()
    }

    /// Publishes a lifecycle event for `id` (a container, or the sandbox itself), with the pod's current
    /// status (`sandbox_status` when given, for a sandbox already gone) and its containers' statuses.
    async fn emit(
        &self,
        id: &str,
        sandbox_id: &str,
        kind: ContainerEventType,
        sandbox_status: Option<PodSandboxStatus>,
    ) {
        if !self.events.has_subscribers() {
            return;
        }
        let sandbox_status = match sandbox_status {
            Some(status) => Some(status),
            None => self
                .sandboxes
                .status(PodSandboxStatusRequest {
                    pod_sandbox_id: sandbox_id.to_owned(),
                    verbose: false,
                })
                .await
                .ok()
                .and_then(|r| r.status),
        };
        let statuses = self.statuses_in_sandbox(sandbox_id);
        self.events
            .publish(events::event(id, kind, sandbox_status, statuses));
    }
}

/// Owns every container: creation through its shim, lifecycle, status, recovery after a berthd restart.
pub struct ContainerManager {
    images: Arc<ImageManager>,
    sandboxes: Arc<SandboxManager>,
    shared: Arc<Shared>,
    bundles: PathBuf,
    shim_binary: PathBuf,
    /// berthd's bounding capability set: what privileged containers get.
    host_capabilities: HashSet<oci_spec::runtime::Capability>,
    /// What ContainerStats reads (cgroups, writable layers, previous CPU samples).
    stats: crate::runtime::stats::StatsSource,
}

impl ContainerManager {
    /// Loads container records, reconnects to shims still running, marks those whose shim is gone as exited.
    pub async fn open(
        config: &Config,
        images: Arc<ImageManager>,
        sandboxes: Arc<SandboxManager>,
        events: Arc<EventBus>,
    ) -> Result<Self> {
        let store = RecordStore::open(config.root.join("store").join("containers"))?;
        let bundles = config.state.join("containers");
        std::fs::create_dir_all(&bundles)
            .map_err(|e| Error::io(format!("creating {}", bundles.display()), e))?;
        let cgroups = sandboxes.cgroup_layout();
        let cgroup_v2 = cgroups.as_deref().is_some_and(CgroupLayout::is_v2);
        let stats = crate::runtime::stats::StatsSource {
            cgroups: cgroups.clone(),
            snapshotter: images.snapshotter().clone(),
            snapshots_dir: config.root.join("snapshots"),
            cpu: Default::default(),
        };
        let shared = Arc::new(Shared {
            store,
            index: Mutex::new(Index::default()),
            cgroups,
            cgroup_v2,
            events,
            sandboxes: sandboxes.clone(),
        });
        let manager = Self {
            images,
            sandboxes,
            shared,
            bundles,
            shim_binary: shim_client::shim_binary(&config.runtime.shim_path),
            host_capabilities: spec::capabilities_from_mask(bounding_capability_mask()),
            stats,
        };
        let records = manager.shared.store.load_all()?;
        for rec in records {
            let entry = Entry::new(rec.clone());
            {
                let mut index = lock(&manager.shared.index);
                if let Err(err) = index.names.reserve(&rec.full_name, &rec.id) {
                    tracing::warn!(container = %rec.id, %err, "duplicate container name in records");
                }
                index.entries.insert(rec.id.clone(), entry.clone());
            }
            if matches!(rec.state, State::Created | State::Running) {
                lifecycle::recover(&manager.shared, &entry).await;
            }
        }
        Ok(manager)
    }

    /// Full id for an id or unique prefix.
    fn resolve(&self, id_or_prefix: &str) -> Result<(String, Arc<Entry>)> {
        let index = lock(&self.shared.index);
        let id = crate::id::resolve_prefix("container", index.entries.keys(), id_or_prefix)?;
        let entry = index
            .entries
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        Ok((id, entry))
    }

    /// CreateContainer.
    pub async fn create(&self, req: CreateContainerRequest) -> Result<CreateContainerResponse> {
        let id = create::create(self, req).await?;
        Ok(CreateContainerResponse { container_id: id })
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<()> {
        let (_, entry) = self.resolve(id)?;
        lifecycle::start(&self.shared, &entry).await
    }

    /// StopContainer: stop signal, SIGKILL after `timeout_secs`. Idempotent.
    pub async fn stop(&self, id: &str, timeout_secs: i64) -> Result<()> {
        // Idempotent per the CRI: a container that does not exist (any more) is stopped.
        let entry = match self.resolve(id) {
            Ok((_, entry)) => entry,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        lifecycle::stop(&self.shared, &entry, timeout_secs).await
    }

    /// RemoveContainer: stops it if needed, removes shim, snapshot, record. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let entry = match self.resolve(id) {
            Ok((_, entry)) => entry,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        lifecycle::remove(self, &entry).await
    }

    /// ContainerStatus.
    pub async fn status(&self, req: ContainerStatusRequest) -> Result<ContainerStatusResponse> {
        let (_, entry) = self.resolve(&req.container_id)?;
        let rec = entry.snapshot();
        let mut info = HashMap::new();
        if req.verbose {
            let spec: serde_json::Value = std::fs::read(rec.bundle.join("config.json"))
                .ok()
                .and_then(|data| serde_json::from_slice(&data).ok())
                .unwrap_or(serde_json::Value::Null);
            let value = serde_json::json!({
                "pid": rec.pid,
                "sandboxID": rec.sandbox_id,
                "snapshotKey": rec.id,
                "shimSocket": rec.shim_socket(),
                "bundle": rec.bundle,
                "cgroupsPath": rec.cgroup_path,
                "runtimeSpec": spec,
            });
            info.insert("info".to_string(), value.to_string());
        }
        Ok(ContainerStatusResponse {
            status: Some(rec.to_status()),
            info,
        })
    }

    /// ListContainers with its filter.
    pub async fn list(&self, req: ListContainersRequest) -> Result<ListContainersResponse> {
        let entries: Vec<Arc<Entry>> = lock(&self.shared.index).entries.values().cloned().collect();
        let filter = req.filter.unwrap_or_default();
        let mut containers: Vec<Container> = entries
            .iter()
            .map(|e| e.snapshot())
            .filter(|r| filter::matches(r, &filter))
            .map(|r| r.to_container())
            .collect();
        containers.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(ListContainersResponse { containers })
    }

    /// UpdateContainerResources.
    pub async fn update_resources(&self, req: UpdateContainerResourcesRequest) -> Result<()> {
        let (_, entry) = self.resolve(&req.container_id)?;
        let resources = req.linux.unwrap_or_default();
        lifecycle::update_resources(&self.shared, &entry, &resources).await
    }

    /// What the stats code reads.
    pub fn stats_source(&self) -> crate::runtime::stats::StatsSource {
        self.stats.clone()
    }

    /// The record of a container (id or unique prefix), for ContainerStats.
    pub fn stats_record(&self, id: &str) -> Result<ContainerRecord> {
        Ok(self.resolve(id)?.1.snapshot())
    }

    /// Records of the created and running containers passing `filter`, oldest first (ListContainerStats).
    pub fn stats_records(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
        let entries: Vec<Arc<Entry>> = lock(&self.shared.index).entries.values().cloned().collect();
        let mut records: Vec<ContainerRecord> = entries
            .iter()
            .map(|e| e.snapshot())
            .filter(|r| matches!(r.state, State::Created | State::Running))
            .filter(|r| filter::matches(r, filter))
            .collect();
        records.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        records
    }

    /// ReopenContainerLog: asks the running container's shim to reopen its log file (see `log_reopen`).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let (_, entry) = self.resolve(id)?;
        let rec = entry.snapshot();
        log_reopen::reopen(&rec).await
    }

    fn ids_in_sandbox(&self, sandbox_id: &str) -> Vec<Arc<Entry>> {
        lock(&self.shared.index)
            .entries
            .values()
            .filter(|e| e.record().sandbox_id == sandbox_id)
            .cloned()
            .collect()
    }

    /// Publishes a sandbox lifecycle event (the event's container id is the sandbox id), with the pod's
    /// status (`status` when given, for a sandbox already removed) and its containers' statuses.
    pub async fn emit_sandbox_event(
        &self,
        sandbox_id: &str,
        kind: ContainerEventType,
        status: Option<PodSandboxStatus>,
    ) {
        self.shared.emit(sandbox_id, sandbox_id, kind, status).await;
    }

    /// Stops every container of a sandbox (StopPodSandbox).
    pub async fn stop_all_in_sandbox(&self, sandbox_id: &str, timeout_secs: i64) -> Result<()> {
        let entries = self.ids_in_sandbox(sandbox_id);
        let results = futures::future::join_all(
            entries
                .iter()
                .map(|e| lifecycle::stop(&self.shared, e, timeout_secs)),
        )
        .await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    /// Removes every container of a sandbox (RemovePodSandbox).
    pub async fn remove_all_in_sandbox(&self, sandbox_id: &str) -> Result<()> {
        let entries = self.ids_in_sandbox(sandbox_id);
        let results =
            futures::future::join_all(entries.iter().map(|e| lifecycle::remove(self, e))).await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }
}

/// `CapBnd` of /proc/self/status; every capability when it cannot be read.
fn bounding_capability_mask() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// Convenience for lifecycle code: connect to a record's shim.
async fn connect(rec: &ContainerRecord) -> Result<ShimClient> {
    ShimClient::connect(&rec.id, &rec.shim_socket()).await
}
