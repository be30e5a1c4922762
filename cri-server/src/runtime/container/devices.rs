//! Device nodes for the spec: CRI devices looked up on the host, and every host device for privileged
//! containers (what containerd's `WithHostDevices` gives them).

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::spec::ResolvedDevice;
use crate::error::{Error, Result};

/// Directories under /dev that hold no device nodes a container should get (or get their own mounts).
const SKIPPED_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

fn from_metadata(
    meta: &Metadata,
    container_path: String,
    permissions: String,
) -> Option<ResolvedDevice> {
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(ResolvedDevice {
        container_path,
        kind,
        major: i64::try_from(nix::sys::stat::major(rdev)).unwrap_or(0),
        minor: i64::try_from(nix::sys::stat::minor(rdev)).unwrap_or(0),
        file_mode: meta.permissions().mode() & 0o7777,
        permissions,
    })
}

/// A CRI device: the host node (symlinks followed) must be a character or block device.
pub fn resolve(d: &k8s_cri::v1::Device) -> Result<ResolvedDevice> {
    let meta = std::fs::metadata(&d.host_path)
        .map_err(|e| Error::InvalidArgument(format!("device {}: {e}", d.host_path)))?;
    let container_path = if d.container_path.is_empty() {
        d.host_path.clone()
    } else {
        d.container_path.clone()
    };
    from_metadata(&meta, container_path, d.permissions.clone()).ok_or_else(|| {
        Error::InvalidArgument(format!("device {} is not a device node", d.host_path))
    })
}

/// Every device node under /dev except /dev/console and the skipped directories; symlinks are not
/// followed. Unreadable directories are skipped.
pub fn host_devices() -> Vec<ResolvedDevice> {
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out);
    out
}

fn walk(dir: &Path, out: &mut Vec<ResolvedDevice>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let name = entry.file_name();
            if !SKIPPED_DIRS.iter().any(|s| name == *s) {
                walk(&path, out);
            }
            continue;
        }
        if path == Path::new("/dev/console") {
            continue;
        }
        if let Some(dev) = from_metadata(&meta, path.display().to_string(), "rwm".into()) {
            out.push(dev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_device_lookup() {
        let d = k8s_cri::v1::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        };
        let r = resolve(&d).unwrap();
        assert_eq!((r.kind, r.major, r.minor), ('c', 1, 3));
        assert_eq!(r.container_path, "/dev/mynull");
        let d = k8s_cri::v1::Device {
            host_path: "/etc/hostname".into(),
            ..d
        };
        assert!(matches!(resolve(&d), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn host_devices_include_null_but_not_pts_or_console() {
        let all = host_devices();
        assert!(all
            .iter()
            .any(|d| d.container_path == "/dev/null" && d.major == 1 && d.minor == 3));
        assert!(!all
            .iter()
            .any(|d| d.container_path.starts_with("/dev/pts/")));
        assert!(!all.iter().any(|d| d.container_path == "/dev/console"));
    }
}
