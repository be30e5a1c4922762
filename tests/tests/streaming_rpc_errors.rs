//! Exec, Attach and PortForward RPCs: the validation berthd does before it hands out a streaming
//! URL (unknown ids, exited containers, stopped pods, impossible stream combinations), and the
//! URLs it hands out otherwise; and what happens to an exec whose client goes away.

use std::time::Duration;

use berth_tests::cri::{self, code};
use berth_tests::stream_client::{RemoteCommand, Streams};
use berth_tests::{leaks, require_root, TestEnv};
use k8s_cri::v1 as k;
use tonic::Code;

fn exec_req(id: &str, cmd: &[&str], tty: bool, streams: (bool, bool, bool)) -> k::ExecRequest {
    k::ExecRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: streams.0,
        stdout: streams.1,
        stderr: streams.2,
    }
}

fn attach_req(id: &str, tty: bool, streams: (bool, bool, bool)) -> k::AttachRequest {
    k::AttachRequest {
        container_id: id.to_string(),
        tty,
        stdin: streams.0,
        stdout: streams.1,
        stderr: streams.2,
    }
}

fn forward_req(pod_id: &str, ports: &[i32]) -> k::PortForwardRequest {
    k::PortForwardRequest {
        pod_sandbox_id: pod_id.to_string(),
        port: ports.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_rpcs_validate_before_handing_out_urls() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let mut rt = d.rt();
    let (pod_id, pod) = env.pod("streamrpc").await?;
    let id = cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::shell("sleeper", env.busybox(), "sleep 100000"),
    )
    .await?;
    let out = (false, true, true);

    // Unknown ids.
    let r = rt
        .exec(exec_req("no-such-container", &["true"], false, out))
        .await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");
    let r = rt.attach(attach_req("no-such-container", false, out)).await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");
    let r = rt.port_forward(forward_req("no-such-pod", &[80])).await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");

    // Impossible requests.
    for (what, req) in [
        ("empty cmd", exec_req(&id, &[], false, out)),
        (
            "tty with stderr",
            exec_req(&id, &["sh"], true, (true, true, true)),
        ),
        (
            "no streams",
            exec_req(&id, &["true"], false, (false, false, false)),
        ),
    ] {
        let r = rt.exec(req).await;
        assert_eq!(code(&r), Code::InvalidArgument, "exec {what}: {r:?}");
    }
    for (what, req) in [
        (
            "tty with stderr",
            attach_req(&id, true, (false, true, true)),
        ),
        ("no streams", attach_req(&id, false, (false, false, false))),
        (
            "stdin of a container without stdin",
            attach_req(&id, false, (true, true, true)),
        ),
    ] {
        let r = rt.attach(req).await;
        assert_eq!(code(&r), Code::InvalidArgument, "attach {what}: {r:?}");
    }
    let r = rt.port_forward(forward_req(&pod_id, &[70000])).await;
    assert_eq!(code(&r), Code::InvalidArgument, "{r:?}");

    // Valid requests get single-use URLs; a unique id prefix is enough.
    let url = rt
        .exec(exec_req(&id[..12], &["sh"], true, (true, true, false)))
        .await?
        .into_inner()
        .url;
    assert!(url.starts_with("http") && url.contains("/exec/"), "{url}");
    let url = rt
        .attach(attach_req(&id, false, out))
        .await?
        .into_inner()
        .url;
    assert!(url.contains("/attach/"), "{url}");
    let url = rt
        .port_forward(forward_req(&pod_id, &[8080]))
        .await?
        .into_inner()
        .url;
    assert!(url.contains("/portforward/"), "{url}");

    // An exited container, a stopped pod.
    let (st, _) =
        cri::run_to_exit(d, &pod_id, &pod, cri::shell("done", env.busybox(), "true")).await?;
    let r = rt.exec(exec_req(&st.id, &["true"], false, out)).await;
    assert_eq!(code(&r), Code::FailedPrecondition, "{r:?}");
    let r = rt.attach(attach_req(&st.id, false, out)).await;
    assert_eq!(code(&r), Code::FailedPrecondition, "{r:?}");
    rt.stop_pod_sandbox(k::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await?;
    let r = rt.port_forward(forward_req(&pod_id, &[80])).await;
    assert_eq!(code(&r), Code::FailedPrecondition, "{r:?}");
    let r = rt.exec(exec_req(&id, &["true"], false, out)).await;
    assert_eq!(code(&r), Code::FailedPrecondition, "{r:?}");

    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_whose_client_goes_away_is_killed_and_cleaned_up() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let mut rt = d.rt();
    let (pod_id, pod) = env.pod("streamgone").await?;
    let id = cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::shell("sleeper", env.busybox(), "sleep 100000"),
    )
    .await?;
    let streams = Streams {
        stdin: true,
        stdout: true,
        ..Default::default()
    };
    let cmd = ["sh", "-c", "echo started; exec sleep 4242"];
    let url = rt
        .exec(exec_req(&id, &cmd, false, (true, true, false)))
        .await?
        .into_inner()
        .url;
    let session = RemoteCommand::spdy(&url, streams).await?;
    session
        .wait_stdout("the exec to start", Duration::from_secs(20), |o| {
            o.contains("started")
        })
        .await?;
    session.detach().await?;

    let exec_dir = d.state().join("containers").join(&id).join("exec");
    berth_tests::wait::until(
        "the abandoned exec to be killed and its FIFOs removed",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let (env, id, exec_dir) = (&env, id.clone(), exec_dir.clone());
            async move {
                let ps = env
                    .d
                    .rt()
                    .exec_sync(k::ExecSyncRequest {
                        container_id: id,
                        cmd: vec!["ps".into(), "-o".into(), "args".into()],
                        timeout: 10,
                    })
                    .await?
                    .into_inner();
                let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
                let left: Vec<_> = std::fs::read_dir(&exec_dir)
                    .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                if ps.contains("sleep 4242") || !left.is_empty() {
                    anyhow::bail!("still running:\n{ps}\nleft in the exec dir: {left:?}");
                }
                Ok(Some(()))
            }
        },
    )
    .await?;

    leaks::assert_no_leaks(d).await;
    Ok(())
}
