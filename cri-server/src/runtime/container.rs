//! The container manager: OCI spec, rootfs snapshot, one shim per container, exit monitoring, records.
//! (SKELETON to be filled.)

use std::sync::Arc;

use k8s_cri::v1::*;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::image::manager::ImageManager;
use crate::runtime::sandbox::SandboxManager;

/// Owns every container: creation through its shim, lifecycle, status, recovery after a berthd restart.
pub struct ContainerManager {
    images: Arc<ImageManager>,
    sandboxes: Arc<SandboxManager>,
}

impl ContainerManager {
    /// Loads container records, reconnects to shims still running, marks those whose shim is gone as exited.
    pub async fn open(config: &Config, images: Arc<ImageManager>, sandboxes: Arc<SandboxManager>) -> Result<Self> {
        let _ = config;
        Ok(Self { images, sandboxes })
    }

    /// CreateContainer.
    pub async fn create(&self, _req: CreateContainerRequest) -> Result<CreateContainerResponse> {
        let _ = (&self.images, &self.sandboxes);
        Err(Error::Internal("CreateContainer not implemented".into()))
    }

    /// StartContainer.
    pub async fn start(&self, _id: &str) -> Result<()> {
        Err(Error::Internal("StartContainer not implemented".into()))
    }

    /// StopContainer: stop signal, SIGKILL after `timeout_secs`. Idempotent.
    pub async fn stop(&self, _id: &str, _timeout_secs: i64) -> Result<()> {
        Err(Error::Internal("StopContainer not implemented".into()))
    }

    /// RemoveContainer: stops it if needed, removes shim, snapshot, record. Idempotent.
    pub async fn remove(&self, _id: &str) -> Result<()> {
        Err(Error::Internal("RemoveContainer not implemented".into()))
    }

    /// ContainerStatus.
    pub async fn status(&self, _req: ContainerStatusRequest) -> Result<ContainerStatusResponse> {
        Err(Error::Internal("ContainerStatus not implemented".into()))
    }

    /// ListContainers with its filter.
    pub async fn list(&self, _req: ListContainersRequest) -> Result<ListContainersResponse> {
        Err(Error::Internal("ListContainers not implemented".into()))
    }

    /// UpdateContainerResources.
    pub async fn update_resources(&self, _req: UpdateContainerResourcesRequest) -> Result<()> {
        Err(Error::Internal("UpdateContainerResources not implemented".into()))
    }

    /// Stops every container of a sandbox (StopPodSandbox).
    pub async fn stop_all_in_sandbox(&self, _sandbox_id: &str, _timeout_secs: i64) -> Result<()> {
        Ok(())
    }

    /// Removes every container of a sandbox (RemovePodSandbox).
    pub async fn remove_all_in_sandbox(&self, _sandbox_id: &str) -> Result<()> {
        Ok(())
    }
}
