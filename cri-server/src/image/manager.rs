//! The image manager: pulls, stores, resolves and removes images. (SKELETON to be filled.)

use std::sync::Arc;

use snapshotter::{ContentStore, Snapshotter};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::image::record::ImageRecord;

/// Owns the content store, the committed layer snapshots and the image records.
pub struct ImageManager {
    content: ContentStore,
    snapshotter: Arc<Snapshotter>,
}

impl ImageManager {
    /// Opens the stores under `config.root` and loads the image records.
    pub async fn open(config: &Config) -> Result<Self> {
        let content = ContentStore::open(config.root.join("content"))?;
        let snapshotter = Arc::new(Snapshotter::open(config.root.join("snapshots"))?);
        Ok(Self { content, snapshotter })
    }

    /// Finds an image by id (`sha256:…` or a unique id prefix), tag or digest reference.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord> {
        let _ = &self.content;
        Err(Error::NotFound(format!("image {reference:?} not found")))
    }

    /// The snapshotter containers' root filesystems are prepared with.
    pub fn snapshotter(&self) -> &Arc<Snapshotter> {
        &self.snapshotter
    }
}
