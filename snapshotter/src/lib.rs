//! berth snapshotter: content-addressed blob store, safe layer unpack, overlayfs snapshots, GC.
//!
//! PUBLIC API CONTRACT (used by cri-server and shim; keep these paths and signatures):
//! - `ContentStore` (blobs by digest), `Snapshotter` (committed layers by chain id, active/view snapshots by key),
//! - `Compression`, `Mount`, `Usage`, `GcStats`, `Error`, `Result`, `mount_all`, `unmount`.
//!
//! The bodies below are placeholders to be replaced by the real implementation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of the content store and snapshotter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such blob or snapshot.
    #[error("{0} not found")]
    NotFound(String),
    /// Input that is malformed or hostile (bad digest, tar entry escaping the snapshot, digest mismatch).
    #[error("{0}")]
    InvalidInput(String),
    /// Filesystem or syscall failure.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl Error {
    /// True when the error means "no such object".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
    /// True when the error is the caller's input.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::InvalidInput(_))
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

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
    pub fn from_media_type(_media_type: &str) -> Result<Self> {
        todo!()
    }
}

/// A mount, as containerd describes one: `mount -t kind -o options source target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Filesystem type: `overlay` or `bind`.
    pub kind: String,
    /// Source (`overlay` for overlay mounts, a path for bind).
    pub source: String,
    /// Mount options (`lowerdir=…`, `upperdir=…`, `workdir=…`, `ro`, `rbind`…).
    pub options: Vec<String>,
}

/// Mounts `mounts` in order onto `target`. Overlay mounts whose options exceed a page are still mounted.
pub fn mount_all(_mounts: &[Mount], _target: &Path) -> Result<()> {
    todo!()
}

/// Unmounts `target` (all stacked mounts). Not mounted is not an error.
pub fn unmount(_target: &Path) -> Result<()> {
    todo!()
}

/// Content-addressed blob store: `<root>/blobs/sha256/<hex>`.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

/// A blob being written; [`BlobWriter::commit`] verifies digest and size before it becomes visible.
pub struct BlobWriter {
    _private: (),
}

impl std::io::Write for BlobWriter {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        todo!()
    }
    fn flush(&mut self) -> std::io::Result<()> {
        todo!()
    }
}

impl BlobWriter {
    /// Verifies digest (and size, when known) and moves the blob into place.
    pub fn commit(self) -> Result<()> {
        todo!()
    }
}

impl ContentStore {
    /// Opens (creating) the store under `root`; removes partial ingests left by a crash.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let _ = &root;
        todo!()
    }
    /// Path of a committed blob (`InvalidInput` for a malformed digest).
    pub fn blob_path(&self, _digest: &str) -> Result<PathBuf> {
        let _ = &self.root;
        todo!()
    }
    /// True when the blob is committed.
    pub fn contains(&self, _digest: &str) -> bool {
        todo!()
    }
    /// Starts writing a blob with the expected digest (and size, when known).
    pub fn writer(&self, _digest: &str, _size: Option<u64>) -> Result<BlobWriter> {
        todo!()
    }
    /// Reads a whole (small) blob: manifests, configs.
    pub fn read(&self, _digest: &str) -> Result<Vec<u8>> {
        todo!()
    }
    /// Deletes a blob; absent is not an error.
    pub fn delete(&self, _digest: &str) -> Result<()> {
        todo!()
    }
    /// Digests of every committed blob.
    pub fn list(&self) -> Result<Vec<String>> {
        todo!()
    }
    /// Space used by committed blobs.
    pub fn usage(&self) -> Result<Usage> {
        todo!()
    }
}

/// Overlay snapshots: committed layers keyed by chain id, active (writable) and view (read-only) snapshots keyed
/// by a caller-chosen key (berth uses the container id).
#[derive(Debug, Clone)]
pub struct Snapshotter {
    root: PathBuf,
}

impl Snapshotter {
    /// Opens (creating) the snapshotter under `root`; removes what a crashed unpack left.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let _ = &root;
        todo!()
    }
    /// The OCI chain id of a layer whose parent chain is `parent` and uncompressed digest is `diff_id`.
    pub fn chain_id(_parent: Option<&str>, _diff_id: &str) -> String {
        todo!()
    }
    /// True when the layer chain is unpacked and committed.
    pub fn has_committed(&self, _chain_id: &str) -> bool {
        let _ = &self.root;
        todo!()
    }
    /// Unpacks a layer blob on top of `parent` (a committed chain id) atomically and safely, verifying the
    /// uncompressed digest against `diff_id`; returns the new chain id. Already committed: returns at once.
    pub fn unpack_layer(&self, _parent: Option<&str>, _blob: &Path, _compression: Compression, _diff_id: &str) -> Result<String> {
        todo!()
    }
    /// Creates the writable snapshot `key` on top of the committed chain `parent`; returns its mounts.
    pub fn prepare(&self, _key: &str, _parent: Option<&str>) -> Result<Vec<Mount>> {
        todo!()
    }
    /// Creates the read-only snapshot `key` of the committed chain `parent`; returns its mounts.
    pub fn view(&self, _key: &str, _parent: &str) -> Result<Vec<Mount>> {
        todo!()
    }
    /// The mounts of an existing active or view snapshot.
    pub fn mounts(&self, _key: &str) -> Result<Vec<Mount>> {
        todo!()
    }
    /// Removes an active or view snapshot; absent is not an error.
    pub fn remove(&self, _key: &str) -> Result<()> {
        todo!()
    }
    /// Space used by one active snapshot's writable layer.
    pub fn usage(&self, _key: &str) -> Result<Usage> {
        todo!()
    }
    /// Space used by all snapshots.
    pub fn total_usage(&self) -> Result<Usage> {
        todo!()
    }
    /// Removes committed snapshots that are neither in `keep` (chain ids images use), nor parents of anything kept,
    /// nor under an active/view snapshot.
    pub fn gc(&self, _keep: &HashSet<String>) -> Result<GcStats> {
        todo!()
    }
}
