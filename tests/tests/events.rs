//! GetContainerEvents: what the kubelet's evented PLEG receives — sandbox and container events in order
//! with the pod's statuses attached, for several subscribers at once, and a subscriber that never reads
//! does not slow berthd down.

use std::time::{Duration, Instant};

use anyhow::Context;
use berth_tests::{cri, daemon, leaks, require_root, TestEnv};
use k8s_cri::v1 as k;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::ContainerEventType as T;

type Events = tonic::Streaming<k::ContainerEventResponse>;

async fn subscribe(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<Events> {
    Ok(rt
        .get_container_events(k::GetEventsRequest {})
        .await
        .context("GetContainerEvents")?
        .into_inner())
}

/// The next `n` events of `stream`, within 30 s.
async fn next_events(
    stream: &mut Events,
    n: usize,
) -> anyhow::Result<Vec<k::ContainerEventResponse>> {
    let timeout = Duration::from_secs(30 + n as u64 / 10);
    berth_tests::wait::within("container events", timeout, async {
        let mut got = Vec::new();
        while got.len() < n {
            let event = stream
                .message()
                .await
                .context("reading the event stream")?
                .context("event stream ended")?;
            got.push(event);
        }
        Ok(got)
    })
    .await
}

fn kinds(events: &[k::ContainerEventResponse]) -> Vec<(String, T)> {
    events
        .iter()
        .map(|e| {
            (
                e.container_id.clone(),
                T::try_from(e.container_event_type).unwrap_or(T::ContainerCreatedEvent),
            )
        })
        .collect()
}

async fn events_info(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<serde_json::Value> {
    let info = rt
        .status(k::StatusRequest { verbose: true })
        .await?
        .into_inner()
        .info;
    let text = info
        .get("containerEvents")
        .context("containerEvents in Status info")?;
    Ok(serde_json::from_str(text)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_and_container_events_reach_every_subscriber_in_order() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let mut a = subscribe(&mut d.rt()).await?;
    let mut b = subscribe(
        &mut daemon::connect(&d.socket())
            .await
            .map(RuntimeServiceClient::new)?,
    )
    .await?;

    let (pod_id, pod) = env.pod("events").await?;
    let ctr = cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::shell("quick", env.busybox(), "exit 7"),
    )
    .await?;
    cri::wait_exited(d, &ctr).await?;
    cri::remove_container(d, &ctr).await?;
    d.rt()
        .stop_pod_sandbox(k::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await?;
    // Idempotent calls send nothing more.
    d.rt()
        .stop_pod_sandbox(k::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await?;
    d.rt()
        .remove_pod_sandbox(k::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await?;
    d.rt()
        .remove_pod_sandbox(k::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await?;

    let want = vec![
        (pod_id.clone(), T::ContainerCreatedEvent),
        (pod_id.clone(), T::ContainerStartedEvent),
        (ctr.clone(), T::ContainerCreatedEvent),
        (ctr.clone(), T::ContainerStartedEvent),
        (ctr.clone(), T::ContainerStoppedEvent),
        (ctr.clone(), T::ContainerDeletedEvent),
        (pod_id.clone(), T::ContainerStoppedEvent),
        (pod_id.clone(), T::ContainerDeletedEvent),
    ];
    let uid = pod
        .metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default();
    for stream in [&mut a, &mut b] {
        let got = next_events(stream, want.len()).await?;
        assert_eq!(kinds(&got), want);
        let mut last = 0;
        for (i, e) in got.iter().enumerate() {
            assert!(e.created_at >= last, "event {i} goes back in time: {got:?}");
            last = e.created_at;
            // What the kubelet keys its cache on: every event has the pod's metadata.
            let status = e
                .pod_sandbox_status
                .as_ref()
                .with_context(|| format!("event {i} without pod status"))?;
            assert_eq!(status.id, pod_id);
            assert_eq!(
                status.metadata.as_ref().map(|m| m.uid.as_str()),
                Some(uid.as_str())
            );
        }
        let ctr_state = |i: usize| {
            got[i]
                .containers_statuses
                .iter()
                .find(|s| s.id == ctr)
                .map(|s| s.state)
        };
        let ready = k::PodSandboxState::SandboxReady as i32;
        let not_ready = k::PodSandboxState::SandboxNotready as i32;
        let state = |i: usize| got[i].pod_sandbox_status.as_ref().map(|s| s.state);
        assert_eq!(state(1), Some(ready));
        assert_eq!(
            ctr_state(2),
            Some(k::ContainerState::ContainerCreated as i32)
        );
        assert_eq!(ctr_state(4), Some(cri::EXITED));
        let stopped = got[4]
            .containers_statuses
            .iter()
            .find(|s| s.id == ctr)
            .context("status")?;
        assert_eq!(stopped.exit_code, 7);
        assert!(
            !stopped.labels.is_empty() || stopped.metadata.is_some(),
            "{stopped:?}"
        );
        assert_eq!(ctr_state(5), None, "a deleted container is not listed");
        assert_eq!(state(6), Some(not_ready));
        assert_eq!(state(7), Some(not_ready));
    }
    // Nothing after the DELETED of the pod.
    let extra = tokio::time::timeout(Duration::from_millis(500), a.message()).await;
    assert!(extra.is_err(), "unexpected event: {extra:?}");

    drop(a);
    drop(b);
    leaks::assert_no_leaks(d).await;
    Ok(())
}

/// A client on its own connection with small HTTP/2 windows (hyper's defaults are 2 MiB per stream), so
/// that a stream it never reads backs up into berthd quickly.
async fn small_window_client(
    socket: &std::path::Path,
) -> anyhow::Result<RuntimeServiceClient<tonic::transport::Channel>> {
    let endpoint = berth_tests::daemon::unix_endpoint()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535);
    let channel = berth_tests::daemon::connect_with(endpoint, socket)
        .await
        .context("connecting to berthd socket")?;
    Ok(RuntimeServiceClient::new(channel))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_does_not_slow_rpcs() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    // Its own connection: a stuck stream must not hold the flow-control window of the others.
    let stuck = subscribe(&mut small_window_client(&d.socket()).await?).await?;
    let reader = subscribe(
        &mut daemon::connect(&d.socket())
            .await
            .map(RuntimeServiceClient::new)?,
    )
    .await?;
    assert_eq!(events_info(&mut d.rt()).await?["subscribers"], 2);

    // Large events (the pod's annotations are in every one) fill the stuck stream's transport buffers
    // after a few events; its event buffer in berthd holds the rest.
    let mut pod = cri::pod_config(d, "stuck")?;
    pod.annotations
        .insert("berth.test/padding".into(), "x".repeat(32 * 1024));
    let pod_id = cri::run_pod(d, &pod).await?;
    // 280 rounds (~20 s) overflow the stuck subscriber's buffer in berthd (1024 events; its transport
    // holds a few more), so the drops must show; BERTH_EVENTS_ROUNDS=12 is a quick run without drops.
    let rounds: usize = std::env::var("BERTH_EVENTS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(280);
    // The reader keeps reading while the rounds run: 2 pod events, then created/started/stopped/deleted
    // per container.
    let want = 2 + 4 * rounds;
    let reading = tokio::spawn(async move {
        let mut reader = reader;
        let got = next_events(&mut reader, want).await;
        (reader, got)
    });
    let begin = Instant::now();
    for i in 0..rounds {
        let t = Instant::now();
        let ctr = cri::run_container(
            d,
            &pod_id,
            &pod,
            cri::shell(&format!("c{i}"), env.busybox(), "true"),
        )
        .await?;
        cri::wait_exited(d, &ctr).await?;
        cri::remove_container(d, &ctr).await?;
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "round {i} took {:?}",
            t.elapsed()
        );
    }
    eprintln!("{rounds} rounds in {:?}", begin.elapsed());
    // The reader got everything: 2 pod events, then created/started/stopped/deleted per container.
    let (reader, got) = reading.await?;
    let got = got?;
    let types: Vec<T> = kinds(&got).into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        &types[..2],
        &[T::ContainerCreatedEvent, T::ContainerStartedEvent]
    );
    for round in types[2..].chunks(4) {
        assert_eq!(
            round,
            &[
                T::ContainerCreatedEvent,
                T::ContainerStartedEvent,
                T::ContainerStoppedEvent,
                T::ContainerDeletedEvent
            ]
        );
    }
    let info = events_info(&mut d.rt()).await?;
    eprintln!("container events: {info}");
    let dropped = info["dropped"].as_u64().context("dropped counter")?;
    if want > 1024 + 60 {
        assert!(dropped > 0, "the stuck subscriber lost nothing: {info}");
    }

    // A subscriber that went away is removed at the next event.
    drop(stuck);
    drop(reader);
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.rt()
        .stop_pod_sandbox(k::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await?;
    berth_tests::wait::until(
        "subscribers to be removed",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let n = events_info(&mut d.rt()).await?["subscribers"].as_u64();
            Ok((n == Some(0)).then_some(()))
        },
    )
    .await?;
    leaks::assert_no_leaks(d).await;
    Ok(())
}
