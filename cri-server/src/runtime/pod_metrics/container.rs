//! The metrics of one container: from its CRI stats (cpu usage, memory, swap, writable layer) and, when
//! read, its [`ContainerDetail`] (cpu split and throttling, memory extras, OOM kills, filesystem
//! capacity, block I/O, tasks, cgroup limits, start time).

use k8s_cri::v1::{ContainerStats, Metric};

use super::specs::{self as s};
use super::{v, Common, Out};
use crate::runtime::stats::{ContainerDetail, DeviceIo};

const NS_PER_S: u64 = 1_000_000_000;

/// Every metric of container `c` with `labels`; `now_s` is `container_last_seen`.
pub(super) fn metrics(
    c: &ContainerStats,
    detail: Option<&ContainerDetail>,
    labels: &Common,
    now_s: u64,
) -> Vec<Metric> {
    let mut out = Out::new(labels);
    cri_stats(&mut out, c);
    if let Some(d) = detail {
        cpu(&mut out, d);
        memory(&mut out, d);
        filesystem(&mut out, c, d);
        for dev in &d.blkio {
            blkio(&mut out, dev);
        }
        tasks(&mut out, d);
        spec(&mut out, d);
        out.push(&s::START_TIME, &[], d.start_time_s);
    }
    out.push(&s::LAST_SEEN, &[], now_s);
    out.metrics
}

/// What the CRI stats carry.
fn cri_stats(out: &mut Out<'_>, c: &ContainerStats) {
    if let Some(cpu) = &c.cpu {
        let secs = v(&cpu.usage_core_nano_seconds) / NS_PER_S;
        out.push(&s::CPU_USAGE, &["total"], secs);
    }
    if let Some(m) = &c.memory {
        out.push(&s::MEMORY_USAGE, &[], v(&m.usage_bytes));
        out.push(&s::MEMORY_WORKING_SET, &[], v(&m.working_set_bytes));
        out.push(&s::MEMORY_RSS, &[], v(&m.rss_bytes));
        // The cgroup reader takes the hierarchical counters (v1 total_pgfault, v2 pgfault).
        let faults = [
            ("pgfault", &m.page_faults),
            ("pgmajfault", &m.major_page_faults),
        ];
        for (kind, n) in faults {
            out.push(&s::MEMORY_FAILURES, &[kind, "hierarchy"], v(n));
        }
    }
    if let Some(sw) = &c.swap {
        out.push(&s::MEMORY_SWAP, &[], v(&sw.swap_usage_bytes));
    }
    if let Some(w) = &c.writable_layer {
        out.push(&s::FS_USAGE, &[device(c)], v(&w.used_bytes));
    }
}

fn cpu(out: &mut Out<'_>, d: &ContainerDetail) {
    if let Some(split) = d.sample.cpu_split {
        out.push(&s::CPU_USER, &[], split.user_ns / NS_PER_S);
        out.push(&s::CPU_SYSTEM, &[], split.system_ns / NS_PER_S);
    }
    // cAdvisor reports throttling only for containers with a quota.
    let quota = d.limits.cpu_quota.unwrap_or(0);
    if let Some(cfs) = d.sample.cfs.filter(|_| quota > 0) {
        out.push(&s::CFS_PERIODS, &[], cfs.periods);
        out.push(&s::CFS_THROTTLED_PERIODS, &[], cfs.throttled_periods);
        out.push(&s::CFS_THROTTLED_SECONDS, &[], cfs.throttled_ns / NS_PER_S);
    }
}

fn memory(out: &mut Out<'_>, d: &ContainerDetail) {
    if let Some(m) = d.sample.memory {
        out.push(&s::MEMORY_CACHE, &[], m.cache);
        out.push(&s::MEMORY_MAPPED_FILE, &[], m.mapped_file);
        out.push(&s::MEMORY_KERNEL, &[], m.kernel);
        out.push(&s::MEMORY_FAILCNT, &[], m.failcnt);
        out.push(&s::MEMORY_MAX_USAGE, &[], m.max_usage);
    }
    if let Some(n) = d.sample.oom_kills {
        out.push(&s::OOM_EVENTS, &[], n);
    }
}

/// The writable layer's filesystem, labelled as `container_fs_usage_bytes` is.
fn filesystem(out: &mut Out<'_>, c: &ContainerStats, d: &ContainerDetail) {
    let Some(fs) = d.fs.filter(|_| c.writable_layer.is_some()) else {
        return;
    };
    let dev = [device(c)];
    out.push(&s::FS_LIMIT, &dev, fs.bytes);
    out.push(&s::FS_INODES, &dev, fs.inodes);
    out.push(&s::FS_INODES_FREE, &dev, fs.inodes_free);
}

/// The `device` label of the writable layer's metrics: the filesystem CRI stats name.
fn device(c: &ContainerStats) -> &str {
    c.writable_layer
        .as_ref()
        .and_then(|w| w.fs_id.as_ref())
        .map(|f| f.mountpoint.as_str())
        .unwrap_or("")
}

fn blkio(out: &mut Out<'_>, dev: &DeviceIo) {
    let (major, minor) = (dev.major.to_string(), dev.minor.to_string());
    let name = dev.device.as_str();
    for (op, bytes) in &dev.bytes {
        let labels = [name, major.as_str(), minor.as_str(), op.as_str()];
        out.push(&s::BLKIO_DEVICE_USAGE, &labels, *bytes);
    }
    let per_device = [
        (&s::FS_READ_BYTES, dev.bytes.get("Read")),
        (&s::FS_WRITE_BYTES, dev.bytes.get("Write")),
        (&s::FS_READS, dev.ios.get("Read")),
        (&s::FS_WRITES, dev.ios.get("Write")),
    ];
    for (spec, value) in per_device {
        if let Some(n) = value {
            out.push(spec, &[name], *n);
        }
    }
}

fn tasks(out: &mut Out<'_>, d: &ContainerDetail) {
    let Some(t) = d.tasks else { return };
    out.push(&s::PROCESSES, &[], t.processes);
    out.push(&s::THREADS, &[], t.threads);
    out.push(&s::THREADS_MAX, &[], d.limits.pids_max.unwrap_or(0));
    out.push(&s::FILE_DESCRIPTORS, &[], t.file_descriptors);
    out.push(&s::SOCKETS, &[], t.sockets);
}

/// The cgroup's limits, as cAdvisor's container spec metrics.
fn spec(out: &mut Out<'_>, d: &ContainerDetail) {
    let l = &d.limits;
    if l.cpu_period.is_some() || l.cpu_shares.is_some() {
        out.push(&s::SPEC_CPU_PERIOD, &[], l.cpu_period.unwrap_or(0));
        out.push(&s::SPEC_CPU_SHARES, &[], l.cpu_shares.unwrap_or(0));
        if let Some(q) = l.cpu_quota.filter(|q| *q > 0) {
            out.push(&s::SPEC_CPU_QUOTA, &[], q);
        }
    }
    if let Some(limit) = l.memory {
        out.push(&s::SPEC_MEMORY_LIMIT, &[], limit);
        out.push(&s::SPEC_MEMORY_SWAP_LIMIT, &[], l.memory_swap.unwrap_or(0));
        let reservation = l.memory_reservation.unwrap_or(0);
        out.push(&s::SPEC_MEMORY_RESERVATION, &[], reservation);
    }
}
