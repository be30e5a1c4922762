//! ListMetricDescriptors / ListPodSandboxMetrics against real cgroups and a real pod network: every
//! emitted metric has a descriptor with as many label keys as it has values, a ready pod and its running
//! container are listed with cAdvisor-named metrics, CPU seconds grow with a busy loop, the working set
//! is non-zero, eth0 receive bytes grow with traffic from another pod, stopped pods are left out; and
//! critest's cAdvisor set (names copied below) is described and filled for a container with critest's
//! resources, with the spec values read back from the cgroup.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use berth_tests::cri;
use berth_tests::{leaks, require_root, Berthd, TestEnv};
use k8s_cri::v1 as k;

async fn descriptors(d: &Berthd) -> anyhow::Result<Vec<k::MetricDescriptor>> {
    Ok(d.rt()
        .list_metric_descriptors(k::ListMetricDescriptorsRequest {})
        .await
        .context("ListMetricDescriptors")?
        .into_inner()
        .descriptors)
}

async fn pod_metrics(d: &Berthd) -> anyhow::Result<Vec<k::PodSandboxMetrics>> {
    Ok(d.rt()
        .list_pod_sandbox_metrics(k::ListPodSandboxMetricsRequest {})
        .await
        .context("ListPodSandboxMetrics")?
        .into_inner()
        .pod_metrics)
}

/// The value of the first metric `name` whose label `key` is `value`, in `metrics`.
fn find(
    descs: &[k::MetricDescriptor],
    metrics: &[k::Metric],
    name: &str,
    key: &str,
    value: &str,
) -> Option<u64> {
    let desc = descs.iter().find(|d| d.name == name)?;
    let i = desc.label_keys.iter().position(|k| k == key)?;
    metrics
        .iter()
        .find(|m| m.name == name && m.label_values.get(i).map(|s| s.as_str()) == Some(value))
        .and_then(|m| m.value.as_ref().map(|v| v.value))
}

/// Checks every metric against its descriptor.
fn check_consistent(descs: &[k::MetricDescriptor], pods: &[k::PodSandboxMetrics]) {
    for p in pods {
        let all = p
            .metrics
            .iter()
            .chain(p.container_metrics.iter().flat_map(|c| c.metrics.iter()));
        for m in all {
            let d = descs.iter().find(|d| d.name == m.name);
            let keys = d.map(|d| d.label_keys.len());
            assert_eq!(keys, Some(m.label_values.len()), "metric {m:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_metrics_cpu_memory_network() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let descs = descriptors(d).await?;
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
    ] {
        assert!(descs.iter().any(|d| d.name == name), "no descriptor {name}");
    }

    let (a_id, a) = env.pod("pm-a").await?;
    // Prints "ready", waits for /tmp/go, burns CPU for 3 s, prints "done".
    let worker_cfg = cri::shell(
        "worker",
        env.busybox(),
        "echo ready; while [ ! -e /tmp/go ]; do sleep 0.1; done; \
         timeout 3 sh -c 'while :; do :; done'; echo done; exec sleep 1000",
    );
    let worker_log = cri::log_file(&a, &worker_cfg);
    let worker = cri::run_container(d, &a_id, &a, worker_cfg).await?;
    let httpd_cfg = cri::container_config(
        "httpd",
        env.busybox(),
        &["httpd", "-f", "-p", "8080", "-h", "/data"],
    );
    let httpd = cri::run_container(d, &a_id, &a, httpd_cfg).await?;
    let ip = cri::pod_ip(d, &a_id).await?;
    let (b_id, b) = env.pod("pm-b").await?;
    cri::wait_log_line(&worker_log, "stdout", "ready").await?;

    let before = pod_metrics(d).await?;
    check_consistent(&descs, &before);
    let mut ids: Vec<&str> = before.iter().map(|p| p.pod_sandbox_id.as_str()).collect();
    ids.sort();
    let mut want = vec![a_id.as_str(), b_id.as_str()];
    want.sort();
    assert_eq!(ids, want);
    let pa = before
        .iter()
        .find(|p| p.pod_sandbox_id == a_id)
        .context("pod a")?;
    let mut ctrs: Vec<&str> = pa
        .container_metrics
        .iter()
        .map(|c| c.container_id.as_str())
        .collect();
    ctrs.sort();
    let mut want = vec![worker.as_str(), httpd.as_str()];
    want.sort();
    assert_eq!(ctrs, want);
    let wm = &pa
        .container_metrics
        .iter()
        .find(|c| c.container_id == worker)
        .context("worker metrics")?
        .metrics;
    let cpu0 = find(
        &descs,
        wm,
        "container_cpu_usage_seconds_total",
        "container",
        "worker",
    )
    .context("worker cpu seconds")?;
    let ws = find(
        &descs,
        wm,
        "container_memory_working_set_bytes",
        "id",
        &worker,
    );
    assert!(ws.unwrap_or(0) > 0, "working set {ws:?}");
    assert_eq!(
        find(
            &descs,
            wm,
            "container_memory_working_set_bytes",
            "pod",
            "pm-a"
        ),
        ws
    );
    let rx0 = find(
        &descs,
        &pa.metrics,
        "container_network_receive_bytes_total",
        "interface",
        "eth0",
    )
    .context("pod a eth0 receive bytes")?;

    // Busy loop in the worker.
    let go = d
        .state()
        .join("containers")
        .join(&worker)
        .join("rootfs/tmp/go");
    std::fs::write(&go, b"").with_context(|| format!("writing {}", go.display()))?;
    cri::wait_log_line(&worker_log, "stdout", "done").await?;

    // Traffic from pod b to pod a.
    let client = cri::shell(
        "client",
        env.busybox(),
        &format!(
            "for i in $(seq 1 20); do timeout 3 wget -q -O- http://{ip}:8080/index.html || exit 1; done"
        ),
    );
    let (st, _) = cri::run_to_exit(d, &b_id, &b, client).await?;
    assert_eq!(st.exit_code, 0, "client could not reach {ip}");

    let after = pod_metrics(d).await?;
    check_consistent(&descs, &after);
    let pa = after
        .iter()
        .find(|p| p.pod_sandbox_id == a_id)
        .context("pod a after")?;
    let wm = &pa
        .container_metrics
        .iter()
        .find(|c| c.container_id == worker)
        .context("worker metrics after")?
        .metrics;
    let cpu1 = find(
        &descs,
        wm,
        "container_cpu_usage_seconds_total",
        "cpu",
        "total",
    )
    .context("worker cpu seconds after")?;
    assert!(cpu1 > 0 && cpu1 > cpu0, "cpu seconds {cpu0} -> {cpu1}");
    let rx1 = find(
        &descs,
        &pa.metrics,
        "container_network_receive_bytes_total",
        "interface",
        "eth0",
    )
    .context("pod a eth0 receive bytes after")?;
    assert!(rx1 > rx0, "eth0 receive bytes {rx0} -> {rx1}");

    // A stopped pod is not listed.
    d.rt()
        .stop_pod_sandbox(k::StopPodSandboxRequest {
            pod_sandbox_id: b_id.clone(),
        })
        .await
        .context("StopPodSandbox")?;
    let ids: Vec<String> = pod_metrics(d)
        .await?
        .into_iter()
        .map(|p| p.pod_sandbox_id)
        .collect();
    assert_eq!(ids, vec![a_id.clone()]);

    leaks::assert_no_leaks(d).await;
    Ok(())
}

/// critest's `expectedMetricDescriptorNames` minus `unimplementedMetricDescriptors`
/// (cri-tools pkg/validate/pod.go): each must be described, and have a value unless in [`OPTIONAL`].
const REQUIRED: &[&str] = &[
    "container_blkio_device_usage_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_usage_bytes",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
];

/// critest's `optionalValuesForMetricDescriptors`: block I/O, which needs per-device accounting.
const OPTIONAL: &[&str] = &[
    "container_blkio_device_usage_total",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
];

#[tokio::test(flavor = "multi_thread")]
async fn pod_metrics_critest_set() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let descs = descriptors(d).await?;
    for name in REQUIRED {
        let desc = descs.iter().find(|d| d.name == *name);
        let desc = desc.with_context(|| format!("no descriptor {name}"))?;
        assert!(
            !desc.help.is_empty() && !desc.label_keys.is_empty(),
            "{desc:?}"
        );
    }

    // As critest's createContainerForMetrics, then files written as its ExecSync does.
    let (pod_id, pod) = env.pod("pm-critest").await?;
    let mut cfg = cri::shell(
        "metered",
        env.busybox(),
        "mkdir -p /var/lib/mydisktest && for i in $(seq 1 10); do echo hi >> \
         /var/lib/mydisktest/inode_test_file_$i; done; sync; echo ready; exec sleep 1000",
    );
    cfg.linux = Some(k::LinuxContainerConfig {
        resources: Some(k::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 20_000,
            cpu_shares: 1024,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let log = cri::log_file(&pod, &cfg);
    let ctr = cri::run_container(d, &pod_id, &pod, cfg).await?;
    cri::wait_log_line(&log, "stdout", "ready").await?;

    let pods = pod_metrics(d).await?;
    check_consistent(&descs, &pods);
    let pm = pods
        .iter()
        .find(|p| p.pod_sandbox_id == pod_id)
        .context("no metrics for the pod")?;
    // As critest: the label values of the first metric of each name, pod level first.
    let mut first: HashMap<&str, &[String]> = HashMap::new();
    let all = pm
        .metrics
        .iter()
        .chain(pm.container_metrics.iter().flat_map(|c| c.metrics.iter()));
    for m in all {
        first.entry(m.name.as_str()).or_insert(&m.label_values);
    }
    for name in REQUIRED {
        let keys = descs
            .iter()
            .find(|d| d.name == *name)
            .map(|d| d.label_keys.len());
        match first.get(name) {
            Some(values) => assert_eq!(Some(values.len()), keys, "{name} label count"),
            None => assert!(OPTIONAL.contains(name), "no value for {name}"),
        }
    }

    let cm = &pm
        .container_metrics
        .iter()
        .find(|c| c.container_id == ctr)
        .context("no metrics for the container")?
        .metrics;
    let value = |name: &str| find(&descs, cm, name, "id", &ctr);
    // cgroup v2 keeps cpu.weight; 1024 shares round-trip to 998 as cAdvisor converts it back.
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let shares = if v2 { 998 } else { 1024 };
    assert_eq!(value("container_spec_cpu_shares"), Some(shares));
    assert_eq!(value("container_spec_cpu_period"), Some(100_000));
    assert_eq!(value("container_spec_memory_limit_bytes"), Some(64 << 20));
    let threads = value("container_threads").unwrap_or(0);
    assert!(threads >= 1, "threads {threads}");
    assert!(value("container_file_descriptors").unwrap_or(0) >= 1);
    let now = std::time::UNIX_EPOCH.elapsed()?.as_secs();
    let start = value("container_start_time_seconds").unwrap_or(0);
    assert!(
        start <= now && now - start < 120,
        "start {start}, now {now}"
    );
    let inodes = value("container_fs_inodes_total").unwrap_or(0);
    let free = value("container_fs_inodes_free").unwrap_or(0);
    assert!(free <= inodes, "inodes {free} free of {inodes}");
    assert!(value("container_fs_limit_bytes").unwrap_or(0) > 0);

    leaks::assert_no_leaks(d).await;
    Ok(())
}
