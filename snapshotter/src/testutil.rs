//! Test helpers: in-memory layer tarballs (including hostile entries the `tar` crate refuses to build),
//! compressed blobs, and a mount guard.

use std::io::Write;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::digest;
use crate::Compression;

/// Builds a layer tarball entry by entry, writing names raw so that hostile paths survive.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Layer {
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// Appends an entry; `path` and `link` go into the header verbatim (≤ 100 bytes) or, longer, via the GNU
    /// long-name extension.
    #[allow(clippy::too_many_arguments)]
    pub fn entry(
        mut self,
        kind: EntryType,
        path: &str,
        link: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        if matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo) {
            let (major, minor) = (
                data.first().copied().unwrap_or(0),
                data.get(1).copied().unwrap_or(0),
            );
            h.set_device_major(u32::from(major)).expect("major");
            h.set_device_minor(u32::from(minor)).expect("minor");
            h.set_size(0);
        }
        assert!(link.len() <= 100, "long link names unsupported in tests");
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        if path.len() <= 100 {
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            let data = if h.entry_size().unwrap_or(0) == 0 {
                &[][..]
            } else {
                data
            };
            self.b.append(&h, data).expect("append to in-memory tar");
        } else {
            self.b
                .append_data(&mut h, path, data)
                .expect("append to in-memory tar");
        }
        self
    }

    /// A device node; `major`/`minor` are carried in `data` by [`Layer::entry`].
    pub fn dev(self, kind: EntryType, path: &str, major: u8, minor: u8) -> Self {
        self.entry(kind, path, "", &[major, minor], 0o666, 0, 0)
    }
    pub fn dir(self, path: &str) -> Self {
        self.entry(EntryType::Directory, path, "", b"", 0o755, 0, 0)
    }
    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.entry(EntryType::Regular, path, "", data, 0o644, 0, 0)
    }
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(EntryType::Symlink, path, target, b"", 0o777, 0, 0)
    }
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(EntryType::Link, path, target, b"", 0o644, 0, 0)
    }
    /// A PAX header carrying `SCHILY.xattr.<key>=<value>` for the next entry.
    pub fn pax_xattr(mut self, key: &str, value: &[u8]) -> Self {
        let k = format!("SCHILY.xattr.{key}");
        self.b
            .append_pax_extensions([(k.as_str(), value)])
            .expect("append pax");
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish in-memory tar")
    }
}

/// Writes `tar` compressed with `c` to `dir/name`; returns (path, diff id).
pub fn blob(dir: &Path, name: &str, tar: &[u8], c: Compression) -> (PathBuf, String) {
    let path = dir.join(name);
    let data = match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 1).expect("zstd"),
    };
    std::fs::write(&path, data).expect("write blob");
    (path, digest::of_bytes(tar))
}

/// Unmounts (all stacked mounts on) the path when dropped, so failing tests leave no mounts behind.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = crate::unmount(&self.0);
    }
}
