//! One sample of a cgroup's counters (cpu, memory, swap, pids) read from cgroupfs, v1 or v2.
//! Missing files (a controller not mounted, a cgroup already gone) leave the field `None`.

use std::collections::HashMap;
use std::path::Path;

use crate::runtime::cgroup::CgroupLayout;

/// Memory counters, in the kubelet's terms (working set as cAdvisor and containerd compute it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemorySample {
    /// Usage (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub usage: u64,
    /// Usage minus inactive file pages, floored at 0.
    pub working_set: u64,
    /// Limit minus working set when a limit is set.
    pub available: Option<u64>,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
}

/// Swap counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapSample {
    /// Swap in use.
    pub usage: u64,
    /// Swap limit minus usage when a limit is set.
    pub available: Option<u64>,
}

/// Everything read from one cgroup at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupSample {
    /// Total CPU time in ns.
    pub cpu_usage_ns: Option<u64>,
    /// Memory counters.
    pub memory: Option<MemorySample>,
    /// Swap counters (v1 with memsw accounting, v2 with memory.swap.*).
    pub swap: Option<SwapSample>,
    /// Tasks in the cgroup and below (`pids.current`).
    pub pids: Option<u64>,
}

/// Limits at or above this are "no limit" (v1 reports a page-rounded `i64::MAX`).
const UNLIMITED: u64 = 1 << 62;

/// Reads cgroup `rel` (relative to the cgroup root). Blocking.
pub fn read(layout: &CgroupLayout, rel: &str) -> CgroupSample {
    if rel.trim_start_matches('/').is_empty() {
        return CgroupSample::default();
    }
    if layout.is_v2() {
        let Some(dir) = layout.controller_dir("memory", rel) else {
            return CgroupSample::default();
        };
        read_v2(&dir)
    } else {
        let dir = |c: &str| layout.controller_dir(c, rel);
        read_v1(
            dir("cpuacct").as_deref(),
            dir("memory").as_deref(),
            dir("pids").as_deref(),
        )
    }
}

fn read_v1(cpuacct: Option<&Path>, memory: Option<&Path>, pids: Option<&Path>) -> CgroupSample {
    let cpu_usage_ns = cpuacct.and_then(|d| read_u64(&d.join("cpuacct.usage")));
    let (memory_sample, swap) = match memory {
        Some(d) => memory_v1(d),
        None => (None, None),
    };
    let pids = pids
        .and_then(|d| read_u64(&d.join("pids.current")))
        .or_else(|| memory.or(cpuacct).filter(|d| d.is_dir()).map(count_procs));
    CgroupSample {
        cpu_usage_ns,
        memory: memory_sample,
        swap,
        pids,
    }
}

fn memory_v1(dir: &Path) -> (Option<MemorySample>, Option<SwapSample>) {
    let Some(usage) = read_u64(&dir.join("memory.usage_in_bytes")) else {
        return (None, None);
    };
    let stat = read_keyed(&dir.join("memory.stat"));
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let working_set = usage.saturating_sub(get("total_inactive_file"));
    let limit = read_u64(&dir.join("memory.limit_in_bytes")).filter(|l| *l < UNLIMITED);
    let memory = MemorySample {
        usage,
        working_set,
        available: limit.map(|l| l.saturating_sub(working_set)),
        rss: get("total_rss"),
        page_faults: get("total_pgfault"),
        major_page_faults: get("total_pgmajfault"),
    };
    // memsw counts memory + swap.
    let swap = read_u64(&dir.join("memory.memsw.usage_in_bytes")).map(|memsw| {
        let used = memsw.saturating_sub(usage);
        let limit = read_u64(&dir.join("memory.memsw.limit_in_bytes"))
            .filter(|l| *l < UNLIMITED)
            .zip(limit)
            .map(|(memsw_limit, mem_limit)| memsw_limit.saturating_sub(mem_limit));
        SwapSample {
            usage: used,
            available: limit.map(|l| l.saturating_sub(used)),
        }
    });
    (Some(memory), swap)
}

fn read_v2(dir: &Path) -> CgroupSample {
    let cpu_usage_ns = read_keyed(&dir.join("cpu.stat"))
        .get("usage_usec")
        .map(|us| us.saturating_mul(1000));
    let memory = read_u64(&dir.join("memory.current")).map(|usage| {
        let stat = read_keyed(&dir.join("memory.stat"));
        let get = |k: &str| stat.get(k).copied().unwrap_or(0);
        let working_set = usage.saturating_sub(get("inactive_file"));
        let limit = read_u64(&dir.join("memory.max")).filter(|l| *l < UNLIMITED);
        MemorySample {
            usage,
            working_set,
            available: limit.map(|l| l.saturating_sub(working_set)),
            rss: get("anon"),
            page_faults: get("pgfault"),
            major_page_faults: get("pgmajfault"),
        }
    });
    let swap = read_u64(&dir.join("memory.swap.current")).map(|usage| {
        let limit = read_u64(&dir.join("memory.swap.max")).filter(|l| *l < UNLIMITED);
        SwapSample {
            usage,
            available: limit.map(|l| l.saturating_sub(usage)),
        }
    });
    let pids =
        read_u64(&dir.join("pids.current")).or_else(|| dir.is_dir().then(|| count_procs(dir)));
    CgroupSample {
        cpu_usage_ns,
        memory,
        swap,
        pids,
    }
}

/// A file holding one number (`max` and unreadable files are `None`).
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A flat-keyed file (`key value` per line), e.g. memory.stat or cpu.stat.
fn read_keyed(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .map(|text| parse_keyed(&text))
        .unwrap_or_default()
}

/// Parses `key value` lines; lines that do not parse are skipped.
pub fn parse_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Processes in the cgroup and every cgroup below it (`cgroup.procs`), for hosts without a pids controller.
fn count_procs(dir: &Path) -> u64 {
    let here = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        .unwrap_or(0);
    let below: u64 = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| count_procs(&e.path()))
                .sum()
        })
        .unwrap_or(0);
    here + below
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cgroup::Hierarchy;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn keyed_parsing_skips_junk() {
        let m = parse_keyed("usage_usec 1500\nnr_periods 0\nbad line here\nx notanumber\n");
        assert_eq!(m.get("usage_usec"), Some(&1500));
        assert_eq!(m.get("nr_periods"), Some(&0));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn v1_sample_from_a_fake_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let cpu = root.path().join("cpu,cpuacct");
        let mem = root.path().join("memory");
        write(&cpu.join("p/c"), "cpuacct.usage", "123456789\n");
        let m = mem.join("p/c");
        write(&m, "memory.usage_in_bytes", "10000\n");
        write(
            &m,
            "memory.stat",
            "total_inactive_file 3000\ntotal_rss 5000\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
        );
        write(&m, "memory.limit_in_bytes", "9223372036854771712\n");
        write(&m, "cgroup.procs", "1\n2\n");
        write(&m.join("sub"), "cgroup.procs", "3\n");
        let layout = CgroupLayout::V1(vec![
            Hierarchy {
                mount: cpu,
                controllers: vec!["cpu".into(), "cpuacct".into()],
            },
            Hierarchy {
                mount: mem,
                controllers: vec!["memory".into()],
            },
        ]);
        let s = read(&layout, "/p/c");
        assert_eq!(s.cpu_usage_ns, Some(123_456_789));
        let memory = s.memory.unwrap();
        assert_eq!(memory.usage, 10000);
        assert_eq!(memory.working_set, 7000);
        assert_eq!(memory.available, None);
        assert_eq!(memory.rss, 5000);
        assert_eq!((memory.page_faults, memory.major_page_faults), (7, 1));
        assert_eq!(s.swap, None);
        assert_eq!(s.pids, Some(3));
        assert_eq!(read(&layout, "/"), CgroupSample::default());
    }

    #[test]
    fn v2_sample_from_a_fake_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("p");
        write(&d, "cpu.stat", "usage_usec 2500\nuser_usec 2000\n");
        write(&d, "memory.current", "8192\n");
        write(
            &d,
            "memory.stat",
            "anon 4096\ninactive_file 10000\npgfault 9\npgmajfault 2\n",
        );
        write(&d, "memory.max", "16384\n");
        write(&d, "memory.swap.current", "100\n");
        write(&d, "memory.swap.max", "max\n");
        write(&d, "pids.current", "4\n");
        let s = read(&CgroupLayout::V2(root.path().to_path_buf()), "/p");
        assert_eq!(s.cpu_usage_ns, Some(2_500_000));
        let memory = s.memory.unwrap();
        assert_eq!(memory.working_set, 0, "floored at zero");
        assert_eq!(memory.available, Some(16384));
        assert_eq!(memory.rss, 4096);
        assert_eq!(
            s.swap,
            Some(SwapSample {
                usage: 100,
                available: None
            })
        );
        assert_eq!(s.pids, Some(4));
        // A cgroup that is gone reads as nothing.
        let gone = read(&CgroupLayout::V2(root.path().to_path_buf()), "/nope");
        assert_eq!(gone.memory, None);
        assert_eq!(gone.cpu_usage_ns, None);
    }
}
