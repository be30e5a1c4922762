//! ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats: cgroup counters (v1 or v2),
//! the writable layer's disk usage, and a pod's network and process counters, in CRI types.
//! [`list_pod_sandbox_details`] adds, for pod metrics, what the CRI stats messages have no field for:
//! the full cgroup sample, cgroup limits, task counts, block I/O, filesystem capacity, start times and
//! all network counters.
//!
//! `usage_nano_cores` is a rate: the previous CPU sample of each container and pod is kept in [`CpuRates`]
//! (as containerd does), so the first sample reports 0.

mod blkio;
mod cgroup_limits;
mod cgroup_stats;
mod fs;
mod net;
mod tasks;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_cri::v1::*;
use snapshotter::Snapshotter;

use crate::error::{Error, Result};
use crate::runtime::cgroup::CgroupLayout;
use crate::runtime::container::{ContainerManager, ContainerRecord};
use crate::runtime::sandbox::SandboxManager;
pub use blkio::DeviceIo;
pub use cgroup_limits::CgroupLimits;
pub use cgroup_stats::{CfsSample, CgroupSample, CpuSplit, MemorySample, SwapSample};
pub use fs::FsCapacity;
pub use net::InterfaceCounters;
pub use tasks::TaskCounts;

/// The interface reported as a pod's `default_interface`.
const DEFAULT_INTERFACE: &str = "eth0";
/// CPU samples older than this are dropped (their container or pod is gone or no longer asked about).
const SAMPLE_TTL_NS: i64 = 10 * 60 * 1_000_000_000;

/// The previous CPU sample (timestamp ns, usage ns) per container id or pod key.
#[derive(Debug, Default)]
pub struct CpuRates {
    prev: Mutex<HashMap<String, (i64, u64)>>,
}

impl CpuRates {
    /// Records a sample and returns the usage rate since the previous one in nanocores (0 for the first).
    pub fn rate(&self, key: &str, timestamp: i64, usage_ns: u64) -> u64 {
        let mut prev = self.prev.lock().unwrap_or_else(|p| p.into_inner());
        let rate = match prev.get(key) {
            // Not later than the previous sample: no rate, and keep the older sample.
            Some(&(ts, _)) if timestamp <= ts => return 0,
            Some(&(ts, usage)) if usage_ns >= usage => {
                let dt = u128::try_from(timestamp - ts).unwrap_or(1);
                let du = u128::from(usage_ns - usage);
                u64::try_from(du * 1_000_000_000 / dt).unwrap_or(u64::MAX)
            }
            _ => 0,
        };
        prev.retain(|_, (ts, _)| timestamp - *ts < SAMPLE_TTL_NS);
        prev.insert(key.to_string(), (timestamp, usage_ns));
        rate
    }
}

/// What the stats code needs from the container manager (cheap to clone).
#[derive(Clone)]
pub struct StatsSource {
    /// The node's cgroup hierarchies; `None` when none was found.
    pub cgroups: Option<Arc<CgroupLayout>>,
    /// Where writable layers live.
    pub snapshotter: Arc<Snapshotter>,
    /// The snapshots directory, reported as the writable layer's filesystem (as ImageFsInfo does).
    pub snapshots_dir: PathBuf,
    /// Previous CPU samples.
    pub cpu: Arc<CpuRates>,
}

/// What pod metrics read about a container beyond its [`ContainerStats`].
#[derive(Debug, Clone, Default)]
pub struct ContainerDetail {
    /// The cgroup sample the stats were made from.
    pub sample: CgroupSample,
    /// The cgroup's limits.
    pub limits: CgroupLimits,
    /// Processes, threads, descriptors and sockets; `None` when the cgroup is gone.
    pub tasks: Option<TaskCounts>,
    /// Block I/O per device (empty without I/O accounting).
    pub blkio: Vec<DeviceIo>,
    /// The writable layer's filesystem.
    pub fs: Option<FsCapacity>,
    /// Start time in unix seconds (creation time until started).
    pub start_time_s: u64,
}

/// One pod's stats with the details pod metrics need.
#[derive(Debug, Clone, Default)]
pub struct PodDetail {
    /// The CRI stats.
    pub stats: PodSandboxStats,
    /// Every interface of the pod's network namespace but `lo` (empty for hostNetwork pods).
    pub interfaces: Vec<InterfaceCounters>,
    /// Container details by container id.
    pub containers: HashMap<String, ContainerDetail>,
}

/// ContainerStats for one container (id or unique prefix). NotFound when unknown.
pub async fn container_stats(containers: &ContainerManager, id: &str) -> Result<ContainerStats> {
    let rec = containers.stats_record(id)?;
    let mut out = collect(containers.stats_source(), vec![rec]).await?;
    out.pop()
        .ok_or_else(|| Error::Internal(format!("container {id}: no stats collected")))
}

/// ListContainerStats: created and running containers passing the filter, oldest first.
pub async fn list_container_stats(
    containers: &ContainerManager,
    filter: ContainerStatsFilter,
) -> Result<Vec<ContainerStats>> {
    let filter = ContainerFilter {
        id: filter.id,
        state: None,
        pod_sandbox_id: filter.pod_sandbox_id,
        label_selector: filter.label_selector,
    };
    let records = containers.stats_records(&filter);
    collect(containers.stats_source(), records).await
}

/// PodSandboxStats for one sandbox (id or unique prefix). NotFound when unknown.
pub async fn pod_sandbox_stats(
    sandboxes: &SandboxManager,
    containers: &ContainerManager,
    id: &str,
) -> Result<PodSandboxStats> {
    let id = sandboxes.resolve_id(id).await?;
    let items = sandboxes
        .list(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                id: id.clone(),
                ..Default::default()
            }),
        })
        .await?
        .items;
    let item = items
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))?;
    Ok(one_pod(sandboxes, containers, item, false).await?.stats)
}

/// ListPodSandboxStats: every sandbox passing the filter (sandboxes removed meanwhile are skipped).
pub async fn list_pod_sandbox_stats(
    sandboxes: &SandboxManager,
    containers: &ContainerManager,
    filter: PodSandboxStatsFilter,
) -> Result<Vec<PodSandboxStats>> {
    let filter = PodSandboxFilter {
        id: filter.id,
        state: None,
        label_selector: filter.label_selector,
    };
    let pods = pods(sandboxes, containers, filter, false).await?;
    Ok(pods.into_iter().map(|p| p.stats).collect())
}

/// The stats and details of every sandbox passing `filter`, for pod metrics.
pub async fn list_pod_sandbox_details(
    sandboxes: &SandboxManager,
    containers: &ContainerManager,
    filter: PodSandboxFilter,
) -> Result<Vec<PodDetail>> {
    pods(sandboxes, containers, filter, true).await
}

/// Sandboxes removed meanwhile are skipped; container details are read when `detailed`.
async fn pods(
    sandboxes: &SandboxManager,
    containers: &ContainerManager,
    filter: PodSandboxFilter,
    detailed: bool,
) -> Result<Vec<PodDetail>> {
    let items = sandboxes
        .list(ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await?
        .items;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match one_pod(sandboxes, containers, item, detailed).await {
            Ok(pod) => out.push(pod),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

async fn one_pod(
    sandboxes: &SandboxManager,
    containers: &ContainerManager,
    item: PodSandbox,
    detailed: bool,
) -> Result<PodDetail> {
    let info = sandboxes.info(&item.id).await?;
    let records = containers.stats_records(&ContainerFilter {
        pod_sandbox_id: item.id.clone(),
        ..Default::default()
    });
    let source = containers.stats_source();
    let (container_stats, details) = if detailed {
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let (stats, details): (Vec<_>, Vec<_>) = collect_detailed(source.clone(), records)
            .await?
            .into_iter()
            .unzip();
        (stats, ids.into_iter().zip(details).collect())
    } else {
        (collect(source.clone(), records).await?, HashMap::new())
    };
    let (cgroup_path, netns) = (info.cgroup_path.clone(), info.netns_path.clone());
    let pod_id = item.id.clone();
    let (ts, sample, network) = blocking(move || {
        let ts = now_ns();
        let sample = source
            .cgroups
            .as_deref()
            .map(|l| cgroup_stats::read(l, &cgroup_path))
            .unwrap_or_default();
        let network = netns.and_then(|ns| match net::read_netns(&ns) {
            Ok(ifs) => Some(ifs),
            Err(err) => {
                tracing::debug!(sandbox = %pod_id, %err, "no network stats");
                None
            }
        });
        Ok((ts, sample, network))
    })
    .await?;
    let cpu_key = format!("pod:{}", item.id);
    let source = containers.stats_source();
    let interfaces = network
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|i| i.name != "lo")
        .cloned()
        .collect();
    let stats = PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: item.id,
            metadata: item.metadata,
            labels: item.labels,
            annotations: item.annotations,
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: cpu_usage(&source.cpu, &cpu_key, ts, &sample),
            memory: memory_usage(ts, &sample),
            network: network.map(|ifs| network_usage(ts, ifs)),
            process: sample.pids.map(|n| ProcessUsage {
                timestamp: ts,
                process_count: value(n),
            }),
            containers: container_stats,
        }),
        windows: None,
    };
    Ok(PodDetail {
        stats,
        interfaces,
        containers: details,
    })
}

/// Reads the cgroup and writable layer of each record on one blocking thread.
async fn collect(
    source: StatsSource,
    records: Vec<ContainerRecord>,
) -> Result<Vec<ContainerStats>> {
    blocking(move || {
        Ok(records
            .iter()
            .map(|r| one_container(&source, r).0)
            .collect())
    })
    .await
}

/// [`collect`] plus each container's [`ContainerDetail`].
async fn collect_detailed(
    source: StatsSource,
    records: Vec<ContainerRecord>,
) -> Result<Vec<(ContainerStats, ContainerDetail)>> {
    blocking(move || {
        // Every writable layer is on the same filesystem.
        let fs = fs::capacity(&source.snapshots_dir);
        Ok(records
            .iter()
            .map(|r| {
                let (stats, sample) = one_container(&source, r);
                (stats, detail(&source, r, sample, fs))
            })
            .collect())
    })
    .await
}

/// The reads [`ContainerDetail`] adds to `sample`. Blocking.
fn detail(
    source: &StatsSource,
    rec: &ContainerRecord,
    sample: CgroupSample,
    fs: Option<FsCapacity>,
) -> ContainerDetail {
    let layout = source.cgroups.as_deref();
    let start_ns = if rec.started_at > 0 {
        rec.started_at
    } else {
        rec.created_at
    };
    ContainerDetail {
        sample,
        limits: layout
            .map(|l| cgroup_limits::read(l, &rec.cgroup_path))
            .unwrap_or_default(),
        tasks: layout.and_then(|l| tasks::read(l, &rec.cgroup_path)),
        blkio: layout
            .map(|l| blkio::read(l, &rec.cgroup_path))
            .unwrap_or_default(),
        fs,
        start_time_s: u64::try_from(start_ns / 1_000_000_000).unwrap_or(0),
    }
}

/// A container's CRI stats and the cgroup sample they were made from.
fn one_container(source: &StatsSource, rec: &ContainerRecord) -> (ContainerStats, CgroupSample) {
    let ts = now_ns();
    let sample = source
        .cgroups
        .as_deref()
        .map(|l| cgroup_stats::read(l, &rec.cgroup_path))
        .unwrap_or_default();
    let layer = match source.snapshotter.usage(&rec.id) {
        Ok(u) => Some(u),
        Err(err) => {
            tracing::debug!(container = %rec.id, %err, "no writable layer usage");
            None
        }
    };
    let stats = ContainerStats {
        attributes: Some(ContainerAttributes {
            id: rec.id.clone(),
            metadata: Some(ContainerMetadata {
                name: rec.name.clone(),
                attempt: rec.attempt,
            }),
            labels: rec.labels.clone(),
            annotations: rec.annotations.clone(),
        }),
        cpu: cpu_usage(&source.cpu, &rec.id, ts, &sample),
        memory: memory_usage(ts, &sample),
        writable_layer: layer.map(|u| FilesystemUsage {
            timestamp: ts,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: source.snapshots_dir.display().to_string(),
            }),
            used_bytes: value(u.bytes),
            inodes_used: value(u.inodes),
        }),
        swap: sample.swap.map(|s| SwapUsage {
            timestamp: ts,
            swap_available_bytes: s.available.and_then(value),
            swap_usage_bytes: value(s.usage),
        }),
    };
    (stats, sample)
}

fn cpu_usage(rates: &CpuRates, key: &str, ts: i64, sample: &CgroupSample) -> Option<CpuUsage> {
    let usage = sample.cpu_usage_ns?;
    Some(CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: value(usage),
        usage_nano_cores: value(rates.rate(key, ts, usage)),
    })
}

fn memory_usage(ts: i64, sample: &CgroupSample) -> Option<MemoryUsage> {
    let m = sample.memory?;
    Some(MemoryUsage {
        timestamp: ts,
        working_set_bytes: value(m.working_set),
        available_bytes: m.available.and_then(value),
        usage_bytes: value(m.usage),
        rss_bytes: value(m.rss),
        page_faults: value(m.page_faults),
        major_page_faults: value(m.major_page_faults),
    })
}

fn network_usage(ts: i64, ifs: Vec<net::InterfaceCounters>) -> NetworkUsage {
    let convert = |i: &net::InterfaceCounters| NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    };
    NetworkUsage {
        timestamp: ts,
        default_interface: ifs
            .iter()
            .find(|i| i.name == DEFAULT_INTERFACE)
            .map(convert),
        interfaces: ifs.iter().filter(|i| i.name != "lo").map(convert).collect(),
    }
}

fn value(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("stats task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_between_samples() {
        let rates = CpuRates::default();
        assert_eq!(rates.rate("c", 1_000_000_000, 500), 0, "first sample");
        // 0.5 s of CPU over 1 s: half a core.
        assert_eq!(rates.rate("c", 2_000_000_000, 500_000_500), 500_000_000);
        // Same timestamp again: no division by zero.
        assert_eq!(rates.rate("c", 2_000_000_000, 600_000_000), 0);
        // Other keys are independent.
        assert_eq!(rates.rate("d", 2_000_000_000, 1), 0);
    }

    #[test]
    fn network_default_interface_and_no_loopback() {
        let ifs = vec![
            net::InterfaceCounters {
                name: "lo".into(),
                ..Default::default()
            },
            net::InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 10,
                ..Default::default()
            },
        ];
        let n = network_usage(5, ifs);
        assert_eq!(n.default_interface.map(|i| i.rx_bytes), Some(value(10)));
        assert_eq!(n.interfaces.len(), 1);
    }
}
