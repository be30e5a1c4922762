//! One sample of a cgroup's counters (cpu, CFS throttling, memory, swap, OOM kills, pids) read from
//! cgroupfs, v1 or v2. Missing files (a controller not mounted, a cgroup already gone) leave the field
//! `None`; counters a kernel does not have (v1 `memory.kmem.*`, v2 `memory.peak`) read as 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub cache: u64,
    /// Memory-mapped files (v1 `total_mapped_file`, v2 `file_mapped`).
    pub mapped_file: u64,
    /// Kernel memory (v1 `memory.kmem.usage_in_bytes`, v2 `kernel` or the sum of its parts).
    pub kernel: u64,
    /// Times usage hit the limit (v1 `memory.failcnt`, v2 `max` of `memory.events`).
    pub failcnt: u64,
    /// Peak usage (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub max_usage: u64,
}

/// CPU time split into user and system, in ns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSplit {
    /// User time.
    pub user_ns: u64,
    /// System time.
    pub system_ns: u64,
}

/// CFS bandwidth counters (v1 and v2 `cpu.stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CfsSample {
    /// Enforcement periods elapsed (`nr_periods`).
    pub periods: u64,
    /// Periods in which the cgroup was throttled (`nr_throttled`).
    pub throttled_periods: u64,
    /// Time throttled in ns (v1 `throttled_time`, v2 `throttled_usec` × 1000).
    pub throttled_ns: u64,
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
    /// User and system CPU time.
    pub cpu_split: Option<CpuSplit>,
    /// CFS throttling counters.
    pub cfs: Option<CfsSample>,
    /// Memory counters.
    pub memory: Option<MemorySample>,
    /// Swap counters (v1 with memsw accounting, v2 with memory.swap.*).
    pub swap: Option<SwapSample>,
    /// Tasks in the cgroup and below (`pids.current`).
    pub pids: Option<u64>,
    /// Processes the OOM killer killed (`oom_kill` of v1 `memory.oom_control`, v2 `memory.events`).
    pub oom_kills: Option<u64>,
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
        read_v1(&V1Dirs {
            cpu: dir("cpu"),
            cpuacct: dir("cpuacct"),
            memory: dir("memory"),
            pids: dir("pids"),
        })
    }
}

/// A v1 cgroup's directory in each hierarchy it reads (`None` where the controller is not mounted).
struct V1Dirs {
    cpu: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

fn read_v1(dirs: &V1Dirs) -> CgroupSample {
    let (cpuacct, memory) = (dirs.cpuacct.as_deref(), dirs.memory.as_deref());
    let cpu_usage_ns = cpuacct.and_then(|d| read_u64(&d.join("cpuacct.usage")));
    let cpu_split = cpuacct
        .and_then(|d| std::fs::read_to_string(d.join("cpuacct.stat")).ok())
        .map(|text| cpu_split_v1(&parse_keyed(&text), clock_ticks()));
    let cfs = dirs
        .cpu
        .as_deref()
        .and_then(|d| std::fs::read_to_string(d.join("cpu.stat")).ok())
        .map(|text| {
            let stat = parse_keyed(&text);
            let get = |k: &str| stat.get(k).copied().unwrap_or(0);
            CfsSample {
                periods: get("nr_periods"),
                throttled_periods: get("nr_throttled"),
                throttled_ns: get("throttled_time"),
            }
        });
    let (memory_sample, swap) = match memory {
        Some(d) => memory_v1(d),
        None => (None, None),
    };
    let pids = dirs
        .pids
        .as_deref()
        .and_then(|d| read_u64(&d.join("pids.current")))
        .or_else(|| memory.or(cpuacct).filter(|d| d.is_dir()).map(count_procs));
    let oom_kills = memory
        .and_then(|d| read_keyed_opt(&d.join("memory.oom_control")))
        .map(|m| m.get("oom_kill").copied().unwrap_or(0));
    CgroupSample {
        cpu_usage_ns,
        cpu_split,
        cfs,
        memory: memory_sample,
        swap,
        pids,
        oom_kills,
    }
}

/// v1 `cpuacct.stat` counts `user` and `system` in USER_HZ ticks.
fn cpu_split_v1(stat: &HashMap<String, u64>, ticks_per_s: u64) -> CpuSplit {
    let ns_per_tick = 1_000_000_000 / ticks_per_s.max(1);
    let get = |k: &str| {
        stat.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_mul(ns_per_tick)
    };
    CpuSplit {
        user_ns: get("user"),
        system_ns: get("system"),
    }
}

/// USER_HZ, the unit of v1 `cpuacct.stat` (100 on every common architecture).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a constant of the C library; it has no pointers or preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
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
        cache: get("total_cache"),
        mapped_file: get("total_mapped_file"),
        // Kernels without kmem accounting have no such file.
        kernel: read_u64(&dir.join("memory.kmem.usage_in_bytes")).unwrap_or(0),
        failcnt: read_u64(&dir.join("memory.failcnt")).unwrap_or(0),
        max_usage: read_u64(&dir.join("memory.max_usage_in_bytes")).unwrap_or(0),
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
    let cpu_stat = read_keyed_opt(&dir.join("cpu.stat"));
    let usec = |k: &str| {
        let us = cpu_stat.as_ref()?.get(k)?;
        Some(us.saturating_mul(1000))
    };
    let cpu_usage_ns = usec("usage_usec");
    let cpu_split = usec("user_usec")
        .zip(usec("system_usec"))
        .map(|(user_ns, system_ns)| CpuSplit { user_ns, system_ns });
    // nr_periods is there only with the cpu controller enabled for the cgroup.
    let cfs = cpu_stat
        .as_ref()
        .filter(|s| s.contains_key("nr_periods"))
        .map(|s| {
            let get = |k: &str| s.get(k).copied().unwrap_or(0);
            CfsSample {
                periods: get("nr_periods"),
                throttled_periods: get("nr_throttled"),
                throttled_ns: get("throttled_usec").saturating_mul(1000),
            }
        });
    let events = read_keyed_opt(&dir.join("memory.events"));
    let event = |k: &str| events.as_ref().and_then(|e| e.get(k).copied());
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
            cache: get("file"),
            mapped_file: get("file_mapped"),
            kernel: kernel_v2(&stat),
            failcnt: event("max").unwrap_or(0),
            // memory.peak appeared in Linux 5.19.
            max_usage: read_u64(&dir.join("memory.peak")).unwrap_or(0),
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
        cpu_split,
        cfs,
        memory,
        swap,
        pids,
        oom_kills: events.map(|e| e.get("oom_kill").copied().unwrap_or(0)),
    }
}

/// v2 kernel memory: `kernel` (Linux 5.18+), else the sum of the parts older kernels list.
fn kernel_v2(stat: &HashMap<String, u64>) -> u64 {
    if let Some(k) = stat.get("kernel") {
        return *k;
    }
    [
        "kernel_stack",
        "pagetables",
        "sec_pagetables",
        "percpu",
        "sock",
        "vmalloc",
        "slab",
    ]
    .iter()
    .filter_map(|k| stat.get(*k))
    .sum()
}

/// A file holding one number (`max` and unreadable files are `None`).
pub(super) fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A flat-keyed file (`key value` per line), e.g. memory.stat or cpu.stat; empty when unreadable.
fn read_keyed(path: &Path) -> HashMap<String, u64> {
    read_keyed_opt(path).unwrap_or_default()
}

/// A flat-keyed file; `None` when unreadable.
fn read_keyed_opt(path: &Path) -> Option<HashMap<String, u64>> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| parse_keyed(&text))
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
    let mut pids = Vec::new();
    super::tasks::cgroup_pids(dir, &mut pids);
    pids.len() as u64
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
        write(&cpu.join("p/c"), "cpuacct.stat", "user 250\nsystem 30\n");
        write(
            &cpu.join("p/c"),
            "cpu.stat",
            "nr_periods 40\nnr_throttled 3\nthrottled_time 1500000000\nnr_bursts 0\nburst_time 0\n",
        );
        let m = mem.join("p/c");
        write(&m, "memory.usage_in_bytes", "10000\n");
        write(
            &m,
            "memory.stat",
            "cache 1\ntotal_cache 2000\ntotal_inactive_file 3000\ntotal_rss 5000\n\
             total_mapped_file 700\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
        );
        write(&m, "memory.kmem.usage_in_bytes", "400\n");
        write(&m, "memory.failcnt", "2\n");
        write(&m, "memory.max_usage_in_bytes", "12000\n");
        write(
            &m,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
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
        assert_eq!(
            (memory.cache, memory.mapped_file, memory.kernel),
            (2000, 700, 400)
        );
        assert_eq!((memory.failcnt, memory.max_usage), (2, 12000));
        assert_eq!(s.oom_kills, Some(1));
        let ticks = clock_ticks();
        assert_eq!(
            s.cpu_split,
            Some(CpuSplit {
                user_ns: 250 * 1_000_000_000 / ticks,
                system_ns: 30 * 1_000_000_000 / ticks,
            })
        );
        assert_eq!(
            s.cfs,
            Some(CfsSample {
                periods: 40,
                throttled_periods: 3,
                throttled_ns: 1_500_000_000,
            })
        );
        assert_eq!(s.swap, None);
        assert_eq!(s.pids, Some(3));
        assert_eq!(read(&layout, "/"), CgroupSample::default());
    }

    #[test]
    fn v2_sample_from_a_fake_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("p");
        write(
            &d,
            "cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 12\n\
             nr_throttled 2\nthrottled_usec 3000\n",
        );
        write(&d, "memory.current", "8192\n");
        write(
            &d,
            "memory.stat",
            "anon 4096\nfile 2048\nkernel 900\nfile_mapped 512\ninactive_file 10000\n\
             pgfault 9\npgmajfault 2\n",
        );
        write(
            &d,
            "memory.events",
            "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        write(&d, "memory.peak", "9000\n");
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
            (memory.cache, memory.mapped_file, memory.kernel),
            (2048, 512, 900)
        );
        assert_eq!((memory.failcnt, memory.max_usage), (5, 9000));
        assert_eq!(s.oom_kills, Some(1));
        assert_eq!(
            s.cpu_split,
            Some(CpuSplit {
                user_ns: 2_000_000,
                system_ns: 500_000,
            })
        );
        assert_eq!(
            s.cfs,
            Some(CfsSample {
                periods: 12,
                throttled_periods: 2,
                throttled_ns: 3_000_000,
            })
        );
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
        assert_eq!((gone.cfs, gone.oom_kills), (None, None));
    }

    #[test]
    fn v2_without_cpu_controller_or_new_files() {
        // cpu controller not enabled: no nr_periods; Linux < 5.18/5.19: no kernel key, no memory.peak.
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("p");
        write(
            &d,
            "cpu.stat",
            "usage_usec 10\nuser_usec 6\nsystem_usec 4\n",
        );
        write(&d, "memory.current", "100\n");
        write(
            &d,
            "memory.stat",
            "anon 10\nkernel_stack 16\npagetables 8\npercpu 4\nsock 2\nslab 64\n",
        );
        let s = read(&CgroupLayout::V2(root.path().to_path_buf()), "/p");
        assert_eq!(s.cfs, None);
        assert_eq!(s.cpu_split.map(|c| c.user_ns), Some(6000));
        let memory = s.memory.unwrap();
        assert_eq!(
            (memory.kernel, memory.max_usage, memory.failcnt),
            (94, 0, 0)
        );
        assert_eq!(s.oom_kills, None);
    }

    #[test]
    fn cpuacct_ticks() {
        let stat = parse_keyed("user 3\nsystem 1\n");
        assert_eq!(
            cpu_split_v1(&stat, 100),
            CpuSplit {
                user_ns: 30_000_000,
                system_ns: 10_000_000,
            }
        );
        // A broken sysconf answer does not divide by zero.
        assert_eq!(cpu_split_v1(&stat, 0).user_ns, 3_000_000_000);
    }
}
