//! Pod namespaces without a pause process: a short-lived thread unshares them and bind-mounts its own
//! namespace files onto pin files, which keep the namespaces alive after the thread exits.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Error, Result};

/// Which namespaces a pod gets of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsRequest {
    /// A network namespace (not hostNetwork).
    pub net: bool,
    /// An IPC namespace (not hostIPC).
    pub ipc: bool,
    /// A UTS namespace with this hostname (not hostNetwork).
    pub uts_hostname: Option<String>,
    /// A PID namespace shared by the pod's containers (NamespaceMode::POD). Not made here: it needs
    /// a living init, see `pid_holder.rs`.
    pub pid: bool,
}

/// Pinned namespaces, by pin path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsPins {
    /// `<dir>/net`.
    pub net: Option<PathBuf>,
    /// `<dir>/ipc`.
    pub ipc: Option<PathBuf>,
    /// `<dir>/uts`.
    pub uts: Option<PathBuf>,
}

/// Creates and pins the requested namespaces under `dir`. Runs the work on a dedicated thread (unshare
/// changes the calling thread) and waits for it: call from a blocking context, never a tokio worker.
pub fn create_pinned(dir: &Path, req: &NsRequest) -> Result<NsPins> {
    if !req.net && !req.ipc && req.uts_hostname.is_none() {
        return Ok(NsPins::default());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let dir = dir.to_owned();
    let req = req.clone();
    std::thread::Builder::new()
        .name("berth-pod-ns".into())
        .spawn(move || pin_on_this_thread(&dir, &req))
        .map_err(|e| Error::io("spawning the namespace thread", e))?
        .join()
        .map_err(|_| Error::Internal("the namespace thread panicked".into()))?
}

fn pin_on_this_thread(dir: &Path, req: &NsRequest) -> Result<NsPins> {
    let mut flags = CloneFlags::empty();
    if req.net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if req.ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if req.uts_hostname.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    unshare(flags).map_err(|e| Error::io("unsharing pod namespaces", e.into()))?;
    if let Some(hostname) = &req.uts_hostname {
        nix::unistd::sethostname(hostname)
            .map_err(|e| Error::io(format!("setting pod hostname {hostname:?}"), e.into()))?;
    }
    if req.net {
        loopback_up().map_err(|e| Error::io("bringing up lo in the pod network namespace", e))?;
    }
    let mut pins = NsPins::default();
    let wanted = [
        ("net", req.net),
        ("ipc", req.ipc),
        ("uts", req.uts_hostname.is_some()),
    ];
    for (kind, want) in wanted {
        if !want {
            continue;
        }
        match pin(dir, kind) {
            Ok(path) => match kind {
                "net" => pins.net = Some(path),
                "ipc" => pins.ipc = Some(path),
                _ => pins.uts = Some(path),
            },
            Err(err) => {
                release(&pins);
                return Err(err);
            }
        }
    }
    Ok(pins)
}

fn pin(dir: &Path, kind: &str) -> Result<PathBuf> {
    let target = dir.join(kind);
    pin_file(Path::new(&format!("/proc/thread-self/ns/{kind}")), &target)?;
    Ok(target)
}

/// Bind-mounts the namespace file `source` (e.g. `/proc/<pid>/ns/pid`) onto a new file `target`.
pub fn pin_file(source: &Path, target: &Path) -> Result<()> {
    std::fs::File::create(target)
        .map_err(|e| Error::io(format!("creating pin {}", target.display()), e))?;
    if let Err(e) = mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(target);
        return Err(Error::io(
            format!("pinning {} at {}", source.display(), target.display()),
            e.into(),
        ));
    }
    Ok(())
}

/// Sets `lo` up in the calling thread's network namespace (SIOCSIFFLAGS).
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2) call; the returned fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of the ifreq we own.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds ifru_flags.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(raw, libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `path` is a mounted namespace pin (nsfs).
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Unmounts and deletes a pin; absent or unmounted pins are fine.
pub fn unpin(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::io(
                format!("unmounting {}", path.display()),
                e.into(),
            ))
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Unpins every namespace of `pins`, logging failures (cleanup after a failed setup).
fn release(pins: &NsPins) {
    for path in [&pins.net, &pins.ipc, &pins.uts].into_iter().flatten() {
        if let Err(err) = unpin(path) {
            tracing::warn!(%err, "cleaning up namespace pin");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn pins_distinct_namespaces_and_releases_them() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let req = NsRequest {
            net: true,
            ipc: true,
            uts_hostname: Some("pod-a".into()),
            pid: false,
        };
        let pins = create_pinned(&dir.path().join("ns"), &req).unwrap();
        for (pin, host) in [(&pins.net, "net"), (&pins.ipc, "ipc"), (&pins.uts, "uts")] {
            let pin = pin.as_ref().unwrap();
            assert!(is_pinned(pin));
            let host_ino = std::fs::metadata(format!("/proc/self/ns/{host}"))
                .unwrap()
                .ino();
            assert_ne!(std::fs::metadata(pin).unwrap().ino(), host_ino, "{host}");
        }
        let out = std::process::Command::new("nsenter")
            .arg(format!("--uts={}", pins.uts.as_ref().unwrap().display()))
            .arg("hostname")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pod-a");
        release(&pins);
        assert!(!pins.net.as_ref().unwrap().exists());
        unpin(pins.net.as_ref().unwrap()).unwrap();
    }
}
