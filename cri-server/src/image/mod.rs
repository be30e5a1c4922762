//! CRI ImageService: thin gRPC handlers over the image manager.
//!
//! SKELETON: every handler answers Unimplemented until the image manager exists.

pub mod manager;
pub mod record;

use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

/// The ImageService implementation berthd serves.
pub struct ImageHandlers {
    images: Arc<manager::ImageManager>,
}

impl ImageHandlers {
    /// Builds the handlers over the shared image manager.
    pub fn new(images: Arc<manager::ImageManager>) -> Self {
        Self { images }
    }
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("berth does not implement {rpc} yet"))
}

#[tonic::async_trait]
impl ImageService for ImageHandlers {
    async fn list_images(&self, _request: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        Err(unimplemented("ListImages"))
    }
    async fn image_status(&self, _request: Request<ImageStatusRequest>) -> Result<Response<ImageStatusResponse>, Status> {
        Err(unimplemented("ImageStatus"))
    }
    async fn pull_image(&self, _request: Request<PullImageRequest>) -> Result<Response<PullImageResponse>, Status> {
        Err(unimplemented("PullImage"))
    }
    async fn remove_image(&self, _request: Request<RemoveImageRequest>) -> Result<Response<RemoveImageResponse>, Status> {
        Err(unimplemented("RemoveImage"))
    }
    async fn image_fs_info(&self, _request: Request<ImageFsInfoRequest>) -> Result<Response<ImageFsInfoResponse>, Status> {
        Err(unimplemented("ImageFsInfo"))
    }
}
