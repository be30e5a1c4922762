//! Per-mount propagation (`rprivate`, `rslave`, `rshared`, ...) that libcontainer 0.7 parses but
//! never applies.
//!
//! libcontainer builds each mount with `open_tree`/`mount_setattr`/`move_mount` and leaves
//! `mount_attr.propagation` at 0, so the propagation options of a spec mount are dropped: a bind
//! of a shared host mount stays a slave of it (`master:N`, host mounts leak in) whatever the
//! spec says. runc changes the propagation with a separate `mount(2)` call carrying only
//! `MS_PRIVATE`/`MS_SLAVE`/`MS_SHARED`/`MS_UNBINDABLE` (+ `MS_REC`) after each mount; berth does
//! the same once the container is built (init waiting for start, mount namespace complete): a
//! forked child `setns`es into the init's mount namespace, which makes that namespace's root
//! (the container's root after `pivot_root`) its root and cwd, and changes each destination in
//! spec order. (runc changes each mount before making the next one; doing it after all mounts
//! means an `r*` option also reaches mounts the spec places under that destination later.)
//!
//! `linux.rootfsPropagation` needs nothing here: libcontainer applies it to `/` like runc.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use oci_spec::runtime::Spec;

/// One propagation change: `mount(NULL, destination, NULL, flags, NULL)` in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Mount destination inside the container.
    pub destination: PathBuf,
    /// The spec option, for messages (`rslave`).
    pub option: String,
    /// `MS_PRIVATE`/`MS_SLAVE`/`MS_SHARED`/`MS_UNBINDABLE`, with `MS_REC` for the `r` forms.
    pub flags: MsFlags,
}

/// The propagation flags an OCI mount option stands for, `None` for other options.
pub fn flags_of(option: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match option {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

/// Every propagation option of the spec's mounts, in spec order (and option order within a
/// mount, like runc).
pub fn plan(spec: &Spec) -> Vec<Change> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        for option in m.options().iter().flatten() {
            if let Some(flags) = flags_of(option) {
                out.push(Change {
                    destination: m.destination().clone(),
                    option: option.clone(),
                    flags,
                });
            }
        }
    }
    out
}

/// What the child reports on failure: the index of the failed change (`u32::MAX`: setns) and
/// the errno, as 8 native-endian bytes.
const SETNS_STEP: u32 = u32::MAX;

/// Applies `changes` in the mount namespace of `init_pid` (a container init that has not
/// started its program). Returns a message naming the mount and the cause on failure.
///
/// Does nothing when the init shares this process's mount namespace: the destinations would
/// then be host paths.
pub fn apply(init_pid: i32, changes: &[Change]) -> Result<(), String> {
    if changes.is_empty() {
        return Ok(());
    }
    let ns_path = format!("/proc/{init_pid}/ns/mnt");
    let own =
        std::fs::metadata("/proc/self/ns/mnt").map_err(|e| format!("stat own mnt ns: {e}"))?;
    let theirs = std::fs::metadata(&ns_path).map_err(|e| format!("stat {ns_path}: {e}"))?;
    if (own.dev(), own.ino()) == (theirs.dev(), theirs.ino()) {
        return Ok(());
    }
    let ns: OwnedFd = File::open(&ns_path)
        .map_err(|e| format!("open {ns_path}: {e}"))?
        .into();
    let targets = changes
        .iter()
        .map(|c| {
            CString::new(c.destination.as_os_str().as_bytes())
                .map_err(|_| format!("mount {}: path contains NUL", c.destination.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (report_r, report_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("create report pipe: {e}"))?;

    // SAFETY: the child only makes async-signal-safe calls (setns, mount, write, _exit) on
    // memory prepared before the fork, so forking a possibly multi-threaded process is sound.
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let failure = child_apply(ns.as_raw_fd(), changes, &targets);
            if let Some((step, errno)) = failure {
                let mut msg = [0u8; 8];
                msg[..4].copy_from_slice(&step.to_ne_bytes());
                msg[4..].copy_from_slice(&errno.to_ne_bytes());
                // SAFETY: writes 8 bytes from a live stack buffer to the pipe we own.
                unsafe { libc::write(report_w.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
            }
            // SAFETY: _exit(2) ends the child without running the parent's atexit handlers or
            // destructors.
            unsafe { libc::_exit(i32::from(failure.is_some())) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(format!("fork: {e}")),
    };
    drop(report_w);
    drop(ns);
    let status = loop {
        match waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    let mut msg = Vec::new();
    let _ = File::from(report_r).read_to_end(&mut msg);
    if let (Some(step), Some(errno)) = (
        msg.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()),
        msg.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()),
    ) {
        let step = u32::from_ne_bytes(step);
        let err = std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
        return Err(match changes.get(step as usize) {
            Some(c) => format!(
                "mount {}: set propagation {}: {err}",
                c.destination.display(),
                c.option
            ),
            None => format!("setns to mount namespace of pid {init_pid}: {err}"),
        });
    }
    match status {
        Ok(WaitStatus::Exited(_, 0)) => Ok(()),
        other => Err(format!("mount propagation child ended with {other:?}")),
    }
}

/// Child side: joins the namespace and applies the changes; the failed step and errno, if any.
fn child_apply(ns: i32, changes: &[Change], targets: &[CString]) -> Option<(u32, i32)> {
    // SAFETY: setns(2) on an fd we opened; this single-threaded child owns its fs_struct.
    if unsafe { libc::setns(ns, libc::CLONE_NEWNS) } != 0 {
        return Some((SETNS_STEP, nix::errno::Errno::last_raw()));
    }
    for (i, (change, target)) in changes.iter().zip(targets).enumerate() {
        // SAFETY: propagation-only mount(2): NULL source/fstype/data, a NUL-terminated target.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                change.flags.bits(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Some((i as u32, nix::errno::Errno::last_raw()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{MountBuilder, SpecBuilder};

    fn mount(dest: &str, options: &[&str]) -> oci_spec::runtime::Mount {
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source("/src")
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap_or_default()
    }

    #[test]
    fn maps_every_propagation_option() {
        assert_eq!(
            flags_of("rprivate"),
            Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC)
        );
        assert_eq!(flags_of("slave"), Some(MsFlags::MS_SLAVE));
        assert_eq!(
            flags_of("rshared"),
            Some(MsFlags::MS_SHARED | MsFlags::MS_REC)
        );
        assert_eq!(
            flags_of("runbindable"),
            Some(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC)
        );
        assert_eq!(flags_of("rbind"), None);
        assert_eq!(flags_of("ro"), None);
    }

    #[test]
    fn plans_in_spec_order_and_skips_mounts_without_propagation() {
        let spec = SpecBuilder::default()
            .mounts(vec![
                mount("/a", &["rbind", "rslave", "ro"]),
                mount("/proc", &["nosuid"]),
                mount("/b", &["rbind", "rprivate"]),
            ])
            .build()
            .unwrap_or_default();
        let plan = plan(&spec);
        let got: Vec<(&str, &str)> = plan
            .iter()
            .map(|c| (c.destination.to_str().unwrap_or(""), c.option.as_str()))
            .collect();
        assert_eq!(got, vec![("/a", "rslave"), ("/b", "rprivate")]);
        assert_eq!(plan[0].flags, MsFlags::MS_SLAVE | MsFlags::MS_REC);
    }

    #[test]
    fn nothing_to_do_needs_no_process() {
        assert_eq!(apply(-1, &[]), Ok(()));
    }
}
