//! The linux part of the spec: namespaces, device nodes and rules, cgroup resources.

use super::{ResolvedDevice, SpecInput};
use std::path::PathBuf;

use k8s_cri::v1::{LinuxContainerResources, LinuxContainerSecurityContext, NamespaceMode};
use oci_spec::runtime::{
    LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxHugepageLimit, LinuxMemory,
    LinuxNamespace, LinuxNamespaceType, LinuxResources,
};

use crate::error::{Error, Result};
use crate::runtime::sandbox::PidNamespace;

fn ns(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ);
    n.set_path(path);
    n
}

/// Namespaces: net/ipc/uts joined from the pod (absent = host), pid per pod and container mode, new mount,
/// new cgroup namespace on cgroup v2.
pub(super) fn namespaces(
    input: &SpecInput<'_>,
    sec: &LinuxContainerSecurityContext,
) -> Result<Vec<LinuxNamespace>> {
    let sandbox = input.sandbox;
    let mut out = vec![ns(LinuxNamespaceType::Mount, None)];
    if let Some(p) = &sandbox.netns_path {
        out.push(ns(LinuxNamespaceType::Network, Some(p.clone())));
    }
    if let Some(p) = &sandbox.ipc_ns_path {
        out.push(ns(LinuxNamespaceType::Ipc, Some(p.clone())));
    }
    if let Some(p) = &sandbox.uts_ns_path {
        out.push(ns(LinuxNamespaceType::Uts, Some(p.clone())));
    }
    let mode = sec
        .namespace_options
        .as_ref()
        .map(|o| NamespaceMode::try_from(o.pid));
    let pid = match (mode, &sandbox.pid_namespace) {
        (_, PidNamespace::Host) | (Some(Ok(NamespaceMode::Node)), _) => None,
        (Some(Ok(NamespaceMode::Target)), _) => match &input.target_pid_ns {
            Some(p) => Some(Some(p.clone())),
            None => {
                return Err(Error::InvalidArgument(
                    "pid namespace mode TARGET needs a running target container".into(),
                ))
            }
        },
        (Some(Ok(NamespaceMode::Pod)) | None, PidNamespace::Pod(p)) => Some(Some(p.clone())),
        (Some(Err(_)), _) => {
            return Err(Error::InvalidArgument("unknown pid namespace mode".into()))
        }
        _ => Some(None),
    };
    if let Some(path) = pid {
        out.push(ns(LinuxNamespaceType::Pid, path));
    }
    if input.cgroup_v2 {
        out.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(allow);
    d.set_typ(typ);
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some(access.to_string()));
    d
}

/// containerd's device cgroup: deny all, allow mknod of anything and the usual character devices.
fn device_rules(privileged: bool, devices: &[ResolvedDevice]) -> Vec<LinuxDeviceCgroup> {
    if privileged {
        return vec![device_rule(
            true,
            Some(LinuxDeviceType::A),
            None,
            None,
            "rwm",
        )];
    }
    let c = Some(LinuxDeviceType::C);
    let mut rules = vec![
        device_rule(false, Some(LinuxDeviceType::A), None, None, "rwm"),
        device_rule(true, c, None, None, "m"),
        device_rule(true, Some(LinuxDeviceType::B), None, None, "m"),
        device_rule(true, c, Some(1), Some(3), "rwm"),
        device_rule(true, c, Some(1), Some(8), "rwm"),
        device_rule(true, c, Some(1), Some(7), "rwm"),
        device_rule(true, c, Some(5), Some(0), "rwm"),
        device_rule(true, c, Some(1), Some(5), "rwm"),
        device_rule(true, c, Some(1), Some(9), "rwm"),
        device_rule(true, c, Some(5), Some(1), "rwm"),
        device_rule(true, c, Some(136), None, "rwm"),
        device_rule(true, c, Some(5), Some(2), "rwm"),
        device_rule(true, c, Some(10), Some(200), "rwm"),
    ];
    for d in devices {
        let typ = if d.kind == 'b' {
            LinuxDeviceType::B
        } else {
            LinuxDeviceType::C
        };
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        rules.push(device_rule(
            true,
            Some(typ),
            Some(d.major),
            Some(d.minor),
            access,
        ));
    }
    rules
}

pub(super) fn devices(devices: &[ResolvedDevice]) -> Option<Vec<LinuxDevice>> {
    if devices.is_empty() {
        return None;
    }
    Some(
        devices
            .iter()
            .map(|d| {
                let mut dev = LinuxDevice::default();
                dev.set_path(PathBuf::from(&d.container_path));
                dev.set_typ(if d.kind == 'b' {
                    LinuxDeviceType::B
                } else {
                    LinuxDeviceType::C
                });
                dev.set_major(d.major);
                dev.set_minor(d.minor);
                dev.set_file_mode(Some(d.file_mode));
                dev.set_uid(Some(0));
                dev.set_gid(Some(0));
                dev
            })
            .collect(),
    )
}

/// The OCI resources for CRI LinuxContainerResources (zero means unset, as in the CRI).
pub fn linux_resources(
    r: &LinuxContainerResources,
    privileged: bool,
    devices: &[ResolvedDevice],
) -> LinuxResources {
    let mut out = LinuxResources::default();
    out.set_devices(Some(device_rules(privileged, devices)));
    let mut cpu = LinuxCpu::default();
    let mut cpu_set = false;
    if r.cpu_period > 0 {
        cpu.set_period(u64::try_from(r.cpu_period).ok());
        cpu_set = true;
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
        cpu_set = true;
    }
    if r.cpu_shares > 0 {
        cpu.set_shares(u64::try_from(r.cpu_shares).ok());
        cpu_set = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
        cpu_set = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
        cpu_set = true;
    }
    if cpu_set {
        out.set_cpu(Some(cpu));
    }
    let mut memory = LinuxMemory::default();
    let mut memory_set = false;
    if r.memory_limit_in_bytes > 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
        memory_set = true;
    }
    if r.memory_swap_limit_in_bytes > 0 {
        memory.set_swap(Some(r.memory_swap_limit_in_bytes));
        memory_set = true;
    }
    if memory_set {
        out.set_memory(Some(memory));
    }
    if !r.hugepage_limits.is_empty() {
        out.set_hugepage_limits(Some(
            r.hugepage_limits
                .iter()
                .map(|h| {
                    let mut l = LinuxHugepageLimit::default();
                    l.set_page_size(h.page_size.clone());
                    l.set_limit(i64::try_from(h.limit).unwrap_or(i64::MAX));
                    l
                })
                .collect(),
        ));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone()));
    }
    out
}
