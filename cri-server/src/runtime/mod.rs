//! CRI RuntimeService: thin gRPC handlers that validate and hand over to the sandbox and container managers.

pub mod cgroup;
pub mod container;
pub mod events;
pub mod pod_metrics;
pub mod sandbox;
pub mod stats;
pub mod stream_backend;

use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::Error;
use crate::image::manager::ImageManager;
use crate::streaming::StreamingServer;
use container::ContainerManager;
use events::EventBus;
use sandbox::SandboxManager;

/// The RuntimeService implementation berthd serves.
pub struct RuntimeHandlers {
    sandboxes: Arc<SandboxManager>,
    containers: Arc<ContainerManager>,
    /// Lifecycle events for GetContainerEvents subscribers.
    events: Arc<EventBus>,
    sandbox_stop_timeout_secs: i64,
    /// What RuntimeConfig reports.
    cgroup_driver: crate::config::CgroupDriver,
    /// The effective configuration, as JSON, for `crictl info`.
    config_json: String,
    /// Serves the exec, attach and port-forward URLs the RPCs hand out.
    streaming: Arc<StreamingServer>,
}

/// Runtime handlers berth serves: the default (empty name) and its own name. Both run containers with
/// berth-shim; handlers naming other OCI runtimes come later.
const RUNTIME_HANDLERS: [&str; 2] = ["", "berth"];

impl RuntimeHandlers {
    /// Builds the handlers, recovering sandboxes and containers left by a previous berthd.
    pub async fn new(config: &Config, images: Arc<ImageManager>) -> crate::error::Result<Self> {
        let sandboxes = Arc::new(SandboxManager::open(config).await?);
        let events = Arc::new(EventBus::default());
        let containers = Arc::new(
            ContainerManager::open(config, images, sandboxes.clone(), events.clone()).await?,
        );
        let sandbox_stop_timeout_secs =
            i64::try_from(config.runtime.sandbox_stop_timeout_secs).unwrap_or(i64::MAX);
        let config_json = serde_json::to_string(config)
            .map_err(|e| Error::Internal(format!("encoding the configuration: {e}")))?;
        let backend = Arc::new(stream_backend::RuntimeBackend::new(
            containers.clone(),
            sandboxes.clone(),
        ));
        let streaming = StreamingServer::start(&config.streaming, backend)?;
        Ok(Self {
            sandboxes,
            containers,
            events,
            sandbox_stop_timeout_secs,
            cgroup_driver: config.runtime.cgroup_driver,
            config_json,
            streaming,
        })
    }

    /// Stops the sandbox itself (its containers are stopped already) and sends its STOPPED event once.
    async fn stop_sandbox(&self, id: &str) -> Result<(), Status> {
        if self.sandboxes.stop_reporting(id).await? {
            self.containers
                .emit_sandbox_event(id, ContainerEventType::ContainerStoppedEvent, None)
                .await;
        }
        Ok(())
    }
}

fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(Error::InvalidArgument(format!("{field} must not be empty")).into())
    } else {
        Ok(())
    }
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("berth does not implement {rpc} yet"))
}

#[tonic::async_trait]
impl RuntimeService for RuntimeHandlers {
    type GetContainerEventsStream = Pin<
        Box<dyn futures::Stream<Item = Result<ContainerEventResponse, Status>> + Send + 'static>,
    >;

    async fn get_container_events(
        &self,
        request: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let _ = request;
        let rx = self.events.subscribe();
        let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        let _ = request;
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        if !RUNTIME_HANDLERS.contains(&req.runtime_handler.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "runtime handler {:?} is not configured; berth serves the default handler (\"\" or \"berth\")",
                req.runtime_handler
            ))
            .into());
        }
        let response = self.sandboxes.run(req).await?;
        let id = &response.pod_sandbox_id;
        for kind in [
            ContainerEventType::ContainerCreatedEvent,
            ContainerEventType::ContainerStartedEvent,
        ] {
            self.containers.emit_sandbox_event(id, kind, None).await;
        }
        Ok(Response::new(response))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let req = request.into_inner();
        require("pod_sandbox_id", &req.pod_sandbox_id)?;
        // Idempotent per the CRI: stopping a sandbox that does not exist (any more) is not an error.
        let id = match self.sandboxes.resolve_id(&req.pod_sandbox_id).await {
            Ok(id) => id,
            Err(Error::NotFound(_)) => return Ok(Response::new(StopPodSandboxResponse {})),
            Err(e) => return Err(e.into()),
        };
        self.containers
            .stop_all_in_sandbox(&id, self.sandbox_stop_timeout_secs)
            .await?;
        self.stop_sandbox(&id).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let req = request.into_inner();
        require("pod_sandbox_id", &req.pod_sandbox_id)?;
        let id = match self.sandboxes.resolve_id(&req.pod_sandbox_id).await {
            Ok(id) => id,
            Err(Error::NotFound(_)) => return Ok(Response::new(RemovePodSandboxResponse {})),
            Err(e) => return Err(e.into()),
        };
        self.containers.stop_all_in_sandbox(&id, 0).await?;
        self.containers.remove_all_in_sandbox(&id).await?;
        self.stop_sandbox(&id).await?;
        // Taken before the removal: the kubelet needs the pod's metadata in the DELETED event.
        let last_status = self
            .sandboxes
            .status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.status);
        if self.sandboxes.remove_reporting(&id).await? {
            self.containers
                .emit_sandbox_event(&id, ContainerEventType::ContainerDeletedEvent, last_status)
                .await;
        }
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        require("pod_sandbox_id", &req.pod_sandbox_id)?;
        Ok(Response::new(self.sandboxes.status(req).await?))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        Ok(Response::new(
            self.sandboxes.list(request.into_inner()).await?,
        ))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = request.into_inner();
        require("pod_sandbox_id", &req.pod_sandbox_id)?;
        Ok(Response::new(self.containers.create(req).await?))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let req = request.into_inner();
        require("container_id", &req.container_id)?;
        self.containers.start(&req.container_id).await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let req = request.into_inner();
        require("container_id", &req.container_id)?;
        self.containers.stop(&req.container_id, req.timeout).await?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let req = request.into_inner();
        require("container_id", &req.container_id)?;
        self.containers.remove(&req.container_id).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        Ok(Response::new(
            self.containers.list(request.into_inner()).await?,
        ))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        require("container_id", &req.container_id)?;
        Ok(Response::new(self.containers.status(req).await?))
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        require("container_id", &req.container_id)?;
        self.containers.update_resources(req).await?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let req = request.into_inner();
        require("container_id", &req.container_id)?;
        self.containers.reopen_log(&req.container_id).await?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let req = request.into_inner();
        require("container_id", &req.container_id)?;
        Ok(Response::new(
            self.containers
                .exec_sync(&req.container_id, req.cmd, req.timeout)
                .await?,
        ))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let mut req = request.into_inner();
        require("container_id", &req.container_id)?;
        req.container_id = self.containers.check_exec(&req)?;
        let url = self.streaming.exec_url(req)?;
        Ok(Response::new(ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        let mut req = request.into_inner();
        require("container_id", &req.container_id)?;
        req.container_id = self.containers.check_attach(&req)?;
        let url = self.streaming.attach_url(req)?;
        Ok(Response::new(AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let mut req = request.into_inner();
        require("pod_sandbox_id", &req.pod_sandbox_id)?;
        let pod = self
            .sandboxes
            .ready_info(&req.pod_sandbox_id, "port-forward")
            .await?;
        if let Some(bad) = req
            .port
            .iter()
            .find(|p| u16::try_from(**p).map_or(true, |p| p == 0))
        {
            return Err(Error::InvalidArgument(format!(
                "pod sandbox {}: port-forward: invalid port {bad}",
                pod.id
            ))
            .into());
        }
        req.pod_sandbox_id = pod.id;
        let url = self.streaming.port_forward_url(req)?;
        Ok(Response::new(PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let req = request.into_inner();
        require("container_id", &req.container_id)?;
        let stats = stats::container_stats(&self.containers, &req.container_id).await?;
        Ok(Response::new(ContainerStatsResponse { stats: Some(stats) }))
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let stats = stats::list_container_stats(&self.containers, filter).await?;
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let req = request.into_inner();
        require("pod_sandbox_id", &req.pod_sandbox_id)?;
        let stats =
            stats::pod_sandbox_stats(&self.sandboxes, &self.containers, &req.pod_sandbox_id)
                .await?;
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let stats =
            stats::list_pod_sandbox_stats(&self.sandboxes, &self.containers, filter).await?;
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        // The only field is the pod CIDR, which berth's default network does not take from the kubelet.
        let _ = request;
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let req = request.into_inner();
        let (network_ready, network_message) = self.sandboxes.network_status();
        let condition = |kind: &str, ok: bool, reason: &str, message: String| RuntimeCondition {
            r#type: kind.into(),
            status: ok,
            reason: if ok { String::new() } else { reason.into() },
            message,
        };
        let status = RuntimeStatus {
            conditions: vec![
                condition("RuntimeReady", true, "", String::new()),
                condition(
                    "NetworkReady",
                    network_ready,
                    "NetworkPluginNotReady",
                    network_message,
                ),
            ],
        };
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            info.insert("config".to_string(), self.config_json.clone());
            info.insert(
                "containerEvents".to_string(),
                serde_json::json!({
                    "subscribers": self.events.subscribers(),
                    "dropped": self.events.dropped(),
                })
                .to_string(),
            );
        }
        let runtime_handlers = RUNTIME_HANDLERS
            .iter()
            .map(|name| RuntimeHandler {
                name: (*name).to_string(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            })
            .collect();
        Ok(Response::new(StatusResponse {
            status: Some(status),
            info,
            runtime_handlers,
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        Err(unimplemented("CheckpointContainer"))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(ListMetricDescriptorsResponse {
            descriptors: pod_metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics =
            pod_metrics::list_pod_sandbox_metrics(&self.sandboxes, &self.containers).await?;
        Ok(Response::new(ListPodSandboxMetricsResponse { pod_metrics }))
    }

    async fn runtime_config(
        &self,
        request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        let _ = request;
        let cgroup_driver = match self.cgroup_driver {
            crate::config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: cgroup_driver as i32,
            }),
        }))
    }
}
