//! The container's cgroup as berthd sees it: the OOM-kill counter (for the "OOMKilled" reason) and a
//! last-resort cleanup for containers whose shim died (normally the shim's Delete removes the cgroup).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The container's cgroup directories on this host: `/sys/fs/cgroup/<path>` (v2 or unified) and
/// `/sys/fs/cgroup/<controller>/<path>` (v1), deduplicated through symlinked controllers.
fn cgroup_dirs(cgroup_path: &str) -> Vec<PathBuf> {
    let rel = cgroup_path.trim_start_matches('/');
    if rel.is_empty() {
        return Vec::new();
    }
    let root = Path::new("/sys/fs/cgroup");
    let mut roots = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for r in roots {
        if let Ok(dir) = r.join(rel).canonicalize() {
            if dir.is_dir() && !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
    out
}

/// The memory cgroup's oom_kill counter (v1 `memory.oom_control`, v2 `memory.events`); 0 when unreadable.
pub fn oom_kills(cgroup_v2: bool, cgroup_path: &str) -> u64 {
    let rel = cgroup_path.trim_start_matches('/');
    let file = if cgroup_v2 {
        PathBuf::from("/sys/fs/cgroup")
            .join(rel)
            .join("memory.events")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control")
    };
    std::fs::read_to_string(file)
        .ok()
        .map(|text| parse_oom_kill(&text))
        .unwrap_or(0)
}

/// The `oom_kill N` line of memory.oom_control / memory.events.
pub fn parse_oom_kill(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|v| v.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// SIGKILLs whatever still runs in the container's cgroup and removes its directories. Blocking (sleeps
/// while processes die); best effort: failures are logged.
pub fn kill_and_remove(cgroup_path: &str) {
    for dir in cgroup_dirs(cgroup_path) {
        for _ in 0..50 {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(err) = std::fs::remove_dir(&dir) {
            tracing::warn!(cgroup = %dir.display(), %err, "removing container cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counter_parsing() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_oom_kill(v1), 2);
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), 1);
        assert_eq!(parse_oom_kill(""), 0);
    }

    #[test]
    fn empty_path_names_no_directories() {
        assert!(cgroup_dirs("").is_empty());
        assert!(cgroup_dirs("/").is_empty());
        assert!(cgroup_dirs("/berth-no-such-cgroup-for-tests").is_empty());
    }
}
