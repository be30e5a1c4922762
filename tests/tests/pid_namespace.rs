//! Pods that share one PID namespace (CRI NamespaceMode::POD, Kubernetes shareProcessNamespace):
//! containers see each other's processes, pid 1 is berth's `pod-init` holder, the holder goes away
//! with RemovePodSandbox, survives a berthd crash, and a pod whose holder died is NOTREADY.

use std::time::Duration;

use berth_tests::cri::{self, RUNNING};
use berth_tests::host::{pid_alive, pids_mentioning};
use berth_tests::{leaks, require_root, TestEnv};
use k8s_cri::v1 as k;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Lists pid 1's command line, then every process's, one per line (NUL separators as spaces).
const LIST_PROCESSES: &str = "echo \"init: $(tr '\\0' ' ' < /proc/1/cmdline)\"; \
     for p in /proc/[0-9]*; do echo \"proc: $(tr '\\0' ' ' < $p/cmdline)\"; done";

fn share_pid(ns: &mut Option<k::NamespaceOption>) {
    ns.get_or_insert_with(Default::default).pid = k::NamespaceMode::Pod as i32;
}

/// A kubelet-like pod config with `shareProcessNamespace: true`.
fn shared_pid_pod(env: &TestEnv, name: &str) -> anyhow::Result<k::PodSandboxConfig> {
    let mut cfg = cri::pod_config(&env.d, name)?;
    let linux = cfg.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    share_pid(&mut sc.namespace_options);
    Ok(cfg)
}

/// A container config as the kubelet sends it for such a pod (pid mode POD).
fn in_pod_ns(mut cfg: k::ContainerConfig) -> k::ContainerConfig {
    let linux = cfg.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    share_pid(&mut sc.namespace_options);
    cfg
}

/// The holder of sandbox `pod_id`: the one process whose command line names `pod-init` and it.
fn holder_of(pod_id: &str) -> anyhow::Result<i32> {
    let pids = pids_mentioning(&format!("pod-init --id {pod_id} "));
    anyhow::ensure!(pids.len() == 1, "one pod-init for {pod_id}: {pids:?}");
    Ok(pids[0])
}

/// Pid of `pid` as seen from its own (innermost) PID namespace.
fn ns_pid(pid: i32) -> anyhow::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .ok_or_else(|| anyhow::anyhow!("no NSpid line for {pid}"))?;
    Ok(line
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string())
}

/// Runs the process lister in the pod; asserts pid 1 is the holder and `sleep <secs>` is seen.
async fn assert_sees_sleep(
    env: &TestEnv,
    pod_id: &str,
    pod: &k::PodSandboxConfig,
    name: &str,
    secs: &str,
) -> anyhow::Result<()> {
    let lister = in_pod_ns(cri::shell(name, env.busybox(), LIST_PROCESSES));
    let (st, out) = cri::run_to_exit(&env.d, pod_id, pod, lister).await?;
    assert_eq!(st.exit_code, 0, "{st:?} {out:?}");
    let init = out.iter().find(|l| l.starts_with("init: ")).cloned();
    assert!(
        init.as_deref()
            .is_some_and(|l| l.contains("berth-shim") && l.contains("pod-init")),
        "pid 1 in the pod is the holder: {out:?}"
    );
    assert!(
        out.iter()
            .any(|l| l.trim_end() == format!("proc: sleep {secs}")),
        "container A's sleep is visible from container B: {out:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_share_the_pod_pid_namespace() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let pod = shared_pid_pod(&env, "pidns")?;
    let pod_id = cri::run_pod(d, &pod).await?;
    let holder = holder_of(&pod_id)?;
    assert_eq!(ns_pid(holder)?, "1", "the holder is pid 1 of its namespace");
    let status = d
        .rt()
        .pod_sandbox_status(k::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .and_then(|s| s.linux)
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .map(|o| o.pid);
    assert_eq!(status, Some(k::NamespaceMode::Pod as i32));

    let sleeper = in_pod_ns(cri::container_config(
        "a",
        env.busybox(),
        &["sleep", "1011"],
    ));
    let a = cri::run_container(d, &pod_id, &pod, sleeper).await?;
    cri::wait_state(d, &a, RUNNING, Duration::from_secs(10)).await?;
    let sleep = pids_mentioning("sleep 1011");
    assert_eq!(sleep.len(), 1, "{sleep:?}");
    let holder_ns = std::fs::read_link(format!("/proc/{holder}/ns/pid"))?;
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/ns/pid", sleep[0]))?,
        holder_ns,
        "container A runs in the holder's PID namespace"
    );
    assert_ne!(ns_pid(sleep[0])?, "1", "the container is not pid 1");
    assert_sees_sleep(&env, &pod_id, &pod, "b", "1011").await?;

    let mut rt = d.rt();
    cri::stop_container(d, &a, 2).await?;
    rt.stop_pod_sandbox(k::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await?;
    assert!(pid_alive(holder), "StopPodSandbox leaves the holder");
    rt.remove_pod_sandbox(k::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await?;
    assert!(!pid_alive(holder), "RemovePodSandbox kills the holder");
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_pid_namespace_survives_a_berthd_crash() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let pod = shared_pid_pod(&env, "pidns-crash")?;
    let pod_id = cri::run_pod(d, &pod).await?;
    let holder = holder_of(&pod_id)?;
    let sleeper = in_pod_ns(cri::container_config(
        "a",
        env.busybox(),
        &["sleep", "1012"],
    ));
    let a = cri::run_container(d, &pod_id, &pod, sleeper).await?;
    cri::wait_state(d, &a, RUNNING, Duration::from_secs(10)).await?;

    d.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pid_alive(holder), "the holder died with berthd");
    d.restart().await?;
    assert_eq!(
        cri::listed_pod_state(d, &pod_id).await?,
        Some(k::PodSandboxState::SandboxReady as i32),
        "pod after restart"
    );
    assert_eq!(holder_of(&pod_id)?, holder, "same holder after restart");
    assert_sees_sleep(&env, &pod_id, &pod, "b", "1012").await?;
    leaks::assert_no_leaks(d).await;
    assert!(!pid_alive(holder), "the holder outlived its pod");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_whose_holder_died_is_notready_after_restart() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let pod = shared_pid_pod(&env, "pidns-lost")?;
    let pod_id = cri::run_pod(d, &pod).await?;
    let holder = holder_of(&pod_id)?;

    d.kill();
    kill(Pid::from_raw(holder), Signal::SIGKILL)?;
    for _ in 0..50 {
        if !pid_alive(holder) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pid_alive(holder), "SIGKILL did not end the holder");
    d.restart().await?;
    assert_eq!(
        cri::listed_pod_state(d, &pod_id).await?,
        Some(k::PodSandboxState::SandboxNotready as i32),
        "a pod without its PID namespace init is NOTREADY"
    );
    let created = cri::create_container(
        d,
        &pod_id,
        &pod,
        in_pod_ns(cri::container_config("late", env.busybox(), &["true"])),
    )
    .await;
    assert!(created.is_err(), "no container in a NOTREADY pod");
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_pod_sandbox_kills_the_holder() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start().await?;
    let d = &env.d;
    // Sorted first, so berthd uses it: `tuning` alone fails ADD (no prevResult) and allows DEL.
    let broken = d.dir().join("cni").join("00-broken.conflist");
    std::fs::write(
        &broken,
        r#"{"cniVersion":"1.0.0","name":"broken","plugins":[{"type":"tuning","sysctl":{"net.bogus.x":"1"}}]}"#,
    )?;
    let pod = shared_pid_pod(&env, "pidns-fail")?;
    let r = d
        .rt()
        .run_pod_sandbox(k::RunPodSandboxRequest {
            config: Some(pod),
            runtime_handler: String::new(),
        })
        .await;
    let err = r.err().map(|s| s.message().to_string()).unwrap_or_default();
    assert!(
        err.contains("prevResult"),
        "RunPodSandbox fails in CNI ADD: {err:?}"
    );
    assert!(
        d.log_tail(300).contains("pod PID namespace init started"),
        "the holder was started before CNI ADD failed"
    );
    let sandboxes = format!("{}/", d.state().join("sandboxes").display());
    let holders = pids_mentioning(&sandboxes);
    assert!(
        holders.is_empty(),
        "holder left by a failed RunPodSandbox: {holders:?}"
    );
    std::fs::remove_file(&broken)?;
    leaks::assert_no_leaks(d).await;
    Ok(())
}
