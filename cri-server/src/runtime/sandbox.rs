//! The sandbox manager: pod namespaces, pod cgroup, CNI, pod files, sandbox records. (SKELETON to be filled.)

use std::path::PathBuf;

use k8s_cri::v1::*;

use crate::config::Config;
use crate::error::{Error, Result};

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

/// Owns every sandbox: creation, teardown, status, recovery after a berthd restart.
pub struct SandboxManager {}

impl SandboxManager {
    /// Loads sandbox records and reconciles them with what still exists on the node.
    pub async fn open(config: &Config) -> Result<Self> {
        let _ = config;
        Ok(Self {})
    }

    /// RunPodSandbox.
    pub async fn run(&self, _req: RunPodSandboxRequest) -> Result<RunPodSandboxResponse> {
        Err(Error::Internal("RunPodSandbox not implemented".into()))
    }

    /// StopPodSandbox, after the pod's containers are stopped: CNI DEL, namespaces released. Idempotent.
    pub async fn stop(&self, _id: &str) -> Result<()> {
        Err(Error::Internal("StopPodSandbox not implemented".into()))
    }

    /// RemovePodSandbox, after the pod's containers are removed: nothing of the pod is left. Idempotent.
    pub async fn remove(&self, _id: &str) -> Result<()> {
        Err(Error::Internal("RemovePodSandbox not implemented".into()))
    }

    /// PodSandboxStatus. `container_statuses` is filled by the caller when verbose.
    pub async fn status(&self, _req: PodSandboxStatusRequest) -> Result<PodSandboxStatusResponse> {
        Err(Error::Internal("PodSandboxStatus not implemented".into()))
    }

    /// ListPodSandbox with its filter.
    pub async fn list(&self, _req: ListPodSandboxRequest) -> Result<ListPodSandboxResponse> {
        Err(Error::Internal("ListPodSandbox not implemented".into()))
    }

    /// Resolves a full id or a unique prefix to the full id (NotFound / InvalidArgument when ambiguous).
    pub async fn resolve_id(&self, id_or_prefix: &str) -> Result<String> {
        Err(Error::NotFound(format!("pod sandbox {id_or_prefix:?} not found")))
    }

    /// What containers of sandbox `id` need.
    pub async fn info(&self, id: &str) -> Result<SandboxInfo> {
        Err(Error::NotFound(format!("pod sandbox {id:?} not found")))
    }

    /// NetworkReady condition: (ready, reason message when not).
    pub fn network_status(&self) -> (bool, String) {
        (false, "not implemented".into())
    }
}
