//! ListMetricDescriptors and ListPodSandboxMetrics: the stats of every ready pod and its containers (read
//! by [`crate::runtime::stats`], no second cgroup reader) as cAdvisor-named metrics. The kubelet serves
//! these on `/metrics/cadvisor` when `PodAndContainerStatsFromCRI` is on, passing names, label keys and
//! label values through unchanged, so they follow cAdvisor's names, units, types and label keys
//! ([`specs`]) and the kubelet's labels.
//!
//! Only metrics berth fills truly are described, each from the kernel (cgroup v1 / v2):
//! - CPU: usage (`cpuacct.usage` / `cpu.stat usage_usec`), user and system (`cpuacct.stat` ticks /
//!   `user_usec`, `system_usec`), CFS periods and throttling (`cpu.stat`; only with a CPU quota, as
//!   cAdvisor).
//! - Memory: usage, working set, rss, swap, page faults, cache, mapped files, kernel memory, failcnt,
//!   peak usage (`memory.stat`, `memory.failcnt`, `memory.kmem.usage_in_bytes`,
//!   `memory.max_usage_in_bytes` / `memory.events max`, `memory.peak`), OOM kills (`oom_kill`).
//! - Filesystem: writable layer usage, and size and inodes of its filesystem (`statvfs`); block I/O per
//!   device (`blkio.*io_service*_recursive` / `io.stat`), emitted only when the kernel accounts it.
//! - Tasks: processes, threads, file descriptors, sockets (`/proc/<pid>` of the cgroup's processes),
//!   `pids.max` (0 = unlimited).
//! - Spec: the cgroup's CPU period, quota (when set) and shares, memory, swap and reservation limits
//!   (0 = unlimited), start time (creation time until started).
//! - Pod level (`container="POD"`, as cAdvisor did for the infra container): processes of the pod cgroup,
//!   and per interface but `lo` bytes, packets, drops and errors from the pod's network namespace.
//!
//! Label keys are sorted (the CRI asks for it); every metric carries `container`, `id`, `image`, `name`,
//! `namespace` and `pod`, plus its own keys. Values are gathered live, so `timestamp` is 0. Values are
//! integers in the CRI: seconds are whole seconds (CRI-O truncates the same way).

mod container;
mod specs;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use k8s_cri::v1::*;

use crate::error::Result;
use crate::runtime::container::ContainerManager;
use crate::runtime::sandbox::SandboxManager;
use crate::runtime::stats::{self, PodDetail};
use specs::Spec;

/// The `container` label value of pod-level metrics.
const POD_CONTAINER: &str = "POD";

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

/// Metrics of one container (or of the pod) being built, all with the same common labels.
struct Out<'a> {
    labels: &'a Common,
    metrics: Vec<Metric>,
}

impl<'a> Out<'a> {
    fn new(labels: &'a Common) -> Self {
        Self {
            labels,
            metrics: Vec::new(),
        }
    }

    /// Appends one metric of `spec`; `extra` are the values of `spec.extra`, in the same order.
    fn push(&mut self, spec: &Spec, extra: &[&str], value: u64) {
        let mut pairs: Vec<(&str, &str)> = self.labels.pairs().to_vec();
        pairs.extend(spec.extra.iter().copied().zip(extra.iter().copied()));
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        self.metrics.push(Metric {
            name: spec.name.to_string(),
            timestamp: 0,
            metric_type: spec.kind as i32,
            label_values: pairs.into_iter().map(|(_, v)| v.to_string()).collect(),
            value: Some(UInt64Value { value }),
        });
    }
}

/// The descriptors of every metric ListPodSandboxMetrics emits.
pub fn descriptors() -> Vec<MetricDescriptor> {
    specs::SPECS
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
    let images: HashMap<String, String> = containers
        .stats_records(&ContainerFilter::default())
        .into_iter()
        .map(|r| (r.id, r.image_ref))
        .collect();
    let ready = PodSandboxFilter {
        state: Some(PodSandboxStateValue {
            state: PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    let pods = stats::list_pod_sandbox_details(sandboxes, containers, ready).await?;
    let now_s = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    Ok(pods
        .iter()
        .map(|p| pod_metrics(p, &images, now_s))
        .collect())
}

/// One pod's metrics from its stats; `images` maps container ids to image references.
fn pod_metrics(pod: &PodDetail, images: &HashMap<String, String>, now_s: u64) -> PodSandboxMetrics {
    let attrs = pod.stats.attributes.clone().unwrap_or_default();
    let meta = attrs.metadata.unwrap_or_default();
    let pod_labels = Common {
        container: POD_CONTAINER.to_string(),
        id: attrs.id.clone(),
        image: String::new(),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        pod: meta.name.clone(),
    };
    let mut out = Out::new(&pod_labels);
    let mut container_metrics = Vec::new();
    if let Some(linux) = &pod.stats.linux {
        if let Some(p) = &linux.process {
            out.push(&specs::PROCESSES, &[], v(&p.process_count));
        }
        for i in &pod.interfaces {
            let iface = [i.name.as_str()];
            out.push(&specs::NET_RX_BYTES, &iface, i.rx_bytes);
            out.push(&specs::NET_RX_PACKETS, &iface, i.rx_packets);
            out.push(&specs::NET_RX_DROPPED, &iface, i.rx_dropped);
            out.push(&specs::NET_RX_ERRORS, &iface, i.rx_errors);
            out.push(&specs::NET_TX_BYTES, &iface, i.tx_bytes);
            out.push(&specs::NET_TX_PACKETS, &iface, i.tx_packets);
            out.push(&specs::NET_TX_DROPPED, &iface, i.tx_dropped);
            out.push(&specs::NET_TX_ERRORS, &iface, i.tx_errors);
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
            let detail = pod.containers.get(&ca.id);
            container_metrics.push(ContainerMetrics {
                container_id: ca.id.clone(),
                metrics: container::metrics(c, detail, &labels, now_s),
            });
        }
    }
    PodSandboxMetrics {
        pod_sandbox_id: attrs.id,
        metrics: out.metrics,
        container_metrics,
    }
}

fn v(x: &Option<UInt64Value>) -> u64 {
    x.as_ref().map(|v| v.value).unwrap_or(0)
}
