//! CRI error codes: NotFound, InvalidArgument and AlreadyExists where the kubelet expects them.

use berth_tests::cri::{self, code};
use berth_tests::{leaks, require_root, TestEnv};
use k8s_cri::v1 as k;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn error_codes() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("errors").await?;
    let mut rt = d.rt();
    let mut img = d.img();

    // Create in a pod that does not exist.
    let r = rt
        .create_container(k::CreateContainerRequest {
            pod_sandbox_id: "0123456789abcdef0123456789abcdef".into(),
            config: Some(cri::shell("orphan", env.busybox(), "true")),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    assert_eq!(code(&r), Code::NotFound, "create in a missing pod: {r:?}");

    // Create from an image that was never pulled.
    let missing = env.reg.reference("bt/never-pulled", "1");
    let r = rt
        .create_container(k::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cri::shell("noimage", &missing, "true")),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    assert_eq!(
        code(&r),
        Code::NotFound,
        "create from a missing image: {r:?}"
    );

    // Pull of a tag the registry does not have.
    let r = img
        .pull_image(k::PullImageRequest {
            image: Some(k::ImageSpec {
                image: missing.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let status = r
        .err()
        .ok_or_else(|| anyhow::anyhow!("pull of a missing image succeeded"))?;
    assert_eq!(
        status.code(),
        Code::NotFound,
        "pull of a missing image: {status:?}"
    );

    // Status/stop/remove of unknown ids.
    let r = rt
        .container_status(k::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");
    let r = rt
        .pod_sandbox_status(k::PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: false,
        })
        .await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");
    let r = rt
        .start_container(k::StartContainerRequest {
            container_id: "nope".into(),
        })
        .await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");

    // Empty ids.
    let r = rt
        .start_container(k::StartContainerRequest::default())
        .await;
    assert_eq!(
        code(&r),
        Code::InvalidArgument,
        "StartContainer(\"\"): {r:?}"
    );
    let r = rt.stop_container(k::StopContainerRequest::default()).await;
    assert_eq!(
        code(&r),
        Code::InvalidArgument,
        "StopContainer(\"\"): {r:?}"
    );
    let r = rt
        .remove_container(k::RemoveContainerRequest::default())
        .await;
    assert_eq!(
        code(&r),
        Code::InvalidArgument,
        "RemoveContainer(\"\"): {r:?}"
    );
    let r = rt
        .container_status(k::ContainerStatusRequest::default())
        .await;
    assert_eq!(
        code(&r),
        Code::InvalidArgument,
        "ContainerStatus(\"\"): {r:?}"
    );
    let r = rt
        .pod_sandbox_status(k::PodSandboxStatusRequest::default())
        .await;
    assert_eq!(
        code(&r),
        Code::InvalidArgument,
        "PodSandboxStatus(\"\"): {r:?}"
    );
    let r = rt
        .stop_pod_sandbox(k::StopPodSandboxRequest::default())
        .await;
    assert_eq!(
        code(&r),
        Code::InvalidArgument,
        "StopPodSandbox(\"\"): {r:?}"
    );
    let r = rt
        .remove_pod_sandbox(k::RemovePodSandboxRequest::default())
        .await;
    assert_eq!(
        code(&r),
        Code::InvalidArgument,
        "RemovePodSandbox(\"\"): {r:?}"
    );
    let r = rt
        .create_container(k::CreateContainerRequest {
            pod_sandbox_id: String::new(),
            config: Some(cri::shell("x", env.busybox(), "true")),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    assert_eq!(
        code(&r),
        Code::InvalidArgument,
        "CreateContainer(pod \"\"): {r:?}"
    );
    let r = img.pull_image(k::PullImageRequest::default()).await;
    assert_eq!(code(&r), Code::InvalidArgument, "PullImage(\"\"): {r:?}");
    let r = rt.run_pod_sandbox(k::RunPodSandboxRequest::default()).await;
    assert_eq!(
        code(&r),
        Code::InvalidArgument,
        "RunPodSandbox without config: {r:?}"
    );

    // A runtime handler berth does not serve.
    let mut other = pod.clone();
    if let Some(m) = other.metadata.as_mut() {
        m.name = "errors-handler".into();
    }
    let r = rt
        .run_pod_sandbox(k::RunPodSandboxRequest {
            config: Some(other),
            runtime_handler: "kata".into(),
        })
        .await;
    assert_eq!(code(&r), Code::InvalidArgument, "unknown handler: {r:?}");
    let message = r.err().map(|s| s.message().to_string()).unwrap_or_default();
    assert!(
        message.contains("kata"),
        "message names the handler: {message}"
    );

    // The same pod (name, namespace, uid, attempt) twice.
    let r = rt
        .run_pod_sandbox(k::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await;
    assert_eq!(code(&r), Code::AlreadyExists, "duplicate pod: {r:?}");
    // The same container name in a pod twice.
    let c =
        cri::create_container(d, &pod_id, &pod, cri::shell("twice", env.busybox(), "true")).await?;
    let r = rt
        .create_container(k::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cri::shell("twice", env.busybox(), "true")),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    assert_eq!(
        code(&r),
        Code::AlreadyExists,
        "duplicate container name: {r:?}"
    );
    cri::remove_container(d, &c).await?;

    // None of the failures left anything behind.
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_stops_and_refused_configs() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let mut rt = d.rt();

    // Stopping what does not exist succeeds (CRI: Stop* are idempotent).
    rt.stop_pod_sandbox(k::StopPodSandboxRequest {
        pod_sandbox_id: "3f1c9a50-0000-4000-8000-000000000000".into(),
    })
    .await?;
    rt.stop_container(k::StopContainerRequest {
        container_id: "3f1c9a50-0000-4000-8000-000000000000".into(),
        timeout: 0,
    })
    .await?;

    let (pod_id, pod) = env.pod("refused").await?;
    // A group without a user: refused like containerd, not run as the image's user with that group.
    let mut group_only = cri::shell("group-only", env.busybox(), "id");
    group_only.linux = Some(k::LinuxContainerConfig {
        security_context: Some(k::LinuxContainerSecurityContext {
            run_as_group: Some(k::Int64Value { value: 1002 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let r = rt
        .create_container(k::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(group_only),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    assert_eq!(code(&r), Code::InvalidArgument, "run_as_group alone: {r:?}");

    // Image volumes are a newer CRI feature berth does not have: said so plainly.
    let mut image_volume = cri::shell("image-volume", env.busybox(), "true");
    image_volume.mounts = vec![k::Mount {
        container_path: "/mnt/image".into(),
        image: Some(k::ImageSpec {
            image: env.busybox().to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let r = rt
        .create_container(k::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(image_volume),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    assert_eq!(code(&r), Code::Unimplemented, "image volume: {r:?}");

    leaks::assert_no_leaks(d).await;
    Ok(())
}
