//! Runtime status and config, and the List* filters the kubelet relies on (id, state, labels).

use std::collections::HashMap;

use anyhow::Context;
use berth_tests::cri::{self, EXITED, RUNNING};
use berth_tests::{leaks, require_root, TestEnv};
use k8s_cri::v1 as k;

#[tokio::test(flavor = "multi_thread")]
async fn status_runtime_config_and_list_filters() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let mut rt = d.rt();

    let status = rt
        .status(k::StatusRequest { verbose: false })
        .await?
        .into_inner()
        .status
        .context("Status without status")?;
    for kind in ["RuntimeReady", "NetworkReady"] {
        let c = status.conditions.iter().find(|c| c.r#type == kind);
        assert!(
            c.is_some_and(|c| c.status),
            "{kind} not true: {:?}",
            status.conditions
        );
    }
    // Verbose status: the effective config for `crictl info`, and the handlers berth serves.
    let verbose = rt
        .status(k::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let config_json: serde_json::Value = serde_json::from_str(
        verbose
            .info
            .get("config")
            .context("verbose Status without config")?,
    )?;
    assert_eq!(
        config_json["socket"].as_str(),
        Some(d.socket().to_string_lossy().as_ref()),
        "config in Status info: {config_json}"
    );
    let handlers: Vec<_> = verbose
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(handlers, ["", "berth"], "runtime handlers");

    let config = rt
        .runtime_config(k::RuntimeConfigRequest {})
        .await?
        .into_inner();
    assert_eq!(
        config.linux.map(|l| l.cgroup_driver),
        Some(k::CgroupDriver::Cgroupfs as i32),
        "cgroup driver"
    );

    let (a_id, a) = env.pod("list-a").await?;
    let (b_id, _b) = env.pod("list-b").await?;
    let pods = |filter: k::PodSandboxFilter| {
        let mut rt = d.rt();
        async move {
            let items = rt
                .list_pod_sandbox(k::ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await?
                .into_inner()
                .items;
            let mut ids: Vec<String> = items.into_iter().map(|p| p.id).collect();
            ids.sort();
            anyhow::Ok(ids)
        }
    };
    let mut both = vec![a_id.clone(), b_id.clone()];
    both.sort();
    assert_eq!(pods(k::PodSandboxFilter::default()).await?, both);
    assert_eq!(
        pods(k::PodSandboxFilter {
            id: a_id.clone(),
            ..Default::default()
        })
        .await?,
        [a_id.as_str()]
    );
    let by_label = k::PodSandboxFilter {
        label_selector: HashMap::from([("test".to_string(), "list-b".to_string())]),
        ..Default::default()
    };
    assert_eq!(pods(by_label).await?, [b_id.as_str()]);
    rt.stop_pod_sandbox(k::StopPodSandboxRequest {
        pod_sandbox_id: b_id.clone(),
    })
    .await?;
    let ready = k::PodSandboxFilter {
        state: Some(k::PodSandboxStateValue {
            state: k::PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    assert_eq!(pods(ready).await?, [a_id.as_str()]);
    let not_ready = k::PodSandboxFilter {
        state: Some(k::PodSandboxStateValue {
            state: k::PodSandboxState::SandboxNotready as i32,
        }),
        ..Default::default()
    };
    assert_eq!(pods(not_ready).await?, [b_id.as_str()]);

    let mut runs = cri::container_config("runs", env.busybox(), &["sleep", "300"]);
    runs.labels = HashMap::from([("role".to_string(), "sleeper".to_string())]);
    let runs_id = cri::run_container(d, &a_id, &a, runs).await?;
    let done_id =
        cri::run_container(d, &a_id, &a, cri::shell("done", env.busybox(), "true")).await?;
    cri::wait_exited(d, &done_id).await?;
    let ctrs = |filter: k::ContainerFilter| {
        let mut rt = d.rt();
        async move {
            let items = rt
                .list_containers(k::ListContainersRequest {
                    filter: Some(filter),
                })
                .await?
                .into_inner()
                .containers;
            anyhow::Ok(items.into_iter().map(|c| c.id).collect::<Vec<_>>())
        }
    };
    let running = k::ContainerFilter {
        state: Some(k::ContainerStateValue { state: RUNNING }),
        ..Default::default()
    };
    assert_eq!(ctrs(running).await?, [runs_id.as_str()]);
    let exited = k::ContainerFilter {
        state: Some(k::ContainerStateValue { state: EXITED }),
        ..Default::default()
    };
    assert_eq!(ctrs(exited).await?, [done_id.as_str()]);
    let by_label = k::ContainerFilter {
        label_selector: HashMap::from([("role".to_string(), "sleeper".to_string())]),
        ..Default::default()
    };
    assert_eq!(ctrs(by_label).await?, [runs_id.as_str()]);
    let by_id = k::ContainerFilter {
        id: done_id.clone(),
        ..Default::default()
    };
    assert_eq!(ctrs(by_id).await?, [done_id.as_str()]);
    let other_pod = k::ContainerFilter {
        pod_sandbox_id: b_id.clone(),
        ..Default::default()
    };
    assert!(ctrs(other_pod).await?.is_empty());

    leaks::assert_no_leaks(d).await;
    Ok(())
}
