//! The persisted container record and its conversion to CRI types.

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_cri::v1::{
    Container, ContainerMetadata, ContainerResources, ContainerState, ContainerStatus,
    ContainerUser, HugepageLimit, ImageSpec, LinuxContainerResources, LinuxContainerUser, Mount,
};
use serde::{Deserialize, Serialize};

/// Container lifecycle state as berth records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Created by the shim, process not started.
    Created,
    /// Process running.
    Running,
    /// Process exited (exit code and reason recorded).
    Exited,
    /// Unknown (never persisted on purpose; reserved).
    Unknown,
}

impl State {
    /// The CRI enum value.
    pub fn to_cri(self) -> ContainerState {
        match self {
            State::Created => ContainerState::ContainerCreated,
            State::Running => ContainerState::ContainerRunning,
            State::Exited => ContainerState::ContainerExited,
            State::Unknown => ContainerState::ContainerUnknown,
        }
    }

    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Exited => "exited",
            State::Unknown => "unknown",
        }
    }
}

/// A CRI mount as recorded (for ContainerStatus).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Path in the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Read-only bind.
    pub readonly: bool,
    /// CRI MountPropagation value.
    pub propagation: i32,
}

/// CRI LinuxContainerResources as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesRecord {
    /// CFS period.
    pub cpu_period: i64,
    /// CFS quota.
    pub cpu_quota: i64,
    /// CPU shares.
    pub cpu_shares: i64,
    /// Memory limit.
    pub memory_limit_in_bytes: i64,
    /// oom_score_adj requested.
    pub oom_score_adj: i64,
    /// cpuset.cpus.
    pub cpuset_cpus: String,
    /// cpuset.mems.
    pub cpuset_mems: String,
    /// (page size, limit) pairs.
    pub hugepage_limits: Vec<(String, u64)>,
    /// cgroup v2 unified keys.
    pub unified: HashMap<String, String>,
    /// Memory + swap limit.
    pub memory_swap_limit_in_bytes: i64,
}

impl From<&LinuxContainerResources> for ResourcesRecord {
    fn from(r: &LinuxContainerResources) -> Self {
        Self {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit_in_bytes,
            oom_score_adj: r.oom_score_adj,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            hugepage_limits: r
                .hugepage_limits
                .iter()
                .map(|h| (h.page_size.clone(), h.limit))
                .collect(),
            unified: r.unified.clone(),
            memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        }
    }
}

impl From<&ResourcesRecord> for LinuxContainerResources {
    fn from(r: &ResourcesRecord) -> Self {
        Self {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit_in_bytes,
            oom_score_adj: r.oom_score_adj,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            hugepage_limits: r
                .hugepage_limits
                .iter()
                .map(|(page_size, limit)| HugepageLimit {
                    page_size: page_size.clone(),
                    limit: *limit,
                })
                .collect(),
            unified: r.unified.clone(),
            memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        }
    }
}

/// The attach socket of the container whose bundle is `bundle`.
pub fn attach_socket(bundle: &std::path::Path) -> PathBuf {
    bundle.join("attach.sock")
}

/// Everything berth keeps about a container. Persisted as `<root>/store/containers/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Container id.
    pub id: String,
    /// Owning sandbox.
    pub sandbox_id: String,
    /// CRI metadata name.
    pub name: String,
    /// CRI metadata attempt.
    pub attempt: u32,
    /// The reserved unique name `<name>_<pod>_<namespace>_<uid>_<attempt>`.
    pub full_name: String,
    /// The image reference the kubelet gave.
    pub image_ref: String,
    /// The resolved image id (config digest).
    pub image_id: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// Absolute log path; empty for no log.
    pub log_path: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// Nanoseconds; 0 until started.
    pub started_at: i64,
    /// Nanoseconds; 0 until exited.
    pub finished_at: i64,
    /// Exit code once exited.
    pub exit_code: i32,
    /// "Completed", "Error", "OOMKilled", "Unknown".
    pub reason: String,
    /// Human readable detail.
    pub message: String,
    /// Lifecycle state.
    pub state: State,
    /// CRI mounts.
    pub mounts: Vec<MountRecord>,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Init pid (0 when unknown).
    pub pid: u32,
    /// Signal StopContainer sends first.
    pub stop_signal: u32,
    /// cgroupsPath of the spec, relative to the cgroup roots.
    pub cgroup_path: String,
    /// Resources last applied.
    pub resources: ResourcesRecord,
    /// The container asked for a TTY.
    pub tty: bool,
    /// The container asked for stdin.
    pub stdin: bool,
    /// Its stdin is closed when the first attach client's stdin ends.
    #[serde(default)]
    pub stdin_once: bool,
    /// The process identity after the shim resolved it: (uid, gid, additional gids).
    #[serde(default)]
    pub user: Option<(u32, u32, Vec<u32>)>,
}

impl ContainerRecord {
    /// The shim's socket.
    pub fn shim_socket(&self) -> PathBuf {
        self.bundle.join("shim.sock")
    }

    /// The socket where the shim serves attach clients (container stdio).
    pub fn attach_socket(&self) -> PathBuf {
        attach_socket(&self.bundle)
    }

    fn metadata(&self) -> ContainerMetadata {
        ContainerMetadata {
            name: self.name.clone(),
            attempt: self.attempt,
        }
    }

    fn image_spec(&self) -> ImageSpec {
        ImageSpec {
            image: self.image_ref.clone(),
            user_specified_image: self.image_ref.clone(),
            ..Default::default()
        }
    }

    /// The ListContainers entry.
    pub fn to_container(&self) -> Container {
        Container {
            id: self.id.clone(),
            pod_sandbox_id: self.sandbox_id.clone(),
            metadata: Some(self.metadata()),
            image: Some(self.image_spec()),
            image_ref: self.image_id.clone(),
            state: self.state.to_cri() as i32,
            created_at: self.created_at,
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            image_id: self.image_id.clone(),
        }
    }

    /// The ContainerStatus body.
    pub fn to_status(&self) -> ContainerStatus {
        ContainerStatus {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: self.state.to_cri() as i32,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            exit_code: self.exit_code,
            image: Some(self.image_spec()),
            image_ref: self.image_id.clone(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            mounts: self
                .mounts
                .iter()
                .map(|m| Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    propagation: m.propagation,
                    ..Default::default()
                })
                .collect(),
            log_path: self.log_path.clone(),
            resources: Some(ContainerResources {
                linux: Some((&self.resources).into()),
                windows: None,
            }),
            image_id: self.image_id.clone(),
            user: self.user.as_ref().map(|(uid, gid, groups)| ContainerUser {
                linux: Some(LinuxContainerUser {
                    uid: i64::from(*uid),
                    gid: i64::from(*gid),
                    supplemental_groups: groups.iter().map(|g| i64::from(*g)).collect(),
                }),
            }),
        }
    }

    /// Marks the container exited.
    pub fn set_exited(&mut self, exit_code: i32, finished_at: i64, reason: &str, message: &str) {
        self.state = State::Exited;
        self.exit_code = exit_code;
        self.finished_at = finished_at;
        self.reason = reason.to_string();
        self.message = message.to_string();
    }
}

/// Now in nanoseconds since the epoch.
pub fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}
