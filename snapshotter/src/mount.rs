//! Mounting snapshot [`Mount`]s (bind and overlay) and unmounting.
//!
//! These functions call mount(2) and, for overlay option strings longer than a page, fork(2) a short-lived
//! child in the caller's process. Call them from a plain thread (the shim, tests), never from a tokio worker.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// A mount, as containerd describes one: `mount -t kind -o options source target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Filesystem type: `overlay` or `bind`.
    pub kind: String,
    /// Source (`overlay` for overlay mounts, a path for bind).
    pub source: String,
    /// Mount options (`lowerdir=…`, `upperdir=…`, `workdir=…`, `ro`, `rbind`…).
    pub options: Vec<String>,
}

/// Mounts `mounts` in order onto `target`. Overlay mounts whose options exceed a page are still mounted (a
/// forked child mounts with paths relative to the layers' common parent directory). On failure, what this call
/// already mounted on `target` is unmounted. Not for tokio worker threads (see the module docs).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts `target` (all stacked mounts). Not mounted is not an error.
pub fn unmount(target: &Path) -> Result<()> {
    // Each MNT_DETACH removes the top mount; stop at EINVAL ("not a mount point"). Bounded in case the target
    // keeps being remounted under us.
    for _ in 0..1024 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::io(format!("unmounting {}", target.display()), e)),
        }
    }
    Err(Error::io(
        format!("unmounting {}", target.display()),
        std::io::Error::other("still mounted after 1024 unmounts"),
    ))
}

/// Splits options into mount flags and filesystem data.
fn parse_options(options: &[String]) -> (MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            _ => data.push(opt.clone()),
        }
    }
    (flags, data)
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let (flags, data) = parse_options(&m.options);
    let ctx = || format!("mounting {} {} on {}", m.kind, m.source, target.display());
    if m.kind == "bind" || flags.contains(MsFlags::MS_BIND) {
        let bind_flags = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
        mount(
            Some(m.source.as_str()),
            target,
            None::<&str>,
            bind_flags,
            None::<&str>,
        )
        .ctx(ctx)?;
        let extra = flags - MsFlags::MS_BIND - MsFlags::MS_REC;
        if !extra.is_empty() {
            // Bind mounts ignore most flags on the first call; a bind remount applies them.
            let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
            if let Err(e) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(Error::io(format!("{}: remount", ctx()), e));
            }
        }
        return Ok(());
    }
    let joined = data.join(",");
    if m.kind == "overlay" && joined.len() + 1 > page_size() {
        return mount_overlay_relative(m, target, flags, &data);
    }
    let data = (!joined.is_empty()).then_some(joined.as_str());
    mount(
        Some(m.source.as_str()),
        target,
        Some(m.kind.as_str()),
        flags,
        data,
    )
    .ctx(ctx)
}

fn page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 4096,
    }
}

/// Rewrites `lowerdir`/`upperdir`/`workdir` relative to the deepest directory containing all of them.
/// Returns that directory and the rewritten options.
fn relative_overlay_options(data: &[String]) -> Result<(PathBuf, Vec<String>)> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for opt in data {
        if let Some(v) = opt.strip_prefix("lowerdir=") {
            dirs.extend(v.split(':').map(PathBuf::from));
        } else if let Some(v) = opt
            .strip_prefix("upperdir=")
            .or_else(|| opt.strip_prefix("workdir="))
        {
            dirs.push(PathBuf::from(v));
        }
    }
    let mut common: Option<Vec<Component<'_>>> = None;
    for d in &dirs {
        if !d.is_absolute() {
            return Err(Error::InvalidInput(format!(
                "overlay dir {} is not absolute",
                d.display()
            )));
        }
        // The common dir must be a proper ancestor of every layer dir.
        let parent: Vec<Component<'_>> = d
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        common = Some(match common {
            None => parent,
            Some(c) => c
                .iter()
                .zip(parent.iter())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    let common: PathBuf = common.unwrap_or_default().iter().collect();
    if common.as_os_str().is_empty() {
        return Err(Error::InvalidInput(
            "overlay mount without layer dirs".into(),
        ));
    }
    let rel = |p: &str| -> Result<String> {
        Path::new(p)
            .strip_prefix(&common)
            .map(|r| r.to_string_lossy().into_owned())
            .map_err(|_| {
                Error::InvalidInput(format!("overlay dir {p} outside {}", common.display()))
            })
    };
    let mut out = Vec::new();
    for opt in data {
        if let Some(v) = opt.strip_prefix("lowerdir=") {
            let parts = v.split(':').map(rel).collect::<Result<Vec<_>>>()?;
            out.push(format!("lowerdir={}", parts.join(":")));
        } else if let Some(v) = opt.strip_prefix("upperdir=") {
            out.push(format!("upperdir={}", rel(v)?));
        } else if let Some(v) = opt.strip_prefix("workdir=") {
            out.push(format!("workdir={}", rel(v)?));
        } else {
            out.push(opt.clone());
        }
    }
    Ok((common, out))
}

/// containerd's trick for long overlay option strings: a forked child chdir()s to the layers' common parent and
/// mounts with relative paths. The child only makes raw syscalls (async-signal-safe) before `_exit`.
fn mount_overlay_relative(m: &Mount, target: &Path, flags: MsFlags, data: &[String]) -> Result<()> {
    let ctx = || format!("mounting overlay (long options) on {}", target.display());
    let (dir, opts) = relative_overlay_options(data)?;
    let joined = opts.join(",");
    if joined.len() + 1 > page_size() {
        return Err(Error::InvalidInput(format!(
            "overlay options for {} are {} bytes even with relative paths; too many layers",
            target.display(),
            joined.len()
        )));
    }
    let target = std::path::absolute(target).ctx(ctx)?;
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| Error::InvalidInput("NUL byte in mount option".into()))
    };
    let c_dir = cstr(dir.as_os_str().as_bytes())?;
    let c_target = cstr(target.as_os_str().as_bytes())?;
    let c_source = cstr(m.source.as_bytes())?;
    let c_kind = cstr(m.kind.as_bytes())?;
    let c_data = cstr(joined.as_bytes())?;
    let bits = flags.bits();
    // SAFETY: the child only calls chdir, mount and _exit (async-signal-safe syscalls, no allocation or locks)
    // on CStrings allocated before the fork, so forking a multi-threaded process is sound.
    match unsafe { fork() }.ctx(ctx)? {
        ForkResult::Child => {
            // SAFETY: all pointers are valid NUL-terminated strings owned by this (copied) address space.
            unsafe {
                if libc::chdir(c_dir.as_ptr()) != 0 {
                    libc::_exit(*libc::__errno_location());
                }
                let rc = libc::mount(
                    c_source.as_ptr(),
                    c_target.as_ptr(),
                    c_kind.as_ptr(),
                    bits,
                    c_data.as_ptr().cast(),
                );
                libc::_exit(if rc == 0 {
                    0
                } else {
                    *libc::__errno_location()
                });
            }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, errno)) => {
                    return Err(Error::io(ctx(), std::io::Error::from_raw_os_error(errno)))
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return Err(Error::io(
                        ctx(),
                        std::io::Error::other(format!("child killed by {sig}")),
                    ))
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::io(ctx(), e)),
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "rbind", "lowerdir=/a:/b", "index=off"]
            .map(String::from)
            .into();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(
            data,
            vec!["lowerdir=/a:/b".to_string(), "index=off".to_string()]
        );
    }

    #[test]
    fn relative_options_use_common_parent() -> Result<()> {
        let data: Vec<String> = [
            "index=off",
            "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs",
            "upperdir=/r/snapshots/3/fs",
            "workdir=/r/snapshots/3/work",
        ]
        .map(String::from)
        .into();
        let (dir, out) = relative_overlay_options(&data)?;
        assert_eq!(dir, PathBuf::from("/r/snapshots"));
        assert_eq!(out[1], "lowerdir=2/fs:1/fs");
        assert_eq!(out[2], "upperdir=3/fs");
        assert_eq!(out[3], "workdir=3/work");
        Ok(())
    }
}
