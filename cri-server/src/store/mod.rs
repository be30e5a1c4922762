//! Metadata persistence: one JSON file per record, written to a temp file, fsynced and renamed into place.
//!
//! Why files and not an embedded database: records are small and written rarely (once per state change),
//! each object has its own file so writers never contend, a crash at any point leaves either the old or the
//! new record (rename is atomic, the directory is fsynced), and an operator can read them with `cat`.

use std::fs;
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// A directory of records of one kind, keyed by id.
#[derive(Debug, Clone)]
pub struct RecordStore<T> {
    dir: PathBuf,
    _kind: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> RecordStore<T> {
    /// Opens (creating) the directory and removes temp files a crash left behind.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating store {}", dir.display()), e))?;
        for entry in fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("reading store {}", dir.display()), e))?
        {
            let path = entry
                .map_err(|e| Error::io("reading store entry", e))?
                .path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(Self {
            dir,
            _kind: PhantomData,
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the record atomically: after a crash either the old or the new version is on disk.
    pub fn put(&self, id: &str, record: &T) -> Result<()> {
        validate_id(id)?;
        let data = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::Internal(format!("encoding record {id}: {e}")))?;
        let tmp = self.dir.join(format!("{id}.json.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&data)?;
            file.sync_all()?;
            fs::rename(&tmp, self.path(id))?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| Error::io(format!("writing record {}", self.path(id).display()), e))
    }

    /// Reads one record, `None` when absent.
    pub fn get(&self, id: &str) -> Result<Option<T>> {
        validate_id(id)?;
        read_record(&self.path(id))
    }

    /// Deletes a record; deleting an absent record is not an error.
    pub fn delete(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        match fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("removing record {}", self.path(id).display()),
                e,
            )),
        }
    }

    /// Loads every record. A record that cannot be parsed is skipped with an error log, not fatal:
    /// one corrupt file must not keep berthd from starting.
    pub fn load_all(&self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("reading store {}", self.dir.display()), e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| Error::io("reading store entry", e))?
                .path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match read_record(&path) {
                Ok(Some(record)) => out.push(record),
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(path = %path.display(), %err, "skipping unreadable record")
                }
            }
        }
        Ok(out)
    }
}

fn read_record<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| Error::Internal(format!("record {} is corrupt: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading record {}", path.display()), e)),
    }
}

/// Ids become file names: only `[A-Za-z0-9_.-]`, no leading dot.
fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("invalid record id {id:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        name: String,
        n: u32,
    }

    #[test]
    fn put_get_delete_load_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::<Rec>::open(dir.path()).unwrap();
        store
            .put(
                "a",
                &Rec {
                    name: "x".into(),
                    n: 1,
                },
            )
            .unwrap();
        store
            .put(
                "b",
                &Rec {
                    name: "y".into(),
                    n: 2,
                },
            )
            .unwrap();
        store
            .put(
                "a",
                &Rec {
                    name: "x".into(),
                    n: 3,
                },
            )
            .unwrap();
        assert_eq!(
            store.get("a").unwrap(),
            Some(Rec {
                name: "x".into(),
                n: 3
            })
        );
        let mut all = store.load_all().unwrap();
        all.sort_by_key(|r| r.n);
        assert_eq!(all.len(), 2);
        store.delete("a").unwrap();
        store.delete("a").unwrap();
        assert_eq!(store.get("a").unwrap(), None);
    }

    #[test]
    fn leftover_temp_and_corrupt_files_do_not_break_loading() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.json.tmp"), b"{half").unwrap();
        std::fs::write(dir.path().join("d.json"), b"not json").unwrap();
        let store = RecordStore::<Rec>::open(dir.path()).unwrap();
        assert!(!dir.path().join("c.json.tmp").exists());
        assert!(store.load_all().unwrap().is_empty());
    }

    #[test]
    fn path_like_ids_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::<Rec>::open(dir.path()).unwrap();
        for id in ["../x", "a/b", "", ".hidden"] {
            assert!(matches!(
                store.put(
                    id,
                    &Rec {
                        name: String::new(),
                        n: 0
                    }
                ),
                Err(Error::InvalidArgument(_))
            ));
        }
    }
}
