//! berth snapshotter: content-addressed blob store, safe layer unpack, overlayfs snapshots, GC.
//!
//! PUBLIC API (used by cri-server and shim):
//! - [`ContentStore`] (blobs by digest), [`Snapshotter`] (committed layers by chain id, active/view snapshots by
//!   key), [`Compression`], [`Mount`], [`Usage`], [`GcStats`], [`Error`], [`Result`], [`mount_all`], [`unmount`].
//!
//! Everything here is synchronous and blocking; [`mount_all`] may fork. See `docs/snapshotter.md`.

mod content;
mod digest;
mod error;
mod fsutil;
mod mount;
mod snapshot;
mod unpack;

#[cfg(test)]
mod testutil;

use serde::{Deserialize, Serialize};

pub use content::{BlobWriter, ContentStore};
pub use error::{Error, Result};
pub use mount::{mount_all, unmount, Mount};
pub use snapshot::Snapshotter;

/// Disk usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes used.
    pub bytes: u64,
    /// Inodes used.
    pub inodes: u64,
}

/// What a GC pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Committed snapshots removed.
    pub snapshots_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// Layer compression, from the OCI / Docker media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Maps a layer media type to its compression; unknown media types are `InvalidInput`.
    pub fn from_media_type(media_type: &str) -> Result<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Ok(Compression::Zstd)
            }
            other => Err(Error::InvalidInput(format!(
                "unsupported layer media type {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip").ok(),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip").ok(),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd").ok(),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar").ok(),
            Some(Compression::None)
        );
        assert!(Compression::from_media_type("text/plain").is_err_and(|e| e.is_invalid_input()));
    }
}
