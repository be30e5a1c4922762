//! The node's cgroup hierarchies (cgroupfs driver), detected once from mountinfo and shared by the sandbox
//! manager (pod cgroups: created in every v1 hierarchy or under the v2 unified root) and the container
//! manager (a container's cgroup directories, its memory controller's OOM counter).
//!
//! Hybrid hosts (v1 controllers plus a v2 mount at `/sys/fs/cgroup/unified`) are treated as v1: that is where
//! the controllers are.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Where the cgroup controllers are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup v1 (or hybrid): one hierarchy per mount.
    V1(Vec<Hierarchy>),
    /// cgroup v2: one unified hierarchy.
    V2(PathBuf),
}

/// One mounted cgroup v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Mount point, e.g. `/sys/fs/cgroup/memory`.
    pub mount: PathBuf,
    /// Controllers attached to it, e.g. `["cpu", "cpuacct"]`.
    pub controllers: Vec<String>,
}

impl CgroupLayout {
    /// Reads `/proc/self/mountinfo`.
    pub fn detect() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
        Self::from_mountinfo(&text).ok_or_else(|| {
            Error::FailedPrecondition("no cgroup filesystem is mounted on this node".into())
        })
    }

    /// Parses mountinfo text. v1 hierarchies with controllers win over a v2 mount (hybrid is v1).
    pub fn from_mountinfo(text: &str) -> Option<Self> {
        let mut v1: Vec<Hierarchy> = Vec::new();
        let mut v2: Option<PathBuf> = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(root), Some(mount), Some(fstype)) = (left.get(3), left.get(4), right.first())
            else {
                continue;
            };
            // Bind mounts of a sub-cgroup (inside containers) are not the hierarchy's root.
            if *root != "/" {
                continue;
            }
            let mount = PathBuf::from(unescape_mountinfo(mount));
            match *fstype {
                "cgroup2" if v2.is_none() || mount == Path::new("/sys/fs/cgroup") => {
                    v2 = Some(mount)
                }
                "cgroup" => {
                    let options = right.get(2).copied().unwrap_or("");
                    let controllers: Vec<String> = options
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro" | "noprefix" | "clone_children" | "xattr")
                        })
                        .filter(|o| !o.starts_with("name=") && !o.starts_with("release_agent="))
                        .map(str::to_owned)
                        .collect();
                    // Named hierarchies without controllers (name=systemd) are systemd's, not ours.
                    if !controllers.is_empty() && !v1.iter().any(|h| h.mount == mount) {
                        v1.push(Hierarchy { mount, controllers });
                    }
                }
                _ => {}
            }
        }
        if !v1.is_empty() {
            Some(Self::V1(v1))
        } else {
            v2.map(Self::V2)
        }
    }

    /// The directories of cgroup `rel` (e.g. `/berth/berth-<id>`), one per hierarchy.
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        let rel = rel.trim_start_matches('/');
        match self {
            Self::V1(hs) => hs.iter().map(|h| h.mount.join(rel)).collect(),
            Self::V2(root) => vec![root.join(rel)],
        }
    }

    /// Whether this is the unified hierarchy alone (hybrid hosts are v1).
    pub fn is_v2(&self) -> bool {
        matches!(self, Self::V2(_))
    }

    /// The directory of cgroup `rel` in the v1 hierarchy that holds `controller`, or in the v2 unified
    /// hierarchy; `None` when no v1 hierarchy has that controller.
    pub fn controller_dir(&self, controller: &str, rel: &str) -> Option<PathBuf> {
        let rel = rel.trim_start_matches('/');
        match self {
            Self::V1(hs) => hs
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == controller))
                .map(|h| h.mount.join(rel)),
            Self::V2(root) => Some(root.join(rel)),
        }
    }

    /// Whether cgroup `rel` exists in any hierarchy.
    pub fn exists(&self, rel: &str) -> bool {
        self.dirs(rel).iter().any(|d| d.is_dir())
    }

    /// Creates cgroup `rel` and missing parents everywhere. Returns the cgroups (relative paths, parents
    /// first) this call created, which is what [`CgroupLayout::remove`] may delete later.
    pub fn create(&self, rel: &str) -> Result<Vec<String>> {
        let prefixes = prefixes(rel);
        let mut created: Vec<String> = Vec::new();
        // A concurrent removal of a shared parent can race the walk; a retry walks again.
        let mut attempt = 0;
        loop {
            match self.create_walk(&prefixes, &mut created) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound && attempt < 3 => attempt += 1,
                Err(e) => {
                    let _ = self.remove(rel, &created);
                    return Err(Error::io(format!("creating cgroup {rel}"), e));
                }
            }
        }
        if let Self::V2(root) = self {
            // Containers go below the pod cgroup: hand it the controllers too.
            enable_subtree_controllers(&root.join(rel.trim_start_matches('/')));
        }
        Ok(created)
    }

    fn create_walk(&self, prefixes: &[String], created: &mut Vec<String>) -> std::io::Result<()> {
        for prefix in prefixes {
            let mut made_here = false;
            match self {
                Self::V1(hs) => {
                    for h in hs {
                        let dir = h.mount.join(prefix.trim_start_matches('/'));
                        if mkdir(&dir)? {
                            made_here = true;
                            if h.controllers.iter().any(|c| c == "cpuset") {
                                copy_cpuset_from_parent(&dir)?;
                            }
                        }
                    }
                }
                Self::V2(root) => {
                    let dir = root.join(prefix.trim_start_matches('/'));
                    if let Some(parent) = dir.parent() {
                        enable_subtree_controllers(parent);
                    }
                    made_here = mkdir(&dir)?;
                }
            }
            if made_here && !created.contains(prefix) {
                created.push(prefix.clone());
            }
        }
        Ok(())
    }

    /// Removes cgroup `rel` (and empty cgroups left below it) everywhere, then those of `created` that are
    /// now empty, deepest first. Absent cgroups are fine; a cgroup that stays busy is an error.
    pub fn remove(&self, rel: &str, created: &[String]) -> Result<()> {
        for dir in self.dirs(rel) {
            remove_tree(&dir)
                .map_err(|e| Error::io(format!("removing cgroup {}", dir.display()), e))?;
        }
        let mut parents: Vec<&String> = created.iter().filter(|c| c.as_str() != rel).collect();
        parents.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for parent in parents {
            self.remove_if_unused(parent);
        }
        Ok(())
    }

    /// Removes cgroup `rel` where it has no children and no tasks; leaves it (silently) elsewhere.
    pub fn remove_if_unused(&self, rel: &str) {
        for dir in self.dirs(rel) {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                // Still used by another pod, or already gone: leave it.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBUSY | libc::ENOTEMPTY | libc::ENOENT)
                    ) => {}
                Err(e) => {
                    tracing::warn!(cgroup = %dir.display(), %e, "cannot remove parent cgroup")
                }
            }
        }
    }
}

/// The pod cgroup for `parent` (the kubelet's `cgroup_parent`, `/berth` when empty).
pub fn pod_cgroup_path(parent: &str, sandbox_id: &str) -> Result<String> {
    let parent = if parent.is_empty() { "/berth" } else { parent };
    let mut out = String::new();
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(Error::InvalidArgument(format!(
                "cgroup parent {parent:?} must not contain . or .."
            )));
        }
        out.push('/');
        out.push_str(part);
    }
    out.push_str("/berth-");
    out.push_str(sandbox_id);
    Ok(out)
}

/// `/a/b/c` → `["/a", "/a/b", "/a/b/c"]`.
fn prefixes(rel: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        cur.push('/');
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

/// True when this call created the directory.
fn mkdir(dir: &Path) -> std::io::Result<bool> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes; tasks cannot join it until they are set.
fn copy_cpuset_from_parent(dir: &Path) -> std::io::Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let current = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if current.trim().is_empty() {
            let value = std::fs::read_to_string(parent.join(file))?;
            std::fs::write(dir.join(file), value.trim())?;
        }
    }
    Ok(())
}

fn enable_subtree_controllers(dir: &Path) {
    let Ok(available) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for controller in available.split_whitespace() {
        if enabled.split_whitespace().any(|c| c == controller) {
            continue;
        }
        if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"))
        {
            tracing::debug!(cgroup = %dir.display(), controller, %e, "cannot enable controller");
        }
    }
}

/// Removes a cgroup directory and empty cgroups below it, retrying while the kernel reports it busy
/// (exiting tasks leave a cgroup a moment after they are reaped).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 10 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50 * attempt));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 20 0:32 /kubepods /var/lib/x/memory rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_is_v1_without_named_hierarchies() {
        let CgroupLayout::V1(hs) = CgroupLayout::from_mountinfo(HYBRID).unwrap() else {
            panic!("not v1")
        };
        let mounts: Vec<_> = hs.iter().map(|h| h.mount.display().to_string()).collect();
        assert_eq!(
            mounts,
            vec![
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/memory"
            ]
        );
        assert_eq!(hs[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(hs[1].controllers, vec!["cpuset"]);
    }

    #[test]
    fn controller_dirs() {
        let v1 = CgroupLayout::from_mountinfo(HYBRID).unwrap();
        assert!(!v1.is_v2());
        assert_eq!(
            v1.controller_dir("memory", "/kubepods/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/kubepods/c1"))
        );
        assert_eq!(
            v1.controller_dir("cpuacct", "/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/c1"))
        );
        assert_eq!(v1.controller_dir("pids", "/c1"), None);
        let v2 = CgroupLayout::V2("/sys/fs/cgroup".into());
        assert!(v2.is_v2());
        assert_eq!(
            v2.controller_dir("memory", "/kubepods/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/kubepods/c1"))
        );
    }

    #[test]
    fn pure_v2() {
        let text = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            CgroupLayout::from_mountinfo(text),
            Some(CgroupLayout::V2("/sys/fs/cgroup".into()))
        );
        assert_eq!(
            CgroupLayout::from_mountinfo("1 2 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn pod_paths() {
        assert_eq!(pod_cgroup_path("", "ab").unwrap(), "/berth/berth-ab");
        assert_eq!(
            pod_cgroup_path("/kubepods/burstable/pod1/", "ab").unwrap(),
            "/kubepods/burstable/pod1/berth-ab"
        );
        assert_eq!(
            pod_cgroup_path("kubepods", "ab").unwrap(),
            "/kubepods/berth-ab"
        );
        assert!(pod_cgroup_path("/a/../etc", "ab").is_err());
        assert_eq!(prefixes("/a/b/c"), vec!["/a", "/a/b", "/a/b/c"]);
        let layout = CgroupLayout::V2("/sys/fs/cgroup".into());
        assert_eq!(
            layout.dirs("/a/b"),
            vec![PathBuf::from("/sys/fs/cgroup/a/b")]
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
    }

    #[test]
    fn v2_enables_controllers_down_the_chain() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "cpu\n").unwrap();
        let layout = CgroupLayout::V2(root.path().to_path_buf());
        assert_eq!(
            layout.create("/a/berth-x").unwrap(),
            vec!["/a", "/a/berth-x"]
        );
        // A plain file keeps only the last write; cgroupfs would now list "cpu memory".
        let enabled = std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(enabled, "+memory");
        assert!(layout.exists("/a/berth-x"));
        layout
            .remove("/a/berth-x", &["/a".into(), "/a/berth-x".into()])
            .unwrap();
        assert!(!layout.exists("/a"));
    }

    #[test]
    fn create_and_remove_in_a_fake_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("memory");
        let cpuset = dir.path().join("cpuset");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::create_dir_all(cpuset.join("shared")).unwrap();
        std::fs::write(cpuset.join("shared/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(cpuset.join("shared/cpuset.mems"), "0\n").unwrap();
        let layout = CgroupLayout::V1(vec![
            Hierarchy {
                mount: mem.clone(),
                controllers: vec!["memory".into()],
            },
            Hierarchy {
                mount: cpuset.clone(),
                controllers: vec!["cpuset".into()],
            },
        ]);
        let created = layout.create("/shared/berth-1").unwrap();
        assert_eq!(created, vec!["/shared", "/shared/berth-1"]);
        assert_eq!(
            std::fs::read_to_string(cpuset.join("shared/berth-1/cpuset.cpus")).unwrap(),
            "0-1"
        );
        // A plain directory (not cgroupfs) keeps the files we wrote, so remove them the way the kernel would.
        std::fs::remove_file(cpuset.join("shared/berth-1/cpuset.cpus")).unwrap();
        std::fs::remove_file(cpuset.join("shared/berth-1/cpuset.mems")).unwrap();
        std::fs::create_dir(mem.join("shared/berth-1/leftover")).unwrap();
        layout.remove("/shared/berth-1", &created).unwrap();
        assert!(!mem.join("shared").exists());
        assert!(
            cpuset.join("shared").exists(),
            "not created by us, still holds files"
        );
        assert!(!cpuset.join("shared/berth-1").exists());
        layout.remove("/shared/berth-1", &created).unwrap();
    }
}
