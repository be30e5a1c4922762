//! The workload: N pods with one container each, timed call by call, the way a kubelet drives a
//! runtime (RunPodSandbox → CreateContainer → StartContainer → ContainerStatus until RUNNING, then
//! StopContainer → RemoveContainer → StopPodSandbox → RemovePodSandbox).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use crate::client::Cri;
use crate::error::{Error, Result};

/// The timed operations, in the order the report prints them.
pub const OPS: [&str; 8] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "pod-to-running",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

/// Label put on every pod the bench creates; its value is the run id.
pub const LABEL: &str = "berth-bench";

/// Latency samples (ms) per operation name.
pub type Samples = BTreeMap<String, Vec<f64>>;

/// What the workload needs to know.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Image of the containers (pulled beforehand).
    pub image: String,
    /// `linux.cgroup_parent` of every pod.
    pub cgroup_parent: String,
    /// Parent of the pods' log directories.
    pub log_dir: PathBuf,
    /// Unique id of this run: pod names, uids and the [`LABEL`] value.
    pub run_id: String,
    /// StopContainer grace period (the container exits on SIGTERM at once).
    pub stop_timeout_secs: i64,
}

/// A pod whose container was reported RUNNING.
#[derive(Debug, Clone)]
pub struct RunningPod {
    /// Pod sandbox id.
    pub pod_id: String,
    /// Container id.
    pub container_id: String,
}

/// Bound on every single CRI call.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

async fn call<T>(
    op: &'static str,
    object: &str,
    fut: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(Error::Rpc {
            op,
            object: object.to_owned(),
            status,
        }),
        Err(_) => Err(Error::Timeout {
            op,
            object: object.to_owned(),
            secs: CALL_TIMEOUT.as_secs(),
        }),
    }
}

impl Workload {
    /// The sandbox config a kubelet would send for an ordinary pod named `name`.
    pub fn pod_config(&self, name: &str) -> Result<cri::PodSandboxConfig> {
        let log_directory = self.log_dir.join(name);
        std::fs::create_dir_all(&log_directory).map_err(|source| Error::Io {
            path: log_directory.clone(),
            source,
        })?;
        Ok(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "berth-bench".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.display().to_string(),
            labels: HashMap::from([(LABEL.to_string(), self.run_id.clone())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(berth_tests::cri::kubelet_pod_security_context()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// The container config: a shell that exits on SIGTERM at once and otherwise sleeps.
    pub fn container_config(&self) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "main".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            log_path: "main.log".into(),
            labels: HashMap::from([(LABEL.to_string(), self.run_id.clone())]),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// Starts pod `name` with its container and waits until ContainerStatus says RUNNING.
    /// Returns the pod and (op, ms) samples.
    pub async fn start_pod(
        &self,
        cri: &mut Cri,
        name: &str,
    ) -> Result<(RunningPod, Vec<(&'static str, f64)>)> {
        let config = self.pod_config(name)?;
        let t0 = Instant::now();
        let pod_id = call(
            "RunPodSandbox",
            name,
            cri.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }),
        )
        .await?
        .pod_sandbox_id;
        let run = ms(t0);
        let t = Instant::now();
        let created = call(
            "CreateContainer",
            &pod_id,
            cri.rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(self.container_config()),
                sandbox_config: Some(config),
            }),
        )
        .await;
        let container_id = match created {
            Ok(r) => r.container_id,
            Err(e) => {
                self.remove_pod_untimed(cri, &pod_id).await;
                return Err(e);
            }
        };
        let create = ms(t);
        let pod = RunningPod {
            pod_id,
            container_id,
        };
        let t = Instant::now();
        let started = call(
            "StartContainer",
            &pod.container_id,
            cri.rt.start_container(cri::StartContainerRequest {
                container_id: pod.container_id.clone(),
            }),
        )
        .await;
        if let Err(e) = started {
            self.remove_pod_untimed(cri, &pod.pod_id).await;
            return Err(e);
        }
        let start = ms(t);
        if let Err(e) = wait_running(cri, &pod.container_id).await {
            self.remove_pod_untimed(cri, &pod.pod_id).await;
            return Err(e);
        }
        let to_running = ms(t0);
        Ok((
            pod,
            vec![
                ("RunPodSandbox", run),
                ("CreateContainer", create),
                ("StartContainer", start),
                ("pod-to-running", to_running),
            ],
        ))
    }

    /// Stops and removes the container, then the pod; returns (op, ms) samples.
    pub async fn stop_pod(
        &self,
        cri: &mut Cri,
        pod: &RunningPod,
    ) -> Result<Vec<(&'static str, f64)>> {
        let mut out = Vec::with_capacity(4);
        let c = &pod.container_id;
        let t = Instant::now();
        call(
            "StopContainer",
            c,
            cri.rt.stop_container(cri::StopContainerRequest {
                container_id: c.clone(),
                timeout: self.stop_timeout_secs,
            }),
        )
        .await?;
        out.push(("StopContainer", ms(t)));
        let t = Instant::now();
        call(
            "RemoveContainer",
            c,
            cri.rt.remove_container(cri::RemoveContainerRequest {
                container_id: c.clone(),
            }),
        )
        .await?;
        out.push(("RemoveContainer", ms(t)));
        let p = &pod.pod_id;
        let t = Instant::now();
        call(
            "StopPodSandbox",
            p,
            cri.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.clone(),
            }),
        )
        .await?;
        out.push(("StopPodSandbox", ms(t)));
        let t = Instant::now();
        call(
            "RemovePodSandbox",
            p,
            cri.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.clone(),
            }),
        )
        .await?;
        out.push(("RemovePodSandbox", ms(t)));
        Ok(out)
    }

    async fn remove_pod_untimed(&self, cri: &mut Cri, pod_id: &str) {
        stop_remove_untimed(cri, pod_id).await;
    }

    /// Starts `n` pods named `<run_id>-<phase>-<i>`, `concurrency` at a time. Started pods are
    /// appended to `pods` even when another one fails (so the caller can remove them); the first
    /// error is returned after all attempts finished.
    pub async fn start_all(
        &self,
        cri: &Cri,
        phase: &str,
        n: usize,
        concurrency: usize,
        pods: &mut Vec<RunningPod>,
        samples: &mut Samples,
    ) -> Result<()> {
        let results: Vec<_> = futures::stream::iter(0..n)
            .map(|i| {
                let mut cri = cri.clone();
                let name = format!("{}-{phase}-{i}", self.run_id);
                async move { self.start_pod(&mut cri, &name).await }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok((pod, s)) => {
                    pods.push(pod);
                    record(samples, s);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Stops and removes `pods`, `concurrency` at a time; the first error after all attempts.
    pub async fn stop_all(
        &self,
        cri: &Cri,
        pods: Vec<RunningPod>,
        concurrency: usize,
        samples: &mut Samples,
    ) -> Result<()> {
        let results: Vec<_> = futures::stream::iter(pods)
            .map(|pod| {
                let mut cri = cri.clone();
                async move { self.stop_pod(&mut cri, &pod).await }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(s) => record(samples, s),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Safety net: stops and removes every pod labelled with this run's id (untimed).
    pub async fn remove_leftovers(&self, cri: &mut Cri) -> Result<usize> {
        remove_labelled(cri, Some(&self.run_id)).await
    }
}

/// Stops and removes every pod carrying the [`LABEL`] label (with value `run_id` when given);
/// returns how many there were.
pub async fn remove_labelled(cri: &mut Cri, run_id: Option<&str>) -> Result<usize> {
    let pods = call(
        "ListPodSandbox",
        LABEL,
        cri.rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
    )
    .await?
    .items;
    let mine: Vec<_> = pods
        .into_iter()
        .filter(|p| match (p.labels.get(LABEL), run_id) {
            (Some(v), Some(id)) => v == id,
            (Some(_), None) => true,
            (None, _) => false,
        })
        .collect();
    for p in &mine {
        stop_remove_untimed(cri, &p.id).await;
    }
    Ok(mine.len())
}

async fn stop_remove_untimed(cri: &mut Cri, pod_id: &str) {
    let _ = call(
        "StopPodSandbox",
        pod_id,
        cri.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        }),
    )
    .await;
    let _ = call(
        "RemovePodSandbox",
        pod_id,
        cri.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        }),
    )
    .await;
}

fn record(samples: &mut Samples, s: Vec<(&'static str, f64)>) {
    for (op, v) in s {
        samples.entry(op.to_string()).or_default().push(v);
    }
}

/// Polls ContainerStatus until the container is RUNNING (30 s bound).
pub async fn wait_running(cri: &mut Cri, id: &str) -> Result<()> {
    let bound = Duration::from_secs(30);
    let t = Instant::now();
    let mut state = -1;
    while t.elapsed() < bound {
        let st = call(
            "ContainerStatus",
            id,
            cri.rt.container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }),
        )
        .await?;
        state = st.status.map_or(-1, |s| s.state);
        if state == cri::ContainerState::ContainerRunning as i32 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(Error::NotRunning {
        id: id.into(),
        secs: bound.as_secs(),
        state,
    })
}

/// Time and throughput of one real pull.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullResult {
    /// The image pulled.
    pub image: String,
    /// Wall time of PullImage.
    pub secs: f64,
    /// Bytes transferred (compressed layer sizes), or the runtime's reported size.
    pub bytes: u64,
    /// `bytes / secs` in MB/s (10^6).
    pub mb_per_s: f64,
}

/// True when the runtime has `image`.
pub async fn has_image(cri: &mut Cri, image: &str) -> Result<Option<cri::Image>> {
    Ok(call(
        "ImageStatus",
        image,
        cri.img.image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        }),
    )
    .await?
    .image)
}

/// Removes `image` if present.
pub async fn remove_image(cri: &mut Cri, image: &str) -> Result<()> {
    if has_image(cri, image).await?.is_none() {
        return Ok(());
    }
    call(
        "RemoveImage",
        image,
        cri.img.remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        }),
    )
    .await?;
    Ok(())
}

/// Pulls `image` (untimed) unless present.
pub async fn ensure_image(cri: &mut Cri, image: &str) -> Result<()> {
    if has_image(cri, image).await?.is_some() {
        return Ok(());
    }
    pull(cri, image).await
}

async fn pull(cri: &mut Cri, image: &str) -> Result<()> {
    call(
        "PullImage",
        image,
        cri.img.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        }),
    )
    .await?;
    Ok(())
}

/// Removes `image`, pulls it timed, and removes it again (so every round pulls for real).
/// `bytes` is the compressed size when known; otherwise the runtime's reported size is used.
pub async fn timed_pull(cri: &mut Cri, image: &str, bytes: Option<u64>) -> Result<PullResult> {
    remove_image(cri, image).await?;
    let t = Instant::now();
    pull(cri, image).await?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = match bytes {
        Some(b) => b,
        None => has_image(cri, image).await?.map_or(0, |i| i.size),
    };
    remove_image(cri, image).await?;
    Ok(PullResult {
        image: image.into(),
        secs,
        bytes,
        mb_per_s: if secs > 0.0 {
            bytes as f64 / 1e6 / secs
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl() -> Workload {
        Workload {
            image: "127.0.0.1:5000/b:1".into(),
            cgroup_parent: "/berth-bench".into(),
            log_dir: std::env::temp_dir(),
            run_id: "r1".into(),
            stop_timeout_secs: 10,
        }
    }

    #[test]
    fn container_config_is_labelled_and_traps_term() {
        let c = wl().container_config();
        assert_eq!(c.labels.get(LABEL).map(String::as_str), Some("r1"));
        assert!(c.command.iter().any(|a| a.contains("trap 'exit 0' TERM")));
    }

    #[test]
    fn samples_are_recorded_per_op() {
        let mut s = Samples::new();
        record(
            &mut s,
            vec![("RunPodSandbox", 1.0), ("StartContainer", 2.0)],
        );
        record(&mut s, vec![("RunPodSandbox", 3.0)]);
        assert_eq!(s["RunPodSandbox"], vec![1.0, 3.0]);
        assert_eq!(s["StartContainer"], vec![2.0]);
    }
}
