//! Size and inodes of the filesystem holding the writable layers (`statvfs`), which cAdvisor reports as
//! a container's filesystem limit and inode counts.

use std::path::Path;

use nix::sys::statvfs::statvfs;

/// Capacity of one filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsCapacity {
    /// Size in bytes.
    pub bytes: u64,
    /// Inodes in total.
    pub inodes: u64,
    /// Free inodes.
    pub inodes_free: u64,
}

/// The capacity of the filesystem `path` is on; `None` when it cannot be read. Blocking.
// The statvfs fields are u64 on 64-bit targets only.
#[allow(clippy::useless_conversion)]
pub fn capacity(path: &Path) -> Option<FsCapacity> {
    match statvfs(path) {
        Ok(s) => Some(FsCapacity {
            bytes: u64::from(s.blocks()).saturating_mul(u64::from(s.fragment_size())),
            inodes: u64::from(s.files()),
            inodes_free: u64::from(s.files_free()),
        }),
        Err(err) => {
            tracing::debug!(path = %path.display(), %err, "statvfs failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_filesystem_has_a_size() {
        let c = capacity(Path::new("/")).unwrap();
        assert!(c.bytes > 0, "{c:?}");
        assert!(c.inodes_free <= c.inodes, "{c:?}");
        assert_eq!(capacity(Path::new("/nonexistent/berth")), None);
    }
}
