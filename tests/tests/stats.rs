//! ContainerStats / ListContainerStats / PodSandboxStats / ListPodSandboxStats against real cgroups:
//! counters are non-zero, grow with CPU, memory and disk use inside the container, list filters
//! select the right containers and pods, a pod's eth0 counters grow with traffic, unknown ids are
//! NotFound.

use std::collections::HashMap;

use anyhow::Context;
use berth_tests::cri::{self, code};
use berth_tests::{leaks, require_root, Berthd, TestEnv};
use k8s_cri::v1 as k;
use tonic::Code;

async fn container_stats(d: &Berthd, id: &str) -> anyhow::Result<k::ContainerStats> {
    d.rt()
        .container_stats(k::ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .with_context(|| format!("ContainerStats {id}"))?
        .into_inner()
        .stats
        .context("ContainerStats without stats")
}

async fn list_stats(d: &Berthd, filter: k::ContainerStatsFilter) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = d
        .rt()
        .list_container_stats(k::ListContainerStatsRequest {
            filter: Some(filter),
        })
        .await
        .context("ListContainerStats")?
        .into_inner()
        .stats
        .into_iter()
        .filter_map(|s| s.attributes.map(|a| a.id))
        .collect();
    ids.sort();
    Ok(ids)
}

async fn pod_stats(d: &Berthd, id: &str) -> anyhow::Result<k::PodSandboxStats> {
    d.rt()
        .pod_sandbox_stats(k::PodSandboxStatsRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .with_context(|| format!("PodSandboxStats {id}"))?
        .into_inner()
        .stats
        .context("PodSandboxStats without stats")
}

fn v(x: &Option<k::UInt64Value>) -> u64 {
    x.as_ref().map(|v| v.value).unwrap_or(0)
}

fn cpu_ns(s: &k::ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .map(|c| v(&c.usage_core_nano_seconds))
        .unwrap_or(0)
}

fn working_set(s: &k::ContainerStats) -> u64 {
    s.memory
        .as_ref()
        .map(|m| v(&m.working_set_bytes))
        .unwrap_or(0)
}

fn layer_bytes(s: &k::ContainerStats) -> u64 {
    s.writable_layer
        .as_ref()
        .map(|w| v(&w.used_bytes))
        .unwrap_or(0)
}

fn eth0(s: &k::PodSandboxStats) -> (u64, u64) {
    s.linux
        .as_ref()
        .and_then(|l| l.network.as_ref())
        .and_then(|n| n.default_interface.as_ref())
        .map(|i| (v(&i.rx_bytes), v(&i.tx_bytes)))
        .unwrap_or((0, 0))
}

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn container_stats_grow_and_lists_filter() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (a_id, a) = env.pod("stats-a").await?;
    let (b_id, b) = env.pod("stats-b").await?;

    // Prints "ready", waits for /tmp/go, then uses CPU, 32 MiB of shm (memory) and 8 MiB of disk.
    let worker_cfg = cri::shell(
        "worker",
        env.busybox(),
        "echo ready; while [ ! -e /tmp/go ]; do sleep 0.1; done; \
         head -c 33554432 /dev/zero > /dev/shm/mem; head -c 8388608 /dev/zero > /tmp/disk; \
         i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo done; exec sleep 1000",
    );
    let worker_log = cri::log_file(&a, &worker_cfg);
    let worker = cri::run_container(d, &a_id, &a, worker_cfg).await?;
    let mut idle_cfg = cri::container_config("idle", env.busybox(), &["sleep", "1000"]);
    idle_cfg.labels = HashMap::from([("app".to_string(), "idle".to_string())]);
    let idle = cri::run_container(d, &b_id, &b, idle_cfg).await?;
    let (_, out) = cri::run_to_exit(
        d,
        &a_id,
        &a,
        cri::container_config("oneshot", env.busybox(), &["true"]),
    )
    .await?;
    assert!(out.is_empty());

    cri::wait_log_line(&worker_log, "stdout", "ready").await?;
    let before = container_stats(d, &worker).await?;
    let attrs = before.attributes.clone().context("attributes")?;
    assert_eq!(attrs.id, worker);
    assert_eq!(attrs.metadata.map(|m| m.name), Some("worker".into()));
    assert!(cpu_ns(&before) > 0, "cpu: {:?}", before.cpu);
    let mem = before.memory.context("memory stats")?;
    assert!(v(&mem.usage_bytes) > 0, "memory: {mem:?}");
    let layer = before
        .writable_layer
        .clone()
        .context("writable layer stats")?;
    assert!(
        layer
            .fs_id
            .map(|f| f.mountpoint)
            .unwrap_or_default()
            .ends_with("snapshots"),
        "fs id"
    );

    // Start the work: /tmp/go written through the container's rootfs mount in the bundle.
    let go = d
        .state()
        .join("containers")
        .join(&worker)
        .join("rootfs/tmp/go");
    std::fs::write(&go, b"").with_context(|| format!("writing {}", go.display()))?;
    cri::wait_log_line(&worker_log, "stdout", "done").await?;
    let after = container_stats(d, &worker).await?;
    assert!(
        cpu_ns(&after) >= cpu_ns(&before) + 50_000_000,
        "cpu grew by only {} ns",
        cpu_ns(&after) - cpu_ns(&before)
    );
    let rate = after
        .cpu
        .as_ref()
        .map(|c| v(&c.usage_nano_cores))
        .unwrap_or(0);
    assert!(
        rate > 0,
        "usage_nano_cores between two samples: {:?}",
        after.cpu
    );
    assert!(
        working_set(&after) >= working_set(&before) + 30 * MIB,
        "working set {} -> {}",
        working_set(&before),
        working_set(&after)
    );
    assert!(
        layer_bytes(&after) >= layer_bytes(&before) + 8 * MIB,
        "writable layer {} -> {}",
        layer_bytes(&before),
        layer_bytes(&after)
    );

    // Lists: created/running containers only (the exited one-shot is left out), with filters.
    let mut both = vec![worker.clone(), idle.clone()];
    both.sort();
    assert_eq!(list_stats(d, Default::default()).await?, both);
    let by_id = k::ContainerStatsFilter {
        id: idle.clone(),
        ..Default::default()
    };
    assert_eq!(list_stats(d, by_id).await?, vec![idle.clone()]);
    let by_pod = k::ContainerStatsFilter {
        pod_sandbox_id: a_id.clone(),
        ..Default::default()
    };
    assert_eq!(list_stats(d, by_pod).await?, vec![worker.clone()]);
    let by_label = k::ContainerStatsFilter {
        label_selector: HashMap::from([("app".to_string(), "idle".to_string())]),
        ..Default::default()
    };
    assert_eq!(list_stats(d, by_label).await?, vec![idle.clone()]);
    let no_match = k::ContainerStatsFilter {
        label_selector: HashMap::from([("app".to_string(), "nope".to_string())]),
        ..Default::default()
    };
    assert!(list_stats(d, no_match).await?.is_empty());

    // Unknown ids.
    let r = d
        .rt()
        .container_stats(k::ContainerStatsRequest {
            container_id: "0123456789abcdef".into(),
        })
        .await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");
    let r = d
        .rt()
        .pod_sandbox_stats(k::PodSandboxStatsRequest {
            pod_sandbox_id: "0123456789abcdef".into(),
        })
        .await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");

    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_stats_network_processes_and_containers() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (a_id, a) = env.pod("net-a").await?;
    let httpd = cri::run_container(
        d,
        &a_id,
        &a,
        cri::container_config(
            "httpd",
            env.busybox(),
            &["httpd", "-f", "-p", "8080", "-h", "/data"],
        ),
    )
    .await?;
    let ip = cri::pod_ip(d, &a_id).await?;
    let (b_id, b) = env.pod("net-b").await?;

    let before = pod_stats(d, &a_id).await?;
    let attrs = before.attributes.clone().context("attributes")?;
    assert_eq!(attrs.id, a_id);
    assert_eq!(attrs.metadata.map(|m| m.name), Some("net-a".into()));
    let linux = before.linux.clone().context("linux stats")?;
    assert!(
        linux
            .cpu
            .as_ref()
            .map(|c| v(&c.usage_core_nano_seconds))
            .unwrap_or(0)
            > 0,
        "pod cpu: {:?}",
        linux.cpu
    );
    assert!(
        linux
            .memory
            .as_ref()
            .map(|m| v(&m.usage_bytes))
            .unwrap_or(0)
            > 0,
        "pod memory: {:?}",
        linux.memory
    );
    assert!(
        linux
            .process
            .as_ref()
            .map(|p| v(&p.process_count))
            .unwrap_or(0)
            >= 1,
        "process count: {:?}",
        linux.process
    );
    let ids: Vec<String> = linux
        .containers
        .iter()
        .filter_map(|c| c.attributes.as_ref().map(|a| a.id.clone()))
        .collect();
    assert_eq!(ids, vec![httpd.clone()]);
    let net = linux.network.clone().context("network stats")?;
    assert_eq!(
        net.default_interface.as_ref().map(|i| i.name.as_str()),
        Some("eth0"),
        "{net:?}"
    );
    assert!(net.interfaces.iter().all(|i| i.name != "lo"));

    let client = cri::shell(
        "client",
        env.busybox(),
        &format!(
            "for i in $(seq 1 20); do timeout 3 wget -q -O- http://{ip}:8080/index.html || exit 1; done"
        ),
    );
    let (st, _) = cri::run_to_exit(d, &b_id, &b, client).await?;
    assert_eq!(st.exit_code, 0, "client could not reach {ip}");
    let after = pod_stats(d, &a_id).await?;
    let ((rx0, tx0), (rx1, tx1)) = (eth0(&before), eth0(&after));
    assert!(
        rx1 > rx0 && tx1 > tx0,
        "eth0 rx {rx0}->{rx1} tx {tx0}->{tx1}"
    );
    assert!(
        tx1 - tx0 >= 20 * "hello from berth\n".len() as u64,
        "20 responses sent: tx {tx0}->{tx1}"
    );

    // Lists with filters.
    let list = |filter: k::PodSandboxStatsFilter| async move {
        let mut ids: Vec<String> = d
            .rt()
            .list_pod_sandbox_stats(k::ListPodSandboxStatsRequest {
                filter: Some(filter),
            })
            .await
            .context("ListPodSandboxStats")?
            .into_inner()
            .stats
            .into_iter()
            .filter_map(|s| s.attributes.map(|a| a.id))
            .collect();
        ids.sort();
        anyhow::Ok(ids)
    };
    let mut both = vec![a_id.clone(), b_id.clone()];
    both.sort();
    assert_eq!(list(Default::default()).await?, both);
    let by_id = k::PodSandboxStatsFilter {
        id: b_id.clone(),
        ..Default::default()
    };
    assert_eq!(list(by_id).await?, vec![b_id.clone()]);
    let by_label = k::PodSandboxStatsFilter {
        label_selector: a.labels.clone(),
        ..Default::default()
    };
    assert_ne!(a.labels, b.labels);
    assert_eq!(list(by_label).await?, vec![a_id.clone()]);

    leaks::assert_no_leaks(d).await;
    Ok(())
}
