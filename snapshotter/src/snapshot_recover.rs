//! Crash recovery for the snapshotter root, run once by [`Snapshotter::open`].

use std::fs;

use super::{chain_name, key_name, read_link_id, Kind, Snapshotter, TMP_PREFIX};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;

impl Snapshotter {
    /// Removes temp dirs, orphaned snapshot dirs (no link points to them) and dangling links.
    pub(super) fn recover(&self) -> Result<()> {
        let dir = self.snapshots_dir();
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                tracing::info!(dir = %name, "removing snapshot left by an interrupted unpack");
                fsutil::remove_tree(&entry.path())?;
                continue;
            }
            let Ok(n) = name.parse::<u64>() else { continue };
            let linked = match self.read_meta(n) {
                Ok(meta) => {
                    let link = match (meta.kind, &meta.chain_id, &meta.key) {
                        (Kind::Committed, Some(c), _) => {
                            chain_name(c).map(|h| self.chains_dir().join(h))
                        }
                        (Kind::Active | Kind::View, _, Some(k)) => {
                            key_name(k).map(|h| self.keys_dir().join(h))
                        }
                        _ => Err(Error::InvalidInput("incomplete metadata".into())),
                    };
                    match link {
                        Ok(l) => read_link_id(&l)? == Some(n),
                        Err(_) => false,
                    }
                }
                Err(e) if e.is_not_found() => false,
                Err(e) => {
                    tracing::warn!(snapshot = n, error = %e, "unreadable snapshot metadata");
                    false
                }
            };
            if !linked {
                tracing::info!(snapshot = n, "removing orphaned snapshot");
                fsutil::remove_tree(&entry.path())?;
            }
        }
        for links in [self.chains_dir(), self.keys_dir()] {
            for entry in fs::read_dir(&links).ctx(|| format!("listing {}", links.display()))? {
                let entry = entry.ctx(|| format!("listing {}", links.display()))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let ok = match read_link_id(&path) {
                    Ok(Some(n)) => match self.read_meta(n) {
                        Ok(m) if links == self.chains_dir() => {
                            m.kind == Kind::Committed
                                && m.chain_id.as_deref().and_then(|c| chain_name(c).ok())
                                    == Some(name)
                        }
                        Ok(m) => {
                            m.kind != Kind::Committed
                                && m.key.as_deref().and_then(|k| key_name(k).ok()) == Some(name)
                        }
                        Err(_) => false,
                    },
                    _ => false,
                };
                if !ok {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }
}
