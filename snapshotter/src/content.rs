//! Content-addressed blob store: `<root>/blobs/sha256/<hex>`, ingests in `<root>/ingest/`.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::digest;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::Usage;

/// Content-addressed blob store: `<root>/blobs/sha256/<hex>`.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

/// A blob being written; [`BlobWriter::commit`] verifies digest and size before it becomes visible.
/// Dropping a writer without committing removes the partial ingest.
pub struct BlobWriter {
    file: Option<fs::File>,
    ingest: PathBuf,
    target: PathBuf,
    expected: String,
    size: Option<u64>,
    hasher: Sha256,
    written: u64,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("expected", &self.expected)
            .field("size", &self.size)
            .field("written", &self.written)
            .finish()
    }
}

impl std::io::Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(size) = self.size {
            if self.written + buf.len() as u64 > size {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "blob {}: more than the expected {size} bytes",
                        self.expected
                    ),
                ));
            }
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("blob writer already finished"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl BlobWriter {
    /// Verifies digest (and size, when known) and moves the blob into place.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().ok_or_else(|| {
            Error::InvalidInput(format!("blob {}: already committed", self.expected))
        })?;
        file.sync_all()
            .ctx(|| format!("syncing ingest of {}", self.expected))?;
        drop(file);
        let actual = digest::finish(std::mem::take(&mut self.hasher));
        if let Some(size) = self.size {
            if size != self.written {
                return Err(Error::InvalidInput(format!(
                    "blob {}: size mismatch: expected {size} bytes, got {}",
                    self.expected, self.written
                )));
            }
        }
        if actual != self.expected {
            return Err(Error::InvalidInput(format!(
                "blob digest mismatch: expected {}, actual {actual}",
                self.expected
            )));
        }
        fs::rename(&self.ingest, &self.target)
            .ctx(|| format!("moving blob {} into place", self.expected))?;
        if let Some(dir) = self.target.parent() {
            fsutil::sync_dir(dir)?;
        }
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Not committed (or commit failed before the rename): the ingest is garbage. After a successful
        // rename the ingest path no longer exists and this is a no-op.
        let _ = fs::remove_file(&self.ingest);
    }
}

impl ContentStore {
    /// Opens (creating) the store under `root`; removes partial ingests left by a crash.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let store = Self { root: root.into() };
        let ingest = store.ingest_dir();
        fsutil::remove_tree(&ingest)?;
        for dir in [store.blob_dir(), ingest] {
            fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        Ok(store)
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Path of a committed blob (`InvalidInput` for a malformed digest).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blob_dir().join(digest::hex_of(digest)?))
    }

    /// True when the blob is committed.
    pub fn contains(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Starts writing a blob with the expected digest (and size, when known).
    pub fn writer(&self, digest: &str, size: Option<u64>) -> Result<BlobWriter> {
        let target = self.blob_path(digest)?;
        let ingest = self.ingest_dir().join(fsutil::random_name()?);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&ingest)
            .ctx(|| format!("creating ingest for blob {digest}"))?;
        Ok(BlobWriter {
            file: Some(file),
            ingest,
            target,
            expected: digest.to_string(),
            size,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Reads a whole (small) blob: manifests, configs.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        match fs::read(&path) {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NotFound(format!("blob {digest}")))
            }
            Err(e) => Err(Error::io(format!("reading blob {digest}"), e)),
        }
    }

    /// Deletes a blob; absent is not an error.
    pub fn delete(&self, digest: &str) -> Result<()> {
        let path = self.blob_path(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("deleting blob {digest}"), e)),
        }
    }

    /// Digests of every committed blob.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (name, _) in self.entries()? {
            out.push(format!("sha256:{name}"));
        }
        out.sort();
        Ok(out)
    }

    /// Space used by committed blobs: total blob size in bytes, one inode per blob.
    pub fn usage(&self) -> Result<Usage> {
        let mut usage = Usage::default();
        for (_, len) in self.entries()? {
            usage.bytes += len;
            usage.inodes += 1;
        }
        Ok(usage)
    }

    /// (hex name, size) of every committed blob file.
    fn entries(&self) -> Result<Vec<(String, u64)>> {
        let dir = self.blob_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !digest::is_hex_name(&name) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("stat blob {name}"), e)),
            };
            if meta.is_file() {
                out.push((name, meta.len()));
            }
        }
        Ok(out)
    }

    /// The store root (for diagnostics).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn store() -> Result<(tempfile::TempDir, ContentStore)> {
        let dir = tempfile::tempdir().ctx(|| "tempdir".into())?;
        let store = ContentStore::open(dir.path().join("content"))?;
        Ok((dir, store))
    }

    fn ingest_count(s: &ContentStore) -> usize {
        fs::read_dir(s.ingest_dir())
            .map(|d| d.count())
            .unwrap_or(usize::MAX)
    }

    #[test]
    fn write_read_list_delete() -> Result<()> {
        let (_d, s) = store()?;
        let data = b"hello world";
        let dg = digest::of_bytes(data);
        let mut w = s.writer(&dg, Some(data.len() as u64))?;
        w.write_all(data).ctx(|| "write".into())?;
        w.commit()?;
        assert!(s.contains(&dg));
        assert_eq!(s.read(&dg)?, data);
        assert_eq!(s.list()?, vec![dg.clone()]);
        assert_eq!(
            s.usage()?,
            Usage {
                bytes: data.len() as u64,
                inodes: 1
            }
        );
        assert_eq!(ingest_count(&s), 0);
        s.delete(&dg)?;
        s.delete(&dg)?;
        assert!(!s.contains(&dg));
        assert!(s.read(&dg).err().is_some_and(|e| e.is_not_found()));
        Ok(())
    }

    #[test]
    fn digest_mismatch_names_both_and_commits_nothing() -> Result<()> {
        let (_d, s) = store()?;
        let expected = digest::of_bytes(b"good");
        let mut w = s.writer(&expected, None)?;
        w.write_all(b"evil").ctx(|| "write".into())?;
        let err = w
            .commit()
            .err()
            .ok_or_else(|| Error::InvalidInput("accepted".into()))?;
        let msg = err.to_string();
        assert!(err.is_invalid_input());
        assert!(
            msg.contains(&expected) && msg.contains(&digest::of_bytes(b"evil")),
            "{msg}"
        );
        assert!(!s.contains(&expected));
        assert_eq!(ingest_count(&s), 0);
        Ok(())
    }

    #[test]
    fn size_mismatch_is_refused() -> Result<()> {
        let (_d, s) = store()?;
        let dg = digest::of_bytes(b"abc");
        let mut w = s.writer(&dg, Some(2))?;
        assert!(w.write_all(b"abc").is_err());
        drop(w);
        let mut w = s.writer(&dg, Some(4))?;
        w.write_all(b"abc").ctx(|| "write".into())?;
        assert!(w.commit().err().is_some_and(|e| e.is_invalid_input()));
        assert!(!s.contains(&dg));
        assert_eq!(ingest_count(&s), 0);
        Ok(())
    }

    #[test]
    fn bad_digests_are_invalid_input() -> Result<()> {
        let (_d, s) = store()?;
        for bad in ["sha256:../../etc/passwd", "md5:abc", "", "sha256:ABC"] {
            assert!(s
                .writer(bad, None)
                .err()
                .is_some_and(|e| e.is_invalid_input()));
            assert!(s.read(bad).err().is_some_and(|e| e.is_invalid_input()));
            assert!(s.delete(bad).err().is_some_and(|e| e.is_invalid_input()));
            assert!(!s.contains(bad));
        }
        Ok(())
    }

    #[test]
    fn open_removes_leftover_ingests() -> Result<()> {
        let (d, s) = store()?;
        let w = s.writer(&digest::of_bytes(b"x"), None)?;
        std::mem::forget(w); // simulate a crash mid-write
        assert_eq!(ingest_count(&s), 1);
        let s = ContentStore::open(d.path().join("content"))?;
        assert_eq!(ingest_count(&s), 0);
        Ok(())
    }
}
