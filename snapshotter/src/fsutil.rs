//! Small filesystem helpers: atomic writes, random names, disk usage walks.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::Usage;

/// A random 16-hex-character name for temporary files and directories.
pub fn random_name() -> Result<String> {
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf)
        .map_err(|e| Error::io("reading random bytes", std::io::Error::other(e.to_string())))?;
    Ok(hex::encode(buf))
}

/// Writes `data` to `path` atomically: temp file in the same directory, fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::InvalidInput(format!("{} has no parent", path.display())))?;
    let tmp = dir.join(format!(".tmp-{}", random_name()?));
    let result = (|| {
        let mut f = fs::File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        f.write_all(data)
            .ctx(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path).ctx(|| format!("renaming {} into place", path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so that renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

/// Disk usage of the tree at `root` like `du`: allocated blocks, every inode once (hardlinks counted once).
/// Symlinks are not followed; the tree may change while walked (vanished entries are skipped).
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        usage.inodes += 1;
        usage.bytes += meta.blocks() * 512;
        if meta.is_dir() {
            let entries = match fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("listing {}", path.display()), e)),
            };
            for entry in entries {
                let entry = entry.ctx(|| format!("listing {}", path.display()))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// Removes a directory tree; absent is not an error. Never follows symlinks (std's implementation is
/// `openat`-based).
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_hardlinks_once() -> Result<()> {
        let dir = tempfile::tempdir().ctx(|| "tempdir".into())?;
        let a = dir.path().join("a");
        fs::write(&a, vec![1u8; 8192]).ctx(|| "write".into())?;
        let before = disk_usage(dir.path())?;
        fs::hard_link(&a, dir.path().join("b")).ctx(|| "link".into())?;
        let after = disk_usage(dir.path())?;
        assert_eq!(before, after);
        assert_eq!(after.inodes, 2);
        assert!(after.bytes >= 8192);
        Ok(())
    }

    #[test]
    fn atomic_write_replaces() -> Result<()> {
        let dir = tempfile::tempdir().ctx(|| "tempdir".into())?;
        let p = dir.path().join("meta.json");
        write_atomic(&p, b"one")?;
        write_atomic(&p, b"two")?;
        assert_eq!(fs::read(&p).ctx(|| "read".into())?, b"two");
        assert_eq!(fs::read_dir(dir.path()).ctx(|| "ls".into())?.count(), 1);
        Ok(())
    }
}
