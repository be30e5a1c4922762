//! Image records: the in-memory index over `<root>/store/images/<id hex>.json`, tag moves, and
//! resolving what users call an image (id, id prefix, tag, digest reference) to one record.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::image::locks::lock_ignoring_poison;
use crate::image::record::ImageRecord;
use crate::image::reference::{is_hex_id, ImageRef};
use crate::store::RecordStore;

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Nothing matched; removing is idempotent.
    Absent,
    /// Only a tag was removed; the image stays under its other tags.
    Untagged(String),
    /// The record is gone; its blobs and snapshots are garbage unless shared.
    Removed(String),
}

/// All image records, persisted one file per image.
pub struct ImageStore {
    records: Mutex<BTreeMap<String, ImageRecord>>,
    disk: RecordStore<ImageRecord>,
}

fn key(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

impl ImageStore {
    /// Opens the record directory and loads every record.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let disk = RecordStore::open(dir)?;
        let records = disk
            .load_all()?
            .into_iter()
            .map(|r: ImageRecord| (r.id.clone(), r))
            .collect();
        Ok(Self {
            records: Mutex::new(records),
            disk,
        })
    }

    /// Every record, ordered by id.
    pub fn list(&self) -> Vec<ImageRecord> {
        lock_ignoring_poison(&self.records)
            .values()
            .cloned()
            .collect()
    }

    /// Blobs and chain ids the records use (what garbage collection keeps).
    pub fn in_use(&self) -> (HashSet<String>, HashSet<String>) {
        let records = lock_ignoring_poison(&self.records);
        let blobs = records
            .values()
            .flat_map(|r| r.blobs.iter().cloned())
            .collect();
        let chains = records
            .values()
            .flat_map(|r| r.chain_ids.iter().cloned())
            .collect();
        (blobs, chains)
    }

    /// Finds a record by id (`sha256:hex`, bare hex, unique hex prefix), tag or digest reference.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord> {
        let records = lock_ignoring_poison(&self.records);
        find(&records, reference)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("image {reference:?} not found")))
    }

    /// Adds a freshly pulled image (its `repo_tags` / `repo_digests` are what this pull named),
    /// merging with an existing record of the same id. Tags move: another image holding one of
    /// the tags loses it, and is dropped if it has no tags and no digests left. Returns the merged
    /// record and the ids of dropped records.
    pub fn add(&self, pulled: ImageRecord) -> Result<(ImageRecord, Vec<String>)> {
        let mut records = lock_ignoring_poison(&self.records);
        let mut dropped = Vec::new();
        for tag in &pulled.repo_tags {
            let holders: Vec<String> = records
                .values()
                .filter(|r| r.id != pulled.id && r.repo_tags.contains(tag))
                .map(|r| r.id.clone())
                .collect();
            for id in holders {
                let Some(mut old) = records.get(&id).cloned() else {
                    continue;
                };
                old.repo_tags.retain(|t| t != tag);
                if old.repo_tags.is_empty() && old.repo_digests.is_empty() {
                    self.disk.delete(key(&id))?;
                    records.remove(&id);
                    dropped.push(id);
                } else {
                    self.disk.put(key(&id), &old)?;
                    records.insert(id, old);
                }
            }
        }
        let merged = match records.get(&pulled.id) {
            Some(existing) => {
                let mut merged = pulled.clone();
                merged.repo_tags = union(&existing.repo_tags, &pulled.repo_tags);
                merged.repo_digests = union(&existing.repo_digests, &pulled.repo_digests);
                merged.blobs = union(&existing.blobs, &pulled.blobs);
                merged
            }
            None => pulled,
        };
        self.disk.put(key(&merged.id), &merged)?;
        records.insert(merged.id.clone(), merged.clone());
        Ok((merged, dropped))
    }

    /// Removes what `reference` names: by one of several tags only untags; otherwise (id, digest
    /// reference, last tag) the whole record goes.
    pub fn remove(&self, reference: &str) -> Result<Removal> {
        let mut records = lock_ignoring_poison(&self.records);
        let Some(record) = find(&records, reference).cloned() else {
            return Ok(Removal::Absent);
        };
        let tag = ImageRef::parse(reference)
            .ok()
            .filter(|r| r.digest.is_none())
            .and_then(|r| r.tagged())
            .filter(|t| record.repo_tags.contains(t));
        if let Some(tag) = tag {
            if record.repo_tags.len() > 1 {
                let mut kept = record;
                kept.repo_tags.retain(|t| *t != tag);
                self.disk.put(key(&kept.id), &kept)?;
                records.insert(kept.id.clone(), kept);
                return Ok(Removal::Untagged(tag));
            }
        }
        self.disk.delete(key(&record.id))?;
        records.remove(&record.id);
        Ok(Removal::Removed(record.id))
    }
}

fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = a.to_vec();
    for item in b {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

fn find<'a>(
    records: &'a BTreeMap<String, ImageRecord>,
    reference: &str,
) -> Option<&'a ImageRecord> {
    let reference = reference.trim();
    if reference.is_empty() {
        return None;
    }
    if let Some(hex) = reference.strip_prefix("sha256:") {
        if is_hex_id(hex) {
            return records.get(reference);
        }
    } else if is_hex_id(reference) {
        return records.get(&format!("sha256:{reference}"));
    }
    if let Ok(parsed) = ImageRef::parse(reference) {
        let hit = match (&parsed.digest, parsed.tagged()) {
            (Some(digest), _) => {
                let wanted = parsed.with_digest(digest);
                records.values().find(|r| r.repo_digests.contains(&wanted))
            }
            (None, Some(tagged)) => records.values().find(|r| r.repo_tags.contains(&tagged)),
            (None, None) => None,
        };
        if hit.is_some() {
            return hit;
        }
    }
    // A unique prefix of an id, as `crictl rmi 3f2a` users expect.
    let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut matches = records.values().filter(|r| key(&r.id).starts_with(prefix));
    match (matches.next(), matches.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::image::record::ImageRuntimeConfig;

    fn id(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn rec(c: char, tags: &[&str], digests: &[&str]) -> ImageRecord {
        ImageRecord {
            id: id(c),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            size: 1,
            chain_ids: vec![format!("sha256:chain{c}")],
            config: ImageRuntimeConfig::default(),
            blobs: vec![id(c)],
        }
    }

    #[test]
    fn tag_moves_to_the_new_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let tag = "docker.io/library/busybox:latest";
        store
            .add(rec('a', &[tag, "docker.io/library/busybox:1"], &[]))
            .unwrap();
        store
            .add(rec('b', &[tag], &["docker.io/library/busybox@sha256:bbbb"]))
            .unwrap();
        // a keeps its other tag, b has `latest` now.
        assert_eq!(store.resolve("busybox").unwrap().id, id('b'));
        assert_eq!(store.resolve("busybox:1").unwrap().id, id('a'));
        assert_eq!(
            store.resolve(&id('a')).unwrap().repo_tags,
            vec!["docker.io/library/busybox:1"]
        );

        // c takes `latest` from b, which keeps its digest; then d takes `:1` from a, which is dropped.
        store.add(rec('c', &[tag], &[])).unwrap();
        assert!(store.resolve(&id('b')).unwrap().repo_tags.is_empty());
        let (_, dropped) = store
            .add(rec('d', &["docker.io/library/busybox:1"], &[]))
            .unwrap();
        assert_eq!(dropped, vec![id('a')]);
        assert!(store.resolve(&id('a')).is_err());

        // Persisted: a reopened store sees the same.
        let again = ImageStore::open(dir.path()).unwrap();
        assert_eq!(again.list().len(), 3);
        assert_eq!(again.resolve(tag).unwrap().id, id('c'));
    }

    #[test]
    fn pulling_the_same_image_again_merges_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        store
            .add(rec('a', &["x.io/a:1"], &["x.io/a@sha256:1"]))
            .unwrap();
        let (merged, _) = store
            .add(rec('a', &["x.io/a:2"], &["x.io/a@sha256:1"]))
            .unwrap();
        assert_eq!(merged.repo_tags, vec!["x.io/a:1", "x.io/a:2"]);
        assert_eq!(merged.repo_digests, vec!["x.io/a@sha256:1"]);
    }

    #[test]
    fn resolve_forms() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let digest = format!("sha256:{}", "9".repeat(64));
        store
            .add(rec(
                'a',
                &["docker.io/library/busybox:latest"],
                &[&format!("docker.io/library/busybox@{digest}")],
            ))
            .unwrap();
        let mut other = rec('b', &[], &["x.io/b@sha256:0"]);
        other.id = format!("sha256:ab{}", "0".repeat(62));
        store.add(other).unwrap();
        for name in [
            id('a').as_str(),
            &id('a')[7..],
            "aaaa",
            "sha256:aaa",
            "busybox",
            "docker.io/library/busybox:latest",
        ] {
            assert_eq!(store.resolve(name).unwrap().id, id('a'), "{name}");
        }
        assert_eq!(
            store.resolve(&format!("busybox@{digest}")).unwrap().id,
            id('a')
        );
        assert!(store.resolve("a").is_err(), "ambiguous prefix");
        assert!(store.resolve("ab").is_ok());
        assert!(store.resolve("busybox:2").is_err());
        assert!(store.resolve("").is_err());
    }

    #[test]
    fn remove_untags_then_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        store
            .add(rec('a', &["x.io/a:1", "x.io/a:2"], &["x.io/a@sha256:1"]))
            .unwrap();
        assert_eq!(
            store.remove("x.io/a:1").unwrap(),
            Removal::Untagged("x.io/a:1".into())
        );
        assert_eq!(store.remove("x.io/a:2").unwrap(), Removal::Removed(id('a')));
        assert_eq!(store.remove("x.io/a:2").unwrap(), Removal::Absent);
        store.add(rec('a', &["x.io/a:1", "x.io/a:2"], &[])).unwrap();
        assert_eq!(store.remove(&id('a')).unwrap(), Removal::Removed(id('a')));
        assert!(store.list().is_empty());
        assert!(ImageStore::open(dir.path()).unwrap().list().is_empty());
    }
}
