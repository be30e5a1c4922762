//! End-to-end tests of the container manager against a real berthd, berth-shim, registry and CNI (as
//! root), using the tests crate's harness: create errors, name reservation, id prefixes, verbose status,
//! CRI mounts, resource updates, OOM kills, and recovery after a berthd crash (with and without the shim).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::Context;
use berth_tests::cri::{self, code, EXITED, RUNNING};
use berth_tests::{leaks, require_root, TestEnv};
use k8s_cri::v1 as k;
use tonic::Code;

async fn verbose_info(
    d: &berth_tests::daemon::Berthd,
    id: &str,
) -> anyhow::Result<serde_json::Value> {
    let resp = d
        .rt()
        .container_status(k::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info = resp
        .info
        .get("info")
        .context("verbose status without info")?;
    Ok(serde_json::from_str(info)?)
}

fn create_req(
    pod_id: &str,
    pod: &k::PodSandboxConfig,
    cfg: k::ContainerConfig,
) -> k::CreateContainerRequest {
    k::CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(cfg),
        sandbox_config: Some(pod.clone()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_errors_names_prefixes_mounts_and_updates() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("ctrs").await?;

    // Image not pulled.
    let r = d
        .rt()
        .create_container(create_req(
            &pod_id,
            &pod,
            cri::shell("x", "bt/nope:1", "true"),
        ))
        .await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");
    assert!(r.unwrap_err().message().contains("pull it first"));
    // No name.
    let mut nameless = cri::shell("x", env.busybox(), "true");
    nameless.metadata = None;
    let r = d
        .rt()
        .create_container(create_req(&pod_id, &pod, nameless))
        .await;
    assert_eq!(code(&r), Code::InvalidArgument, "{r:?}");
    // Missing mount source.
    let mut bad_mount = cri::shell("x", env.busybox(), "true");
    bad_mount.mounts = vec![k::Mount {
        container_path: "/data".into(),
        host_path: "/nonexistent/berth/path".into(),
        ..Default::default()
    }];
    let r = d
        .rt()
        .create_container(create_req(&pod_id, &pod, bad_mount))
        .await;
    assert_eq!(code(&r), Code::InvalidArgument, "{r:?}");
    // A TTY container is created (with its console) and removed again without a trace.
    let mut tty = cri::shell("tty", env.busybox(), "true");
    tty.tty = true;
    let tty_id = d
        .rt()
        .create_container(create_req(&pod_id, &pod, tty))
        .await?
        .into_inner()
        .container_id;
    cri::remove_container(d, &tty_id).await?;

    // A CRI mount (read-only) shows up; names are reserved; prefixes work.
    let host_dir = d.dir().join("hostdata");
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(host_dir.join("hello.txt"), "from-host\n")?;
    let mut c = cri::shell(
        "reader",
        env.busybox(),
        "cat /data/hello.txt; touch /data/x 2>/dev/null || echo ro; sleep 1000",
    );
    c.mounts = vec![k::Mount {
        container_path: "/data".into(),
        host_path: host_dir.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let path = cri::log_file(&pod, &c);
    let id = cri::create_container(d, &pod_id, &pod, c.clone()).await?;
    let r = d.rt().create_container(create_req(&pod_id, &pod, c)).await;
    assert_eq!(code(&r), Code::AlreadyExists, "{r:?}");
    assert!(r.unwrap_err().message().contains(&id));

    let prefix = &id[..12];
    d.rt()
        .start_container(k::StartContainerRequest {
            container_id: prefix.into(),
        })
        .await?;
    let r = d
        .rt()
        .start_container(k::StartContainerRequest {
            container_id: prefix.into(),
        })
        .await;
    assert_eq!(code(&r), Code::FailedPrecondition, "{r:?}");
    cri::wait_log_line(&path, "stdout", "ro").await?;
    let out = cri::stdout_lines(&path).await?;
    assert_eq!(out, ["from-host", "ro"]);

    let info = verbose_info(d, prefix).await?;
    assert_eq!(info["sandboxID"], serde_json::json!(pod_id));
    assert!(info["pid"].as_u64().unwrap_or(0) > 0, "{info}");
    assert_eq!(info["runtimeSpec"]["process"]["args"][0], "sh");
    let listed = d
        .rt()
        .list_containers(k::ListContainersRequest {
            filter: Some(k::ContainerFilter {
                id: prefix.into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);

    // UpdateContainerResources reaches the cgroup.
    let cgroups_path = info["cgroupsPath"]
        .as_str()
        .context("cgroupsPath")?
        .to_string();
    let limit = 96 * 1024 * 1024;
    d.rt()
        .update_container_resources(k::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(k::LinuxContainerResources {
                memory_limit_in_bytes: limit,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let st = cri::container_status(d, &id).await?;
    assert_eq!(
        st.resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes),
        Some(limit)
    );
    let v1 = format!("/sys/fs/cgroup/memory{cgroups_path}/memory.limit_in_bytes");
    let v2 = format!("/sys/fs/cgroup{cgroups_path}/memory.max");
    let applied = std::fs::read_to_string(&v1).or_else(|_| std::fs::read_to_string(&v2))?;
    assert_eq!(applied.trim(), limit.to_string());

    let user = st.user.and_then(|u| u.linux).context("status user")?;
    assert_eq!((user.uid, user.gid), (0, 0));

    // A uid without gid takes its gid (and groups) from the image's passwd, resolved by the shim.
    let mut as_app = cri::shell("asapp", env.busybox(), "id -u; id -g");
    as_app.linux = Some(k::LinuxContainerConfig {
        security_context: Some(k::LinuxContainerSecurityContext {
            run_as_user: Some(k::Int64Value { value: 1000 }),
            supplemental_groups: vec![4242],
            ..Default::default()
        }),
        ..Default::default()
    });
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, as_app).await?;
    assert_eq!(out, ["1000", "1000"], "{st:?}");
    let user = st.user.and_then(|u| u.linux).context("status user")?;
    assert_eq!((user.uid, user.gid), (1000, 1000));
    assert!(user.supplemental_groups.contains(&4242), "{user:?}");

    cri::stop_container(d, prefix, 1).await?;
    let st = cri::container_status(d, &id).await?;
    assert_eq!((st.state, st.exit_code), (EXITED, 137), "{st:?}");
    cri::remove_container(d, prefix).await?;
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn oom_killed_reason() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("oom").await?;
    let mut c = cri::shell("hog", env.busybox(), "tail /dev/zero");
    c.linux = Some(k::LinuxContainerConfig {
        resources: Some(k::LinuxContainerResources {
            memory_limit_in_bytes: 16 * 1024 * 1024,
            memory_swap_limit_in_bytes: 16 * 1024 * 1024,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = cri::run_container(d, &pod_id, &pod, c).await?;
    let st = cri::wait_state(d, &id, EXITED, Duration::from_secs(60)).await?;
    assert_eq!(
        (st.reason.as_str(), st.exit_code),
        ("OOMKilled", 137),
        "{st:?}"
    );
    cri::remove_container(d, &id).await?;
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_after_berthd_crash() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("recover").await?;

    let survivor = cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::shell("survivor", env.busybox(), "sleep 1000"),
    )
    .await?;
    let orphan = cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::shell("orphan", env.busybox(), "sleep 1000"),
    )
    .await?;
    let quick = cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::shell("quick", env.busybox(), "sleep 2; exit 4"),
    )
    .await?;
    let created = cri::create_container(
        d,
        &pod_id,
        &pod,
        cri::shell("created", env.busybox(), "echo hi"),
    )
    .await?;
    let orphan_shims = berth_tests::host::pids_mentioning(&format!("--id {orphan}"));
    assert!(!orphan_shims.is_empty(), "no shim process for {orphan}");

    d.kill();
    // While berthd is down: the orphan's shim dies (its container keeps running), quick exits.
    for pid in orphan_shims {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    d.restart().await?;

    let st = cri::container_status(d, &survivor).await?;
    assert_eq!(st.state, RUNNING, "{st:?}");
    let st = cri::container_status(d, &orphan).await?;
    assert_eq!(
        (st.state, st.exit_code, st.reason.as_str()),
        (EXITED, 255, "Unknown"),
        "{st:?}"
    );
    assert!(st.message.contains("gone"), "{st:?}");
    let st = cri::container_status(d, &quick).await?;
    assert_eq!(
        (st.state, st.exit_code, st.reason.as_str()),
        (EXITED, 4, "Error"),
        "{st:?}"
    );
    let st = cri::container_status(d, &created).await?;
    assert_eq!(
        st.state,
        k::ContainerState::ContainerCreated as i32,
        "{st:?}"
    );

    // The resumed monitor still sees the survivor's exit; the created one still starts.
    cri::stop_container(d, &survivor, 0).await?;
    let st = cri::container_status(d, &survivor).await?;
    assert_eq!((st.state, st.exit_code), (EXITED, 137), "{st:?}");
    d.rt()
        .start_container(k::StartContainerRequest {
            container_id: created.clone(),
        })
        .await?;
    let st = cri::wait_exited(d, &created).await?;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{st:?}"
    );

    // RemovePodSandbox takes all containers, including the one whose shim is gone.
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
    let left = d
        .rt()
        .list_containers(k::ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn privileged_and_capabilities() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("priv").await?;
    let script = "grep CapEff /proc/self/status; test -c /dev/kmsg && echo kmsg; \
                  touch /sys/fs/cgroup/x 2>/dev/null; mount | grep -q ' on /sys type sysfs (rw' && echo sys-rw";
    let mut privileged = cri::shell("priv", env.busybox(), script);
    privileged.linux = Some(k::LinuxContainerConfig {
        security_context: Some(k::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, privileged).await?;
    assert_eq!(st.exit_code, 0, "{st:?} {out:?}");
    // Privileged gets berthd's own bounding set (here without CAP_SYS_RESOURCE).
    let status = std::fs::read_to_string("/proc/self/status")?;
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .context("CapBnd")?
        .trim();
    assert_eq!(out, [format!("CapEff:\t{bnd}").as_str(), "kmsg", "sys-rw"]);

    let mut plain = cri::shell("plain", env.busybox(), script);
    plain.linux = Some(k::LinuxContainerConfig {
        security_context: Some(k::LinuxContainerSecurityContext {
            capabilities: Some(k::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, plain).await?;
    // CAP_NET_ADMIN is bit 12.
    assert_eq!(out, ["CapEff:\t0000000000001000"]);
    leaks::assert_no_leaks(d).await;
    Ok(())
}
