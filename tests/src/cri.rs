//! CRI request builders and waits shared by the tests (what a kubelet would send).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use tonic::Code;

use crate::daemon::Berthd;

/// `ContainerState::ContainerRunning` as i32.
pub const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
/// `ContainerState::ContainerExited` as i32.
pub const EXITED: i32 = cri::ContainerState::ContainerExited as i32;

/// The gRPC code of a result (Ok for success).
pub fn code<T>(r: &Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// The security context the kubelet sends for an ordinary pod: pod network and IPC, a PID
/// namespace per container.
pub fn kubelet_pod_security_context() -> cri::LinuxSandboxSecurityContext {
    cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Pod as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod config like the kubelet's: unique uid, log dir under the test dir (created here, as the
/// kubelet does), cgroup parent `/bt-N`.
pub fn pod_config(d: &Berthd, name: &str) -> anyhow::Result<cri::PodSandboxConfig> {
    let log_directory = d.logs_dir().join(name);
    std::fs::create_dir_all(&log_directory).context("creating pod log dir")?;
    Ok(cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", d.slot().n()),
            namespace: "berth-tests".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        labels: HashMap::from([("test".to_string(), name.to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: d.slot().cgroup_parent(),
            security_context: Some(kubelet_pod_security_context()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Makes a pod config use the host's network namespace.
pub fn host_network(mut cfg: cri::PodSandboxConfig) -> cri::PodSandboxConfig {
    let linux = cfg.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    let ns = sc.namespace_options.get_or_insert_with(Default::default);
    ns.network = cri::NamespaceMode::Node as i32;
    cfg
}

/// A container config running `command` in `image`, logging to `<name>.log`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// Container config running `sh -c script`.
pub fn shell(name: &str, image: &str, script: &str) -> cri::ContainerConfig {
    container_config(name, image, &["sh", "-c", script])
}

/// PullImage, returning the image ref.
pub async fn pull(
    d: &Berthd,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> anyhow::Result<String> {
    let r = crate::wait::within("PullImage", Duration::from_secs(120), async {
        Ok(d.img()
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: None,
            })
            .await
            .with_context(|| format!("PullImage {image}"))?
            .into_inner())
    })
    .await?;
    Ok(r.image_ref)
}

/// ImageStatus (None when the image is not present).
pub async fn image_status(d: &Berthd, image: &str) -> anyhow::Result<Option<cri::Image>> {
    Ok(d.img()
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .with_context(|| format!("ImageStatus {image}"))?
        .into_inner()
        .image)
}

/// RunPodSandbox.
pub async fn run_pod(d: &Berthd, cfg: &cri::PodSandboxConfig) -> anyhow::Result<String> {
    let r = crate::wait::within("RunPodSandbox", Duration::from_secs(60), async {
        Ok(d.rt()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner())
    })
    .await?;
    Ok(r.pod_sandbox_id)
}

/// CreateContainer then StartContainer; returns the container id.
pub async fn run_container(
    d: &Berthd,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> anyhow::Result<String> {
    let id = create_container(d, pod_id, pod, cfg).await?;
    crate::wait::within("StartContainer", Duration::from_secs(60), async {
        d.rt()
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {id}"))?;
        Ok(())
    })
    .await?;
    Ok(id)
}

/// CreateContainer.
pub async fn create_container(
    d: &Berthd,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> anyhow::Result<String> {
    let r = crate::wait::within("CreateContainer", Duration::from_secs(60), async {
        Ok(d.rt()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(cfg),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .context("CreateContainer")?
            .into_inner())
    })
    .await?;
    Ok(r.container_id)
}

/// The state ListPodSandbox reports for pod `id` (`None`: not listed).
pub async fn listed_pod_state(d: &Berthd, id: &str) -> anyhow::Result<Option<i32>> {
    let pods = d
        .rt()
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items;
    Ok(pods.into_iter().find(|p| p.id == id).map(|p| p.state))
}

/// ContainerStatus.
pub async fn container_status(d: &Berthd, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    d.rt()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .with_context(|| format!("ContainerStatus {id}"))?
        .into_inner()
        .status
        .context("ContainerStatus without status")
}

/// Waits until the container is in `state`.
pub async fn wait_state(
    d: &Berthd,
    id: &str,
    state: i32,
    timeout: Duration,
) -> anyhow::Result<cri::ContainerStatus> {
    crate::wait::until(
        &format!("container {id} to reach state {state}"),
        timeout,
        Duration::from_millis(100),
        || async move {
            let s = container_status(d, id).await?;
            Ok((s.state == state).then_some(s))
        },
    )
    .await
}

/// Waits until the container exited.
pub async fn wait_exited(d: &Berthd, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    wait_state(d, id, EXITED, Duration::from_secs(30)).await
}

/// StopContainer with `timeout` seconds.
pub async fn stop_container(d: &Berthd, id: &str, timeout: i64) -> anyhow::Result<()> {
    crate::wait::within(
        "StopContainer",
        Duration::from_secs(timeout as u64 + 30),
        async {
            d.rt()
                .stop_container(cri::StopContainerRequest {
                    container_id: id.into(),
                    timeout,
                })
                .await
                .with_context(|| format!("StopContainer {id}"))?;
            Ok(())
        },
    )
    .await
}

/// RemoveContainer.
pub async fn remove_container(d: &Berthd, id: &str) -> anyhow::Result<()> {
    d.rt()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .with_context(|| format!("RemoveContainer {id}"))?;
    Ok(())
}

/// The pod's IP from PodSandboxStatus.
pub async fn pod_ip(d: &Berthd, pod_id: &str) -> anyhow::Result<String> {
    let s = d
        .rt()
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        })
        .await
        .context("PodSandboxStatus")?
        .into_inner()
        .status
        .context("PodSandboxStatus without status")?;
    let ip = s.network.map(|n| n.ip).unwrap_or_default();
    if ip.is_empty() {
        bail!("pod {pod_id} has no IP in PodSandboxStatus");
    }
    Ok(ip)
}

/// Path of a container's log file: pod log dir + container log_path.
pub fn log_file(pod: &cri::PodSandboxConfig, ctr: &cri::ContainerConfig) -> PathBuf {
    Path::new(&pod.log_directory).join(&ctr.log_path)
}

/// One line of a CRI log file: `<RFC3339Nano> <stdout|stderr> <P|F> <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Timestamp as written.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `P` (partial) or `F` (full).
    pub tag: String,
    /// The text.
    pub text: String,
}

/// Parses a CRI log file, failing on any line not in the CRI format.
pub fn parse_cri_log(text: &str) -> anyhow::Result<Vec<LogLine>> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("not a CRI log line: {line:?}");
            };
            let text = parts.next().unwrap_or_default();
            let ts_ok = time.len() >= 20
                && time.as_bytes()[4] == b'-'
                && time.as_bytes()[10] == b'T'
                && (time.ends_with('Z') || time[19..].contains('+') || time[19..].contains('-'));
            if !ts_ok {
                bail!("bad RFC3339 timestamp in CRI log line: {line:?}");
            }
            if stream != "stdout" && stream != "stderr" {
                bail!("bad stream in CRI log line: {line:?}");
            }
            if tag != "F" && tag != "P" {
                bail!("bad tag in CRI log line: {line:?}");
            }
            Ok(LogLine {
                time: time.into(),
                stream: stream.into(),
                tag: tag.into(),
                text: text.into(),
            })
        })
        .collect()
}

/// Waits until the log file holds a line with exactly `text` on `stream`; returns all lines.
pub async fn wait_log_line(path: &Path, stream: &str, text: &str) -> anyhow::Result<Vec<LogLine>> {
    crate::wait::until(
        &format!("{stream} line {text:?} in {}", path.display()),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async move {
            let Ok(content) = std::fs::read_to_string(path) else {
                return Ok(None);
            };
            let lines = parse_cri_log(&content)?;
            Ok(lines
                .iter()
                .any(|l| l.stream == stream && l.text == text)
                .then_some(lines))
        },
    )
    .await
}

/// The stdout text of a finished container, one entry per full line.
pub async fn stdout_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_cri_log(&content)?
        .into_iter()
        .filter(|l| l.stream == "stdout")
        .map(|l| l.text)
        .collect())
}

/// Runs a one-shot container and returns (status after exit, stdout lines).
pub async fn run_to_exit(
    d: &Berthd,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> anyhow::Result<(cri::ContainerStatus, Vec<String>)> {
    let path = log_file(pod, &cfg);
    let id = run_container(d, pod_id, pod, cfg).await?;
    let status = wait_exited(d, &id).await?;
    // The shim may flush the last line just after the exit is recorded.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = stdout_lines(&path).await?;
    Ok((status, lines))
}
