//! The limits set on a cgroup (CPU period, quota and shares, memory, swap and reservation, pids), read
//! back from cgroupfs v1 or v2 as cAdvisor reports them in its container spec. A limit that is not set
//! (`max`, v1 `-1` or a page-rounded `i64::MAX`) reads as 0, cAdvisor's "no limit"; a file that is not
//! there leaves the field `None`.

use std::path::Path;

use crate::runtime::cgroup::CgroupLayout;

/// Limits at or above this are "no limit" (cAdvisor's cut-off; v1 reports a page-rounded `i64::MAX`).
const UNLIMITED: u64 = 1 << 62;

/// A cgroup's limits, in cAdvisor's units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// CFS period in µs (v1 `cpu.cfs_period_us`, second field of v2 `cpu.max`).
    pub cpu_period: Option<u64>,
    /// CFS quota in µs, 0 for none (v1 `cpu.cfs_quota_us`, first field of v2 `cpu.max`).
    pub cpu_quota: Option<u64>,
    /// CPU shares (v1 `cpu.shares`, v2 `cpu.weight` converted back to shares).
    pub cpu_shares: Option<u64>,
    /// Memory limit in bytes (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub memory: Option<u64>,
    /// Swap limit in bytes: v1 `memory.memsw.limit_in_bytes` (memory plus swap), v2 `memory.swap.max`
    /// (swap alone), each as cAdvisor reports it; 0 without swap accounting.
    pub memory_swap: Option<u64>,
    /// Memory reservation (v1 `memory.soft_limit_in_bytes`, v2 `memory.min`).
    pub memory_reservation: Option<u64>,
    /// Task limit (`pids.max`).
    pub pids_max: Option<u64>,
}

/// Reads the limits of cgroup `rel` (relative to the cgroup root). Blocking.
pub fn read(layout: &CgroupLayout, rel: &str) -> CgroupLimits {
    if rel.trim_start_matches('/').is_empty() {
        return CgroupLimits::default();
    }
    let dir = |c: &str| layout.controller_dir(c, rel);
    if layout.is_v2() {
        dir("cpu").map(|d| read_v2(&d)).unwrap_or_default()
    } else {
        read_v1(
            dir("cpu").as_deref(),
            dir("memory").as_deref(),
            dir("pids").as_deref(),
        )
    }
}

fn read_v1(cpu: Option<&Path>, memory: Option<&Path>, pids: Option<&Path>) -> CgroupLimits {
    let file = |dir: Option<&Path>, name: &str| dir.and_then(|d| read_trimmed(&d.join(name)));
    // Swap accounting off: no memsw files, reported as 0 like cAdvisor.
    let memory_limit = file(memory, "memory.limit_in_bytes").map(|s| limit(&s));
    CgroupLimits {
        cpu_period: file(cpu, "cpu.cfs_period_us").map(|s| number(&s)),
        cpu_quota: file(cpu, "cpu.cfs_quota_us").map(|s| limit(&s)),
        cpu_shares: file(cpu, "cpu.shares").map(|s| number(&s)),
        memory: memory_limit,
        memory_swap: memory_limit
            .map(|_| file(memory, "memory.memsw.limit_in_bytes").map_or(0, |s| limit(&s))),
        memory_reservation: file(memory, "memory.soft_limit_in_bytes").map(|s| limit(&s)),
        pids_max: file(pids, "pids.max").map(|s| limit(&s)),
    }
}

fn read_v2(dir: &Path) -> CgroupLimits {
    let file = |name: &str| read_trimmed(&dir.join(name));
    let (cpu_quota, cpu_period) = match file("cpu.max").as_deref().map(parse_cpu_max) {
        Some((quota, period)) => (Some(quota), Some(period)),
        None => (None, None),
    };
    let memory = file("memory.max").map(|s| limit(&s));
    CgroupLimits {
        cpu_period,
        cpu_quota,
        cpu_shares: file("cpu.weight").and_then(|s| weight_to_shares(number(&s))),
        memory,
        memory_swap: memory.map(|_| file("memory.swap.max").map_or(0, |s| limit(&s))),
        memory_reservation: file("memory.min").map(|s| limit(&s)),
        pids_max: file("pids.max").map(|s| limit(&s)),
    }
}

/// v2 `cpu.max`: `"<quota|max> <period>"` → (quota, period), quota 0 for `max`.
fn parse_cpu_max(text: &str) -> (u64, u64) {
    let mut fields = text.split_whitespace();
    let quota = fields.next().map_or(0, limit);
    let period = fields.next().map_or(0, number);
    (quota, period)
}

/// v2 `cpu.weight` (1..=10000) back to v1 shares (2..=262144), the inverse of the conversion runc and
/// the kubelet apply, as cAdvisor computes it.
fn weight_to_shares(weight: u64) -> Option<u64> {
    (1..=10_000)
        .contains(&weight)
        .then(|| 2 + (weight - 1) * 262_142 / 9_999)
}

/// A limit: `max`, negative values and values at or above [`UNLIMITED`] are 0 ("no limit").
fn limit(text: &str) -> u64 {
    match text.parse::<u64>() {
        Ok(n) if n < UNLIMITED => n,
        _ => 0,
    }
}

/// A plain number; anything else is 0.
fn number(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
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
    fn v1_limits_from_a_fake_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let (cpu, mem, pids) = (
            root.path().join("cpu"),
            root.path().join("memory"),
            root.path().join("pids"),
        );
        write(&cpu.join("p/c"), "cpu.cfs_period_us", "100000\n");
        write(&cpu.join("p/c"), "cpu.cfs_quota_us", "20000\n");
        write(&cpu.join("p/c"), "cpu.shares", "1024\n");
        write(&mem.join("p/c"), "memory.limit_in_bytes", "67108864\n");
        write(
            &mem.join("p/c"),
            "memory.memsw.limit_in_bytes",
            "67108864\n",
        );
        write(
            &mem.join("p/c"),
            "memory.soft_limit_in_bytes",
            "9223372036854771712\n",
        );
        write(&pids.join("p/c"), "pids.max", "max\n");
        let hierarchy = |mount: &Path, c: &str| Hierarchy {
            mount: mount.to_path_buf(),
            controllers: vec![c.into()],
        };
        let layout = CgroupLayout::V1(vec![
            hierarchy(&cpu, "cpu"),
            hierarchy(&mem, "memory"),
            hierarchy(&pids, "pids"),
        ]);
        assert_eq!(
            read(&layout, "/p/c"),
            CgroupLimits {
                cpu_period: Some(100_000),
                cpu_quota: Some(20_000),
                cpu_shares: Some(1024),
                memory: Some(64 << 20),
                memory_swap: Some(64 << 20),
                memory_reservation: Some(0),
                pids_max: Some(0),
            }
        );
        // No quota, no limit, no swap accounting.
        write(&cpu.join("p/c"), "cpu.cfs_quota_us", "-1\n");
        write(
            &mem.join("p/c"),
            "memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        std::fs::remove_file(mem.join("p/c/memory.memsw.limit_in_bytes")).unwrap();
        write(&pids.join("p/c"), "pids.max", "1024\n");
        let l = read(&layout, "/p/c");
        assert_eq!(
            (l.cpu_quota, l.memory, l.memory_swap, l.pids_max),
            (Some(0), Some(0), Some(0), Some(1024))
        );
        assert_eq!(read(&layout, "/gone"), CgroupLimits::default());
        assert_eq!(read(&layout, "/"), CgroupLimits::default());
    }

    #[test]
    fn v2_limits_from_a_fake_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("p/c");
        write(&d, "cpu.max", "20000 100000\n");
        // What runc writes for 1024 shares.
        write(&d, "cpu.weight", "39\n");
        write(&d, "memory.max", "67108864\n");
        write(&d, "memory.swap.max", "0\n");
        write(&d, "memory.min", "0\n");
        write(&d, "pids.max", "max\n");
        let layout = CgroupLayout::V2(root.path().to_path_buf());
        assert_eq!(
            read(&layout, "/p/c"),
            CgroupLimits {
                cpu_period: Some(100_000),
                cpu_quota: Some(20_000),
                cpu_shares: Some(998),
                memory: Some(64 << 20),
                memory_swap: Some(0),
                memory_reservation: Some(0),
                pids_max: Some(0),
            }
        );
        write(&d, "cpu.max", "max 100000\n");
        write(&d, "memory.max", "max\n");
        write(&d, "memory.swap.max", "max\n");
        let l = read(&layout, "/p/c");
        assert_eq!(
            (l.cpu_quota, l.cpu_period, l.memory, l.memory_swap),
            (Some(0), Some(100_000), Some(0), Some(0))
        );
        assert_eq!(read(&layout, "/gone"), CgroupLimits::default());
    }

    #[test]
    fn weight_conversion_matches_cadvisor() {
        assert_eq!(weight_to_shares(1), Some(2));
        assert_eq!(weight_to_shares(100), Some(2597));
        assert_eq!(weight_to_shares(10_000), Some(262_144));
        assert_eq!(weight_to_shares(0), None);
        assert_eq!(weight_to_shares(10_001), None);
    }
}
