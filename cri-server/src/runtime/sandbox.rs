//! The sandbox manager: pod namespaces, pod cgroup, CNI, pod files, sandbox records.
//!
//! A sandbox has no pause process: its namespaces are pinned by bind mounts under
//! `<state>/sandboxes/<id>/ns/`, its /dev/shm is a tmpfs at `<state>/sandboxes/<id>/shm`, and its record
//! (`<root>/store/sandboxes/<id>.json`) holds everything needed to tear it down, including the CNI
//! configuration and result used for ADD. The one exception is a PID namespace shared by the pod
//! (NamespaceMode::POD): it needs a living pid 1, a `berth-shim pod-init` process (see `pid_holder.rs`),
//! and is pinned at `ns/pid` as well.

mod files;
mod namespaces;
mod pid_holder;
mod plan;
mod record;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::*;
use tracing::Instrument;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::network::{Network, PodRef};
use crate::runtime::cgroup::CgroupLayout;
use crate::store::RecordStore;
use plan::Plan;
use record::{SandboxRecord, State};

/// How a pod's containers get their PID namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// Each container gets its own (CRI NamespaceMode::CONTAINER, the default).
    PerContainer,
    /// All containers share the pod's, pinned at this path (NamespaceMode::POD).
    Pod(PathBuf),
    /// The host's (NamespaceMode::NODE, hostPID).
    Host,
}

/// What a container needs to know about its pod.
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    /// Sandbox id.
    pub id: String,
    /// The pod's metadata as the kubelet gave it.
    pub metadata: PodSandboxMetadata,
    /// Pod labels and annotations (containers inherit nothing from them, but ListContainers filters use them).
    pub labels: std::collections::HashMap<String, String>,
    /// True while the sandbox is ready (containers may be created only then).
    pub ready: bool,
    /// Network namespace to join; `None` for hostNetwork pods.
    pub netns_path: Option<PathBuf>,
    /// IPC namespace to join; `None` for hostIPC pods.
    pub ipc_ns_path: Option<PathBuf>,
    /// UTS namespace to join; `None` for hostNetwork pods (they share the host's hostname).
    pub uts_ns_path: Option<PathBuf>,
    /// PID namespace mode.
    pub pid_namespace: PidNamespace,
    /// The pod cgroup, relative to the cgroup root (e.g. `/kubepods/pod123/berth-<id>`); containers go below it.
    pub cgroup_path: String,
    /// The pod's log directory (containers' log paths are relative to it); empty when the kubelet gave none.
    pub log_directory: PathBuf,
    /// Files bind-mounted into every container at /etc/hostname, /etc/hosts, /etc/resolv.conf.
    pub hostname_file: PathBuf,
    /// See `hostname_file`.
    pub hosts_file: PathBuf,
    /// See `hostname_file`; `None` when the pod has no DNS config and uses the host's.
    pub resolv_conf_file: Option<PathBuf>,
    /// The pod's /dev/shm (a tmpfs shared by its containers); `None` for hostIPC pods.
    pub shm_path: Option<PathBuf>,
    /// The pod's sysctls, applied to each container.
    pub sysctls: std::collections::HashMap<String, String>,
}

type Entry = Arc<tokio::sync::Mutex<SandboxRecord>>;

/// Sandboxes by id and name reservations (`name_namespace_uid_attempt` → id).
#[derive(Default)]
struct Index {
    sandboxes: HashMap<String, Entry>,
    names: HashMap<String, String>,
}

/// Owns every sandbox: creation, teardown, status, recovery after a berthd restart.
///
/// Each sandbox has its own async lock, held across its CNI calls; the index lock is only held for map
/// lookups.
pub struct SandboxManager {
    store: RecordStore<SandboxRecord>,
    sandboxes_dir: PathBuf,
    network: Arc<Network>,
    cgroups: std::result::Result<Arc<CgroupLayout>, String>,
    index: std::sync::Mutex<Index>,
    /// berth-shim, whose `pod-init` holds shared PID namespaces.
    shim_binary: PathBuf,
}

impl SandboxManager {
    /// Loads sandbox records and reconciles them with what still exists on the node.
    pub async fn open(config: &Config) -> Result<Self> {
        let store =
            RecordStore::<SandboxRecord>::open(config.root.join("store").join("sandboxes"))?;
        let cgroups = CgroupLayout::detect()
            .map(Arc::new)
            .map_err(|e| e.to_string());
        if let Err(err) = &cgroups {
            tracing::error!(%err, "cannot find the cgroup hierarchies; RunPodSandbox will fail");
        }
        let loader = store.clone();
        let records = blocking(move || {
            let mut records = loader.load_all()?;
            for rec in &mut records {
                if rec.state == State::Ready && !intact(rec) {
                    tracing::warn!(sandbox = %rec.id, "pod namespaces, PID namespace init or shm are gone (reboot?): sandbox is NOTREADY");
                    rec.state = State::NotReady;
                    loader.put(&rec.id, rec)?;
                }
            }
            Ok(records)
        })
        .await?;
        let mut index = Index::default();
        for rec in records {
            index.names.insert(rec.name_key(), rec.id.clone());
            index
                .sandboxes
                .insert(rec.id.clone(), Arc::new(tokio::sync::Mutex::new(rec)));
        }
        tracing::info!(sandboxes = index.sandboxes.len(), "sandbox records loaded");
        Ok(Self {
            store,
            sandboxes_dir: config.state.join("sandboxes"),
            network: Arc::new(Network::new(config)),
            cgroups,
            index: std::sync::Mutex::new(index),
            shim_binary: crate::runtime::container::shim_client::shim_binary(
                &config.runtime.shim_path,
            ),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        // The index holds plain maps; a panic while it was locked cannot leave them half-updated.
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn entry(&self, id: &str) -> Option<Entry> {
        self.index().sandboxes.get(id).cloned()
    }

    async fn persist(&self, rec: &SandboxRecord) -> Result<()> {
        let store = self.store.clone();
        let rec = rec.clone();
        blocking(move || store.put(&rec.id, &rec)).await
    }

    /// RunPodSandbox.
    pub async fn run(&self, req: RunPodSandboxRequest) -> Result<RunPodSandboxResponse> {
        let plan = Plan::from_request(req, &self.sandboxes_dir)?;
        let layout = self.cgroups.clone().map_err(Error::FailedPrecondition)?;
        let rec = plan.record.clone();
        let key = rec.name_key();
        {
            let mut index = self.index();
            if let Some(existing) = index.names.get(&key) {
                return Err(Error::AlreadyExists(format!(
                    "pod sandbox name {key:?} is reserved for {existing}"
                )));
            }
            index.names.insert(key.clone(), rec.id.clone());
        }
        let span = tracing::info_span!("run_pod_sandbox", sandbox = %rec.id, pod = %format!("{}/{}", rec.namespace, rec.name));
        match self.setup(plan, layout).instrument(span).await {
            Ok(rec) => {
                let id = rec.id.clone();
                tracing::info!(sandbox = %id, ips = ?rec.ips, "pod sandbox ready");
                self.index()
                    .sandboxes
                    .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(rec)));
                Ok(RunPodSandboxResponse { pod_sandbox_id: id })
            }
            Err((err, None)) => {
                self.index().names.remove(&key);
                tracing::warn!(sandbox = %rec.id, %err, "RunPodSandbox failed; cleaned up");
                Err(err)
            }
            Err((err, Some(left))) => {
                // Listed (NOTREADY) and keeping its name, so the kubelet's RemovePodSandbox can finish it.
                self.index()
                    .sandboxes
                    .insert(left.id.clone(), Arc::new(tokio::sync::Mutex::new(left)));
                Err(err)
            }
        }
    }

    /// Sets up everything; on failure undoes all of it (including the record) and returns the error, with
    /// the record when the undo failed too (the sandbox then stays, NOTREADY, for RemovePodSandbox).
    async fn setup(
        &self,
        plan: Plan,
        layout: Arc<CgroupLayout>,
    ) -> std::result::Result<SandboxRecord, (Error, Option<SandboxRecord>)> {
        let mut rec = plan.record;
        // Written first so that a crash mid-setup leaves a NOTREADY record the kubelet can remove.
        self.persist(&rec).await.map_err(|e| (e, None))?;
        let result = self
            .setup_steps(&mut rec, plan.dns, plan.ns, layout.clone())
            .await;
        let Err(err) = result else { return Ok(rec) };
        let network = self.network.clone();
        let store = self.store.clone();
        rec.state = State::NotReady;
        let (rec, cleanup) = match blocking(move || {
            let res =
                teardown(&mut rec, &network, Some(&layout)).and_then(|()| store.delete(&rec.id));
            if res.is_err() {
                let _ = store.put(&rec.id, &rec);
            }
            let busy = busy_parents(&rec, &layout);
            Ok((rec, res.map(|()| busy)))
        })
        .await
        {
            Ok(done) => done,
            Err(join_err) => {
                tracing::error!(%join_err, "cleaning up a failed RunPodSandbox");
                return Err((err, None));
            }
        };
        match cleanup {
            Ok(busy) => {
                for parent in busy {
                    self.hand_off_cgroup_parent(&parent).await;
                }
                Err((err, None))
            }
            Err(cleanup_err) => {
                tracing::error!(sandbox = %rec.id, %cleanup_err, "cleaning up a failed RunPodSandbox; the sandbox stays NOTREADY for RemovePodSandbox");
                Err((err, Some(rec)))
            }
        }
    }

    async fn setup_steps(
        &self,
        rec: &mut SandboxRecord,
        dns: files::Dns,
        ns: namespaces::NsRequest,
        layout: Arc<CgroupLayout>,
    ) -> Result<()> {
        let share_pid = ns.pid;
        let mut host_side = rec.clone();
        let (host_side, res) = blocking(move || {
            let res = setup_host(&mut host_side, &dns, &ns, &layout);
            Ok((host_side, res))
        })
        .await?;
        *rec = host_side;
        res?;
        self.persist(rec).await?;
        if share_pid {
            self.start_pid_holder(rec).await?;
        }

        if let Some(netns) = rec.netns_path.clone() {
            let network = self.network.clone();
            let pod = (
                rec.id.clone(),
                rec.name.clone(),
                rec.namespace.clone(),
                rec.uid.clone(),
            );
            let ports = rec.port_mappings.clone();
            let att = blocking(move || {
                let config = network.select()?;
                let pod = PodRef {
                    sandbox_id: &pod.0,
                    name: &pod.1,
                    namespace: &pod.2,
                    uid: &pod.3,
                };
                Ok(network.attachment(config, &pod, &netns, ports))
            })
            .await?;
            rec.network = Some(att.clone());
            rec.network_attached = true;
            // Persisted before ADD: whatever ADD does, DEL can undo it after a crash.
            self.persist(rec).await?;
            let network = self.network.clone();
            let mut att = att;
            let att =
                blocking(move || network.add(&mut att).map(|()| att).map_err(Error::from)).await?;
            rec.ips = att.ips().iter().map(ToString::to_string).collect();
            rec.network = Some(att);
            let hosts = files::render_hosts(rec.ips.first().map(String::as_str), &rec.hostname);
            let path = rec.dir.join("hosts");
            blocking(move || files::write(&path, &hosts)).await?;
        }
        rec.state = State::Ready;
        rec.setup_complete = true;
        self.persist(rec).await
    }

    /// Starts the init of the pod's shared PID namespace and pins the namespace at `<dir>/ns/pid`. The
    /// holder is persisted before pinning, so that a crash from then on leaves it to RemovePodSandbox.
    async fn start_pid_holder(&self, rec: &mut SandboxRecord) -> Result<()> {
        let (shim, id, dir) = (self.shim_binary.clone(), rec.id.clone(), rec.dir.clone());
        let holder = blocking(move || pid_holder::spawn(&shim, &id, &dir)).await?;
        rec.pid_holder = Some(holder);
        self.persist(rec).await?;
        let ns_dir = rec.dir.join("ns");
        let pin = ns_dir.join("pid");
        let target = pin.clone();
        blocking(move || {
            std::fs::create_dir_all(&ns_dir)
                .map_err(|e| Error::io(format!("creating {}", ns_dir.display()), e))?;
            holder.pin(&target)
        })
        .await?;
        rec.pid_ns_path = Some(pin);
        tracing::info!(pid = holder.pid, "pod PID namespace init started");
        Ok(())
    }

    /// StopPodSandbox, after the pod's containers are stopped: CNI DEL (port mappings and the pod IP are
    /// released), NOTREADY. The namespaces stay pinned until [`SandboxManager::remove`]. Idempotent.
    pub async fn stop(&self, id: &str) -> Result<()> {
        self.stop_reporting(id).await.map(|_| ())
    }

    /// [`SandboxManager::stop`]; true when this call took the sandbox from READY to NOTREADY (so that its
    /// STOPPED event is sent once).
    pub async fn stop_reporting(&self, id: &str) -> Result<bool> {
        let Some(entry) = self.entry(id) else {
            return Ok(false);
        };
        let mut rec = entry.lock().await;
        if rec.removed {
            return Ok(false);
        }
        let was_ready = rec.state == State::Ready;
        let network = self.network.clone();
        let mut copy = rec.clone();
        let (copy, res) = blocking(move || {
            let res = detach_network(&mut copy, &network);
            Ok((copy, res))
        })
        .await?;
        *rec = copy;
        rec.state = State::NotReady;
        self.persist(&rec).await?;
        if res.is_ok() {
            tracing::info!(sandbox = %id, "pod sandbox stopped");
        }
        res.map(|()| was_ready)
    }

    /// RemovePodSandbox, after the pod's containers are removed: nothing of the pod is left. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        self.remove_reporting(id).await.map(|_| ())
    }

    /// [`SandboxManager::remove`]; true when this call removed the sandbox (so that its DELETED event is
    /// sent once).
    pub async fn remove_reporting(&self, id: &str) -> Result<bool> {
        let Some(entry) = self.entry(id) else {
            return Ok(false);
        };
        let mut rec = entry.lock().await;
        if rec.removed {
            return Ok(false);
        }
        let layout = self.cgroups.clone().ok();
        let network = self.network.clone();
        let store = self.store.clone();
        let mut copy = rec.clone();
        copy.state = State::NotReady;
        let (copy, res) = blocking(move || {
            let res = teardown(&mut copy, &network, layout.as_deref())
                .and_then(|()| store.delete(&copy.id));
            if res.is_err() {
                // Keep what was undone so far, so a retry does not redo it.
                let _ = store.put(&copy.id, &copy);
            }
            let busy = layout
                .as_deref()
                .map(|l| busy_parents(&copy, l))
                .unwrap_or_default();
            Ok((copy, res.map(|()| busy)))
        })
        .await?;
        *rec = copy;
        let busy_parents = res?;
        rec.removed = true;
        let key = rec.name_key();
        drop(rec);
        {
            let mut index = self.index();
            index.sandboxes.remove(id);
            if index.names.get(&key).is_some_and(|owner| owner == id) {
                index.names.remove(&key);
            }
        }
        tracing::info!(sandbox = %id, "pod sandbox removed");
        for parent in busy_parents {
            self.hand_off_cgroup_parent(&parent).await;
        }
        Ok(true)
    }

    /// Makes a live sandbox below `parent` responsible for removing it, so that the last pod out removes
    /// a parent cgroup berth created.
    async fn hand_off_cgroup_parent(&self, parent: &str) {
        let prefix = format!("{parent}/");
        let entries: Vec<Entry> = self.index().sandboxes.values().cloned().collect();
        for entry in entries {
            let mut rec = entry.lock().await;
            if rec.removed || !rec.cgroup_path.starts_with(&prefix) {
                continue;
            }
            if !rec.cgroup_created.iter().any(|p| p == parent) {
                rec.cgroup_created.insert(0, parent.to_owned());
                if let Err(err) = self.persist(&rec).await {
                    tracing::warn!(sandbox = %rec.id, %err, "persisting cgroup parent hand-off");
                }
            }
            return;
        }
        // Every pod below it went away meanwhile: the last one out is us.
        if let Ok(layout) = self.cgroups.clone() {
            let parent = parent.to_owned();
            let _ = blocking(move || {
                layout.remove_if_unused(&parent);
                if layout.exists(&parent) {
                    tracing::info!(cgroup = %parent, "parent cgroup is in use by something other than a berth pod; left in place");
                }
                Ok(())
            })
            .await;
        }
    }

    /// The node's cgroup hierarchies, detected once when the manager opened; `None` when none was found.
    pub fn cgroup_layout(&self) -> Option<Arc<CgroupLayout>> {
        self.cgroups.clone().ok()
    }

    /// PodSandboxStatus. `container_statuses` is filled by the caller when verbose.
    pub async fn status(&self, req: PodSandboxStatusRequest) -> Result<PodSandboxStatusResponse> {
        let id = self.resolve_id(&req.pod_sandbox_id).await?;
        let rec = self.locked_record(&id).await?;
        let mut info = HashMap::new();
        if req.verbose {
            info.insert("info".to_string(), rec.verbose_info().to_string());
        }
        Ok(PodSandboxStatusResponse {
            status: Some(rec.to_status()),
            info,
            containers_statuses: Vec::new(),
            timestamp: now_ns(),
        })
    }

    /// ListPodSandbox with its filter.
    pub async fn list(&self, req: ListPodSandboxRequest) -> Result<ListPodSandboxResponse> {
        let filter = req.filter.unwrap_or_default();
        let entries: Vec<Entry> = {
            let index = self.index();
            if filter.id.is_empty() {
                index.sandboxes.values().cloned().collect()
            } else {
                index
                    .sandboxes
                    .iter()
                    .filter(|(id, _)| id.starts_with(&filter.id))
                    .map(|(_, e)| e.clone())
                    .collect()
            }
        };
        let mut items = Vec::new();
        for entry in entries {
            let rec = entry.lock().await;
            if !rec.removed && rec.matches(&filter) {
                items.push(rec.to_list_item());
            }
        }
        items.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(ListPodSandboxResponse { items })
    }

    /// Resolves a full id or a unique prefix to the full id (NotFound / InvalidArgument when ambiguous).
    pub async fn resolve_id(&self, id_or_prefix: &str) -> Result<String> {
        let index = self.index();
        crate::id::resolve_prefix("pod sandbox", index.sandboxes.keys(), id_or_prefix)
    }

    async fn locked_record(&self, id: &str) -> Result<SandboxRecord> {
        let not_found = || Error::NotFound(format!("pod sandbox {id:?} not found"));
        let entry = self.entry(id).ok_or_else(not_found)?;
        let rec = entry.lock().await;
        if rec.removed {
            return Err(not_found());
        }
        Ok(rec.clone())
    }

    /// What containers of sandbox `id` need.
    pub async fn info(&self, id: &str) -> Result<SandboxInfo> {
        let id = self.resolve_id(id).await?;
        let rec = self.locked_record(&id).await?;
        Ok(sandbox_info(&rec))
    }

    /// What containers of sandbox `id` need, for a request (`what`) that needs the pod ready.
    pub async fn ready_info(&self, id: &str, what: &str) -> Result<SandboxInfo> {
        let pod = self.info(id).await?;
        if !pod.ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {}: {what}: the pod is not ready",
                pod.id
            )));
        }
        Ok(pod)
    }

    /// NetworkReady condition: (ready, reason message when not).
    pub fn network_status(&self) -> (bool, String) {
        self.network.status()
    }
}

/// Runs blocking work (file I/O, mounts, CNI plugins) off the tokio workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

fn sandbox_info(rec: &SandboxRecord) -> SandboxInfo {
    SandboxInfo {
        id: rec.id.clone(),
        metadata: rec.metadata(),
        labels: rec.labels.clone(),
        ready: rec.state == State::Ready,
        netns_path: rec.netns_path.clone(),
        ipc_ns_path: rec.ipc_ns_path.clone(),
        uts_ns_path: rec.uts_ns_path.clone(),
        pid_namespace: pid_namespace(rec),
        cgroup_path: rec.cgroup_path.clone(),
        log_directory: rec.log_directory.clone(),
        hostname_file: rec.dir.join("hostname"),
        hosts_file: rec.dir.join("hosts"),
        resolv_conf_file: Some(rec.dir.join("resolv.conf")),
        shm_path: rec.shm_path.clone(),
        sysctls: rec.sysctls.clone(),
    }
}

/// How the pod's containers get their PID namespace.
fn pid_namespace(rec: &SandboxRecord) -> PidNamespace {
    match (NamespaceMode::try_from(rec.pid_mode), &rec.pid_ns_path) {
        (Ok(NamespaceMode::Node), _) => PidNamespace::Host,
        (Ok(NamespaceMode::Pod), Some(pin)) => PidNamespace::Pod(pin.clone()),
        _ => PidNamespace::PerContainer,
    }
}

/// The host side of a new pod: directory, pod files, namespaces, shm, cgroup, log directory. Fills in
/// `rec` as it goes, so that [`teardown`] can undo a partial setup. Blocking.
fn setup_host(
    rec: &mut SandboxRecord,
    dns: &files::Dns,
    ns: &namespaces::NsRequest,
    layout: &CgroupLayout,
) -> Result<()> {
    std::fs::create_dir_all(&rec.dir)
        .map_err(|e| Error::io(format!("creating {}", rec.dir.display()), e))?;
    files::write(&rec.dir.join("hostname"), &format!("{}\n", rec.hostname))?;
    match files::render_resolv_conf(dns) {
        Some(text) => files::write(&rec.dir.join("resolv.conf"), &text)?,
        None => files::copy_host_file(Path::new("/etc/resolv.conf"), &rec.dir.join("resolv.conf"))?,
    }
    if ns.net {
        files::write(
            &rec.dir.join("hosts"),
            &files::render_hosts(None, &rec.hostname),
        )?;
    } else {
        files::copy_host_file(Path::new("/etc/hosts"), &rec.dir.join("hosts"))?;
    }
    if !rec.log_directory.as_os_str().is_empty() {
        std::fs::create_dir_all(&rec.log_directory).map_err(|e| {
            Error::io(
                format!("creating pod log directory {}", rec.log_directory.display()),
                e,
            )
        })?;
    }
    let pins = namespaces::create_pinned(&rec.dir.join("ns"), ns)?;
    rec.netns_path = pins.net;
    rec.ipc_ns_path = pins.ipc;
    rec.uts_ns_path = pins.uts;
    if ns.ipc {
        let shm = rec.dir.join("shm");
        rec.shm_path = Some(shm.clone());
        files::mount_shm(&shm)?;
    }
    // Recorded before creation: removal of the pod cgroup is harmless when it was never made.
    rec.cgroup_created = layout.create(&rec.cgroup_path)?;
    Ok(())
}

/// CNI DEL if one is owed. A failure is forgiven when the network namespace is already gone (nothing is
/// left in it to clean up); otherwise DEL stays owed and the error is returned. Blocking.
fn detach_network(rec: &mut SandboxRecord, network: &Network) -> Result<()> {
    if !rec.network_attached {
        return Ok(());
    }
    let Some(att) = &rec.network else {
        rec.network_attached = false;
        return Ok(());
    };
    match network.del(att) {
        Ok(()) => {}
        Err(err) if !namespaces::is_pinned(&att.netns) => {
            tracing::warn!(sandbox = %rec.id, %err, "CNI DEL failed but the network namespace is gone; giving up on it");
        }
        Err(err) => return Err(err.into()),
    }
    rec.network_attached = false;
    Ok(())
}

/// Undoes everything a sandbox owns on the node: CNI, the PID namespace init (and with it whatever still
/// runs in that namespace), namespace pins, shm, cgroup, its directory. Idempotent; stops at the first
/// failure so that nothing still mounted is deleted. Blocking.
fn teardown(
    rec: &mut SandboxRecord,
    network: &Network,
    layout: Option<&CgroupLayout>,
) -> Result<()> {
    detach_network(rec, network)?;
    if let Some(holder) = rec.pid_holder {
        holder.kill()?;
        rec.pid_holder = None;
    }
    // Also a pin file left behind by a failed setup.
    namespaces::unpin(&rec.dir.join("ns").join("pid"))?;
    for pin in [
        &rec.netns_path,
        &rec.ipc_ns_path,
        &rec.uts_ns_path,
        &rec.pid_ns_path,
    ]
    .into_iter()
    .flatten()
    {
        namespaces::unpin(pin)?;
    }
    if let Some(shm) = &rec.shm_path {
        files::unmount_shm(shm)?;
    }
    if let Some(layout) = layout {
        layout.remove(&rec.cgroup_path, &rec.cgroup_created)?;
    }
    let ns_dir = rec.dir.join("ns");
    match std::fs::remove_dir(&ns_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}", ns_dir.display()), e)),
    }
    match std::fs::remove_dir_all(&rec.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", rec.dir.display()), e)),
    }
}

/// Parent cgroups berth created for `rec` that other pods still use: they become those pods' to remove.
fn busy_parents(rec: &SandboxRecord, layout: &CgroupLayout) -> Vec<String> {
    rec.cgroup_created
        .iter()
        .filter(|p| **p != rec.cgroup_path && layout.exists(p))
        .cloned()
        .collect()
}

/// Whether a READY sandbox still has its namespaces, its PID namespace init and shm (they vanish with a
/// reboot: /run is tmpfs; the init may also have been killed).
fn intact(rec: &SandboxRecord) -> bool {
    let holder_ok = match (NamespaceMode::try_from(rec.pid_mode), rec.pid_holder) {
        (_, Some(holder)) => holder.is_alive(),
        (Ok(NamespaceMode::Pod), None) => false,
        _ => true,
    };
    let pins_ok = [
        &rec.netns_path,
        &rec.ipc_ns_path,
        &rec.uts_ns_path,
        &rec.pid_ns_path,
    ]
    .into_iter()
    .flatten()
    .all(|p| namespaces::is_pinned(p));
    let shm_ok = rec.shm_path.as_ref().is_none_or(|p| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
    });
    holder_ok && pins_ok && shm_ok
}
