//! The metrics berth emits: cAdvisor's names, help texts, types and own label keys
//! (google/cadvisor `lib/metrics/prometheus.go`). Every one is filled from the kernel; see the module doc of
//! [`super`] for the sources.

use k8s_cri::v1::MetricType;

/// One metric berth emits.
pub struct Spec {
    /// cAdvisor's name.
    pub name: &'static str,
    /// cAdvisor's help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricType,
    /// Label keys after the common ones, in the order values are passed.
    pub extra: &'static [&'static str],
}

pub(super) const CPU_USAGE: Spec = Spec {
    name: "container_cpu_usage_seconds_total",
    help: "Cumulative cpu time consumed in seconds.",
    kind: MetricType::Counter,
    extra: &["cpu"],
};
pub(super) const CPU_USER: Spec = Spec {
    name: "container_cpu_user_seconds_total",
    help: "Cumulative user cpu time consumed in seconds.",
    kind: MetricType::Counter,
    extra: &[],
};
pub(super) const CPU_SYSTEM: Spec = Spec {
    name: "container_cpu_system_seconds_total",
    help: "Cumulative system cpu time consumed in seconds.",
    kind: MetricType::Counter,
    extra: &[],
};
pub(super) const CFS_PERIODS: Spec = Spec {
    name: "container_cpu_cfs_periods_total",
    help: "Number of elapsed enforcement period intervals.",
    kind: MetricType::Counter,
    extra: &[],
};
pub(super) const CFS_THROTTLED_PERIODS: Spec = Spec {
    name: "container_cpu_cfs_throttled_periods_total",
    help: "Number of throttled period intervals.",
    kind: MetricType::Counter,
    extra: &[],
};
pub(super) const CFS_THROTTLED_SECONDS: Spec = Spec {
    name: "container_cpu_cfs_throttled_seconds_total",
    help: "Total time duration the container has been throttled.",
    kind: MetricType::Counter,
    extra: &[],
};
pub(super) const MEMORY_USAGE: Spec = Spec {
    name: "container_memory_usage_bytes",
    help: "Current memory usage in bytes, including all memory regardless of when it was accessed",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const MEMORY_MAX_USAGE: Spec = Spec {
    name: "container_memory_max_usage_bytes",
    help: "Maximum memory usage recorded in bytes",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const MEMORY_WORKING_SET: Spec = Spec {
    name: "container_memory_working_set_bytes",
    help: "Current working set in bytes.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const MEMORY_RSS: Spec = Spec {
    name: "container_memory_rss",
    help: "Size of RSS in bytes.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const MEMORY_CACHE: Spec = Spec {
    name: "container_memory_cache",
    help: "Number of bytes of page cache memory.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const MEMORY_MAPPED_FILE: Spec = Spec {
    name: "container_memory_mapped_file",
    help: "Size of memory mapped files in bytes.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const MEMORY_KERNEL: Spec = Spec {
    name: "container_memory_kernel_usage",
    help: "Size of kernel memory allocated in bytes.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const MEMORY_SWAP: Spec = Spec {
    name: "container_memory_swap",
    help: "Container swap usage in bytes.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const MEMORY_FAILCNT: Spec = Spec {
    name: "container_memory_failcnt",
    help: "Number of memory usage hits limits",
    kind: MetricType::Counter,
    extra: &[],
};
pub(super) const MEMORY_FAILURES: Spec = Spec {
    name: "container_memory_failures_total",
    help: "Cumulative count of memory allocation failures.",
    kind: MetricType::Counter,
    extra: &["failure_type", "scope"],
};
pub(super) const OOM_EVENTS: Spec = Spec {
    name: "container_oom_events_total",
    help: "Count of out of memory events observed for the container",
    kind: MetricType::Counter,
    extra: &[],
};
pub(super) const FS_USAGE: Spec = Spec {
    name: "container_fs_usage_bytes",
    help: "Number of bytes that are consumed by the container on this filesystem.",
    kind: MetricType::Gauge,
    extra: &["device"],
};
pub(super) const FS_LIMIT: Spec = Spec {
    name: "container_fs_limit_bytes",
    help: "Number of bytes that can be consumed by the container on this filesystem.",
    kind: MetricType::Gauge,
    extra: &["device"],
};
pub(super) const FS_INODES: Spec = Spec {
    name: "container_fs_inodes_total",
    help: "Number of Inodes",
    kind: MetricType::Gauge,
    extra: &["device"],
};
pub(super) const FS_INODES_FREE: Spec = Spec {
    name: "container_fs_inodes_free",
    help: "Number of available Inodes",
    kind: MetricType::Gauge,
    extra: &["device"],
};
pub(super) const FS_READ_BYTES: Spec = Spec {
    name: "container_fs_reads_bytes_total",
    help: "Cumulative count of bytes read",
    kind: MetricType::Counter,
    extra: &["device"],
};
pub(super) const FS_READS: Spec = Spec {
    name: "container_fs_reads_total",
    help: "Cumulative count of reads completed",
    kind: MetricType::Counter,
    extra: &["device"],
};
pub(super) const FS_WRITE_BYTES: Spec = Spec {
    name: "container_fs_writes_bytes_total",
    help: "Cumulative count of bytes written",
    kind: MetricType::Counter,
    extra: &["device"],
};
pub(super) const FS_WRITES: Spec = Spec {
    name: "container_fs_writes_total",
    help: "Cumulative count of writes completed",
    kind: MetricType::Counter,
    extra: &["device"],
};
pub(super) const BLKIO_DEVICE_USAGE: Spec = Spec {
    name: "container_blkio_device_usage_total",
    help: "Blkio Device bytes usage",
    kind: MetricType::Counter,
    extra: &["device", "major", "minor", "operation"],
};
pub(super) const PROCESSES: Spec = Spec {
    name: "container_processes",
    help: "Number of processes running inside the container.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const THREADS: Spec = Spec {
    name: "container_threads",
    help: "Number of threads running inside the container",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const THREADS_MAX: Spec = Spec {
    name: "container_threads_max",
    help: "Maximum number of threads allowed inside the container, infinity if value is zero",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const FILE_DESCRIPTORS: Spec = Spec {
    name: "container_file_descriptors",
    help: "Number of open file descriptors for the container.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const SOCKETS: Spec = Spec {
    name: "container_sockets",
    help: "Number of open sockets for the container.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const SPEC_CPU_PERIOD: Spec = Spec {
    name: "container_spec_cpu_period",
    help: "CPU period of the container.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const SPEC_CPU_QUOTA: Spec = Spec {
    name: "container_spec_cpu_quota",
    help: "CPU quota of the container.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const SPEC_CPU_SHARES: Spec = Spec {
    name: "container_spec_cpu_shares",
    help: "CPU share of the container.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const SPEC_MEMORY_LIMIT: Spec = Spec {
    name: "container_spec_memory_limit_bytes",
    help: "Memory limit for the container.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const SPEC_MEMORY_SWAP_LIMIT: Spec = Spec {
    name: "container_spec_memory_swap_limit_bytes",
    help: "Memory swap limit for the container.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const SPEC_MEMORY_RESERVATION: Spec = Spec {
    name: "container_spec_memory_reservation_limit_bytes",
    help: "Memory reservation limit for the container.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const START_TIME: Spec = Spec {
    name: "container_start_time_seconds",
    help: "Start time of the container since unix epoch in seconds.",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const LAST_SEEN: Spec = Spec {
    name: "container_last_seen",
    help: "Last time a container was seen by the exporter",
    kind: MetricType::Gauge,
    extra: &[],
};
pub(super) const NET_RX_BYTES: Spec = Spec {
    name: "container_network_receive_bytes_total",
    help: "Cumulative count of bytes received",
    kind: MetricType::Counter,
    extra: &["interface"],
};
pub(super) const NET_RX_PACKETS: Spec = Spec {
    name: "container_network_receive_packets_total",
    help: "Cumulative count of packets received",
    kind: MetricType::Counter,
    extra: &["interface"],
};
pub(super) const NET_RX_DROPPED: Spec = Spec {
    name: "container_network_receive_packets_dropped_total",
    help: "Cumulative count of packets dropped while receiving",
    kind: MetricType::Counter,
    extra: &["interface"],
};
pub(super) const NET_RX_ERRORS: Spec = Spec {
    name: "container_network_receive_errors_total",
    help: "Cumulative count of errors encountered while receiving",
    kind: MetricType::Counter,
    extra: &["interface"],
};
pub(super) const NET_TX_BYTES: Spec = Spec {
    name: "container_network_transmit_bytes_total",
    help: "Cumulative count of bytes transmitted",
    kind: MetricType::Counter,
    extra: &["interface"],
};
pub(super) const NET_TX_PACKETS: Spec = Spec {
    name: "container_network_transmit_packets_total",
    help: "Cumulative count of packets transmitted",
    kind: MetricType::Counter,
    extra: &["interface"],
};
pub(super) const NET_TX_DROPPED: Spec = Spec {
    name: "container_network_transmit_packets_dropped_total",
    help: "Cumulative count of packets dropped while transmitting",
    kind: MetricType::Counter,
    extra: &["interface"],
};
pub(super) const NET_TX_ERRORS: Spec = Spec {
    name: "container_network_transmit_errors_total",
    help: "Cumulative count of errors encountered while transmitting",
    kind: MetricType::Counter,
    extra: &["interface"],
};

/// Every metric berth emits, in the order ListMetricDescriptors returns them.
pub(super) const SPECS: [&Spec; 47] = [
    &CPU_USAGE,
    &CPU_USER,
    &CPU_SYSTEM,
    &CFS_PERIODS,
    &CFS_THROTTLED_PERIODS,
    &CFS_THROTTLED_SECONDS,
    &MEMORY_USAGE,
    &MEMORY_MAX_USAGE,
    &MEMORY_WORKING_SET,
    &MEMORY_RSS,
    &MEMORY_CACHE,
    &MEMORY_MAPPED_FILE,
    &MEMORY_KERNEL,
    &MEMORY_SWAP,
    &MEMORY_FAILCNT,
    &MEMORY_FAILURES,
    &OOM_EVENTS,
    &FS_USAGE,
    &FS_LIMIT,
    &FS_INODES,
    &FS_INODES_FREE,
    &FS_READ_BYTES,
    &FS_READS,
    &FS_WRITE_BYTES,
    &FS_WRITES,
    &BLKIO_DEVICE_USAGE,
    &PROCESSES,
    &THREADS,
    &THREADS_MAX,
    &FILE_DESCRIPTORS,
    &SOCKETS,
    &SPEC_CPU_PERIOD,
    &SPEC_CPU_QUOTA,
    &SPEC_CPU_SHARES,
    &SPEC_MEMORY_LIMIT,
    &SPEC_MEMORY_SWAP_LIMIT,
    &SPEC_MEMORY_RESERVATION,
    &START_TIME,
    &LAST_SEEN,
    &NET_RX_BYTES,
    &NET_RX_PACKETS,
    &NET_RX_DROPPED,
    &NET_RX_ERRORS,
    &NET_TX_BYTES,
    &NET_TX_PACKETS,
    &NET_TX_DROPPED,
    &NET_TX_ERRORS,
];
