//! OCI runtime spec generation: a pure function of the CRI container config, what the pod provides, the
//! image config and a few host facts the caller looked up (device numbers, cgroup version).
//!
//! Defaults follow containerd's CRI plugin: docker's 14 capabilities, containerd's masked and read-only
//! paths, a deny-all device cgroup with the usual character devices allowed. Seccomp as containerd's
//! CRI plugin picks it (see [`seccomp`]): RuntimeDefault, Localhost files, unconfined when unset.

mod linux;
mod mounts;
mod process;
pub mod seccomp;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use k8s_cri::v1::ContainerConfig;
use oci_spec::runtime::{Capability, Process, Root, Spec};

use crate::error::{Error, Result};
use crate::image::record::ImageRuntimeConfig;
use crate::runtime::sandbox::SandboxInfo;

pub use linux::linux_resources;
pub use process::{
    capabilities_from_mask, capability_set, container_user, merge_env, oom_score_adj, process_args,
    DEFAULT_CAPABILITIES, USER_ANNOTATION,
};

/// containerd's default masked paths.
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A CRI device after the caller looked up the host node's type and numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDevice {
    /// Path inside the container.
    pub container_path: String,
    /// 'c' or 'b'.
    pub kind: char,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Permission bits of the node.
    pub file_mode: u32,
    /// cgroup access, e.g. "rwm".
    pub permissions: String,
}

/// Everything the spec is built from.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// Container id (names the cgroup).
    pub id: &'a str,
    /// The CRI container config.
    pub config: &'a ContainerConfig,
    /// The pod.
    pub sandbox: &'a SandboxInfo,
    /// The image's runtime config.
    pub image: &'a ImageRuntimeConfig,
    /// The pod's hostname (for the HOSTNAME variable); empty when unknown.
    pub hostname: &'a str,
    /// CRI devices with their host numbers.
    pub devices: &'a [ResolvedDevice],
    /// PID namespace of the target container for NamespaceMode::TARGET.
    pub target_pid_ns: Option<PathBuf>,
    /// Capabilities berthd itself may hold (its bounding set): what privileged containers and "ALL" get.
    pub host_capabilities: &'a HashSet<Capability>,
    /// The host runs the unified cgroup hierarchy (a private cgroup namespace is created then).
    pub cgroup_v2: bool,
}

/// Builds the OCI spec for a container.
pub fn build_spec(input: &SpecInput<'_>) -> Result<Spec> {
    let config = input.config;
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default();
    let linux_cfg = config.linux.clone().unwrap_or_default();
    let sec = linux_cfg.security_context.clone().unwrap_or_default();
    let resources = linux_cfg.resources.clone().unwrap_or_default();

    let args = process_args(config, input.image)
        .ok_or_else(|| Error::InvalidArgument(format!("container {name}: no command specified")))?;
    let env = merge_env(input.hostname, &input.image.env, config);
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !input.image.working_dir.is_empty() {
        input.image.working_dir.clone()
    } else {
        "/".to_string()
    };
    let mut annotations: HashMap<String, String> = config.annotations.clone();
    let (user, by_name) = container_user(&sec, &input.image.user)?;
    if let Some(user_string) = by_name {
        annotations.insert(USER_ANNOTATION.to_string(), user_string);
    } else {
        annotations.remove(USER_ANNOTATION);
    }

    let mut process = Process::default();
    process.set_terminal(Some(config.tty));
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cwd));
    process.set_user(user);
    process.set_rlimits(None);
    // Absent rather than `false`: libcontainer loads the seccomp filter while it still holds
    // CAP_SYS_ADMIN only when the field is absent, and after dropping capabilities otherwise —
    // where loading fails without no_new_privs.
    process.set_no_new_privileges(sec.no_new_privs.then_some(true));
    let capabilities = process::capabilities(&sec, input.host_capabilities)?;
    let seccomp =
        seccomp::container_seccomp(&sec, &capabilities.bounding().clone().unwrap_or_default())
            .map_err(|err| match err {
                Error::InvalidArgument(m) => {
                    Error::InvalidArgument(format!("container {name}: {m}"))
                }
                other => other,
            })?;
    process.set_capabilities(Some(capabilities));
    process.set_oom_score_adj(oom_score_adj(resources.oom_score_adj));

    let mut root = Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(sec.readonly_rootfs));

    let (mounts, rootfs_propagation) =
        mounts::mounts(config, input.sandbox, sec.privileged, sec.readonly_rootfs)?;

    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_namespaces(Some(linux::namespaces(input, &sec)?));
    linux.set_cgroups_path(Some(PathBuf::from(format!(
        "{}/{}",
        input.sandbox.cgroup_path.trim_end_matches('/'),
        input.id
    ))));
    linux.set_resources(Some(linux_resources(
        &resources,
        sec.privileged,
        input.devices,
    )));
    linux.set_rootfs_propagation(rootfs_propagation);
    linux.set_sysctl(if input.sandbox.sysctls.is_empty() {
        None
    } else {
        Some(input.sandbox.sysctls.clone())
    });
    linux.set_devices(linux::devices(input.devices));
    linux.set_seccomp(seccomp);
    if sec.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    } else {
        let pick = |given: &[String], default: &[&str]| -> Vec<String> {
            if given.is_empty() {
                default.iter().map(|s| s.to_string()).collect()
            } else {
                given.to_vec()
            }
        };
        linux.set_masked_paths(Some(pick(&sec.masked_paths, &DEFAULT_MASKED_PATHS)));
        linux.set_readonly_paths(Some(pick(&sec.readonly_paths, &DEFAULT_READONLY_PATHS)));
    }

    let mut spec = Spec::default();
    spec.set_version("1.1.0".to_string());
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(None);
    spec.set_mounts(Some(mounts));
    spec.set_annotations(if annotations.is_empty() {
        None
    } else {
        Some(annotations)
    });
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::process::{ALL_CAPABILITIES, DEFAULT_PATH_ENV};
    use super::*;
    use crate::runtime::sandbox::PidNamespace;
    use k8s_cri::v1::{
        Capability as CriCapability, ContainerMetadata, HugepageLimit, Int64Value, KeyValue,
        LinuxContainerConfig, Mount as CriMount, NamespaceOption,
    };
    use k8s_cri::v1::{
        LinuxContainerResources, LinuxContainerSecurityContext, MountPropagation, NamespaceMode,
    };
    use oci_spec::runtime::{Capability, LinuxNamespaceType};

    fn sandbox() -> SandboxInfo {
        SandboxInfo {
            id: "sb".into(),
            metadata: Default::default(),
            labels: Default::default(),
            ready: true,
            netns_path: Some("/run/berth/netns/sb".into()),
            ipc_ns_path: Some("/run/berth/ns/sb/ipc".into()),
            uts_ns_path: Some("/run/berth/ns/sb/uts".into()),
            pid_namespace: PidNamespace::PerContainer,
            cgroup_path: "/kubepods/pod1/berth-sb".into(),
            log_directory: "/var/log/pods/x".into(),
            hostname_file: "/run/berth/sb/hostname".into(),
            hosts_file: "/run/berth/sb/hosts".into(),
            resolv_conf_file: Some("/run/berth/sb/resolv.conf".into()),
            shm_path: Some("/run/berth/sb/shm".into()),
            sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        }
    }

    fn image() -> ImageRuntimeConfig {
        ImageRuntimeConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["cmd1".into(), "cmd2".into()],
            env: vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()],
            working_dir: "/work".into(),
            ..Default::default()
        }
    }

    fn config() -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    fn with_sec(sec: LinuxContainerSecurityContext) -> ContainerConfig {
        ContainerConfig {
            linux: Some(LinuxContainerConfig {
                security_context: Some(sec),
                resources: None,
            }),
            ..config()
        }
    }

    fn build(
        config: &ContainerConfig,
        sandbox: &SandboxInfo,
        image: &ImageRuntimeConfig,
    ) -> Result<Spec> {
        build_spec(&SpecInput {
            id: "cid",
            config,
            sandbox,
            image,
            hostname: "podhost",
            devices: &[],
            target_pid_ns: None,
            host_capabilities: &all_caps(),
            cgroup_v2: false,
        })
    }

    fn ns_types(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        let linux = spec.linux().as_ref().unwrap();
        linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    #[test]
    fn args_follow_kubernetes_rules() {
        let img = image();
        let mut c = config();
        assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "cmd1", "cmd2"]);
        c.args = vec!["a".into()];
        assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "a"]);
        c.command = vec!["/bin/sh".into()];
        assert_eq!(process_args(&c, &img).unwrap(), ["/bin/sh", "a"]);
        c.args.clear();
        assert_eq!(process_args(&c, &img).unwrap(), ["/bin/sh"]);
        let empty = ImageRuntimeConfig::default();
        assert!(process_args(&config(), &empty).is_none());
        let cmd_only = ImageRuntimeConfig {
            cmd: vec!["sh".into()],
            ..Default::default()
        };
        assert_eq!(process_args(&config(), &cmd_only).unwrap(), ["sh"]);
    }

    #[test]
    fn no_command_is_invalid_argument() {
        let err = build(&config(), &sandbox(), &ImageRuntimeConfig::default()).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(m) if m.contains("no command")));
    }

    #[test]
    fn env_is_overridden_by_cri() {
        let mut c = config();
        c.envs = vec![
            KeyValue {
                key: "B".into(),
                value: "cri".into(),
            },
            KeyValue {
                key: "C".into(),
                value: "x=y".into(),
            },
        ];
        let env = merge_env("podhost", &image().env, &c);
        assert_eq!(
            env,
            ["HOSTNAME=podhost", "PATH=/bin", "A=image", "B=cri", "C=x=y"]
        );
        let env = merge_env("", &[], &config());
        assert_eq!(env, [DEFAULT_PATH_ENV]);
    }

    #[test]
    fn cwd_precedence() {
        let spec = build(&config(), &sandbox(), &image()).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().cwd(),
            &PathBuf::from("/work")
        );
        let mut c = config();
        c.working_dir = "/cri".into();
        let spec = build(&c, &sandbox(), &image()).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().cwd(),
            &PathBuf::from("/cri")
        );
        let img = ImageRuntimeConfig {
            cmd: vec!["x".into()],
            ..Default::default()
        };
        let spec = build(&config(), &sandbox(), &img).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().cwd(), &PathBuf::from("/"));
    }

    #[test]
    fn user_handling() {
        let none = LinuxContainerSecurityContext::default();
        let (u, n) = container_user(&none, "").unwrap();
        assert_eq!((u.uid(), u.gid(), n), (0, 0, None));
        let (u, n) = container_user(&none, "1000:2000").unwrap();
        assert_eq!((u.uid(), u.gid(), n), (1000, 2000, None));
        // A uid alone takes its gid from the image's passwd: the shim resolves it.
        let (u, n) = container_user(&none, "1000").unwrap();
        assert_eq!((u.uid(), u.gid(), n.as_deref()), (0, 0, Some("1000")));
        let (_, n) = container_user(&none, "app").unwrap();
        assert_eq!(n.as_deref(), Some("app"));
        let (_, n) = container_user(&none, "1000:staff").unwrap();
        assert_eq!(n.as_deref(), Some("1000:staff"));

        let sec = LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 5 }),
            run_as_group: Some(Int64Value { value: 6 }),
            supplemental_groups: vec![7, 8],
            ..Default::default()
        };
        let (u, n) = container_user(&sec, "app").unwrap();
        assert_eq!((u.uid(), u.gid(), n), (5, 6, None));
        assert_eq!(u.additional_gids().as_deref(), Some(&[7u32, 8][..]));
        let sec = LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 5 }),
            ..Default::default()
        };
        assert_eq!(container_user(&sec, "app").unwrap().1.as_deref(), Some("5"));
        // run_as_group without a user is refused (containerd does too), whatever the image's user.
        let sec = LinuxContainerSecurityContext {
            run_as_group: Some(Int64Value { value: 9 }),
            ..Default::default()
        };
        for image_user in ["", "1000", "app:staff"] {
            assert!(matches!(
                container_user(&sec, image_user),
                Err(Error::InvalidArgument(m)) if m.contains("run_as_group 9")
            ));
        }

        let sec = LinuxContainerSecurityContext {
            run_as_username: "web".into(),
            ..Default::default()
        };
        assert_eq!(container_user(&sec, "1").unwrap().1.as_deref(), Some("web"));
        let sec = LinuxContainerSecurityContext {
            run_as_username: "web".into(),
            run_as_group: Some(Int64Value { value: 3 }),
            ..Default::default()
        };
        assert_eq!(
            container_user(&sec, "").unwrap().1.as_deref(),
            Some("web:3")
        );
        let sec = LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: -1 }),
            ..Default::default()
        };
        assert!(container_user(&sec, "").is_err());
    }

    #[test]
    fn user_name_becomes_annotation() {
        let img = ImageRuntimeConfig {
            user: "app".into(),
            ..image()
        };
        let spec = build(&config(), &sandbox(), &img).unwrap();
        assert_eq!(
            spec.annotations()
                .as_ref()
                .unwrap()
                .get(USER_ANNOTATION)
                .map(String::as_str),
            Some("app")
        );
        let spec = build(&config(), &sandbox(), &image()).unwrap();
        assert!(spec.annotations().is_none());
    }

    #[test]
    fn default_mounts_and_pod_files() {
        let spec = build(&config(), &sandbox(), &image()).unwrap();
        let mounts = spec.mounts().as_ref().unwrap();
        let dests: Vec<String> = mounts
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
        ] {
            assert!(dests.contains(&d.to_string()), "{d} missing in {dests:?}");
        }
        let shm = mounts
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/dev/shm"))
            .unwrap();
        assert_eq!(
            shm.source().as_deref(),
            Some(std::path::Path::new("/run/berth/sb/shm"))
        );
        let mut sb = sandbox();
        sb.shm_path = None;
        sb.resolv_conf_file = None;
        let spec = build(&config(), &sb, &image()).unwrap();
        let mounts = spec.mounts().as_ref().unwrap();
        let shm = mounts
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/dev/shm"))
            .unwrap();
        assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
        assert!(!mounts
            .iter()
            .any(|m| m.destination() == &PathBuf::from("/etc/resolv.conf")));
    }

    #[test]
    fn cri_mounts_and_propagation() {
        let mut c = config();
        c.mounts = vec![
            CriMount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                ..Default::default()
            },
            CriMount {
                container_path: "/shared".into(),
                host_path: "/srv/shared".into(),
                propagation: MountPropagation::PropagationHostToContainer as i32,
                ..Default::default()
            },
            CriMount {
                container_path: "/etc/hosts".into(),
                host_path: "/my/hosts".into(),
                ..Default::default()
            },
        ];
        let spec = build(&c, &sandbox(), &image()).unwrap();
        let mounts = spec.mounts().as_ref().unwrap();
        let data = mounts
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/data"))
            .unwrap();
        assert_eq!(
            data.options().as_deref().unwrap(),
            ["rbind", "rprivate", "ro"]
        );
        let shared = mounts
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/shared"))
            .unwrap();
        assert_eq!(shared.options().as_deref().unwrap(), ["rbind", "rslave"]);
        let hosts: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == &PathBuf::from("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            hosts[0].source().as_deref(),
            Some(std::path::Path::new("/my/hosts"))
        );
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .rootfs_propagation()
                .as_deref(),
            Some("slave")
        );

        c.mounts[0].propagation = MountPropagation::PropagationBidirectional as i32;
        let spec = build(&c, &sandbox(), &image()).unwrap();
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .rootfs_propagation()
                .as_deref(),
            Some("shared")
        );

        c.mounts[0].container_path = "relative".into();
        assert!(matches!(
            build(&c, &sandbox(), &image()),
            Err(Error::InvalidArgument(_))
        ));
    }

    fn all_caps() -> HashSet<Capability> {
        capabilities_from_mask((1u64 << 41) - 1)
    }

    #[test]
    fn capability_masks() {
        assert_eq!(all_caps().len(), ALL_CAPABILITIES.len());
        // This host's bounding set lacks CAP_SYS_RESOURCE (bit 24).
        let host = capabilities_from_mask(0x1fffeffffff);
        assert_eq!(host.len(), 40);
        assert!(!host.contains(&Capability::SysResource));
        assert_eq!(
            capabilities_from_mask(0b1_0000_0000_0001),
            [Capability::Chown, Capability::NetAdmin].into()
        );
    }

    #[test]
    fn capabilities_add_drop_all() {
        let all = all_caps();
        let defaults = capability_set(&LinuxContainerSecurityContext::default(), &all).unwrap();
        assert_eq!(defaults.len(), 14);
        assert!(defaults.contains(&Capability::Chown));
        assert!(!defaults.contains(&Capability::SysAdmin));

        let sec = |add: &[&str], drop: &[&str]| LinuxContainerSecurityContext {
            capabilities: Some(CriCapability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                add_ambient_capabilities: vec![],
            }),
            ..Default::default()
        };
        let caps = capability_set(&sec(&["NET_ADMIN", "CAP_SYS_TIME"], &["chown"]), &all).unwrap();
        assert!(caps.contains(&Capability::NetAdmin) && caps.contains(&Capability::SysTime));
        assert!(!caps.contains(&Capability::Chown));
        assert_eq!(caps.len(), 15);
        let caps = capability_set(&sec(&["NET_ADMIN"], &["ALL"]), &all).unwrap();
        assert_eq!(caps.into_iter().collect::<Vec<_>>(), [Capability::NetAdmin]);
        let caps = capability_set(&sec(&["ALL"], &["KILL"]), &all).unwrap();
        assert_eq!(caps.len(), ALL_CAPABILITIES.len() - 1);
        // containerd's order: drops come after adds, "ALL" before individual ones.
        let caps = capability_set(&sec(&["ALL"], &["ALL"]), &all).unwrap();
        assert!(caps.is_empty());
        let caps = capability_set(&sec(&["KILL"], &["KILL"]), &all).unwrap();
        assert!(!caps.contains(&Capability::Kill));
        assert!(capability_set(&sec(&["BOGUS"], &[]), &all).is_err());
        // Nothing beyond what berthd holds.
        let host = capabilities_from_mask(0x1fffeffffff);
        let caps = capability_set(&sec(&["SYS_RESOURCE", "SYS_ADMIN"], &[]), &host).unwrap();
        assert!(caps.contains(&Capability::SysAdmin) && !caps.contains(&Capability::SysResource));
        let caps = capability_set(&sec(&["ALL"], &[]), &host).unwrap();
        assert_eq!(caps, host);
    }

    #[test]
    fn ambient_capabilities_are_inheritable_too() {
        let c = with_sec(LinuxContainerSecurityContext {
            capabilities: Some(CriCapability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec![],
                add_ambient_capabilities: vec!["NET_ADMIN".into(), "SYS_ADMIN".into()],
            }),
            ..Default::default()
        });
        let spec = build(&c, &sandbox(), &image()).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        let want: HashSet<Capability> = [Capability::NetAdmin].into();
        assert_eq!(caps.ambient().as_ref(), Some(&want));
        assert_eq!(caps.inheritable().as_ref(), Some(&want));
        let spec = build(&config(), &sandbox(), &image()).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert!(caps.ambient().is_none() && caps.inheritable().is_none());
    }

    #[test]
    fn privileged_gets_everything() {
        let c = with_sec(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        });
        let spec = build(&c, &sandbox(), &image()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.masked_paths().is_none() && linux.readonly_paths().is_none());
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert_eq!(
            caps.bounding().as_ref().unwrap().len(),
            ALL_CAPABILITIES.len()
        );
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow());
        let opts = |spec: &Spec, dest: &str| -> Vec<String> {
            let mounts = spec.mounts().as_ref().unwrap();
            let m = mounts
                .iter()
                .find(|m| m.destination() == &PathBuf::from(dest))
                .unwrap();
            m.options().clone().unwrap_or_default()
        };
        assert!(!opts(&spec, "/sys").contains(&"ro".to_string()));
        assert!(!opts(&spec, "/sys/fs/cgroup").contains(&"ro".to_string()));
        let plain = build(&config(), &sandbox(), &image()).unwrap();
        assert!(opts(&plain, "/sys").contains(&"ro".to_string()));
        assert!(!opts(&plain, "/etc/hosts").contains(&"ro".to_string()));
        let ro = with_sec(LinuxContainerSecurityContext {
            readonly_rootfs: true,
            ..Default::default()
        });
        let ro = build(&ro, &sandbox(), &image()).unwrap();
        assert!(opts(&ro, "/etc/hosts").contains(&"ro".to_string()));
        assert!(opts(&ro, "/etc/resolv.conf").contains(&"ro".to_string()));

        let spec = build(&config(), &sandbox(), &image()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.masked_paths().as_ref().unwrap().len(),
            DEFAULT_MASKED_PATHS.len()
        );
        assert_eq!(
            linux.readonly_paths().as_ref().unwrap().len(),
            DEFAULT_READONLY_PATHS.len()
        );
        assert!(!linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()[0]
            .allow());
    }

    #[test]
    fn resources_and_oom_clamp() {
        let r = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 128 << 20,
            cpuset_cpus: "0-1".into(),
            oom_score_adj: -998,
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
            ..Default::default()
        };
        let c = ContainerConfig {
            linux: Some(LinuxContainerConfig {
                resources: Some(r),
                security_context: None,
            }),
            ..config()
        };
        let spec = build(&c, &sandbox(), &image()).unwrap();
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.period(), cpu.quota(), cpu.shares()),
            (Some(100_000), Some(50_000), Some(512))
        );
        assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
        let mem = res.memory().as_ref().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(128 << 20)));
        assert_eq!(
            res.hugepage_limits().as_ref().unwrap()[0].page_size(),
            "2MB"
        );
        assert_eq!(res.unified().as_ref().unwrap()["memory.high"], "1000000");
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(0));
        assert_eq!(oom_score_adj(500), Some(500));
        assert_eq!(oom_score_adj(0), None);
        assert_eq!(
            spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(std::path::Path::new("/kubepods/pod1/berth-sb/cid"))
        );
        let empty = linux_resources(&LinuxContainerResources::default(), false, &[]);
        assert!(empty.cpu().is_none() && empty.memory().is_none());
    }

    #[test]
    fn namespaces_pod_and_host_modes() {
        let spec = build(&config(), &sandbox(), &image()).unwrap();
        let n = ns_types(&spec);
        assert!(n.contains(&(
            LinuxNamespaceType::Network,
            Some("/run/berth/netns/sb".into())
        )));
        assert!(n.contains(&(LinuxNamespaceType::Pid, None)));
        assert!(n.contains(&(LinuxNamespaceType::Mount, None)));
        assert!(!n.iter().any(|(t, _)| *t == LinuxNamespaceType::Cgroup));

        let mut sb = sandbox();
        sb.netns_path = None;
        sb.uts_ns_path = None;
        sb.ipc_ns_path = None;
        sb.pid_namespace = PidNamespace::Host;
        let spec = build(&config(), &sb, &image()).unwrap();
        let n = ns_types(&spec);
        assert_eq!(n, [(LinuxNamespaceType::Mount, None)]);

        let mut sb = sandbox();
        sb.pid_namespace = PidNamespace::Pod("/proc/1234/ns/pid".into());
        let spec = build(&config(), &sb, &image()).unwrap();
        assert!(
            ns_types(&spec).contains(&(LinuxNamespaceType::Pid, Some("/proc/1234/ns/pid".into())))
        );

        let c = with_sec(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let spec = build(&c, &sandbox(), &image()).unwrap();
        assert!(!ns_types(&spec)
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::Pid));

        let c = with_sec(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Target as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(build(&c, &sandbox(), &image()).is_err());

        let spec = build_spec(&SpecInput {
            id: "cid",
            config: &config(),
            sandbox: &sandbox(),
            image: &image(),
            hostname: "",
            devices: &[],
            target_pid_ns: None,
            host_capabilities: &all_caps(),
            cgroup_v2: true,
        })
        .unwrap();
        assert!(ns_types(&spec).contains(&(LinuxNamespaceType::Cgroup, None)));
    }

    #[test]
    fn seccomp_lands_in_the_spec() {
        use k8s_cri::v1::{security_profile::ProfileType, SecurityProfile};
        let sec = |profile_type: ProfileType, privileged: bool, add: &[&str]| {
            with_sec(LinuxContainerSecurityContext {
                seccomp: Some(SecurityProfile {
                    profile_type: profile_type as i32,
                    localhost_ref: String::new(),
                }),
                privileged,
                capabilities: Some(CriCapability {
                    add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let seccomp_of = |c: &ContainerConfig| {
            let spec = build(c, &sandbox(), &image()).unwrap();
            spec.linux().as_ref().unwrap().seccomp().clone()
        };
        let mount_allowed = |c: &ContainerConfig| {
            seccomp_of(c)
                .unwrap()
                .syscalls()
                .iter()
                .flatten()
                .any(|s| s.names().iter().any(|n| n == "mount"))
        };
        assert!(!mount_allowed(&sec(
            ProfileType::RuntimeDefault,
            false,
            &[]
        )));
        assert!(mount_allowed(&sec(
            ProfileType::RuntimeDefault,
            false,
            &["SYS_ADMIN"]
        )));
        assert!(seccomp_of(&sec(ProfileType::Unconfined, false, &[])).is_none());
        assert!(seccomp_of(&sec(ProfileType::RuntimeDefault, true, &[])).is_none());
        let bad = with_sec(LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: "/nonexistent/berth-profile.json".into(),
            }),
            ..Default::default()
        });
        let err = build(&bad, &sandbox(), &image()).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m)
                if m.starts_with("container c: ") && m.contains("/nonexistent/berth-profile.json")),
            "{err:?}"
        );
    }

    #[test]
    fn readonly_rootfs_sysctls_devices_annotations() {
        let mut c = with_sec(LinuxContainerSecurityContext {
            readonly_rootfs: true,
            no_new_privs: true,
            ..Default::default()
        });
        c.annotations = [("a".to_string(), "b".to_string())].into();
        let dev = ResolvedDevice {
            container_path: "/dev/fuse".into(),
            kind: 'c',
            major: 10,
            minor: 229,
            file_mode: 0o666,
            permissions: "rw".into(),
        };
        let spec = build_spec(&SpecInput {
            id: "cid",
            config: &c,
            sandbox: &sandbox(),
            image: &image(),
            hostname: "",
            devices: std::slice::from_ref(&dev),
            target_pid_ns: None,
            host_capabilities: &all_caps(),
            cgroup_v2: false,
        })
        .unwrap();
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(
            spec.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.sysctl().as_ref().unwrap()["net.ipv4.ip_forward"], "1");
        assert_eq!(linux.devices().as_ref().unwrap()[0].major(), 10);
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        let last = rules.last().unwrap();
        assert_eq!(
            (last.major(), last.minor(), last.access().as_deref()),
            (Some(10), Some(229), Some("rw"))
        );
        assert_eq!(spec.annotations().as_ref().unwrap()["a"], "b");
        assert!(linux.seccomp().is_none());
        // The spec serializes to valid OCI JSON.
        let json = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }
}
