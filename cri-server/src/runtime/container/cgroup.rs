//! The container's cgroup as berthd sees it: the OOM-kill counter (for the "OOMKilled" reason) and a
//! last-resort cleanup for containers whose shim died (normally the shim's Delete removes the cgroup).
//! Where the hierarchies are comes from the node's [`CgroupLayout`].

use std::path::PathBuf;
use std::time::Duration;

use crate::runtime::cgroup::CgroupLayout;

/// The container's cgroup directories that exist on this host, one per hierarchy of `layout`
/// (deduplicated); none for an empty path.
fn cgroup_dirs(layout: &CgroupLayout, cgroup_path: &str) -> Vec<PathBuf> {
    if cgroup_path.trim_start_matches('/').is_empty() {
        return Vec::new();
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in layout.dirs(cgroup_path) {
        if let Ok(dir) = dir.canonicalize() {
            if dir.is_dir() && !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
    out
}

/// The memory cgroup's oom_kill counter (v1 `memory.oom_control`, v2 `memory.events`); 0 when unreadable.
pub fn oom_kills(layout: &CgroupLayout, cgroup_path: &str) -> u64 {
    let file = if layout.is_v2() {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    layout
        .controller_dir("memory", cgroup_path)
        .and_then(|dir| std::fs::read_to_string(dir.join(file)).ok())
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
pub fn kill_and_remove(layout: &CgroupLayout, cgroup_path: &str) {
    for dir in cgroup_dirs(layout, cgroup_path) {
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
    use crate::runtime::cgroup::Hierarchy;

    fn fake_v1(root: &std::path::Path) -> CgroupLayout {
        let hierarchy = |name: &str| Hierarchy {
            mount: root.join(name),
            controllers: vec![name.to_owned()],
        };
        CgroupLayout::V1(vec![hierarchy("cpu"), hierarchy("memory")])
    }

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
        let root = tempfile::tempdir().unwrap();
        let layout = fake_v1(root.path());
        std::fs::create_dir_all(root.path().join("cpu")).unwrap();
        assert!(cgroup_dirs(&layout, "").is_empty());
        assert!(cgroup_dirs(&layout, "/").is_empty());
        assert!(cgroup_dirs(&layout, "/berth-no-such-cgroup-for-tests").is_empty());
        if let Ok(host) = CgroupLayout::detect() {
            assert!(cgroup_dirs(&host, "/berth-no-such-cgroup-for-tests").is_empty());
        }
    }

    #[test]
    fn oom_counter_from_the_memory_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let v1 = fake_v1(root.path());
        assert_eq!(oom_kills(&v1, "/pod/c1"), 0);
        std::fs::create_dir_all(root.path().join("memory/pod/c1")).unwrap();
        std::fs::write(
            root.path().join("memory/pod/c1/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&v1, "/pod/c1"), 3);

        let v2 = CgroupLayout::V2(root.path().join("unified"));
        std::fs::create_dir_all(root.path().join("unified/pod/c1")).unwrap();
        std::fs::write(
            root.path().join("unified/pod/c1/memory.events"),
            "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&v2, "/pod/c1"), 1);
    }

    #[test]
    fn kill_and_remove_empties_every_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let layout = fake_v1(root.path());
        std::fs::create_dir_all(root.path().join("cpu/pod/c1")).unwrap();
        std::fs::create_dir_all(root.path().join("memory/pod/c1")).unwrap();
        assert_eq!(cgroup_dirs(&layout, "/pod/c1").len(), 2);
        kill_and_remove(&layout, "/pod/c1");
        assert!(cgroup_dirs(&layout, "/pod/c1").is_empty());
        assert!(
            root.path().join("memory/pod").is_dir(),
            "the pod cgroup stays"
        );
    }
}
