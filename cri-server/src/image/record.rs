//! The image record: what berth keeps about a pulled image, and what containers need from it.

use serde::{Deserialize, Serialize};

/// One pulled image. Persisted as JSON in `<root>/store/images/<config digest hex>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Image id: the config blob digest, `sha256:<hex>`.
    pub id: String,
    /// Normalized tags, e.g. `docker.io/library/busybox:latest`.
    pub repo_tags: Vec<String>,
    /// `repository@sha256:<manifest digest>` for each repository it was pulled from.
    pub repo_digests: Vec<String>,
    /// Bytes: config plus compressed layers, as `crictl images` reports.
    pub size: u64,
    /// Chain ids of the layers, bottom first; the last one is the rootfs parent of containers.
    pub chain_ids: Vec<String>,
    /// The parts of the image config that containers are built from.
    pub config: ImageRuntimeConfig,
    /// Content-store digests this image holds (manifest, config, layers) for GC.
    pub blobs: Vec<String>,
}

impl ImageRecord {
    /// The chain id containers' writable snapshots sit on; `None` for an image without layers.
    pub fn top_chain_id(&self) -> Option<&str> {
        self.chain_ids.last().map(String::as_str)
    }
}

/// Runtime-relevant fields of the OCI image config (`config` object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageRuntimeConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=value` entries.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`: `uid`, `uid:gid`, `name` or `name:group`; empty means root.
    pub user: String,
    /// `StopSignal`, e.g. `SIGQUIT`; empty means SIGTERM.
    pub stop_signal: String,
    /// `Labels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `Volumes` (paths).
    pub volumes: Vec<String>,
}
