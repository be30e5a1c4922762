//! Every Prometheus metric berthd exports, defined in one place (see docs/metrics.md).
//!
//! Counters and histograms are updated where things happen (the gRPC layer in [`grpc`], image pulls,
//! container exits); gauges describing state are computed at scrape time by [`state`]; [`http`] serves
//! the text exposition on `/metrics`.

pub mod grpc;
pub mod http;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

/// Latency buckets for CRI calls: sub-millisecond status calls up to multi-minute image pulls.
const RPC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Whole-pull durations: a cached small image takes milliseconds, a large one minutes.
const PULL_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Pod states as the CRI names them (the `state` label of `berth_pods`).
pub const POD_STATES: [&str; 2] = ["ready", "notready"];

/// Container states as the CRI names them (the `state` label of `berth_containers`).
pub const CONTAINER_STATES: [&str; 4] = ["created", "running", "exited", "unknown"];

/// berthd's metrics and the registry they are exported from.
pub struct Metrics {
    registry: Registry,
    /// `berth_grpc_requests_total{method}`: CRI calls handled.
    pub grpc_requests: IntCounterVec,
    /// `berth_grpc_errors_total{method,code}`: CRI calls that ended with a non-OK gRPC status.
    pub grpc_errors: IntCounterVec,
    /// `berth_grpc_request_duration_seconds{method}`: time to the response headers.
    pub grpc_duration: HistogramVec,
    /// `berth_pods{state}`: pod sandboxes by CRI state (set at scrape time).
    pub pods: IntGaugeVec,
    /// `berth_containers{state}`: containers by CRI state (set at scrape time).
    pub containers: IntGaugeVec,
    /// `berth_image_pulls_total`: image pulls finished, successful or not.
    pub image_pulls: IntCounter,
    /// `berth_image_pull_failures_total`: image pulls that failed.
    pub image_pull_failures: IntCounter,
    /// `berth_image_pull_bytes_total`: blob bytes downloaded from registries.
    pub image_pull_bytes: IntCounter,
    /// `berth_image_pull_duration_seconds`: duration of successful pulls.
    pub image_pull_duration: Histogram,
    /// `berth_image_pull_throughput_bytes_per_second`: per successful pull that downloaded anything.
    pub image_pull_throughput: Histogram,
    /// `berth_image_pulls_in_progress`: pulls running now.
    pub image_pulls_in_progress: IntGauge,
    /// `berth_snapshots_disk_usage_bytes`: bytes used by all snapshots (set at scrape time).
    pub snapshots_disk_usage_bytes: IntGauge,
    /// `berth_content_store_disk_usage_bytes`: bytes used by stored blobs (set at scrape time).
    pub content_disk_usage_bytes: IntGauge,
    /// `berth_shims_running`: live `berth-shim serve` processes of this berthd (set at scrape time).
    pub shims_running: IntGauge,
    /// `berth_container_oom_kills_total`: container exits attributed to the OOM killer.
    pub container_oom_kills: IntCounter,
    /// `berth_events_dropped_total`: container events not delivered to a slow subscriber.
    pub events_dropped: IntCounter,
    /// `berth_scrape_errors_total`: scrape-time state collections that failed (values kept stale).
    pub scrape_errors: IntCounter,
    /// `berth_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
}

impl Metrics {
    /// Defines and registers every metric in a fresh registry.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "berth_grpc_requests_total",
                "CRI gRPC calls handled, by method.",
            ),
            &["method"],
        )?;
        reg(Box::new(grpc_requests.clone()))?;
        let grpc_errors = IntCounterVec::new(
            Opts::new(
                "berth_grpc_errors_total",
                "CRI gRPC calls that ended with a non-OK status, by method and gRPC code.",
            ),
            &["method", "code"],
        )?;
        reg(Box::new(grpc_errors.clone()))?;
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "berth_grpc_request_duration_seconds",
                "Time from a CRI call's arrival to its response headers, by method.",
            )
            .buckets(RPC_BUCKETS.to_vec()),
            &["method"],
        )?;
        reg(Box::new(grpc_duration.clone()))?;
        let pods = IntGaugeVec::new(
            Opts::new("berth_pods", "Pod sandboxes by CRI state."),
            &["state"],
        )?;
        reg(Box::new(pods.clone()))?;
        let containers = IntGaugeVec::new(
            Opts::new("berth_containers", "Containers by CRI state."),
            &["state"],
        )?;
        reg(Box::new(containers.clone()))?;
        for s in POD_STATES {
            pods.with_label_values(&[s]).set(0);
        }
        for s in CONTAINER_STATES {
            containers.with_label_values(&[s]).set(0);
        }
        let image_pulls = IntCounter::new(
            "berth_image_pulls_total",
            "Image pulls finished, successful or failed.",
        )?;
        reg(Box::new(image_pulls.clone()))?;
        let image_pull_failures = IntCounter::new(
            "berth_image_pull_failures_total",
            "Image pulls that failed.",
        )?;
        reg(Box::new(image_pull_failures.clone()))?;
        let image_pull_bytes = IntCounter::new(
            "berth_image_pull_bytes_total",
            "Blob bytes (layers and configs) downloaded from registries.",
        )?;
        reg(Box::new(image_pull_bytes.clone()))?;
        let image_pull_duration = Histogram::with_opts(
            HistogramOpts::new(
                "berth_image_pull_duration_seconds",
                "Duration of successful image pulls.",
            )
            .buckets(PULL_BUCKETS.to_vec()),
        )?;
        reg(Box::new(image_pull_duration.clone()))?;
        let image_pull_throughput = Histogram::with_opts(
            HistogramOpts::new(
                "berth_image_pull_throughput_bytes_per_second",
                "Bytes downloaded per second of pull, per successful pull that downloaded blobs.",
            )
            // 64 KiB/s .. 1 GiB/s
            .buckets(exponential_buckets(65536.0, 4.0, 8)?),
        )?;
        reg(Box::new(image_pull_throughput.clone()))?;
        let image_pulls_in_progress =
            IntGauge::new("berth_image_pulls_in_progress", "Image pulls running now.")?;
        reg(Box::new(image_pulls_in_progress.clone()))?;
        let snapshots_disk_usage_bytes = IntGauge::new(
            "berth_snapshots_disk_usage_bytes",
            "Disk bytes used by snapshots (unpacked layers and container rootfs upper dirs).",
        )?;
        reg(Box::new(snapshots_disk_usage_bytes.clone()))?;
        let content_disk_usage_bytes = IntGauge::new(
            "berth_content_store_disk_usage_bytes",
            "Disk bytes used by the content store (compressed blobs).",
        )?;
        reg(Box::new(content_disk_usage_bytes.clone()))?;
        let shims_running = IntGauge::new(
            "berth_shims_running",
            "berth-shim processes serving containers of this berthd.",
        )?;
        reg(Box::new(shims_running.clone()))?;
        let container_oom_kills = IntCounter::new(
            "berth_container_oom_kills_total",
            "Container exits attributed to the kernel OOM killer.",
        )?;
        reg(Box::new(container_oom_kills.clone()))?;
        let events_dropped = IntCounter::new(
            "berth_events_dropped_total",
            "Container events dropped because a GetContainerEvents subscriber fell behind.",
        )?;
        reg(Box::new(events_dropped.clone()))?;
        let scrape_errors = IntCounter::new(
            "berth_scrape_errors_total",
            "Scrapes whose state collection (pods, containers, disk usage, shims) failed in part.",
        )?;
        reg(Box::new(scrape_errors.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "berth_build_info",
                "Always 1; the labels describe the berthd build.",
            ),
            &["version"],
        )?;
        reg(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(Self {
            registry,
            grpc_requests,
            grpc_errors,
            grpc_duration,
            pods,
            containers,
            image_pulls,
            image_pull_failures,
            image_pull_bytes,
            image_pull_duration,
            image_pull_throughput,
            image_pulls_in_progress,
            snapshots_disk_usage_bytes,
            content_disk_usage_bytes,
            shims_running,
            container_oom_kills,
            events_dropped,
            scrape_errors,
            build_info,
        })
    }

    /// Renders every registered metric in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(%err, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(|| {
    // The definitions above are static; a failure is a bug the unit tests catch.
    Metrics::new().expect("berth metric definitions are valid and unique")
});

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Tracks one image pull: counts it in progress until dropped, and records its outcome.
pub struct PullTracker {
    started: Instant,
    downloaded: AtomicU64,
}

impl PullTracker {
    /// A pull begins.
    pub fn start() -> Self {
        global().image_pulls_in_progress.inc();
        Self {
            started: Instant::now(),
            downloaded: AtomicU64::new(0),
        }
    }

    /// The byte tally the pull adds its downloaded blob bytes to (see [`PullTracker::add_bytes`]).
    pub fn downloaded(&self) -> &AtomicU64 {
        &self.downloaded
    }

    /// Adds `n` downloaded bytes to `tally` and to `berth_image_pull_bytes_total`.
    pub fn add_bytes(tally: &AtomicU64, n: u64) {
        tally.fetch_add(n, Ordering::Relaxed);
        global().image_pull_bytes.inc_by(n);
    }

    /// The pull finished; `ok` says whether it succeeded.
    pub fn finish(self, ok: bool) {
        let m = global();
        m.image_pulls.inc();
        if !ok {
            m.image_pull_failures.inc();
            return;
        }
        let secs = self.started.elapsed().as_secs_f64();
        m.image_pull_duration.observe(secs);
        let bytes = self.downloaded.load(Ordering::Relaxed);
        if bytes > 0 && secs > 0.0 {
            m.image_pull_throughput.observe(bytes as f64 / secs);
        }
    }
}

impl Drop for PullTracker {
    fn drop(&mut self) {
        global().image_pulls_in_progress.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_register_and_render() {
        let m = Metrics::new().unwrap();
        m.grpc_requests.with_label_values(&["Version"]).inc();
        m.grpc_errors
            .with_label_values(&["ContainerStatus", "NotFound"])
            .inc();
        m.grpc_duration
            .with_label_values(&["Version"])
            .observe(0.01);
        let text = m.render();
        for name in [
            "berth_grpc_requests_total{method=\"Version\"} 1",
            "berth_grpc_errors_total{code=\"NotFound\",method=\"ContainerStatus\"} 1",
            "berth_grpc_request_duration_seconds_bucket{method=\"Version\",le=\"0.01\"} 1",
            "berth_pods{state=\"ready\"} 0",
            "berth_containers{state=\"running\"} 0",
            "berth_image_pulls_total 0",
            "berth_image_pull_failures_total 0",
            "berth_image_pull_bytes_total 0",
            "berth_image_pull_duration_seconds_count 0",
            "berth_image_pulls_in_progress 0",
            "berth_snapshots_disk_usage_bytes 0",
            "berth_shims_running 0",
            "berth_container_oom_kills_total 0",
            "berth_events_dropped_total 0",
            "berth_build_info{version=\"",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
        // Every family is named berth_* and carries HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("berth_"), "{line}");
        }
        assert_eq!(
            text.matches("# HELP ").count(),
            text.matches("# TYPE ").count()
        );
    }

    #[test]
    fn pull_tracker_counts() {
        let before = global().image_pulls.get();
        let t = PullTracker::start();
        assert!(global().image_pulls_in_progress.get() >= 1);
        PullTracker::add_bytes(t.downloaded(), 10);
        t.finish(true);
        assert!(global().image_pulls.get() > before);
        assert!(global().image_pull_bytes.get() >= 10);
    }
}
