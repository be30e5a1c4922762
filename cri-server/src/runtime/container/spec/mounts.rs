//! Mounts: the default filesystems, the pod's files, the CRI mounts with their propagation.

use std::collections::HashSet;
use std::path::PathBuf;

use k8s_cri::v1::{ContainerConfig, MountPropagation};
use oci_spec::runtime::Mount;

use crate::error::{Error, Result};
use crate::runtime::sandbox::SandboxInfo;

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(kind.to_string()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

fn bind(destination: &str, source: &std::path::Path, readonly: bool, propagation: &str) -> Mount {
    let mut options = vec!["rbind", propagation];
    if readonly {
        options.push("ro");
    }
    let mut m = mount(destination, "bind", "", &options);
    m.set_source(Some(source.to_path_buf()));
    m
}

/// Default mounts, the pod's files, then the CRI mounts; returns the mounts and rootfsPropagation.
/// Privileged containers get /sys and /sys/fs/cgroup read-write; with a read-only rootfs the pod's
/// /etc files are read-only too (as in containerd).
pub(super) fn mounts(
    config: &ContainerConfig,
    sandbox: &SandboxInfo,
    privileged: bool,
    readonly_rootfs: bool,
) -> Result<(Vec<Mount>, Option<String>)> {
    let sys_ro: &[&str] = if privileged { &[] } else { &["ro"] };
    let sys_opts = [&["nosuid", "noexec", "nodev"][..], sys_ro].concat();
    let cgroup_opts = [&["nosuid", "noexec", "nodev", "relatime"][..], sys_ro].concat();
    let mut out = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", &sys_opts),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &cgroup_opts),
    ];
    let user_paths: HashSet<&str> = config
        .mounts
        .iter()
        .map(|m| m.container_path.trim_end_matches('/'))
        .collect();
    let add_unless_user = |out: &mut Vec<Mount>, m: Mount| {
        if !user_paths.contains(m.destination().to_string_lossy().as_ref()) {
            out.push(m);
        }
    };
    match &sandbox.shm_path {
        Some(shm) => add_unless_user(&mut out, bind("/dev/shm", shm, false, "rprivate")),
        None => add_unless_user(
            &mut out,
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
        ),
    }
    if !sandbox.hostname_file.as_os_str().is_empty() {
        add_unless_user(
            &mut out,
            bind(
                "/etc/hostname",
                &sandbox.hostname_file,
                readonly_rootfs,
                "rprivate",
            ),
        );
    }
    if !sandbox.hosts_file.as_os_str().is_empty() {
        add_unless_user(
            &mut out,
            bind(
                "/etc/hosts",
                &sandbox.hosts_file,
                readonly_rootfs,
                "rprivate",
            ),
        );
    }
    if let Some(resolv) = &sandbox.resolv_conf_file {
        add_unless_user(
            &mut out,
            bind("/etc/resolv.conf", resolv, readonly_rootfs, "rprivate"),
        );
    }
    let mut rootfs_propagation = None;
    for m in &config.mounts {
        if let Some(image) = m.image.as_ref().filter(|i| !i.image.is_empty()) {
            return Err(Error::Unimplemented(format!(
                "mount {:?}: image volumes (image {:?}) are not supported by berth yet",
                m.container_path, image.image
            )));
        }
        if m.container_path.is_empty() || m.host_path.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "mount {:?} -> {:?}: host and container path are required",
                m.host_path, m.container_path
            )));
        }
        if !m.container_path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "mount target {:?} must be absolute",
                m.container_path
            )));
        }
        let propagation = match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationPrivate) => "rprivate",
            Ok(MountPropagation::PropagationHostToContainer) => {
                // The rootfs itself takes "slave"/"shared" (libcontainer applies them recursively).
                if rootfs_propagation.is_none() {
                    rootfs_propagation = Some("slave".to_string());
                }
                "rslave"
            }
            Ok(MountPropagation::PropagationBidirectional) => {
                rootfs_propagation = Some("shared".to_string());
                "rshared"
            }
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: unknown propagation {}",
                    m.container_path, m.propagation
                )))
            }
        };
        // Later mounts over the same target replace defaults (dedup by destination).
        out.retain(|existing| {
            existing.destination().to_string_lossy() != m.container_path.trim_end_matches('/')
        });
        out.push(bind(
            &m.container_path,
            std::path::Path::new(&m.host_path),
            m.readonly,
            propagation,
        ));
    }
    Ok((out, rootfs_propagation))
}
