//! Processes, threads, open file descriptors and sockets of a cgroup, as cAdvisor counts them: the pids
//! in `cgroup.procs` of the cgroup and of every cgroup below it, then per process the `Threads:` line of
//! `/proc/<pid>/status` and the entries of `/proc/<pid>/fd` (those linking to `socket:[…]` are sockets).
//! Processes that exit during the walk are skipped.

use std::path::{Path, PathBuf};

use crate::runtime::cgroup::CgroupLayout;

/// Counts over every process of a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Processes.
    pub processes: u64,
    /// Threads of those processes.
    pub threads: u64,
    /// Open file descriptors.
    pub file_descriptors: u64,
    /// Open file descriptors that are sockets.
    pub sockets: u64,
}

/// Counts the processes of cgroup `rel` (relative to the cgroup root); `None` when the cgroup is not
/// there. Blocking.
pub fn read(layout: &CgroupLayout, rel: &str) -> Option<TaskCounts> {
    if rel.trim_start_matches('/').is_empty() {
        return None;
    }
    // Any hierarchy holding the cgroup lists its processes; v2 has one.
    let dir = ["pids", "memory", "cpuacct"]
        .iter()
        .filter_map(|c| layout.controller_dir(c, rel))
        .find(|d| d.is_dir())?;
    Some(count(&dir, Path::new("/proc")))
}

/// Counts the processes listed under cgroup directory `dir`, reading their details below `proc_root`.
fn count(dir: &Path, proc_root: &Path) -> TaskCounts {
    let mut pids = Vec::new();
    cgroup_pids(dir, &mut pids);
    pids.sort_unstable();
    pids.dedup();
    let mut counts = TaskCounts::default();
    for pid in pids {
        let proc_dir = proc_root.join(pid.to_string());
        // Gone since cgroup.procs was read.
        let Ok(status) = std::fs::read_to_string(proc_dir.join("status")) else {
            continue;
        };
        counts.processes += 1;
        counts.threads += threads(&status);
        let (fds, sockets) = fds(&proc_dir.join("fd"));
        counts.file_descriptors += fds;
        counts.sockets += sockets;
    }
    counts
}

/// The pids in `cgroup.procs` of `dir` and of every cgroup below it.
pub(super) fn cgroup_pids(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    let children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    for child in children {
        cgroup_pids(&child, out);
    }
}

/// The `Threads:` count of a `/proc/<pid>/status` text (1 when the line is missing).
fn threads(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1)
}

/// (descriptors, sockets) in a `/proc/<pid>/fd` directory; (0, 0) when it cannot be read.
fn fds(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let (mut fds, mut sockets) = (0, 0);
    for entry in entries.filter_map(|e| e.ok()) {
        fds += 1;
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|target| {
            target
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(b"socket:")
        });
        if is_socket {
            sockets += 1;
        }
    }
    (fds, sockets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    /// A fake /proc entry with `threads` threads and fds linking to `targets`.
    fn fake_proc(root: &Path, pid: u32, threads: u32, targets: &[&str]) {
        let dir = root.join(pid.to_string());
        write(
            &dir,
            "status",
            &format!("Name:\tsh\nState:\tS (sleeping)\nThreads:\t{threads}\nVmRSS:\t100 kB\n"),
        );
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        for (i, t) in targets.iter().enumerate() {
            symlink(t, dir.join("fd").join(i.to_string())).unwrap();
        }
    }

    #[test]
    fn counts_processes_below_the_cgroup() {
        let tmp = tempfile::tempdir().unwrap();
        let (cg, proc_root) = (tmp.path().join("cg"), tmp.path().join("proc"));
        write(&cg, "cgroup.procs", "10\n11\n");
        write(&cg.join("sub"), "cgroup.procs", "12\n");
        fake_proc(
            &proc_root,
            10,
            1,
            &["/dev/null", "socket:[123]", "pipe:[9]"],
        );
        fake_proc(&proc_root, 11, 4, &["socket:[5]", "anon_inode:[eventfd]"]);
        fake_proc(&proc_root, 12, 2, &[]);
        // 13 is listed but exited before its /proc entry was read.
        write(&cg.join("sub"), "cgroup.procs", "12\n13\n");
        assert_eq!(
            count(&cg, &proc_root),
            TaskCounts {
                processes: 3,
                threads: 7,
                file_descriptors: 5,
                sockets: 2,
            }
        );
        assert_eq!(
            count(&tmp.path().join("gone"), &proc_root),
            TaskCounts::default()
        );
    }

    #[test]
    fn threads_line() {
        assert_eq!(threads("Name:\tx\nThreads:\t12\n"), 12);
        assert_eq!(threads("Name:\tx\n"), 1);
    }

    #[test]
    fn counts_our_own_process() {
        // This test process through the real /proc: at least this thread and stdio.
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "cgroup.procs",
            &format!("{}\n", std::process::id()),
        );
        let c = count(tmp.path(), Path::new("/proc"));
        assert_eq!(c.processes, 1);
        assert!(c.threads >= 1 && c.file_descriptors >= 1, "{c:?}");
    }
}
