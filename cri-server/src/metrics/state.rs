//! Scrape-time state: pods and containers by state (from the same manager calls ListPodSandbox and
//! ListContainers make), snapshot and content-store disk usage, and live shims.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::{ContainerState, ListContainersRequest, ListPodSandboxRequest, PodSandboxState};
use tonic::Request;

use super::{Metrics, CONTAINER_STATES, POD_STATES};
use crate::image::manager::ImageManager;
use crate::runtime::RuntimeHandlers;

/// What the state gauges are computed from.
pub struct StateSource {
    runtime: Arc<RuntimeHandlers>,
    images: Arc<ImageManager>,
    bundles: PathBuf,
    /// One collection at a time: concurrent scrapes would interleave their gauge updates.
    collecting: tokio::sync::Mutex<()>,
}

impl StateSource {
    /// `state_dir` is `config.state`; container bundles (and shims' `--bundle`) live in its
    /// `containers/` directory.
    pub fn new(runtime: Arc<RuntimeHandlers>, images: Arc<ImageManager>, state_dir: &Path) -> Self {
        Self {
            runtime,
            images,
            bundles: state_dir.join("containers"),
            collecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Refreshes the state gauges of `m`, then renders everything.
    pub async fn render(&self, m: &Metrics) -> String {
        let _one = self.collecting.lock().await;
        if let Err(err) = self.collect(m).await {
            m.scrape_errors.inc();
            tracing::warn!(%err, "collecting metrics state");
        }
        m.render()
    }

    async fn collect(&self, m: &Metrics) -> Result<(), String> {
        let mut failures = Vec::new();
        match self
            .runtime
            .list_pod_sandbox(Request::new(ListPodSandboxRequest::default()))
            .await
        {
            Ok(resp) => {
                let mut counts = [0i64; POD_STATES.len()];
                for pod in resp.into_inner().items {
                    let i = match PodSandboxState::try_from(pod.state) {
                        Ok(PodSandboxState::SandboxReady) => 0,
                        _ => 1,
                    };
                    counts[i] += 1;
                }
                for (state, n) in POD_STATES.iter().zip(counts) {
                    m.pods.with_label_values(&[state]).set(n);
                }
            }
            Err(status) => failures.push(format!("listing pods: {}", status.message())),
        }
        match self
            .runtime
            .list_containers(Request::new(ListContainersRequest::default()))
            .await
        {
            Ok(resp) => {
                let mut counts = [0i64; CONTAINER_STATES.len()];
                for c in resp.into_inner().containers {
                    let i = match ContainerState::try_from(c.state) {
                        Ok(ContainerState::ContainerCreated) => 0,
                        Ok(ContainerState::ContainerRunning) => 1,
                        Ok(ContainerState::ContainerExited) => 2,
                        _ => 3,
                    };
                    counts[i] += 1;
                }
                for (state, n) in CONTAINER_STATES.iter().zip(counts) {
                    m.containers.with_label_values(&[state]).set(n);
                }
            }
            Err(status) => failures.push(format!("listing containers: {}", status.message())),
        }
        let images = self.images.clone();
        let bundles = self.bundles.clone();
        let disk = tokio::task::spawn_blocking(move || {
            let snapshots = images
                .snapshotter()
                .total_usage()
                .map(|u| u.bytes)
                .map_err(|e| format!("snapshot usage: {e}"));
            let content = images
                .content()
                .usage()
                .map(|u| u.bytes)
                .map_err(|e| format!("content store usage: {e}"));
            (
                snapshots,
                content,
                count_shims(Path::new("/proc"), &bundles),
            )
        })
        .await;
        match disk {
            Ok((snapshots, content, shims)) => {
                match snapshots {
                    Ok(b) => m.snapshots_disk_usage_bytes.set(clamp(b)),
                    Err(e) => failures.push(e),
                }
                match content {
                    Ok(b) => m.content_disk_usage_bytes.set(clamp(b)),
                    Err(e) => failures.push(e),
                }
                m.shims_running.set(clamp(shims));
            }
            Err(e) => failures.push(format!("usage task failed: {e}")),
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Counts `berth-shim serve --id … --bundle <bundles>/…` processes in `proc`.
pub fn count_shims(proc: &Path, bundles: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| is_shim_of(cmdline, bundles))
        .count() as u64
}

/// Whether a NUL-separated command line is a shim daemon serving a bundle under `bundles`.
pub fn is_shim_of(cmdline: &[u8], bundles: &Path) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args.get(1) != Some(&b"serve".as_slice()) {
        return false;
    }
    args.windows(2).any(|w| {
        w[0] == b"--bundle" && Path::new(&*String::from_utf8_lossy(w[1])).starts_with(bundles)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_command_lines() {
        let b = Path::new("/run/berth/containers");
        assert!(is_shim_of(
            b"/usr/bin/berth-shim\0serve\0--id\0c1\0--bundle\0/run/berth/containers/c1\0",
            b
        ));
        assert!(!is_shim_of(
            b"/usr/bin/berth-shim\0serve\0--id\0c1\0--bundle\0/run/other/containers/c1\0",
            b
        ));
        assert!(!is_shim_of(
            b"/usr/bin/berth-shim\0pod-init\0--id\0p\0--bundle\0/run/berth/containers/p\0",
            b
        ));
        assert!(!is_shim_of(b"", b));
    }

    #[test]
    fn counting_in_a_fake_proc() {
        let dir = tempfile::tempdir().unwrap();
        let b = Path::new("/s/containers");
        for (pid, cmd) in [
            (
                "10",
                &b"berth-shim\0serve\0--id\0a\0--bundle\0/s/containers/a\0"[..],
            ),
            (
                "11",
                &b"berth-shim\0serve\0--id\0b\0--bundle\0/s/containers/b\0"[..],
            ),
            ("12", &b"sleep\0infinity\0"[..]),
        ] {
            std::fs::create_dir(dir.path().join(pid)).unwrap();
            std::fs::write(dir.path().join(pid).join("cmdline"), cmd).unwrap();
        }
        std::fs::create_dir(dir.path().join("self")).unwrap();
        assert_eq!(count_shims(dir.path(), b), 2);
    }
}
