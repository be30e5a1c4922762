//! The persisted sandbox record and its CRI views (status, list item, filter).

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_cri::v1::{
    LinuxPodSandboxStatus, Namespace, NamespaceOption, PodIp, PodSandbox, PodSandboxFilter,
    PodSandboxMetadata, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus,
};
use serde::{Deserialize, Serialize};

use super::pid_holder::Holder;
use crate::network::{Attachment, PortMapping};

/// Sandbox state as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Set up completely and not stopped.
    Ready,
    /// Being set up, stopped, or lost its namespaces.
    NotReady,
}

/// Everything berthd keeps about one sandbox, in `<root>/store/sandboxes/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Sandbox id.
    pub id: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// Attempt number from the kubelet.
    pub attempt: u32,
    /// Current state.
    pub state: State,
    /// False until RunPodSandbox finished; a record that stays false was interrupted by a crash.
    pub setup_complete: bool,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Pod labels.
    pub labels: HashMap<String, String>,
    /// Pod annotations.
    pub annotations: HashMap<String, String>,
    /// Runtime handler asked for.
    pub runtime_handler: String,
    /// Pod hostname.
    pub hostname: String,
    /// Kubelet's pod log directory.
    pub log_directory: PathBuf,
    /// CRI NamespaceMode of network, pid and ipc.
    pub network_mode: i32,
    /// See `network_mode`.
    pub pid_mode: i32,
    /// See `network_mode`.
    pub ipc_mode: i32,
    /// `<state>/sandboxes/<id>`.
    pub dir: PathBuf,
    /// Pinned network namespace.
    pub netns_path: Option<PathBuf>,
    /// Pinned IPC namespace.
    pub ipc_ns_path: Option<PathBuf>,
    /// Pinned UTS namespace.
    pub uts_ns_path: Option<PathBuf>,
    /// Pinned PID namespace the pod's containers share (NamespaceMode::POD): `<dir>/ns/pid`.
    #[serde(default)]
    pub pid_ns_path: Option<PathBuf>,
    /// The `berth-shim pod-init` process that is pid 1 of that namespace.
    #[serde(default)]
    pub pid_holder: Option<Holder>,
    /// Pod /dev/shm tmpfs.
    pub shm_path: Option<PathBuf>,
    /// Pod cgroup, relative to the cgroup root.
    pub cgroup_path: String,
    /// Cgroups (pod cgroup and parents) berthd created for this pod and removes with it.
    pub cgroup_created: Vec<String>,
    /// Pod sysctls.
    pub sysctls: HashMap<String, String>,
    /// Port mappings with a host port.
    pub port_mappings: Vec<PortMapping>,
    /// The CNI attachment (config, args, result), kept for DEL.
    pub network: Option<Attachment>,
    /// True while CNI DEL is still owed (ADD started and DEL has not succeeded).
    pub network_attached: bool,
    /// Pod IPs, IPv4 first.
    pub ips: Vec<String>,
    /// Set on the in-memory copy once removed, so waiters on its lock see it is gone.
    #[serde(skip)]
    pub removed: bool,
}

impl SandboxRecord {
    /// `name_namespace_uid_attempt`: the key the kubelet cannot reuse while the sandbox exists.
    pub fn name_key(&self) -> String {
        name_key(&self.name, &self.namespace, &self.uid, self.attempt)
    }

    /// CRI metadata.
    pub fn metadata(&self) -> PodSandboxMetadata {
        PodSandboxMetadata {
            name: self.name.clone(),
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            attempt: self.attempt,
        }
    }

    /// CRI state value.
    pub fn cri_state(&self) -> i32 {
        match self.state {
            State::Ready => PodSandboxState::SandboxReady as i32,
            State::NotReady => PodSandboxState::SandboxNotready as i32,
        }
    }

    /// PodSandboxStatus.
    pub fn to_status(&self) -> PodSandboxStatus {
        let mut ips = self.ips.iter();
        let network = PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| PodIp { ip: ip.clone() }).collect(),
        };
        PodSandboxStatus {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: self.cri_state(),
            created_at: self.created_at,
            network: Some(network),
            linux: Some(LinuxPodSandboxStatus {
                namespaces: Some(Namespace {
                    options: Some(NamespaceOption {
                        network: self.network_mode,
                        pid: self.pid_mode,
                        ipc: self.ipc_mode,
                        ..Default::default()
                    }),
                }),
            }),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            runtime_handler: self.runtime_handler.clone(),
        }
    }

    /// ListPodSandbox item.
    pub fn to_list_item(&self) -> PodSandbox {
        PodSandbox {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: self.cri_state(),
            created_at: self.created_at,
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            runtime_handler: self.runtime_handler.clone(),
        }
    }

    /// The verbose `info` of PodSandboxStatus: where things are, no pids.
    pub fn verbose_info(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "setupComplete": self.setup_complete,
            "netnsPath": self.netns_path,
            "ipcNsPath": self.ipc_ns_path,
            "utsNsPath": self.uts_ns_path,
            "pidNsPath": self.pid_ns_path,
            "shmPath": self.shm_path,
            "cgroupPath": self.cgroup_path,
            "hostname": self.hostname,
            "logDirectory": self.log_directory,
            "portMappings": self.port_mappings,
            "cni": self.network.as_ref().map(|n| serde_json::json!({
                "config": n.config.to_json(),
                "ifname": n.ifname,
                "args": n.args,
                "result": n.result,
                "attached": self.network_attached,
            })),
        })
    }

    /// Whether the ListPodSandbox filter selects this sandbox (every given criterion must match).
    pub fn matches(&self, filter: &PodSandboxFilter) -> bool {
        if !filter.id.is_empty() && !self.id.starts_with(&filter.id) {
            return false;
        }
        if let Some(state) = &filter.state {
            if state.state != self.cri_state() {
                return false;
            }
        }
        filter
            .label_selector
            .iter()
            .all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// See [`SandboxRecord::name_key`].
pub fn name_key(name: &str, namespace: &str, uid: &str, attempt: u32) -> String {
    format!("{name}_{namespace}_{uid}_{attempt}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_cri::v1::PodSandboxStateValue;

    pub(crate) fn sample(id: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            attempt: 0,
            state: State::Ready,
            setup_complete: true,
            created_at: 5,
            labels: HashMap::from([
                ("app".into(), "web".into()),
                ("tier".into(), "front".into()),
            ]),
            annotations: HashMap::new(),
            runtime_handler: String::new(),
            hostname: "web".into(),
            log_directory: PathBuf::new(),
            network_mode: 0,
            pid_mode: 1,
            ipc_mode: 0,
            dir: PathBuf::from("/run/berth/sandboxes").join(id),
            netns_path: None,
            ipc_ns_path: None,
            uts_ns_path: None,
            pid_ns_path: None,
            pid_holder: None,
            shm_path: None,
            cgroup_path: format!("/berth/berth-{id}"),
            cgroup_created: vec![],
            sysctls: HashMap::new(),
            port_mappings: vec![],
            network: None,
            network_attached: false,
            ips: vec!["10.0.0.2".into(), "fd00::2".into()],
            removed: false,
        }
    }

    #[test]
    fn filter_by_id_prefix_state_and_labels() {
        let rec = sample("abcdef");
        let f =
            |id: &str, state: Option<PodSandboxState>, labels: &[(&str, &str)]| PodSandboxFilter {
                id: id.into(),
                state: state.map(|s| PodSandboxStateValue { state: s as i32 }),
                label_selector: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
        assert!(rec.matches(&f("", None, &[])));
        assert!(rec.matches(&f("abc", None, &[])));
        assert!(!rec.matches(&f("abd", None, &[])));
        assert!(rec.matches(&f("", Some(PodSandboxState::SandboxReady), &[])));
        assert!(!rec.matches(&f("", Some(PodSandboxState::SandboxNotready), &[])));
        assert!(rec.matches(&f("", None, &[("app", "web"), ("tier", "front")])));
        assert!(!rec.matches(&f("", None, &[("app", "web"), ("tier", "back")])));
        assert!(!rec.matches(&f("", None, &[("missing", "")])));
    }

    #[test]
    fn status_splits_ips_and_keeps_namespace_modes() {
        let status = sample("abc").to_status();
        let net = status.network.unwrap();
        assert_eq!(net.ip, "10.0.0.2");
        assert_eq!(
            net.additional_ips,
            vec![PodIp {
                ip: "fd00::2".into()
            }]
        );
        let opts = status.linux.unwrap().namespaces.unwrap().options.unwrap();
        assert_eq!((opts.network, opts.pid, opts.ipc), (0, 1, 0));
        assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
        let json = serde_json::to_string(&sample("abc")).unwrap();
        let back: SandboxRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.name_key(), "web_default_u1_0");
    }
}
