//! The image manager: pulls, stores, resolves and removes images, and collects their garbage.

use std::path::PathBuf;
use std::sync::Arc;

use snapshotter::{ContentStore, Snapshotter, Usage};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::image::locks::{GcGate, KeyedLocks, Leases};
use crate::image::manifest::HostPlatform;
use crate::image::pull::{self, PullContext};
use crate::image::record::ImageRecord;
use crate::image::reference::ImageRef;
use crate::image::registry::Credentials;
use crate::image::store::{ImageStore, Removal};
use crate::metrics::PullTracker;

/// Owns the content store, the committed layer snapshots and the image records.
pub struct ImageManager {
    content: ContentStore,
    snapshotter: Arc<Snapshotter>,
    records: ImageStore,
    snapshots_dir: PathBuf,
    hosts_dir: PathBuf,
    max_concurrent_downloads: usize,
    platform: HostPlatform,
    pull_locks: KeyedLocks,
    blob_locks: KeyedLocks,
    gate: GcGate,
    leases: Arc<Leases>,
}

/// Space the image filesystem uses (content store plus snapshots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFsUsage {
    /// Where snapshots live (`<root>/snapshots`), reported as the filesystem mountpoint.
    pub mountpoint: PathBuf,
    /// Bytes and inodes used.
    pub usage: Usage,
}

impl ImageManager {
    /// Opens the stores under `config.root`, loads the image records, and frees what interrupted pulls left.
    pub async fn open(config: &Config) -> Result<Self> {
        let content = ContentStore::open(config.root.join("content"))?;
        let snapshots_dir = config.root.join("snapshots");
        let snapshotter = Arc::new(Snapshotter::open(&snapshots_dir)?);
        let records = ImageStore::open(config.root.join("store").join("images"))?;
        let manager = Self {
            content,
            snapshotter,
            records,
            snapshots_dir,
            hosts_dir: config.registry.config_path.clone(),
            max_concurrent_downloads: config.registry.max_concurrent_downloads.max(1),
            platform: HostPlatform::current(),
            pull_locks: KeyedLocks::default(),
            blob_locks: KeyedLocks::default(),
            gate: GcGate::default(),
            leases: Arc::new(Leases::default()),
        };
        // Blobs and layers of pulls that a crash or an error interrupted belong to no image: free them now.
        if let Err(err) = manager.collect_garbage().await {
            tracing::warn!(%err, "garbage collection at start-up failed; continuing");
        }
        Ok(manager)
    }

    /// Finds an image by id (`sha256:…`, bare hex or a unique id prefix), tag or digest reference.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord> {
        self.records.resolve(reference)
    }

    /// Prepares the writable snapshot `key` on the committed chain `parent` (a container's rootfs). Holds the
    /// GC gate's shared side, so a concurrent garbage collection cannot remove the parent chain mid-way.
    pub async fn prepare_snapshot(
        &self,
        key: String,
        parent: Option<String>,
    ) -> Result<Vec<snapshotter::Mount>> {
        let _shared = self.gate.read().await;
        let snapshotter = self.snapshotter.clone();
        let what = format!("snapshot {key:?}");
        tokio::task::spawn_blocking(move || snapshotter.prepare(&key, parent.as_deref()))
            .await
            .map_err(|e| Error::Internal(format!("{what}: prepare task failed: {e}")))?
            .map_err(Error::from)
    }

    /// The snapshotter containers' root filesystems are prepared with.
    pub fn snapshotter(&self) -> &Arc<Snapshotter> {
        &self.snapshotter
    }

    /// The content store (blobs by digest).
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// Every image record.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.records.list()
    }

    /// Pulls `reference` (any form `ImageRef::parse` accepts) and returns the stored record.
    /// Concurrent pulls of the same reference are serialized; the second finds everything present.
    pub async fn pull(&self, reference: &str, credentials: &Credentials) -> Result<ImageRecord> {
        let tracker = PullTracker::start();
        let result = self.pull_tracked(reference, credentials, &tracker).await;
        tracker.finish(result.is_ok());
        result
    }

    async fn pull_tracked(
        &self,
        reference: &str,
        credentials: &Credentials,
        tracker: &PullTracker,
    ) -> Result<ImageRecord> {
        let image = ImageRef::parse(reference)?;
        let _same_reference = self.pull_locks.lock(&image.to_string()).await;
        let started = std::time::Instant::now();
        let mut lease = self.leases.lease();
        let ctx = PullContext {
            content: &self.content,
            snapshotter: &self.snapshotter,
            hosts_dir: &self.hosts_dir,
            max_concurrent_downloads: self.max_concurrent_downloads,
            locks: &self.blob_locks,
            gate: &self.gate,
            platform: &self.platform,
            downloaded: tracker.downloaded(),
        };
        let pulled = pull::pull(&ctx, &image, credentials, &mut lease).await?;
        let (record, dropped) = self.records.add(pulled)?;
        drop(lease);
        tracing::info!(image = %image, id = %record.id, size = record.size, secs = started.elapsed().as_secs_f64(), "pulled image");
        if !dropped.is_empty() {
            tracing::info!(?dropped, "images lost their last name to this pull");
            if let Err(err) = self.collect_garbage().await {
                tracing::warn!(%err, "garbage collection after pull failed");
            }
        }
        Ok(record)
    }

    /// Removes an image by id, id prefix, tag or digest reference. Absent is not an error.
    /// Removing one of several tags only untags; otherwise the record goes and its blobs and
    /// snapshots are collected unless other images use them.
    pub async fn remove(&self, reference: &str) -> Result<()> {
        match self.records.remove(reference)? {
            Removal::Absent => Ok(()),
            Removal::Untagged(tag) => {
                tracing::info!(%tag, "untagged image");
                Ok(())
            }
            Removal::Removed(id) => {
                tracing::info!(%id, "removed image");
                self.collect_garbage().await
            }
        }
    }

    /// Deletes blobs no image or in-flight pull uses, then committed snapshots no image uses
    /// (the snapshotter keeps parents of active container snapshots itself).
    pub async fn collect_garbage(&self) -> Result<()> {
        let _exclusive = self.gate.write().await;
        let (mut keep_blobs, mut keep_chains) = self.records.in_use();
        let (leased_blobs, leased_chains) = self.leases.snapshot();
        keep_blobs.extend(leased_blobs);
        keep_chains.extend(leased_chains);
        let content = self.content.clone();
        let snapshotter = self.snapshotter.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut removed = 0usize;
            for digest in content.list()? {
                if !keep_blobs.contains(&digest) {
                    content.delete(&digest)?;
                    removed += 1;
                }
            }
            let stats = snapshotter.gc(&keep_chains)?;
            tracing::info!(
                blobs_removed = removed,
                snapshots_removed = stats.snapshots_removed,
                bytes_freed = stats.bytes_freed,
                "image garbage collected"
            );
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("garbage collection task failed: {e}")))?
    }

    /// The image config JSON of a stored image (for verbose ImageStatus).
    pub async fn config_json(&self, record: &ImageRecord) -> Result<serde_json::Value> {
        let bytes = pull::read_blob(&self.content, &record.id).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("image {}: config is not JSON: {e}", record.id)))
    }

    /// Space used by the content store plus all snapshots.
    pub async fn fs_usage(&self) -> Result<ImageFsUsage> {
        let content = self.content.clone();
        let snapshotter = self.snapshotter.clone();
        let usage = tokio::task::spawn_blocking(move || -> Result<Usage> {
            let blobs = content.usage()?;
            let snapshots = snapshotter.total_usage()?;
            Ok(Usage {
                bytes: blobs.bytes + snapshots.bytes,
                inodes: blobs.inodes + snapshots.inodes,
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("usage task failed: {e}")))??;
        Ok(ImageFsUsage {
            mountpoint: self.snapshots_dir.clone(),
            usage,
        })
    }
}
