//! Pods and containers: CRI logs and exit codes, whiteouts and opaque dirs seen from inside, the
//! image user, StopContainer's TERM-then-KILL, and idempotent stop/remove.

use std::time::{Duration, Instant};

use anyhow::Context;
use berth_tests::cri::{self, code, EXITED};
use berth_tests::{leaks, require_root, ImageSpec, TestEnv};
use k8s_cri::v1 as k;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn logs_and_exit_codes() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("logs").await?;

    let failing = cri::shell(
        "failing",
        env.busybox(),
        "echo to-stdout; echo to-stderr >&2; exit 3",
    );
    let path = cri::log_file(&pod, &failing);
    let id = cri::run_container(d, &pod_id, &pod, failing).await?;
    let st = cri::wait_exited(d, &id).await?;
    assert_eq!(st.exit_code, 3, "{st:?}");
    assert_eq!(st.reason, "Error");
    assert_eq!(st.log_path, path.display().to_string());
    assert!(
        st.created_at > 0 && st.started_at >= st.created_at && st.finished_at >= st.started_at,
        "timestamps out of order: created {} started {} finished {}",
        st.created_at,
        st.started_at,
        st.finished_at
    );
    assert_eq!(
        st.image.as_ref().map(|i| i.image.is_empty()),
        Some(false),
        "image in status"
    );
    let lines = cri::wait_log_line(&path, "stderr", "to-stderr").await?;
    let out: Vec<_> = lines.iter().filter(|l| l.stream == "stdout").collect();
    assert_eq!(out.len(), 1, "{lines:?}");
    assert_eq!(
        (out[0].text.as_str(), out[0].tag.as_str()),
        ("to-stdout", "F")
    );
    let err: Vec<_> = lines.iter().filter(|l| l.stream == "stderr").collect();
    assert_eq!(
        (err[0].text.as_str(), err[0].tag.as_str()),
        ("to-stderr", "F")
    );

    let ok = cri::shell("ok", env.busybox(), "echo fine");
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, ok).await?;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{st:?}"
    );
    assert_eq!(out, ["fine"]);

    // Both show up in ListContainers, filtered by pod and by state.
    let listed = d
        .rt()
        .list_containers(k::ListContainersRequest {
            filter: Some(k::ContainerFilter {
                pod_sandbox_id: pod_id.clone(),
                state: Some(k::ContainerStateValue { state: EXITED }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2, "{listed:?}");
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn whiteouts_opaque_dirs_and_image_user() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let app = ImageSpec::busybox()?
        .with_user("app")
        .push(&env.reg, "bt/app", "1")
        .await?;
    cri::pull(d, &app.reference, None).await?;
    let (pod_id, pod) = env.pod("layers").await?;

    let ls = cri::shell(
        "ls",
        env.busybox(),
        "ls /data; echo ---; ls /opaque; echo ---; id -u",
    );
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, ls).await?;
    assert_eq!(st.exit_code, 0, "{st:?}");
    // data/old.txt was deleted by a whiteout; opaque/ shows only the top layer's b.txt.
    assert_eq!(out, ["index.html", "keep.txt", "---", "b.txt", "---", "0"]);

    let user = cri::shell("user", &app.reference, "id -u; id -un; echo $HOME");
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, user).await?;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(
        out.first().map(String::as_str),
        Some("1000"),
        "image User app → uid 1000: {out:?}"
    );
    assert_eq!(out.get(1).map(String::as_str), Some("app"));

    // The CRI user overrides the image's.
    let mut as_root = cri::shell("asroot", &app.reference, "id -u");
    as_root.linux = Some(k::LinuxContainerConfig {
        security_context: Some(k::LinuxContainerSecurityContext {
            run_as_user: Some(k::Int64Value { value: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, as_root).await?;
    assert_eq!(out, ["0"]);
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_honours_term_then_kills_and_remove_is_idempotent() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("stop").await?;

    let graceful = cri::shell(
        "graceful",
        env.busybox(),
        "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.1; done",
    );
    let gpath = cri::log_file(&pod, &graceful);
    let gid = cri::run_container(d, &pod_id, &pod, graceful).await?;
    cri::wait_log_line(&gpath, "stdout", "ready").await?;
    let t = Instant::now();
    cri::stop_container(d, &gid, 20).await?;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "TERM was not honoured: {:?}",
        t.elapsed()
    );
    let st = cri::container_status(d, &gid).await?;
    assert_eq!((st.state, st.exit_code), (EXITED, 7), "{st:?}");
    cri::wait_log_line(&gpath, "stdout", "got-term").await?;

    let stubborn = cri::shell(
        "stubborn",
        env.busybox(),
        "trap '' TERM; echo ready; while true; do sleep 0.1; done",
    );
    let spath = cri::log_file(&pod, &stubborn);
    let sid = cri::run_container(d, &pod_id, &pod, stubborn).await?;
    cri::wait_log_line(&spath, "stdout", "ready").await?;
    let t = Instant::now();
    cri::stop_container(d, &sid, 2).await?;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "killed before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(15),
        "not killed after the timeout: {took:?}"
    );
    let st = cri::container_status(d, &sid).await?;
    assert_eq!((st.state, st.exit_code), (EXITED, 137), "{st:?}");

    // Stop and remove are idempotent; a removed container is NotFound.
    cri::stop_container(d, &sid, 2)
        .await
        .context("second StopContainer")?;
    for id in [&gid, &sid] {
        cri::remove_container(d, id).await?;
        cri::remove_container(d, id)
            .await
            .context("second RemoveContainer")?;
        let r = d
            .rt()
            .container_status(k::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await;
        assert_eq!(
            code(&r),
            Code::NotFound,
            "status of a removed container: {r:?}"
        );
    }

    // Same for the pod.
    let stop = k::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    };
    d.rt().stop_pod_sandbox(stop.clone()).await?;
    d.rt()
        .stop_pod_sandbox(stop)
        .await
        .context("second StopPodSandbox")?;
    let pst = d
        .rt()
        .pod_sandbox_status(k::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("pod status")?;
    assert_eq!(pst.state, k::PodSandboxState::SandboxNotready as i32);
    let rm = k::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    };
    d.rt().remove_pod_sandbox(rm.clone()).await?;
    d.rt()
        .remove_pod_sandbox(rm)
        .await
        .context("second RemovePodSandbox")?;
    let r = d
        .rt()
        .pod_sandbox_status(k::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id,
            verbose: false,
        })
        .await;
    assert_eq!(code(&r), Code::NotFound, "status of a removed pod: {r:?}");
    leaks::assert_no_leaks(d).await;
    Ok(())
}
