//! One image pull: resolve the reference on the configured hosts, fetch manifest (through an index
//! to the host platform) and config, stream layers into the content store in parallel, unpack them
//! in order into committed snapshots, and describe the result as an [`ImageRecord`].

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use snapshotter::{Compression, ContentStore, Snapshotter};

use crate::error::{Error, Result};
use crate::image::hosts::hosts_for;
use crate::image::locks::{GcGate, KeyedLocks, Lease};
use crate::image::manifest::{
    check_layers, descriptor_size, HostPlatform, ImageConfigFile, Manifest,
};
use crate::image::record::ImageRecord;
use crate::image::reference::ImageRef;
use crate::image::registry::{Credentials, HostClient, RegistryError};

/// Image configs are read into memory; real ones are a few KiB.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Everything a pull works with, borrowed from the image manager.
pub struct PullContext<'a> {
    /// Blob store.
    pub content: &'a ContentStore,
    /// Layer snapshots.
    pub snapshotter: &'a Arc<Snapshotter>,
    /// The `certs.d` directory.
    pub hosts_dir: &'a Path,
    /// Layers downloaded at once.
    pub max_concurrent_downloads: usize,
    /// Per-digest download locks and per-chain unpack locks.
    pub locks: &'a KeyedLocks,
    /// Orders leases against garbage collection.
    pub gate: &'a GcGate,
    /// The platform to pick from indexes.
    pub platform: &'a HostPlatform,
    /// Blob bytes this pull downloaded (for the pull metrics).
    pub downloaded: &'a AtomicU64,
}

/// Pulls `image`. The returned record names the image as this pull did (the tag when pulled by
/// tag, and `name@<digest the reference resolved to>`); everything it uses stays leased in `lease`.
pub async fn pull(
    ctx: &PullContext<'_>,
    image: &ImageRef,
    credentials: &Credentials,
    lease: &mut Lease,
) -> Result<ImageRecord> {
    let shown = image.to_string();
    let (client, auth, bytes, resolved_digest) = resolve(ctx, image, credentials).await?;
    tracing::debug!(image = %shown, host = %client.host().url(), digest = %resolved_digest, "resolved");

    let mut blobs = vec![resolved_digest.clone()];
    lease.add(ctx.gate, &blobs, &[]).await;
    store_bytes(ctx, &resolved_digest, bytes.clone()).await?;
    let manifest = match Manifest::parse(&bytes).map_err(|e| with_image(&shown, e))? {
        Manifest::Image(manifest) => *manifest,
        Manifest::Index(index) => {
            let entry = ctx.platform.select(&index.manifests).ok_or_else(|| {
                Error::NotFound(format!(
                    "image {shown}: no manifest for platform {}/{}{} in the index",
                    ctx.platform.os,
                    ctx.platform.architecture,
                    ctx.platform
                        .variant
                        .as_deref()
                        .map(|v| format!("/{v}"))
                        .unwrap_or_default()
                ))
            })?;
            let (bytes, digest) = client
                .manifest(&auth, None, Some(&entry.digest))
                .await
                .map_err(|e| e.into_error(&shown))?;
            lease
                .add(ctx.gate, std::slice::from_ref(&digest), &[])
                .await;
            store_bytes(ctx, &digest, bytes.clone()).await?;
            blobs.push(digest);
            match Manifest::parse(&bytes).map_err(|e| with_image(&shown, e))? {
                Manifest::Image(manifest) => *manifest,
                Manifest::Index(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "image {shown}: index entry is another index"
                    )))
                }
            }
        }
    };

    // Config first: its diff ids name the chains the layers unpack into.
    let config_digest = manifest.config.digest.clone();
    if descriptor_size(&manifest.config)? > MAX_CONFIG_BYTES {
        return Err(Error::InvalidArgument(format!(
            "image {shown}: config {config_digest} is larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    lease
        .add(ctx.gate, std::slice::from_ref(&config_digest), &[])
        .await;
    fetch_blob(ctx, &client, &auth, &manifest.config, &shown).await?;
    let config_bytes = read_blob(ctx.content, &config_digest).await?;
    let config = ImageConfigFile::parse(&config_bytes).map_err(|e| with_image(&shown, e))?;
    check_layers(&manifest, &config).map_err(|e| with_image(&shown, e))?;
    let mut chain_ids = Vec::with_capacity(config.rootfs.diff_ids.len());
    for diff_id in &config.rootfs.diff_ids {
        chain_ids.push(Snapshotter::chain_id(
            chain_ids.last().map(String::as_str),
            diff_id,
        ));
    }
    let layer_digests: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    lease.add(ctx.gate, &layer_digests, &chain_ids).await;
    blobs.push(config_digest.clone());
    blobs.extend(layer_digests);

    download_layers(ctx, &client, &auth, &manifest, &shown).await?;
    unpack_layers(ctx, &manifest, &config, &chain_ids, &shown).await?;

    let mut size = descriptor_size(&manifest.config)?;
    for layer in &manifest.layers {
        size = size.saturating_add(descriptor_size(layer)?);
    }
    Ok(ImageRecord {
        id: config_digest,
        repo_tags: if image.digest.is_none() {
            image.tagged().into_iter().collect()
        } else {
            Vec::new()
        },
        repo_digests: vec![image.with_digest(&resolved_digest)],
        size,
        chain_ids,
        config: config.runtime_config(),
        blobs,
    })
}

fn with_image(image: &str, err: Error) -> Error {
    match err {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("image {image}: {m}")),
        other => other,
    }
}

/// Tries the hosts in order until one serves the manifest; returns the client that did.
async fn resolve(
    ctx: &PullContext<'_>,
    image: &ImageRef,
    credentials: &Credentials,
) -> Result<(HostClient, RegistryAuth, Vec<u8>, String)> {
    let shown = image.to_string();
    let hosts = hosts_for(ctx.hosts_dir, &image.registry)?;
    let mut best: Option<RegistryError> = None;
    for host in &hosts {
        let usable = if image.digest.is_some() {
            host.capabilities.pull
        } else {
            host.capabilities.resolve
        };
        if !usable {
            continue;
        }
        if !host.has_standard_path() {
            tracing::warn!(host = %host.url(), "skipping registry host: only the /v2 API root is supported");
            continue;
        }
        if !host.headers.is_empty() {
            tracing::warn!(host = %host.url(), "hosts.toml headers are not sent (unsupported by the registry client)");
        }
        let (client, auth) = HostClient::new(host, image, credentials)?;
        match client
            .manifest(&auth, image.tag.as_deref(), image.digest.as_deref())
            .await
        {
            Ok((bytes, digest)) => return Ok((client, auth, bytes, digest)),
            Err(err) => {
                tracing::debug!(image = %shown, host = %host.url(), ?err, "registry host failed");
                if best.as_ref().is_none_or(|b| err.rank() >= b.rank()) {
                    best = Some(err);
                }
            }
        }
    }
    Err(match best {
        Some(err) => err.into_error(&shown),
        None => Error::FailedPrecondition(format!(
            "image {shown}: no usable registry host in {}",
            ctx.hosts_dir.display()
        )),
    })
}

async fn download_layers(
    ctx: &PullContext<'_>,
    client: &HostClient,
    auth: &RegistryAuth,
    manifest: &OciImageManifest,
    image: &str,
) -> Result<()> {
    futures::stream::iter(manifest.layers.iter().map(Ok))
        .try_for_each_concurrent(ctx.max_concurrent_downloads.max(1), |layer| {
            fetch_blob(ctx, client, auth, layer, image)
        })
        .await
}

async fn unpack_layers(
    ctx: &PullContext<'_>,
    manifest: &OciImageManifest,
    config: &ImageConfigFile,
    chain_ids: &[String],
    image: &str,
) -> Result<()> {
    let mut parent: Option<String> = None;
    for ((layer, diff_id), chain_id) in manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .zip(chain_ids)
    {
        let _unpacking = ctx.locks.lock(&format!("chain:{chain_id}")).await;
        let snapshotter = ctx.snapshotter.clone();
        let (content, desc, diff_id, chain) = (
            ctx.content.clone(),
            layer.clone(),
            diff_id.clone(),
            chain_id.clone(),
        );
        let parent_for_task = parent.clone();
        let unpacked = tokio::task::spawn_blocking(move || -> Result<String> {
            if snapshotter.has_committed(&chain) {
                return Ok(chain);
            }
            let compression = Compression::from_media_type(&desc.media_type)?;
            let blob = content.blob_path(&desc.digest)?;
            Ok(snapshotter.unpack_layer(
                parent_for_task.as_deref(),
                &blob,
                compression,
                &diff_id,
            )?)
        })
        .await
        .map_err(|e| Error::Internal(format!("unpack task failed: {e}")))?
        .map_err(|e| match e {
            Error::Snapshot(s) if s.is_invalid_input() => Error::InvalidArgument(format!(
                "image {image}: unpacking layer {}: {s}",
                layer.digest
            )),
            other => other,
        })?;
        if unpacked != *chain_id {
            return Err(Error::Internal(format!(
                "image {image}: layer {} unpacked to chain {unpacked}, expected {chain_id}",
                layer.digest
            )));
        }
        parent = Some(unpacked);
    }
    Ok(())
}

enum Chunk<B> {
    Data(B),
    End,
}

/// Streams one blob into the content store (skipped when present). Writes happen on a blocking
/// thread fed through a small channel, so memory stays bounded and no worker blocks on disk.
async fn fetch_blob(
    ctx: &PullContext<'_>,
    client: &HostClient,
    auth: &RegistryAuth,
    desc: &OciDescriptor,
    image: &str,
) -> Result<()> {
    let _downloading = ctx.locks.lock(&format!("blob:{}", desc.digest)).await;
    if ctx.content.contains(&desc.digest) {
        return Ok(());
    }
    let size = descriptor_size(desc)?;
    let mut stream = client
        .blob_stream(auth, desc)
        .await
        .map_err(|e| e.into_error(image))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let content = ctx.content.clone();
    let digest = desc.digest.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut writer = content.writer(&digest, Some(size))?;
        while let Some(chunk) = rx.blocking_recv() {
            match chunk {
                Chunk::Data(bytes) => {
                    let bytes: &[u8] = AsRef::<[u8]>::as_ref(&bytes);
                    writer
                        .write_all(bytes)
                        .map_err(|e| Error::io(format!("writing blob {digest}"), e))?;
                }
                Chunk::End => return Ok(writer.commit()?),
            }
        }
        Err(Error::Internal(format!(
            "download of blob {digest} was aborted"
        )))
    });
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                let n = AsRef::<[u8]>::as_ref(&bytes).len() as u64;
                crate::metrics::PullTracker::add_bytes(ctx.downloaded, n);
                if tx.send(Chunk::Data(bytes)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() {
        let _ = tx.send(Chunk::End).await;
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Error::Internal(format!("blob writer task failed: {e}")))?;
    if let Some(e) = failure {
        return Err(Error::Unavailable(format!(
            "failed to pull image {image:?}: downloading {} from {}: {e}",
            desc.digest,
            client.host().url()
        )));
    }
    written.map_err(|e| match e {
        Error::Snapshot(s) if s.is_invalid_input() => Error::Internal(format!(
            "failed to pull image {image:?}: blob {} from {}: {s}",
            desc.digest,
            client.host().url()
        )),
        other => other,
    })
}

/// Stores a small blob (manifest) already in memory, digest-verified by the content store.
async fn store_bytes(ctx: &PullContext<'_>, digest: &str, bytes: Vec<u8>) -> Result<()> {
    let _writing = ctx.locks.lock(&format!("blob:{digest}")).await;
    let (content, digest) = (ctx.content.clone(), digest.to_owned());
    tokio::task::spawn_blocking(move || -> Result<()> {
        if content.contains(&digest) {
            return Ok(());
        }
        let mut writer = content.writer(&digest, Some(bytes.len() as u64))?;
        writer
            .write_all(&bytes)
            .map_err(|e| Error::io(format!("writing blob {digest}"), e))?;
        Ok(writer.commit()?)
    })
    .await
    .map_err(|e| Error::Internal(format!("blob writer task failed: {e}")))?
}

/// Reads a small blob (config).
pub async fn read_blob(content: &ContentStore, digest: &str) -> Result<Vec<u8>> {
    let (content, digest) = (content.clone(), digest.to_owned());
    tokio::task::spawn_blocking(move || content.read(&digest).map_err(Error::from))
        .await
        .map_err(|e| Error::Internal(format!("blob reader task failed: {e}")))?
}
