//! Validating a RunPodSandbox request into a plan: namespace modes, hostname, port mappings, DNS and the
//! initial sandbox record.

use std::path::{Path, PathBuf};

use k8s_cri::v1::*;

use super::record::{SandboxRecord, State};
use super::{files, namespaces, now_ns};
use crate::error::{Error, Result};
use crate::network::PortMapping;
use crate::runtime::cgroup;

/// A validated RunPodSandbox request: the initial record and what setup needs besides it.
pub(super) struct Plan {
    pub(super) record: SandboxRecord,
    pub(super) dns: files::Dns,
    pub(super) ns: namespaces::NsRequest,
}

impl Plan {
    pub(super) fn from_request(req: RunPodSandboxRequest, sandboxes_dir: &Path) -> Result<Self> {
        let invalid = |m: &str| Error::InvalidArgument(m.to_owned());
        let config = req
            .config
            .ok_or_else(|| invalid("pod sandbox config is required"))?;
        let md = config
            .metadata
            .ok_or_else(|| invalid("pod sandbox metadata is required"))?;
        for (field, value) in [
            ("name", &md.name),
            ("namespace", &md.namespace),
            ("uid", &md.uid),
        ] {
            if value.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "pod sandbox metadata.{field} must not be empty"
                )));
            }
        }
        let linux = config.linux.unwrap_or_default();
        let modes = linux
            .security_context
            .as_ref()
            .and_then(|s| s.namespace_options.clone());
        let (network_mode, pid_mode, ipc_mode) = match modes {
            Some(o) => (o.network, o.pid, o.ipc),
            None => (
                NamespaceMode::Pod as i32,
                NamespaceMode::Container as i32,
                NamespaceMode::Pod as i32,
            ),
        };
        let own = |mode: i32, what: &str| -> Result<bool> {
            match NamespaceMode::try_from(mode) {
                Ok(NamespaceMode::Pod | NamespaceMode::Container) => Ok(true),
                Ok(NamespaceMode::Node) => Ok(false),
                _ => Err(Error::InvalidArgument(format!(
                    "{what} namespace mode {mode} is not supported for a pod"
                ))),
            }
        };
        let own_net = own(network_mode, "network")?;
        let own_ipc = own(ipc_mode, "IPC")?;
        let share_pid = match NamespaceMode::try_from(pid_mode) {
            Ok(NamespaceMode::Container | NamespaceMode::Node) => false,
            Ok(NamespaceMode::Pod) => true,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "PID namespace mode {pid_mode} is not supported for a pod"
                )))
            }
        };

        // As containerd: a pod without a hostname of its own takes the node's (in its own UTS namespace).
        let hostname = if own_net && !config.hostname.is_empty() {
            config.hostname.clone()
        } else {
            nix::unistd::gethostname()
                .map_err(|e| Error::io("reading the host's hostname", e.into()))?
                .to_string_lossy()
                .into_owned()
        };
        if hostname.len() > 64 || hostname.contains(['/', '\0', '\n']) {
            return Err(Error::InvalidArgument(format!(
                "pod hostname {hostname:?} is not a valid hostname"
            )));
        }

        let mut port_mappings = Vec::new();
        for p in &config.port_mappings {
            if p.host_port <= 0 {
                continue;
            }
            let protocol = match Protocol::try_from(p.protocol) {
                Ok(Protocol::Tcp) => "tcp",
                Ok(Protocol::Udp) => "udp",
                Ok(Protocol::Sctp) => "sctp",
                Err(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "port mapping protocol {} is unknown",
                        p.protocol
                    )))
                }
            };
            if !(1..=65535).contains(&p.host_port) || !(1..=65535).contains(&p.container_port) {
                return Err(Error::InvalidArgument(format!(
                    "port mapping {}:{} is out of range",
                    p.host_port, p.container_port
                )));
            }
            port_mappings.push(PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: protocol.into(),
                host_ip: p.host_ip.clone(),
            });
        }
        if !port_mappings.is_empty() && !own_net {
            // hostNetwork pods bind host ports themselves; there is nothing to map.
            port_mappings.clear();
        }

        let id = crate::id::new_id()?;
        let cgroup_path = cgroup::pod_cgroup_path(&linux.cgroup_parent, &id)?;
        let dns = config
            .dns_config
            .map(|d| files::Dns {
                servers: d.servers,
                searches: d.searches,
                options: d.options,
            })
            .unwrap_or_default();
        let ns = namespaces::NsRequest {
            net: own_net,
            ipc: own_ipc,
            uts_hostname: own_net.then(|| hostname.clone()),
            pid: share_pid,
        };
        let record = SandboxRecord {
            dir: sandboxes_dir.join(&id),
            id,
            name: md.name,
            namespace: md.namespace,
            uid: md.uid,
            attempt: md.attempt,
            state: State::NotReady,
            setup_complete: false,
            created_at: now_ns(),
            labels: config.labels,
            annotations: config.annotations,
            runtime_handler: req.runtime_handler,
            hostname,
            log_directory: PathBuf::from(config.log_directory),
            network_mode,
            pid_mode,
            ipc_mode,
            netns_path: None,
            ipc_ns_path: None,
            uts_ns_path: None,
            pid_ns_path: None,
            pid_holder: None,
            shm_path: None,
            cgroup_path,
            cgroup_created: Vec::new(),
            sysctls: linux.sysctls,
            port_mappings,
            network: None,
            network_attached: false,
            ips: Vec::new(),
            removed: false,
        };
        Ok(Self { record, dns, ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::sandbox::{intact, sandbox_info, PidNamespace};

    fn request(ns: Option<NamespaceOption>) -> RunPodSandboxRequest {
        RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "web".into(),
                    uid: "u1".into(),
                    namespace: "default".into(),
                    attempt: 1,
                }),
                hostname: "web-host".into(),
                port_mappings: vec![
                    k8s_cri::v1::PortMapping {
                        protocol: 1,
                        container_port: 53,
                        host_port: 5353,
                        host_ip: String::new(),
                    },
                    k8s_cri::v1::PortMapping {
                        protocol: 0,
                        container_port: 80,
                        host_port: 0,
                        host_ip: String::new(),
                    },
                ],
                linux: Some(LinuxPodSandboxConfig {
                    cgroup_parent: "/kubepods/pod1".into(),
                    security_context: Some(LinuxSandboxSecurityContext {
                        namespace_options: ns,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        }
    }

    fn opts(
        network: NamespaceMode,
        pid: NamespaceMode,
        ipc: NamespaceMode,
    ) -> Option<NamespaceOption> {
        Some(NamespaceOption {
            network: network as i32,
            pid: pid as i32,
            ipc: ipc as i32,
            ..Default::default()
        })
    }

    #[test]
    fn plan_defaults_to_own_namespaces() {
        let plan = Plan::from_request(request(None), Path::new("/run/b/sandboxes")).unwrap();
        assert_eq!(
            plan.ns,
            namespaces::NsRequest {
                net: true,
                ipc: true,
                uts_hostname: Some("web-host".into()),
                pid: false,
            }
        );
        let rec = plan.record;
        assert_eq!(rec.name_key(), "web_default_u1_1");
        assert_eq!(rec.cgroup_path, format!("/kubepods/pod1/berth-{}", rec.id));
        assert_eq!(rec.dir, Path::new("/run/b/sandboxes").join(&rec.id));
        assert_eq!(rec.port_mappings.len(), 1);
        assert_eq!(rec.port_mappings[0].protocol, "udp");
        assert_eq!(rec.pid_mode, NamespaceMode::Container as i32);
    }

    #[test]
    fn pod_without_hostname_takes_the_nodes() {
        let mut req = request(None);
        if let Some(c) = req.config.as_mut() {
            c.hostname.clear();
            // critest-style pod names are longer than a hostname may be; the name must not be used.
            c.metadata.as_mut().unwrap().name = "x".repeat(80);
        }
        let plan = Plan::from_request(req, Path::new("/s")).unwrap();
        let node = nix::unistd::gethostname()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(plan.record.hostname, node);
        assert_eq!(plan.ns.uts_hostname, Some(node));
    }

    #[test]
    fn plan_host_namespaces() {
        let plan = Plan::from_request(
            request(opts(
                NamespaceMode::Node,
                NamespaceMode::Node,
                NamespaceMode::Node,
            )),
            Path::new("/s"),
        )
        .unwrap();
        assert_eq!(plan.ns, namespaces::NsRequest::default());
        assert!(plan.record.port_mappings.is_empty());
        assert_eq!(sandbox_info(&plan.record).pid_namespace, PidNamespace::Host);
    }

    #[test]
    fn plan_pod_pid_and_bad_requests() {
        let pod_pid = request(opts(
            NamespaceMode::Pod,
            NamespaceMode::Pod,
            NamespaceMode::Pod,
        ));
        let plan = Plan::from_request(pod_pid, Path::new("/s")).unwrap();
        assert!(plan.ns.pid, "NamespaceMode::POD shares a PID namespace");
        assert_eq!(plan.record.pid_mode, NamespaceMode::Pod as i32);
        // Until the namespace is pinned, containers get none of it.
        assert_eq!(
            sandbox_info(&plan.record).pid_namespace,
            PidNamespace::PerContainer
        );
        let mut pinned = plan.record.clone();
        pinned.pid_ns_path = Some(pinned.dir.join("ns/pid"));
        assert_eq!(
            sandbox_info(&pinned).pid_namespace,
            PidNamespace::Pod(pinned.dir.join("ns/pid"))
        );
        assert!(
            !intact(&plan.record),
            "a POD-mode record without init is not intact"
        );
        let mut no_uid = request(None);
        if let Some(md) = no_uid.config.as_mut().and_then(|c| c.metadata.as_mut()) {
            md.uid.clear();
        }
        assert!(matches!(
            Plan::from_request(no_uid, Path::new("/s")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Plan::from_request(RunPodSandboxRequest::default(), Path::new("/s")),
            Err(Error::InvalidArgument(_))
        ));
        let target = request(opts(
            NamespaceMode::Target,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ));
        assert!(matches!(
            Plan::from_request(target, Path::new("/s")),
            Err(Error::InvalidArgument(_))
        ));
    }
}
