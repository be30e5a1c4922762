//! Killing berthd never kills containers: after a SIGKILL and restart the running container is
//! still RUNNING and listed, can be stopped and removed; a container whose shim died while berthd
//! was down is reported EXITED.

use std::time::Duration;

use anyhow::Context;
use berth_tests::cri::{self, EXITED, RUNNING};
use berth_tests::host::{pid_alive, pids_mentioning};
use berth_tests::{leaks, require_root, TestEnv};
use k8s_cri::v1 as k;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[tokio::test(flavor = "multi_thread")]
async fn containers_survive_a_berthd_crash() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("crash").await?;
    let survivor = cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::container_config("survivor", env.busybox(), &["sleep", "1013"]),
    )
    .await?;
    let orphan = cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::container_config("orphan", env.busybox(), &["sleep", "1002"]),
    )
    .await?;
    let st = cri::wait_state(d, &survivor, RUNNING, Duration::from_secs(10)).await?;
    cri::wait_state(d, &orphan, RUNNING, Duration::from_secs(10)).await?;
    let sleeper = pids_mentioning("sleep 1013");
    assert_eq!(
        sleeper.len(),
        1,
        "exactly one `sleep 1013` process: {sleeper:?}"
    );

    d.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pid_alive(sleeper[0]), "the container died with berthd");

    // While berthd is down, the orphan's shim dies (and its process with it).
    let shims: Vec<i32> = pids_mentioning(&orphan)
        .into_iter()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .map(|e| e.to_string_lossy().contains("berth-shim"))
                .unwrap_or(false)
        })
        .collect();
    assert!(
        !shims.is_empty(),
        "no berth-shim process names container {orphan}"
    );
    for p in shims.iter().chain(pids_mentioning("sleep 1002").iter()) {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }

    d.restart().await?;
    let after = cri::container_status(d, &survivor).await?;
    assert_eq!(after.state, RUNNING, "survivor after restart: {after:?}");
    assert_eq!(
        after.started_at, st.started_at,
        "same container, not restarted"
    );
    assert!(
        pid_alive(sleeper[0]),
        "the container died during berthd's restart"
    );
    let listed = d
        .rt()
        .list_containers(k::ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    assert!(
        listed
            .iter()
            .any(|c| c.id == survivor && c.state == RUNNING),
        "{listed:?}"
    );
    assert_eq!(
        cri::listed_pod_state(d, &pod_id).await?,
        Some(k::PodSandboxState::SandboxReady as i32),
        "pod after restart"
    );
    let orphan_st = cri::wait_exited(d, &orphan)
        .await
        .context("orphan reported EXITED")?;
    assert_eq!(orphan_st.state, EXITED);

    // The recovered container is fully manageable.
    cri::stop_container(d, &survivor, 2).await?;
    let stopped = cri::container_status(d, &survivor).await?;
    assert_eq!(stopped.state, EXITED);
    assert!(
        !pid_alive(sleeper[0]),
        "StopContainer after restart did not stop the process"
    );
    cri::remove_container(d, &survivor).await?;
    cri::remove_container(d, &orphan).await?;
    leaks::assert_no_leaks(d).await;
    Ok(())
}
