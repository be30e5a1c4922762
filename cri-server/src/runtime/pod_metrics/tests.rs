use std::collections::BTreeMap;

use super::*;
use crate::runtime::stats::{
    CfsSample, CgroupLimits, CgroupSample, ContainerDetail, CpuSplit, DeviceIo, FsCapacity,
    InterfaceCounters, MemorySample, TaskCounts,
};

fn val(n: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: n })
}

/// Everything berth reads about container c1 beyond its CRI stats.
fn full_detail() -> ContainerDetail {
    ContainerDetail {
        sample: CgroupSample {
            cpu_usage_ns: Some(2_500_000_000),
            cpu_split: Some(CpuSplit {
                user_ns: 2_000_000_000,
                system_ns: 500_000_000,
            }),
            cfs: Some(CfsSample {
                periods: 40,
                throttled_periods: 3,
                throttled_ns: 1_200_000_000,
            }),
            memory: Some(MemorySample {
                usage: 20,
                cache: 8,
                mapped_file: 4,
                kernel: 2,
                failcnt: 1,
                max_usage: 30,
                ..Default::default()
            }),
            swap: None,
            pids: Some(2),
            oom_kills: Some(1),
        },
        limits: CgroupLimits {
            cpu_period: Some(100_000),
            cpu_quota: Some(20_000),
            cpu_shares: Some(1024),
            memory: Some(64 << 20),
            memory_swap: Some(64 << 20),
            memory_reservation: Some(0),
            pids_max: Some(0),
        },
        tasks: Some(TaskCounts {
            processes: 2,
            threads: 5,
            file_descriptors: 9,
            sockets: 1,
        }),
        blkio: vec![DeviceIo {
            major: 8,
            minor: 0,
            device: "/dev/sda".into(),
            bytes: BTreeMap::from([("Read".into(), 4096), ("Write".into(), 8192)]),
            ios: BTreeMap::from([("Read".into(), 1), ("Write".into(), 2)]),
        }],
        fs: Some(FsCapacity {
            bytes: 1 << 30,
            inodes: 1000,
            inodes_free: 900,
        }),
        start_time_s: 1_700_000_000,
    }
}

/// A pod with every stat berth reads filled in.
fn full_pod() -> PodDetail {
    let iface = |name: &str| InterfaceCounters {
        name: name.into(),
        rx_bytes: 100,
        rx_packets: 10,
        rx_errors: 1,
        rx_dropped: 3,
        tx_bytes: 200,
        tx_packets: 20,
        tx_errors: 2,
        tx_dropped: 4,
    };
    let stats = PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: "pod1".into(),
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                namespace: "prod".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        linux: Some(LinuxPodSandboxStats {
            process: Some(ProcessUsage {
                timestamp: 1,
                process_count: val(3),
            }),
            containers: vec![ContainerStats {
                attributes: Some(ContainerAttributes {
                    id: "c1".into(),
                    metadata: Some(ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    ..Default::default()
                }),
                cpu: Some(CpuUsage {
                    timestamp: 1,
                    usage_core_nano_seconds: val(2_500_000_000),
                    usage_nano_cores: val(5),
                }),
                memory: Some(MemoryUsage {
                    timestamp: 1,
                    working_set_bytes: val(10),
                    usage_bytes: val(20),
                    rss_bytes: val(5),
                    page_faults: val(7),
                    major_page_faults: val(1),
                    ..Default::default()
                }),
                writable_layer: Some(FilesystemUsage {
                    timestamp: 1,
                    fs_id: Some(FilesystemIdentifier {
                        mountpoint: "/var/lib/berth/snapshots".into(),
                    }),
                    used_bytes: val(4096),
                    inodes_used: val(3),
                }),
                swap: Some(SwapUsage {
                    timestamp: 1,
                    swap_available_bytes: None,
                    swap_usage_bytes: val(0),
                }),
            }],
            ..Default::default()
        }),
        windows: None,
    };
    PodDetail {
        stats,
        interfaces: vec![iface("eth0"), iface("eth1")],
        containers: HashMap::from([("c1".to_string(), full_detail())]),
    }
}

fn all_metrics(p: &PodSandboxMetrics) -> Vec<&Metric> {
    p.metrics
        .iter()
        .chain(p.container_metrics.iter().flat_map(|c| c.metrics.iter()))
        .collect()
}

fn label<'a>(m: &'a Metric, key: &str) -> &'a str {
    let d = descriptors();
    let desc = d.iter().find(|d| d.name == m.name);
    let i = desc.and_then(|d| d.label_keys.iter().position(|k| k == key));
    i.and_then(|i| m.label_values.get(i))
        .map_or("", |s| s.as_str())
}

fn metrics_of(pod: &PodDetail) -> PodSandboxMetrics {
    let images = HashMap::from([("c1".to_string(), "busybox:1".to_string())]);
    pod_metrics(pod, &images, 1234)
}

#[test]
fn descriptors_match_emitted_metrics() {
    let p = metrics_of(&full_pod());
    let descs = descriptors();
    for m in all_metrics(&p) {
        let d = descs.iter().find(|d| d.name == m.name);
        let d = d.unwrap_or_else(|| panic!("{} has no descriptor", m.name));
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
        let mut sorted = d.label_keys.clone();
        sorted.sort();
        assert_eq!(sorted, d.label_keys, "{} keys sorted", m.name);
    }
    // Every descriptor is filled by a fully populated pod, and names are unique and helped.
    for d in &descs {
        assert!(
            all_metrics(&p).iter().any(|m| m.name == d.name),
            "{} never emitted",
            d.name
        );
        assert_eq!(descs.iter().filter(|e| e.name == d.name).count(), 1);
        assert!(!d.help.is_empty() && !d.label_keys.is_empty(), "{}", d.name);
    }
}

/// The value of the first metric `name` whose label `key` is `value`.
fn find(p: &PodSandboxMetrics, name: &str, key: &str, value: &str) -> Metric {
    all_metrics(p)
        .into_iter()
        .find(|m| m.name == name && label(m, key) == value)
        .unwrap_or_else(|| panic!("no {name}{{{key}={value}}}"))
        .clone()
}

#[test]
fn values_and_labels() {
    let p = metrics_of(&full_pod());
    assert_eq!(p.pod_sandbox_id, "pod1");
    assert_eq!(p.container_metrics[0].container_id, "c1");
    let cpu = find(&p, "container_cpu_usage_seconds_total", "cpu", "total");
    assert_eq!(cpu.value, val(2));
    assert_eq!(cpu.metric_type, MetricType::Counter as i32);
    assert_eq!(label(&cpu, "container"), "app");
    assert_eq!(label(&cpu, "image"), "busybox:1");
    assert_eq!(label(&cpu, "pod"), "web");
    assert_eq!(label(&cpu, "namespace"), "prod");
    assert_eq!(label(&cpu, "id"), "c1");
    let ws = find(&p, "container_memory_working_set_bytes", "container", "app");
    assert_eq!(
        (ws.value, ws.metric_type),
        (val(10), MetricType::Gauge as i32)
    );
    let rx = find(
        &p,
        "container_network_receive_bytes_total",
        "interface",
        "eth1",
    );
    assert_eq!(rx.value, val(100));
    assert_eq!(label(&rx, "container"), POD_CONTAINER);
    let drops = find(
        &p,
        "container_network_transmit_packets_dropped_total",
        "interface",
        "eth0",
    );
    assert_eq!(drops.value, val(4));
    let fs = find(
        &p,
        "container_fs_usage_bytes",
        "device",
        "/var/lib/berth/snapshots",
    );
    assert_eq!(fs.value, val(4096));
    let faults = find(
        &p,
        "container_memory_failures_total",
        "failure_type",
        "pgmajfault",
    );
    assert_eq!(
        (faults.value, label(&faults, "scope")),
        (val(1), "hierarchy")
    );
    assert_eq!(find(&p, "container_last_seen", "id", "c1").value, val(1234));
    assert_eq!(find(&p, "container_processes", "id", "pod1").value, val(3));
    assert!(all_metrics(&p).iter().all(|m| m.timestamp == 0));
}

#[test]
fn detail_values() {
    let p = metrics_of(&full_pod());
    let c1 = |name: &str| find(&p, name, "id", "c1").value;
    assert_eq!(c1("container_cpu_user_seconds_total"), val(2));
    assert_eq!(c1("container_cpu_system_seconds_total"), val(0));
    assert_eq!(c1("container_cpu_cfs_periods_total"), val(40));
    assert_eq!(c1("container_cpu_cfs_throttled_periods_total"), val(3));
    assert_eq!(c1("container_cpu_cfs_throttled_seconds_total"), val(1));
    assert_eq!(c1("container_memory_cache"), val(8));
    assert_eq!(c1("container_memory_max_usage_bytes"), val(30));
    assert_eq!(c1("container_oom_events_total"), val(1));
    assert_eq!(c1("container_processes"), val(2));
    assert_eq!(c1("container_threads"), val(5));
    assert_eq!(c1("container_threads_max"), val(0));
    assert_eq!(c1("container_file_descriptors"), val(9));
    assert_eq!(c1("container_sockets"), val(1));
    assert_eq!(c1("container_spec_cpu_period"), val(100_000));
    assert_eq!(c1("container_spec_cpu_quota"), val(20_000));
    assert_eq!(c1("container_spec_cpu_shares"), val(1024));
    assert_eq!(c1("container_spec_memory_limit_bytes"), val(64 << 20));
    assert_eq!(c1("container_spec_memory_swap_limit_bytes"), val(64 << 20));
    assert_eq!(c1("container_start_time_seconds"), val(1_700_000_000));
    let limit = find(
        &p,
        "container_fs_limit_bytes",
        "device",
        "/var/lib/berth/snapshots",
    );
    assert_eq!(limit.value, val(1 << 30));
    assert_eq!(c1("container_fs_inodes_free"), val(900));
    let write = find(
        &p,
        "container_blkio_device_usage_total",
        "operation",
        "Write",
    );
    assert_eq!(write.value, val(8192));
    assert_eq!(
        (
            label(&write, "device"),
            label(&write, "major"),
            label(&write, "minor")
        ),
        ("/dev/sda", "8", "0")
    );
    let reads = find(&p, "container_fs_reads_total", "device", "/dev/sda");
    assert_eq!(reads.value, val(1));
    assert_eq!(c1("container_fs_writes_bytes_total"), val(8192));
}

#[test]
fn no_quota_no_throttling_and_no_blkio_without_accounting() {
    let mut pod = full_pod();
    if let Some(d) = pod.containers.get_mut("c1") {
        d.limits.cpu_quota = Some(0);
        d.blkio.clear();
    }
    let p = metrics_of(&pod);
    let names: Vec<&str> = all_metrics(&p).iter().map(|m| m.name.as_str()).collect();
    for absent in [
        "container_cpu_cfs_periods_total",
        "container_spec_cpu_quota",
        "container_fs_reads_total",
        "container_blkio_device_usage_total",
    ] {
        assert!(!names.contains(&absent), "{absent} emitted");
    }
    assert!(names.contains(&"container_spec_cpu_period"));
}

#[test]
fn missing_stats_emit_nothing_but_last_seen() {
    let mut pod = full_pod();
    pod.interfaces.clear();
    pod.containers.clear();
    if let Some(l) = pod.stats.linux.as_mut() {
        l.process = None;
        for c in &mut l.containers {
            c.cpu = None;
            c.memory = None;
            c.swap = None;
            c.writable_layer = None;
        }
    }
    let p = metrics_of(&pod);
    assert!(p.metrics.is_empty());
    let names: Vec<&str> = all_metrics(&p).iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["container_last_seen"]);
}
