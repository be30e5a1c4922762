//! Where a container's CRI log goes: the pod's log directory joined with the container's log path.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `log_directory/log_path` when both are set, `None` otherwise. The relative path may not climb out of the
/// directory; an absolute `log_path` replaces the directory (as `Path::join` does, and as containerd allows).
pub fn resolve(log_directory: &Path, log_path: &str) -> Result<Option<PathBuf>> {
    if log_path.is_empty() || log_directory.as_os_str().is_empty() {
        return Ok(None);
    }
    let rel = Path::new(log_path);
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::InvalidArgument(format!(
            "log path {log_path:?} must not contain \"..\""
        )));
    }
    Ok(Some(log_directory.join(rel)))
}

/// Creates the parent directories of a log file.
pub fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating log directory {}", parent.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_only_when_both_set() {
        let dir = Path::new("/var/log/pods/ns_pod_uid");
        assert_eq!(resolve(dir, "c/0.log").unwrap(), Some(dir.join("c/0.log")));
        assert_eq!(resolve(dir, "").unwrap(), None);
        assert_eq!(resolve(Path::new(""), "c/0.log").unwrap(), None);
        assert!(resolve(dir, "../../etc/passwd").is_err());
    }

    #[test]
    fn parent_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a/b/0.log");
        create_parent(&p).unwrap();
        assert!(tmp.path().join("a/b").is_dir());
    }
}
