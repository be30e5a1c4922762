//! Overlay snapshots: committed layers keyed by chain id, active/view snapshots keyed by caller keys.
//!
//! On disk (`<root>` is the snapshotter root):
//! - `snapshots/<n>/fs` the layer (committed) or upper dir (active), `snapshots/<n>/work` the overlay
//!   workdir (active), `snapshots/<n>/meta.json` what the snapshot is.
//! - `snapshots/tmp-<random>/` a snapshot being built; renamed to `snapshots/<n>` (no-replace) when complete.
//! - `chains/<hex of chain id>` and `keys/<sha256 hex of key>`: symlinks whose target is `<n>`. Creating the
//!   symlink is the atomic, exclusive "commit" step; a published dir without its link is an orphan that
//!   [`Snapshotter::open`] removes.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};
use serde::{Deserialize, Serialize};

use crate::digest;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::unpack;
use crate::{Compression, GcStats, Mount, Usage};

const META: &str = "meta.json";
const TMP_PREFIX: &str = "tmp-";
/// Upper bound on chain length, so corrupt metadata cannot loop forever.
const MAX_DEPTH: usize = 4096;

/// What a snapshot directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// An unpacked, immutable layer (overlay lowerdir).
    Committed,
    /// A writable snapshot (overlay upperdir + workdir).
    Active,
    /// A read-only snapshot.
    View,
}

/// `snapshots/<n>/meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    kind: Kind,
    /// Chain id of a committed layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain_id: Option<String>,
    /// Parent chain id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    /// Key of an active or view snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// Disk usage of a committed layer, measured once at commit.
    #[serde(default)]
    usage: Usage,
}

/// Overlay snapshots: committed layers keyed by chain id, active (writable) and view (read-only) snapshots keyed
/// by a caller-chosen key (berth uses the container id).
///
/// Concurrent unpacks of the same chain are safe (one wins, the other's copy is discarded). The caller must not
/// run [`Snapshotter::gc`] concurrently with `unpack_layer`/`prepare`/`view` on chains GC may remove, and must
/// unmount a snapshot before removing it.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    root: PathBuf,
}

fn chain_name(chain_id: &str) -> Result<String> {
    digest::hex_of(chain_id).map(str::to_string)
}

fn key_name(key: &str) -> Result<String> {
    if key.is_empty() {
        return Err(Error::InvalidInput("snapshot key is empty".into()));
    }
    let d = digest::of_bytes(key.as_bytes());
    Ok(d.trim_start_matches("sha256:").to_string())
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .ctx(|| format!("creating {}", path.display()))?;
    // The umask may have masked bits off.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))
}

impl Snapshotter {
    /// Opens (creating) the snapshotter under `root`; removes what a crashed unpack left. Call once at
    /// startup, before any other use of the same root.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let s = Self { root: root.into() };
        for dir in [s.snapshots_dir(), s.chains_dir(), s.keys_dir()] {
            fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        s.recover()?;
        Ok(s)
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    fn chains_dir(&self) -> PathBuf {
        self.root.join("chains")
    }
    fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }
    fn snap_dir(&self, n: u64) -> PathBuf {
        self.snapshots_dir().join(n.to_string())
    }

    /// The OCI chain id of a layer whose parent chain is `parent` and uncompressed digest is `diff_id`.
    pub fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
        digest::chain_id(parent, diff_id)
    }

    /// True when the layer chain is unpacked and committed.
    pub fn has_committed(&self, chain_id: &str) -> bool {
        matches!(self.committed(chain_id), Ok(Some(_)))
    }

    /// Unpacks a layer blob on top of `parent` (a committed chain id) atomically and safely, verifying the
    /// uncompressed digest against `diff_id`; returns the new chain id. Already committed: returns at once.
    pub fn unpack_layer(
        &self,
        parent: Option<&str>,
        blob: &Path,
        compression: Compression,
        diff_id: &str,
    ) -> Result<String> {
        digest::hex_of(diff_id)?;
        let chain = Self::chain_id(parent, diff_id);
        if self.has_committed(&chain) {
            return Ok(chain);
        }
        if let Some(p) = parent {
            self.lower_ids(p)?;
        }
        let tmp = self.temp_dir()?;
        let result = (|| {
            let fs_dir = tmp.join("fs");
            mkdir(&fs_dir, 0o755)?;
            unpack::unpack_blob(blob, compression, diff_id, &fs_dir)?;
            syncfs(&fs_dir)?;
            let usage = fsutil::disk_usage(&fs_dir)?;
            let meta = Meta {
                kind: Kind::Committed,
                chain_id: Some(chain.clone()),
                parent: parent.map(str::to_string),
                key: None,
                usage,
            };
            self.write_meta(&tmp, &meta)?;
            self.publish(&tmp)
        })();
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = fsutil::remove_tree(&tmp);
                return Err(e);
            }
        };
        let link = self.chains_dir().join(chain_name(&chain)?);
        let mut linked = self.link_exclusive(&link, n)?;
        if !linked {
            match self.committed(&chain)? {
                // A stale link whose id was reused for exactly this new snapshot.
                Some(m) if m == n => linked = true,
                Some(_) => {}
                None => {
                    // A dangling link (its snapshot dir is gone): replace it.
                    let _ = fs::remove_file(&link);
                    linked = self.link_exclusive(&link, n)?;
                }
            }
        }
        if !linked {
            // A concurrent unpack of the same chain committed first; ours is a duplicate.
            fsutil::remove_tree(&self.snap_dir(n))?;
        }
        Ok(chain)
    }

    /// Creates the writable snapshot `key` on top of the committed chain `parent`; returns its mounts.
    pub fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::Active)
    }

    /// Creates the read-only snapshot `key` of the committed chain `parent`; returns its mounts.
    pub fn view(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        self.create(key, Some(parent), Kind::View)
    }

    fn create(&self, key: &str, parent: Option<&str>, kind: Kind) -> Result<Vec<Mount>> {
        let link = self.keys_dir().join(key_name(key)?);
        match self.keyed(key) {
            Ok(_) => return Err(Error::AlreadyExists(format!("snapshot {key}"))),
            Err(e) if e.is_not_found() => {
                // No snapshot; a stale link to a vanished or reused id must not block the key.
                if fs::symlink_metadata(&link).is_ok() {
                    fs::remove_file(&link)
                        .ctx(|| format!("removing stale link of snapshot {key}"))?;
                }
            }
            Err(e) => return Err(e),
        }
        if let Some(p) = parent {
            self.lower_ids(p)?;
        }
        let meta = Meta {
            kind,
            chain_id: None,
            parent: parent.map(str::to_string),
            key: Some(key.to_string()),
            usage: Usage::default(),
        };
        let tmp = self.temp_dir()?;
        let result = (|| {
            mkdir(&tmp.join("fs"), 0o755)?;
            if kind == Kind::Active {
                mkdir(&tmp.join("work"), 0o700)?;
            }
            self.write_meta(&tmp, &meta)?;
            self.publish(&tmp)
        })();
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = fsutil::remove_tree(&tmp);
                return Err(e);
            }
        };
        if !self.link_exclusive(&link, n)? {
            fsutil::remove_tree(&self.snap_dir(n))?;
            return Err(Error::AlreadyExists(format!("snapshot {key}")));
        }
        self.build_mounts(n, &meta)
    }

    /// The mounts of an existing active or view snapshot.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (n, meta) = self.keyed(key)?;
        self.build_mounts(n, &meta)
    }

    /// Removes an active or view snapshot; absent is not an error. Unmount it first.
    pub fn remove(&self, key: &str) -> Result<()> {
        let link = self.keys_dir().join(key_name(key)?);
        // Only a link whose snapshot carries this key owns a directory; a stale link owns nothing.
        let owned = match self.keyed(key) {
            Ok((n, _)) => Some(n),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("removing snapshot {key}"), e)),
        }
        fsutil::sync_dir(&self.keys_dir())?;
        match owned {
            Some(n) => fsutil::remove_tree(&self.snap_dir(n)),
            None => Ok(()),
        }
    }

    /// Space used by one active snapshot's writable layer.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let (n, _) = self.keyed(key)?;
        fsutil::disk_usage(&self.snap_dir(n).join("fs"))
    }

    /// Space used by all snapshots (committed layers as measured at commit, writable layers walked now).
    pub fn total_usage(&self) -> Result<Usage> {
        let mut total = Usage::default();
        for (n, meta) in self.list()? {
            let u = match meta.kind {
                Kind::Committed => meta.usage,
                Kind::Active | Kind::View => fsutil::disk_usage(&self.snap_dir(n).join("fs"))?,
            };
            total.bytes += u.bytes;
            total.inodes += u.inodes;
        }
        Ok(total)
    }

    /// Removes committed snapshots that are neither in `keep` (chain ids images use), nor parents of anything kept,
    /// nor under an active/view snapshot.
    pub fn gc(&self, keep: &HashSet<String>) -> Result<GcStats> {
        let all = self.list()?;
        let mut parent_of: HashMap<String, Option<String>> = HashMap::new();
        let mut roots: Vec<String> = keep.iter().cloned().collect();
        for (_, meta) in &all {
            match (meta.kind, &meta.chain_id) {
                (Kind::Committed, Some(c)) => {
                    parent_of.insert(c.clone(), meta.parent.clone());
                }
                _ => roots.extend(meta.parent.clone()),
            }
        }
        let mut protected = HashSet::new();
        for root in roots {
            let mut cur = Some(root);
            let mut depth = 0;
            while let Some(c) = cur {
                depth += 1;
                if depth > MAX_DEPTH || !protected.insert(c.clone()) {
                    break;
                }
                cur = parent_of.get(&c).cloned().flatten();
            }
        }
        let mut stats = GcStats::default();
        for (n, meta) in all {
            let (Kind::Committed, Some(chain)) = (meta.kind, meta.chain_id.as_ref()) else {
                continue;
            };
            if protected.contains(chain) {
                continue;
            }
            let link = self.chains_dir().join(chain_name(chain)?);
            if read_link_id(&link)? != Some(n) {
                continue; // not (yet) linked: an in-flight unpack or an orphan for `open`
            }
            fs::remove_file(&link).ctx(|| format!("removing chain {chain}"))?;
            fsutil::remove_tree(&self.snap_dir(n))?;
            tracing::debug!(chain = %chain, "gc removed committed snapshot");
            stats.snapshots_removed += 1;
            stats.bytes_freed += meta.usage.bytes;
        }
        if stats.snapshots_removed > 0 {
            fsutil::sync_dir(&self.chains_dir())?;
        }
        Ok(stats)
    }

    // ---- internals ----

    /// Snapshot id of a committed chain, if committed.
    fn committed(&self, chain_id: &str) -> Result<Option<u64>> {
        Ok(self.committed_meta(chain_id)?.map(|(n, _)| n))
    }

    /// [`Self::committed`] with the snapshot's metadata, read once.
    fn committed_meta(&self, chain_id: &str) -> Result<Option<(u64, Meta)>> {
        let link = self.chains_dir().join(chain_name(chain_id)?);
        let Some(n) = read_link_id(&link)? else {
            return Ok(None);
        };
        // The id in a stale link may have been reused by another snapshot: check what it points to.
        match self.read_meta(n) {
            Ok(m) if m.kind == Kind::Committed && m.chain_id.as_deref() == Some(chain_id) => {
                Ok(Some((n, m)))
            }
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Snapshot ids of the layers of `chain_id`, top layer first.
    fn lower_ids(&self, chain_id: &str) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut cur = Some(chain_id.to_string());
        while let Some(c) = cur {
            if out.len() >= MAX_DEPTH {
                return Err(Error::InvalidInput(format!("chain {chain_id}: too deep")));
            }
            let (n, meta) = self
                .committed_meta(&c)?
                .ok_or_else(|| Error::NotFound(format!("committed snapshot {c}")))?;
            out.push(n);
            cur = meta.parent;
        }
        Ok(out)
    }

    fn keyed(&self, key: &str) -> Result<(u64, Meta)> {
        let link = self.keys_dir().join(key_name(key)?);
        let n = read_link_id(&link)?.ok_or_else(|| Error::NotFound(format!("snapshot {key}")))?;
        match self.read_meta(n) {
            Ok(m) if m.kind != Kind::Committed && m.key.as_deref() == Some(key) => Ok((n, m)),
            Ok(_) => Err(Error::NotFound(format!("snapshot {key}"))),
            Err(e) if e.is_not_found() => Err(Error::NotFound(format!("snapshot {key}"))),
            Err(e) => Err(e),
        }
    }

    fn build_mounts(&self, n: u64, meta: &Meta) -> Result<Vec<Mount>> {
        let lowers = match &meta.parent {
            Some(p) => self.lower_ids(p)?,
            None => Vec::new(),
        };
        let fs_of = |id: u64| self.snap_dir(id).join("fs").to_string_lossy().into_owned();
        let lowerdir = || {
            let dirs: Vec<String> = lowers.iter().map(|id| fs_of(*id)).collect();
            format!("lowerdir={}", dirs.join(":"))
        };
        let bind = |source: String, opts: [&str; 2]| Mount {
            kind: "bind".into(),
            source,
            options: opts.iter().map(|s| s.to_string()).collect(),
        };
        let dir = self.snap_dir(n);
        Ok(match (meta.kind, lowers.len()) {
            (Kind::Active, 0) => vec![bind(fs_of(n), ["rw", "rbind"])],
            (Kind::Active, _) => vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "index=off".into(),
                    lowerdir(),
                    format!("upperdir={}", dir.join("fs").display()),
                    format!("workdir={}", dir.join("work").display()),
                ],
            }],
            (Kind::View, 1) => vec![bind(fs_of(lowers[0]), ["ro", "rbind"])],
            (Kind::View, 0) => return Err(Error::InvalidInput("view without parent".into())),
            (Kind::View, _) => vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec!["index=off".into(), lowerdir()],
            }],
            (Kind::Committed, _) => {
                return Err(Error::InvalidInput(format!("snapshot {n} is committed")))
            }
        })
    }

    fn read_meta(&self, n: u64) -> Result<Meta> {
        let path = self.snap_dir(n).join(META);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("snapshot {n}")))
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        serde_json::from_slice(&data)
            .map_err(|e| Error::io(format!("parsing {}", path.display()), io::Error::other(e)))
    }

    fn write_meta(&self, dir: &Path, meta: &Meta) -> Result<()> {
        let data = serde_json::to_vec(meta)
            .map_err(|e| Error::io("encoding snapshot metadata", io::Error::other(e)))?;
        fsutil::write_atomic(&dir.join(META), &data)
    }

    fn temp_dir(&self) -> Result<PathBuf> {
        let tmp = self
            .snapshots_dir()
            .join(format!("{TMP_PREFIX}{}", fsutil::random_name()?));
        mkdir(&tmp, 0o700)?;
        Ok(tmp)
    }

    /// Every published snapshot with readable metadata.
    fn list(&self) -> Result<Vec<(u64, Meta)>> {
        let mut out = Vec::new();
        for n in self.ids()? {
            match self.read_meta(n) {
                Ok(m) => out.push((n, m)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Numeric snapshot directory names.
    fn ids(&self) -> Result<Vec<u64>> {
        let dir = self.snapshots_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Renames a complete temp dir to the next free `snapshots/<n>` (never replacing) and returns `n`.
    fn publish(&self, tmp: &Path) -> Result<u64> {
        let mut n = self.ids()?.last().map_or(1, |m| m + 1);
        loop {
            match renameat2(
                None,
                tmp,
                None,
                &self.snap_dir(n),
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => break,
                Err(Errno::EEXIST) | Err(Errno::ENOTEMPTY) => n += 1,
                Err(e) => return Err(Error::io(format!("publishing {}", tmp.display()), e)),
            }
        }
        fsutil::sync_dir(&self.snapshots_dir())?;
        Ok(n)
    }

    /// Creates the symlink `link -> n`; false when it already exists.
    fn link_exclusive(&self, link: &Path, n: u64) -> Result<bool> {
        match std::os::unix::fs::symlink(n.to_string(), link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::io(format!("creating {}", link.display()), e)),
        }
        if let Some(dir) = link.parent() {
            fsutil::sync_dir(dir)?;
        }
        Ok(true)
    }
}

/// The snapshot id a link points to; `None` when the link does not exist.
fn read_link_id(link: &Path) -> Result<Option<u64>> {
    match fs::read_link(link) {
        Ok(target) => Ok(target.to_str().and_then(|s| s.parse().ok())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", link.display()), e)),
    }
}

/// Flushes the filesystem holding `dir`, so a committed layer's content is durable before it is published.
fn syncfs(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir).ctx(|| format!("opening {}", dir.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is an open file descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc < 0 {
        return Err(Error::io(
            format!("syncfs {}", dir.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[path = "snapshot_recover.rs"]
mod recover;

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
