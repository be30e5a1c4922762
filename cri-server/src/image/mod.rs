//! CRI ImageService: thin gRPC handlers over the image manager.
//!
//! Pull flow: `reference` (normalize) → `hosts` (certs.d mirrors) → `registry` (client, auth) →
//! `pull` (manifest, blobs into the content store, layers into snapshots) → `store` (records).

pub mod hosts;
pub mod locks;
pub mod manager;
pub mod manifest;
pub mod pull;
pub mod record;
pub mod reference;
pub mod registry;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::image::record::ImageRecord;
use crate::image::registry::Credentials;

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

fn image_name(spec: Option<&ImageSpec>, rpc: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(Error::InvalidArgument(format!(
            "{rpc}: image spec with a non-empty image is required"
        ))
        .into()),
    }
}

/// The CRI view of a record: numeric user as `uid`, a user name as `username`.
pub fn to_cri_image(record: &ImageRecord) -> Image {
    let user = record.config.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_owned()),
    };
    Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn not_found_is_none<T>(result: Result<T, Error>) -> Result<Option<T>, Status> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[tonic::async_trait]
impl ImageService for ImageHandlers {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let records = match filter {
            Some(name) => not_found_is_none(self.images.resolve(&name))?
                .into_iter()
                .collect(),
            None => self.images.list(),
        };
        Ok(Response::new(ListImagesResponse {
            images: records.iter().map(to_cri_image).collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref(), "ImageStatus")?;
        let Some(record) = not_found_is_none(self.images.resolve(&name))? else {
            return Ok(Response::new(ImageStatusResponse {
                image: None,
                info: HashMap::new(),
            }));
        };
        let mut info = HashMap::new();
        if request.verbose {
            let config = self.images.config_json(&record).await?;
            let verbose = serde_json::json!({
                "chainID": record.top_chain_id(),
                "chainIDs": record.chain_ids,
                "imageSpec": config,
            });
            info.insert("info".to_owned(), verbose.to_string());
        }
        Ok(Response::new(ImageStatusResponse {
            image: Some(to_cri_image(&record)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref(), "PullImage")?;
        let credentials = Credentials::from_cri(request.auth.as_ref())?;
        let record = self.images.pull(&name, &credentials).await.map_err(|err| {
            tracing::warn!(image = %name, %err, "pull failed");
            Status::from(err)
        })?;
        Ok(Response::new(PullImageResponse {
            image_ref: record.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let name = image_name(request.into_inner().image.as_ref(), "RemoveImage")?;
        self.images.remove(&name).await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let fs = self.images.fs_usage().await?;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        let usage = FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: fs.mountpoint.display().to_string(),
            }),
            used_bytes: Some(UInt64Value {
                value: fs.usage.bytes,
            }),
            inodes_used: Some(UInt64Value {
                value: fs.usage.inodes,
            }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::image::record::ImageRuntimeConfig;

    #[test]
    fn user_maps_to_uid_or_username() {
        let mut record = ImageRecord {
            id: "sha256:x".into(),
            repo_tags: vec![],
            repo_digests: vec![],
            size: 3,
            chain_ids: vec![],
            config: ImageRuntimeConfig::default(),
            blobs: vec![],
        };
        let img = to_cri_image(&record);
        assert_eq!((img.uid, img.username.as_str()), (None, ""));
        record.config.user = "1000:1000".into();
        assert_eq!(to_cri_image(&record).uid, Some(Int64Value { value: 1000 }));
        record.config.user = "nobody".into();
        let img = to_cri_image(&record);
        assert_eq!((img.uid, img.username.as_str()), (None, "nobody"));
        assert!(!img.pinned);
    }
}
