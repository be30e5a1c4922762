//! ListMetricDescriptors and ListPodSandboxMetrics: the stats of every ready pod and its containers (read
//! by [`crate::runtime::stats`], no second cgroup reader) as cAdvisor-named metrics. The kubelet serves
//! these on `/metrics/cadvisor` when `PodAndContainerStatsFromCRI` is on, passing names, label keys and
//! label values through unchanged, so they follow cAdvisor's names and kubelet labels.
//!
//! Only metrics berth fills truly are described. Label keys are sorted (the CRI asks for it); every
//! metric carries `container`, `id`, `image`, `name`, `namespace` and `pod`, plus its own keys. Pod-level
//! metrics (network, processes) use `container="POD"` as cAdvisor did for the pod's infra container.
//! Values are gathered live, so `timestamp` is 0. CPU seconds are whole seconds: the CRI value is an
//! integer (CRI-O truncates the same way).

use std::collections::HashMap;

use k8s_cri::v1::*;

use crate::error::Result;
use crate::runtime::container::ContainerManager;
use crate::runtime::sandbox::SandboxManager;
use crate::runtime::stats;

/// The `container` label value of pod-level metrics.
const POD_CONTAINER: &str = "POD";

/// One metric berth emits.
struct Spec {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    /// Label keys after the common ones.
    extra: &'static [&'static str],
}

const CPU_USAGE: Spec = Spec {
    name: "container_cpu_usage_seconds_total",
    help: "Cumulative cpu time consumed in seconds.",
    kind: MetricType::Counter,
    extra: &["cpu"],
};
const MEMORY_USAGE: Spec = Spec {
    name: "container_memory_usage_bytes",
    help: "Current memory usage in bytes, including all memory regardless of when it was accessed",
    kind: MetricType::Gauge,
    extra: &[],
};
const MEMORY_WORKING_SET: Spec = Spec {
    name: "container_memory_working_set_bytes",
    help: "Current working set in bytes.",
    kind: MetricType::Gauge,
    extra: &[],
};
const MEMORY_RSS: Spec = Spec {
    name: "container_memory_rss",
    help: "Size of RSS in bytes.",
    kind: MetricType::Gauge,
    extra: &[],
};
const MEMORY_FAILURES: Spec = Spec {
    name: "container_memory_failures_total",
    help: "Cumulative count of memory allocation failures.",
    kind: MetricType::Counter,
    extra: &["failure_type", "scope"],
};
const MEMORY_SWAP: Spec = Spec {
    name: "container_memory_swap",
    help: "Container swap usage in bytes.",
    kind: MetricType::Gauge,
    extra: &[],
};
const FS_USAGE: Spec = Spec {
    name: "container_fs_usage_bytes",
    help: "Number of bytes that are consumed by the container on this filesystem.",
    kind: MetricType::Gauge,
    extra: &["device"],
};
const LAST_SEEN: Spec = Spec {
    name: "container_last_seen",
    help: "Last time a container was seen by the exporter",
    kind: MetricType::Gauge,
    extra: &[],
};
const PROCESSES: Spec = Spec {
    name: "container_processes",
    help: "Number of processes running inside the container.",
    kind: MetricType::Gauge,
    extra: &[],
};
const NET_RX_BYTES: Spec = Spec {
    name: "container_network_receive_bytes_total",
    help: "Cumulative count of bytes received",
    kind: MetricType::Counter,
    extra: &["interface"],
};
const NET_RX_ERRORS: Spec = Spec {
    name: "container_network_receive_errors_total",
    help: "Cumulative count of errors encountered while receiving",
    kind: MetricType::Counter,
    extra: &["interface"],
};
const NET_TX_BYTES: Spec = Spec {
    name: "container_network_transmit_bytes_total",
    help: "Cumulative count of bytes transmitted",
    kind: MetricType::Counter,
    extra: &["interface"],
};
const NET_TX_ERRORS: Spec = Spec {
    name: "container_network_transmit_errors_total",
    help: "Cumulative count of errors encountered while transmitting",
    kind: MetricType::Counter,
    extra: &["interface"],
};

/// Every metric berth emits, in the order ListMetricDescriptors returns them.
const SPECS: [&Spec; 13] = [
    &CPU_USAGE,
    &MEMORY_USAGE,
    &MEMORY_WORKING_SET,
    &MEMORY_RSS,
    &MEMORY_FAILURES,
    &MEMORY_SWAP,
    &FS_USAGE,
    &LAST_SEEN,
    &PROCESSES,
    &NET_RX_BYTES,
    &NET_RX_ERRORS,
    &NET_TX_BYTES,
    &NET_TX_ERRORS,
];

/// The labels every metric carries, in sorted key order: container, id, image, name, namespace, pod.
#[derive(Debug, Clone, Default)]
struct Common {
    container: String,
    id: String,
    image: String,
    name: String,
    namespace: String,
    pod: String,
}

impl Common {
    fn pairs(&self) -> [(&'static str, &str); 6] {
        [
            ("container", &self.container),
            ("id", &self.id),
            ("image", &self.image),
            ("name", &self.name),
            ("namespace", &self.namespace),
            ("pod", &self.pod),
        ]
    }
}

/// The descriptors of every metric ListPodSandboxMetrics emits.
pub fn descriptors() -> Vec<MetricDescriptor> {
    SPECS
        .iter()
        .map(|s| {
            let mut keys: Vec<String> = Common::default()
                .pairs()
                .iter()
                .map(|(k, _)| (*k).to_string())
                .chain(s.extra.iter().map(|k| (*k).to_string()))
                .collect();
            keys.sort();
            MetricDescriptor {
                name: s.name.to_string(),
                help: s.help.to_string(),
                label_keys: keys,
            }
        })
        .collect()
}

/// ListPodSandboxMetrics: the metrics of every ready pod and of its created and running containers.
pub async fn list_pod_sandbox_metrics(
    sandboxes: &SandboxManager,
    containers: &ContainerManager,
) -> Result<Vec<PodSandboxMetrics>> {
    let ready: Vec<String> = sandboxes
        .list(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue {
                    state: PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    let images: HashMap<String, String> = containers
        .stats_records(&ContainerFilter::default())
        .into_iter()
        .map(|r| (r.id, r.image_ref))
        .collect();
    let all = stats::list_pod_sandbox_stats(sandboxes, containers, Default::default()).await?;
    let now_s = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    Ok(all
        .iter()
        .filter(|s| s.attributes.as_ref().is_some_and(|a| ready.contains(&a.id)))
        .map(|s| pod_metrics(s, &images, now_s))
        .collect())
}

/// One pod's metrics from its stats; `images` maps container ids to image references.
fn pod_metrics(
    stats: &PodSandboxStats,
    images: &HashMap<String, String>,
    now_s: u64,
) -> PodSandboxMetrics {
    let attrs = stats.attributes.clone().unwrap_or_default();
    let meta = attrs.metadata.unwrap_or_default();
    let pod_labels = Common {
        container: POD_CONTAINER.to_string(),
        id: attrs.id.clone(),
        image: String::new(),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        pod: meta.name.clone(),
    };
    let mut metrics = Vec::new();
    let mut container_metrics = Vec::new();
    if let Some(linux) = &stats.linux {
        if let Some(p) = &linux.process {
            push(
                &mut metrics,
                &PROCESSES,
                &pod_labels,
                &[],
                v(&p.process_count),
            );
        }
        if let Some(net) = &linux.network {
            for i in &net.interfaces {
                let extra = [i.name.as_str()];
                push(
                    &mut metrics,
                    &NET_RX_BYTES,
                    &pod_labels,
                    &extra,
                    v(&i.rx_bytes),
                );
                push(
                    &mut metrics,
                    &NET_RX_ERRORS,
                    &pod_labels,
                    &extra,
                    v(&i.rx_errors),
                );
                push(
                    &mut metrics,
                    &NET_TX_BYTES,
                    &pod_labels,
                    &extra,
                    v(&i.tx_bytes),
                );
                push(
                    &mut metrics,
                    &NET_TX_ERRORS,
                    &pod_labels,
                    &extra,
                    v(&i.tx_errors),
                );
            }
        }
        for c in &linux.containers {
            let Some(ca) = &c.attributes else { continue };
            let name = ca
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            let labels = Common {
                container: name.clone(),
                id: ca.id.clone(),
                image: images.get(&ca.id).cloned().unwrap_or_default(),
                name,
                namespace: meta.namespace.clone(),
                pod: meta.name.clone(),
            };
            container_metrics.push(ContainerMetrics {
                container_id: ca.id.clone(),
                metrics: container(c, &labels, now_s),
            });
        }
    }
    PodSandboxMetrics {
        pod_sandbox_id: attrs.id,
        metrics,
        container_metrics,
    }
}

fn container(c: &ContainerStats, labels: &Common, now_s: u64) -> Vec<Metric> {
    let mut out = Vec::new();
    if let Some(cpu) = &c.cpu {
        let secs = v(&cpu.usage_core_nano_seconds) / 1_000_000_000;
        push(&mut out, &CPU_USAGE, labels, &["total"], secs);
    }
    if let Some(m) = &c.memory {
        push(&mut out, &MEMORY_USAGE, labels, &[], v(&m.usage_bytes));
        push(
            &mut out,
            &MEMORY_WORKING_SET,
            labels,
            &[],
            v(&m.working_set_bytes),
        );
        push(&mut out, &MEMORY_RSS, labels, &[], v(&m.rss_bytes));
        // The cgroup reader takes the hierarchical counters (v1 total_pgfault, v2 pgfault).
        let faults = [
            ("pgfault", &m.page_faults),
            ("pgmajfault", &m.major_page_faults),
        ];
        for (kind, n) in faults {
            push(
                &mut out,
                &MEMORY_FAILURES,
                labels,
                &[kind, "hierarchy"],
                v(n),
            );
        }
    }
    if let Some(s) = &c.swap {
        push(&mut out, &MEMORY_SWAP, labels, &[], v(&s.swap_usage_bytes));
    }
    if let Some(w) = &c.writable_layer {
        let device = w
            .fs_id
            .as_ref()
            .map(|f| f.mountpoint.as_str())
            .unwrap_or("");
        push(&mut out, &FS_USAGE, labels, &[device], v(&w.used_bytes));
    }
    push(&mut out, &LAST_SEEN, labels, &[], now_s);
    out
}

/// Appends one metric of `spec`; `extra` are the values of `spec.extra`, in the same order.
fn push(out: &mut Vec<Metric>, spec: &Spec, labels: &Common, extra: &[&str], value: u64) {
    let mut pairs: Vec<(&str, &str)> = labels.pairs().to_vec();
    pairs.extend(spec.extra.iter().copied().zip(extra.iter().copied()));
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    out.push(Metric {
        name: spec.name.to_string(),
        timestamp: 0,
        metric_type: spec.kind as i32,
        label_values: pairs.into_iter().map(|(_, v)| v.to_string()).collect(),
        value: Some(UInt64Value { value }),
    });
}

fn v(x: &Option<UInt64Value>) -> u64 {
    x.as_ref().map(|v| v.value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(n: u64) -> Option<UInt64Value> {
        Some(UInt64Value { value: n })
    }

    /// A pod with every stat berth reads filled in.
    fn full_pod() -> PodSandboxStats {
        let iface = |name: &str| NetworkInterfaceUsage {
            name: name.into(),
            rx_bytes: val(100),
            rx_errors: val(1),
            tx_bytes: val(200),
            tx_errors: val(2),
        };
        PodSandboxStats {
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
                network: Some(NetworkUsage {
                    timestamp: 1,
                    default_interface: Some(iface("eth0")),
                    interfaces: vec![iface("eth0"), iface("eth1")],
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

    #[test]
    fn descriptors_match_emitted_metrics() {
        let images = HashMap::from([("c1".to_string(), "busybox:1".to_string())]);
        let p = pod_metrics(&full_pod(), &images, 1234);
        let descs = descriptors();
        for m in all_metrics(&p) {
            let d = descs.iter().find(|d| d.name == m.name);
            let d = d.unwrap_or_else(|| panic!("{} has no descriptor", m.name));
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
            let mut sorted = d.label_keys.clone();
            sorted.sort();
            assert_eq!(sorted, d.label_keys, "{} keys sorted", m.name);
        }
        // Every descriptor is filled by a fully populated pod, and names are unique.
        for d in &descs {
            assert!(
                all_metrics(&p).iter().any(|m| m.name == d.name),
                "{} never emitted",
                d.name
            );
            assert_eq!(descs.iter().filter(|e| e.name == d.name).count(), 1);
        }
    }

    #[test]
    fn values_and_labels() {
        let images = HashMap::from([("c1".to_string(), "busybox:1".to_string())]);
        let p = pod_metrics(&full_pod(), &images, 1234);
        assert_eq!(p.pod_sandbox_id, "pod1");
        assert_eq!(p.container_metrics[0].container_id, "c1");
        let find = |name: &str, key: &str, value: &str| {
            all_metrics(&p)
                .into_iter()
                .find(|m| m.name == name && label(m, key) == value)
                .unwrap_or_else(|| panic!("no {name}{{{key}={value}}}"))
                .clone()
        };
        let cpu = find("container_cpu_usage_seconds_total", "cpu", "total");
        assert_eq!(cpu.value, val(2));
        assert_eq!(cpu.metric_type, MetricType::Counter as i32);
        assert_eq!(label(&cpu, "container"), "app");
        assert_eq!(label(&cpu, "image"), "busybox:1");
        assert_eq!(label(&cpu, "pod"), "web");
        assert_eq!(label(&cpu, "namespace"), "prod");
        assert_eq!(label(&cpu, "id"), "c1");
        let ws = find("container_memory_working_set_bytes", "container", "app");
        assert_eq!(
            (ws.value, ws.metric_type),
            (val(10), MetricType::Gauge as i32)
        );
        let rx = find("container_network_receive_bytes_total", "interface", "eth1");
        assert_eq!(rx.value, val(100));
        assert_eq!(label(&rx, "container"), POD_CONTAINER);
        let fs = find(
            "container_fs_usage_bytes",
            "device",
            "/var/lib/berth/snapshots",
        );
        assert_eq!(fs.value, val(4096));
        let faults = find(
            "container_memory_failures_total",
            "failure_type",
            "pgmajfault",
        );
        assert_eq!(
            (faults.value, label(&faults, "scope")),
            (val(1), "hierarchy")
        );
        assert_eq!(find("container_last_seen", "id", "c1").value, val(1234));
        assert_eq!(find("container_processes", "id", "pod1").value, val(3));
        assert!(all_metrics(&p).iter().all(|m| m.timestamp == 0));
    }

    #[test]
    fn missing_stats_emit_nothing_but_last_seen() {
        let mut pod = full_pod();
        if let Some(l) = pod.linux.as_mut() {
            l.process = None;
            l.network = None;
            for c in &mut l.containers {
                c.cpu = None;
                c.memory = None;
                c.swap = None;
                c.writable_layer = None;
            }
        }
        let p = pod_metrics(&pod, &HashMap::new(), 1);
        assert!(p.metrics.is_empty());
        let names: Vec<&str> = all_metrics(&p).iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec!["container_last_seen"]);
    }
}
