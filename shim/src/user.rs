//! Resolving an image/CRI user given by name (`io.berth.user` annotation) against the image's
//! own `/etc/passwd` and `/etc/group`, like containerd's `WithUser` + `WithAdditionalGIDs`.
//!
//! Accepted forms: `name`, `uid`, `name:group`, `uid:group`, `name:gid`, `uid:gid`. The files
//! are opened with `openat2(RESOLVE_IN_ROOT)`, so symlinks in the image resolve inside the
//! rootfs and can never make the shim read a host file.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// The resolved identity of the container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// Process uid.
    pub uid: u32,
    /// Process primary gid.
    pub gid: u32,
    /// Supplementary gids: the primary gid first, then every group listing the user as member.
    pub additional_gids: Vec<u32>,
}

/// One `/etc/passwd` entry (the fields berth needs).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `spec` (see module doc) against the files under `rootfs`. Errors are messages for
/// the user ("user app not found in /etc/passwd of the image").
pub fn resolve(rootfs: &Path, spec: &str) -> Result<ResolvedUser, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(format!("invalid user {spec:?}"));
    }
    let passwd = parse_passwd(&read_in_root(rootfs, "etc/passwd")?);
    let groups = parse_group(&read_in_root(rootfs, "etc/group")?);

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|p| p.uid == uid).cloned(),
        Err(_) => Some(
            passwd
                .iter()
                .find(|p| p.name == user_part)
                .cloned()
                .ok_or_else(|| format!("user {user_part} not found in /etc/passwd of the image"))?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user_part
            .parse::<u32>()
            .map_err(|_| format!("invalid user {spec:?}"))?,
    };
    let gid = match group_part {
        None => entry.as_ref().map(|e| e.gid).unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| format!("group {g} not found in /etc/group of the image"))?,
        },
    };
    let mut additional_gids = vec![gid];
    if let Some(e) = &entry {
        for g in &groups {
            if g.name != e.name && g.members.iter().any(|m| m == &e.name) {
                additional_gids.push(g.gid);
            }
        }
    }
    let mut seen = Vec::with_capacity(additional_gids.len());
    additional_gids.retain(|g| {
        let new = !seen.contains(g);
        seen.push(*g);
        new
    });
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Reads `rel` inside `rootfs`, resolving every path component (symlinks, `..`) inside it.
/// A missing file reads as empty (an image without /etc/group is fine).
fn read_in_root(rootfs: &Path, rel: &str) -> Result<String, String> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open rootfs {}: {e}", rootfs.display()))?;
    // SAFETY: `open` just returned this fd and nothing else owns it.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match nix::fcntl::openat2(std::os::fd::AsRawFd::as_raw_fd(&root), rel, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(String::new()),
        Err(e) => return Err(format!("open /{rel} of the image: {e}")),
    };
    // SAFETY: `openat2` just returned this fd and nothing else owns it.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file
        .metadata()
        .map_err(|e| format!("stat /{rel} of the image: {e}"))?;
    if !meta.is_file() {
        return Err(format!("/{rel} of the image is not a regular file"));
    }
    let mut text = String::new();
    // Cap the read: a hostile image could ship a huge passwd file.
    (&mut file)
        .take(16 * 1024 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("read /{rel} of the image: {e}"))?;
    Ok(text)
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> anyhow::Result<tempfile::TempDir> {
        let d = tempfile::tempdir()?;
        std::fs::create_dir(d.path().join("etc"))?;
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nweb:x:33:33::/:/bin/sh\n",
        )?;
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nvideo:x:44:app,web\naudio:x:29:web\nstaff:x:50:app\n",
        )?;
        Ok(d)
    }

    #[test]
    fn name_only() -> anyhow::Result<()> {
        let r = rootfs()?;
        let u = resolve(r.path(), "app").map_err(anyhow::Error::msg)?;
        assert_eq!(
            u,
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![1000, 44, 50]
            }
        );
        Ok(())
    }

    #[test]
    fn forms_with_group() -> anyhow::Result<()> {
        let r = rootfs()?;
        let u = resolve(r.path(), "app:audio").map_err(anyhow::Error::msg)?;
        assert_eq!((u.uid, u.gid), (1000, 29));
        assert_eq!(u.additional_gids, vec![29, 44, 50]);
        let u = resolve(r.path(), "33:video").map_err(anyhow::Error::msg)?;
        assert_eq!((u.uid, u.gid), (33, 44));
        let u = resolve(r.path(), "web:7").map_err(anyhow::Error::msg)?;
        assert_eq!((u.uid, u.gid), (33, 7));
        let u = resolve(r.path(), "4242:4343").map_err(anyhow::Error::msg)?;
        assert_eq!((u.uid, u.gid, u.additional_gids), (4242, 4343, vec![4343]));
        let u = resolve(r.path(), "4242").map_err(anyhow::Error::msg)?;
        assert_eq!((u.uid, u.gid), (4242, 0));
        Ok(())
    }

    #[test]
    fn unknown_names_fail_clearly() -> anyhow::Result<()> {
        let r = rootfs()?;
        assert_eq!(
            resolve(r.path(), "nobody").err().as_deref(),
            Some("user nobody not found in /etc/passwd of the image")
        );
        assert_eq!(
            resolve(r.path(), "app:wheel").err().as_deref(),
            Some("group wheel not found in /etc/group of the image")
        );
        assert!(resolve(r.path(), "app:").is_err());
        Ok(())
    }

    #[test]
    fn symlinks_stay_inside_rootfs() -> anyhow::Result<()> {
        let r = rootfs()?;
        let host = tempfile::tempdir()?;
        std::fs::write(host.path().join("passwd"), "evil:x:7:7::/:/bin/sh\n")?;
        std::fs::remove_file(r.path().join("etc/passwd"))?;
        // An absolute symlink pointing at a host file resolves inside the rootfs (missing there).
        std::os::unix::fs::symlink(host.path().join("passwd"), r.path().join("etc/passwd"))?;
        assert!(resolve(r.path(), "evil").is_err());
        Ok(())
    }
}
