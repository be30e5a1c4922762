//! The streaming server's [`Backend`]: exec and attach through the container manager (the shim),
//! port-forward dialing into the pod's network namespace.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_cri::v1::{AttachRequest, ExecRequest};
use tokio::net::TcpStream;

use super::container::ContainerManager;
use super::sandbox::SandboxManager;
use crate::error::Error;
use crate::network::dial::dial_localhost;
use crate::streaming::backend::{Backend, SessionIo};

/// Runs streaming sessions against berth's containers and pods.
pub struct RuntimeBackend {
    containers: Arc<ContainerManager>,
    sandboxes: Arc<SandboxManager>,
}

impl RuntimeBackend {
    /// A backend over the runtime's managers.
    pub fn new(containers: Arc<ContainerManager>, sandboxes: Arc<SandboxManager>) -> Self {
        Self {
            containers,
            sandboxes,
        }
    }
}

impl Backend for RuntimeBackend {
    fn exec(&self, req: ExecRequest, io: SessionIo) -> BoxFuture<'static, Result<i32, Error>> {
        let containers = self.containers.clone();
        Box::pin(async move { containers.exec_session(req, io).await })
    }

    fn attach(&self, req: AttachRequest, io: SessionIo) -> BoxFuture<'static, Result<(), Error>> {
        let containers = self.containers.clone();
        Box::pin(async move { containers.attach_session(req, io).await })
    }

    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
    ) -> BoxFuture<'static, Result<TcpStream, Error>> {
        let sandboxes = self.sandboxes.clone();
        Box::pin(async move {
            let pod = sandboxes
                .ready_info(&pod_sandbox_id, "port-forward")
                .await?;
            dial_localhost(pod.netns_path.as_deref(), port).await
        })
    }
}
