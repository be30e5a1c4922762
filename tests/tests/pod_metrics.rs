//! ListMetricDescriptors / ListPodSandboxMetrics against real cgroups and a real pod network: every
//! emitted metric has a descriptor with as many label keys as it has values, a ready pod and its running
//! container are listed with cAdvisor-named metrics, CPU seconds grow with a busy loop, the working set
//! is non-zero, eth0 receive bytes grow with traffic from another pod, stopped pods are left out.

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
